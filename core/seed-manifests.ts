// The documents seeding reads and writes (docs/design.md, "Seeding"): a livesync backup's
// manifest, a raw-image manifest for users who bring their own image, and the base manifest
// that makes the seeded chunks the bottom level of a pair's replica. Pure: parse and check.

import { BLOCK_SIZE } from './batch-format';
import { CHUNK_BYTES, type ChunkRef } from './chunk-format';
import { BackupError } from './errors';
import { checkAppTag, checkDiskName } from './keys';

export interface BackupDisk {
  name: string;
  sizeBytes: number;
  /** Stored (non-zero) chunks, ascending by index; absent indexes read as zeros. */
  chunks: ChunkRef[];
}

/** `livesync backup`: chunks at `{dir}/chunks/{sha256}` next to `{dir}/manifest.json`. */
export interface BackupManifest {
  format: 'livesync-backup';
  version: 1;
  pairId: string;
  backupId: string;
  createdMs: number;
  chunkBytes: number;
  /** Every write in a batch below this seq is in the backup; later ones may not be. */
  startSeq: number;
  /** The last seq cut before the backup ended: base + journal are consistent from here. */
  endSeq: number;
  /** Taken inside a pre-freeze/post-thaw window: the state at endSeq is an ACRP. */
  appConsistent: boolean;
  appTag?: string;
  disks: BackupDisk[];
}

/** A raw image the user brings: each disk one or more objects, concatenated in order. */
export interface RawImageManifest {
  format: 'livesync-raw-image';
  version: 1;
  disks: { name: string; sizeBytes: number; parts: { key: string; bytes: number }[] }[];
}

/** The bottom level of a pair's replica, written once seeding has stored every chunk. */
export interface BaseManifest {
  format: 'livesync-base';
  version: 1;
  pairId: string;
  seedId: string;
  /** Segments with seq above this are applied over the base; those at or below it are in it. */
  baseSeq: number;
  /** The first RP the pair offers (a backup's endSeq; 0 = the base alone). */
  firstRpSeq: number;
  source: string;
  createdMs: number;
  chunkBytes: number;
  disks: { name: string; sizeBytes: number; chunks: [index: number, sha256: string, crc32c: number, length: number][] }[];
}

const SHA256 = /^[0-9a-f]{64}$/;

export function parseBackupManifest(text: string, where: string): BackupManifest {
  const m = parseJson(text, where);
  need(m.format === 'livesync-backup', where, `format '${String(m.format)}' is not 'livesync-backup'`);
  need(m.version === 1, where, `version ${String(m.version)} is not 1`);
  need(typeof m.pairId === 'string' && m.pairId !== '', where, 'pairId missing');
  need(typeof m.backupId === 'string' && m.backupId !== '', where, 'backupId missing');
  need(m.chunkBytes === CHUNK_BYTES, where, `chunkBytes ${String(m.chunkBytes)} is not ${CHUNK_BYTES}`);
  need(isSeq(m.startSeq) && m.startSeq >= 1, where, `startSeq ${String(m.startSeq)} is not a seq ≥ 1`);
  need(isSeq(m.endSeq) && m.endSeq >= m.startSeq - 1, where, `endSeq ${String(m.endSeq)} is below startSeq − 1`);
  need(typeof m.appConsistent === 'boolean', where, 'appConsistent missing');
  if (m.appTag !== undefined) wrap(() => checkAppTag(String(m.appTag)), where);
  need(Array.isArray(m.disks) && m.disks.length > 0, where, 'no disks');
  const names = new Set<string>();
  const disks = (m.disks as Record<string, unknown>[]).map((d, i): BackupDisk => {
    const at = `${where} disk ${i}`;
    const name = diskName(d.name, at, names);
    const sizeBytes = diskSize(d.sizeBytes, `${where} disk '${name}'`);
    need(Array.isArray(d.chunks), at, 'chunks missing');
    const count = Math.ceil(sizeBytes / CHUNK_BYTES);
    let prev = -1;
    const chunks = (d.chunks as Record<string, unknown>[]).map((c, j) => {
      const cw = `${where} disk '${name}' chunk ${j}`;
      need(Number.isSafeInteger(c.index) && (c.index as number) > prev && (c.index as number) < count, cw, `index ${String(c.index)} is not ascending within the disk's ${count} chunks`);
      prev = c.index as number;
      const expected = Math.min(CHUNK_BYTES, sizeBytes - prev * CHUNK_BYTES);
      need(c.length === expected, cw, `length ${String(c.length)}, expected ${expected}`);
      need(typeof c.sha256 === 'string' && SHA256.test(c.sha256), cw, 'sha256 is not 64 hex digits');
      need(Number.isInteger(c.crc32c) && (c.crc32c as number) >= 0 && (c.crc32c as number) < 2 ** 32, cw, 'crc32c is not a 32-bit number');
      return { index: prev, sha256: c.sha256 as string, crc32c: c.crc32c as number, length: expected };
    });
    return { name, sizeBytes, chunks };
  });
  return { ...(m as unknown as BackupManifest), disks };
}

export function parseRawImageManifest(text: string, where: string): RawImageManifest {
  const m = parseJson(text, where);
  need(m.format === 'livesync-raw-image', where, `format '${String(m.format)}' is not 'livesync-raw-image'`);
  need(m.version === 1, where, `version ${String(m.version)} is not 1`);
  need(Array.isArray(m.disks) && m.disks.length > 0, where, 'no disks');
  const names = new Set<string>();
  const disks = (m.disks as Record<string, unknown>[]).map((d, i) => {
    const name = diskName(d.name, `${where} disk ${i}`, names);
    const at = `${where} disk '${name}'`;
    const sizeBytes = diskSize(d.sizeBytes, at);
    need(Array.isArray(d.parts) && d.parts.length > 0, at, 'no parts');
    const parts = (d.parts as Record<string, unknown>[]).map((p, j) => {
      need(typeof p.key === 'string' && p.key !== '', `${at} part ${j}`, 'key missing');
      need(Number.isSafeInteger(p.bytes) && (p.bytes as number) > 0, `${at} part ${j}`, `bytes ${String(p.bytes)} is not a positive integer`);
      return { key: p.key as string, bytes: p.bytes as number };
    });
    const total = parts.reduce((n, p) => n + p.bytes, 0);
    need(total === sizeBytes, at, `parts hold ${total} bytes, the disk is ${sizeBytes}`);
    return { name, sizeBytes, parts };
  });
  return { format: 'livesync-raw-image', version: 1, disks };
}

export function parseBaseManifest(text: string, where: string): BaseManifest {
  const m = parseJson(text, where);
  need(m.format === 'livesync-base' && m.version === 1, where, 'not a version 1 base manifest');
  need(isSeq(m.baseSeq) && isSeq(m.firstRpSeq) && (m.firstRpSeq as number) >= (m.baseSeq as number), where, 'baseSeq/firstRpSeq missing or out of order');
  need(Array.isArray(m.disks), where, 'disks missing');
  return m as unknown as BaseManifest;
}

/** The chunk objects of a backup whose manifest is at `manifestKey`. */
export const backupChunkKey = (manifestKey: string, sha256: string): string => `${manifestKey.slice(0, manifestKey.lastIndexOf('/') + 1)}chunks/${sha256}`;

function parseJson(text: string, where: string): Record<string, unknown> {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (err) {
    throw new BackupError('MALFORMED', where, `not JSON: ${(err as Error).message}`);
  }
  need(typeof m === 'object' && m !== null && !Array.isArray(m), where, 'not a JSON object');
  return m as Record<string, unknown>;
}

function diskName(v: unknown, where: string, seen: Set<string>): string {
  need(typeof v === 'string', where, 'disk name missing');
  const name = v as string;
  wrap(() => checkDiskName(name), where);
  need(!seen.has(name), where, `disk '${name}' listed twice`);
  seen.add(name);
  return name;
}

function diskSize(v: unknown, where: string): number {
  need(Number.isSafeInteger(v) && (v as number) > 0 && (v as number) % BLOCK_SIZE === 0, where, `sizeBytes ${String(v)} is not a positive multiple of ${BLOCK_SIZE}`);
  return v as number;
}

const isSeq = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

function need(ok: boolean, where: string, reason: string): asserts ok {
  if (!ok) throw new BackupError('MALFORMED', where, reason);
}

function wrap(f: () => unknown, where: string): void {
  try {
    f();
  } catch (err) {
    throw new BackupError('MALFORMED', where, (err as Error).message);
  }
}

/** What the replication itself writes under `pairs/{pair}/`: never a seed's source. */
const REPLICATION_DIRS = new Set(['journal', 'history', 'base', 'seed', 'recoveries']);

/**
 * Where a pair's seed may read: under `pairs/` only the pair's own prefix (its agent's
 * `backups/`, or an import an operator put there), never another pair's objects nor its own
 * journal, history, base, seed or recoveries objects; a key outside `pairs/` (a backup
 * bucket, `recoveries/`) as the deployer's grants allow. Checked for the backup's URL before
 * anything is read, and for every part a raw-image manifest names before any part is
 * (docs/design.md, "Seeding").
 */
export function checkSeedKey(pairId: string, bucket: string, key: string): void {
  if (!key.startsWith('pairs/')) return;
  const parts = key.split('/');
  const [, owner, dir] = parts;
  if (owner === pairId && !REPLICATION_DIRS.has(dir) && parts.length > 3) return;
  const why = owner !== pairId ? `it is pair '${owner}'s` : `pairs/${pairId}/${dir}/ is the replication's own`;
  throw new BackupError('FORBIDDEN', `s3://${bucket}/${key}`, `pair '${pairId}' may not seed from this key (${why}): only from its own pairs/${pairId}/ (backups/, an import) or from outside pairs/`);
}
