// Seeding a pair from a backup in S3 (docs/design.md, "Seeding"): the steps of the seed
// workflow, each a plain function over the ports. The state machine (lib/seed-workflow.ts)
// runs them as Lambda tasks; locally the same definition runs them in-process.
//
//   validate → plan → seedRange × N (a Map, bounded concurrency, each retried) → finalize
//   → catchUp (until the watermark reaches the first RP) → activate;  any failure → fail
//
// Crash safety: a range writes its chunks (content-addressed: rewriting one is harmless),
// then its done marker; a re-run skips ranges with a marker. The base manifest is written
// once every range is done, and the first RP only in activate's transaction, so nothing
// half-written is ever offered.

import { BLOCK_SIZE } from '../core/batch-format';
import { CHUNK_BYTES, encodeChunk, isAllZero, type ChunkRef } from '../core/chunk-format';
import { BackupError, InvalidArgumentError, UnknownPairError } from '../core/errors';
import { baseChunkKey, baseManifestKey, checkPairId, parseS3Url, seedDoneKey, seedRangeKey } from '../core/keys';
import type { Pair, PairState, RecoveryPoint } from '../core/model';
import { planAdvance } from '../core/advance';
import { judgeNew } from '../core/retention';
import { backupChunkKey, checkSeedKey, parseBackupManifest, parseRawImageManifest, type BackupManifest, type BaseManifest, type RawImageManifest } from '../core/seed-manifests';
import { verifyChunk } from './chunk-verifier';
import { mapLimit } from './concurrency';
import { ObjectNotFoundError, type ObjectStore, type ReplicaIndex } from './ports';

export interface SeedDeps {
  /** The replica bucket. */
  store: ObjectStore;
  index: ReplicaIndex;
  /** Read access to the bucket a backup is in. */
  sourceStore(bucket: string): ObjectStore;
  now?: () => number;
  /** @default SEED_WAIT_TIMEOUT_MS */
  waitTimeoutMs?: number;
}

/** The workflow's input, and what every step passes on. */
export interface SeedRun {
  pairId: string;
  seedId: string;
}

/** A range descriptor: the work of one Map item. */
type RangeWork =
  | { kind: 'backup'; bucket: string; manifestKey: string; disk: string; chunks: ChunkRef[] }
  | { kind: 'raw'; bucket: string; disk: string; sizeBytes: number; parts: { key: string; bytes: number }[]; firstChunk: number; endChunk: number };

/** A finished range: what it stored. */
interface RangeDone {
  disk: string;
  chunks: ChunkRef[];
  bytesRead: number;
  bytesStored: number;
  zeroChunks: number;
}

type Source =
  | { kind: 'backup'; bucket: string; key: string; manifest: BackupManifest }
  | { kind: 'raw'; bucket: string; key: string; manifest: RawImageManifest };

/** Chunks per range at least; larger disks get larger ranges so a plan stays ≤ MAX_RANGES items. */
const CHUNKS_PER_RANGE = 16;
const MAX_RANGES = 2000;
/** Chunk objects copied at once within a range (each up to 4 MiB in and out of memory). */
const CONCURRENCY = 8;
/** HEADs at once while validating (no bodies: only the request rate matters). */
const HEAD_CONCURRENCY = 32;
/** States from which a run may (re)start: ERROR is a quarantined batch, which seeding does not touch. */
const RESTARTABLE: PairState[] = ['CONFIGURED', 'SEEDING', 'SEED_FAILED', 'ERROR'];
/** How long the workflow waits for something the agent provides (its backup, the journal up to the first RP) before the run fails. */
export const SEED_WAIT_TIMEOUT_MS = 24 * 3600 * 1000;
/** A manifest or range descriptor larger than this is refused unread. */
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;

// ---- validate --------------------------------------------------------------------------

/**
 * Reads the backup the pair was created with and checks it against the pair before
 * anything is written: format, disk names and sizes, every chunk or part present with its
 * size. Then the pair moves to SEEDING. Throws BackupError (→ SEED_FAILED with the reason).
 */
export async function validateSeed(
  d: SeedDeps,
  run: SeedRun & { backupWaitSinceMs?: number },
): Promise<SeedRun & ({ ready: true; kind: Source['kind'] } | { ready: false; backupWaitSinceMs: number })> {
  const pair = await seedingPair(d, run, RESTARTABLE);
  const awaited = await awaitedBackup(d, pair, run.backupWaitSinceMs);
  if (awaited) return { pairId: run.pairId, seedId: run.seedId, ready: false, backupWaitSinceMs: awaited };
  const src = await readSource(d, pair.seed!.source, run.pairId);
  checkDisks(pair, src);
  await checkObjects(d, src);
  // A re-run after SEED_FAILED clears the previous failure.
  const started = await d.index.updateSeed(run.pairId, run.seedId, { state: 'SEEDING', seed: { status: 'RUNNING' }, clear: ['reason', 'finishedMs', 'lastRangeError'], fromStates: RESTARTABLE });
  if (!started) {
    throw new Error(`pair '${run.pairId}' moved on while seed ${run.seedId} was validated`);
  }
  return { pairId: run.pairId, seedId: run.seedId, ready: true, kind: src.kind };
}

/**
 * A backup the pair's agent is to take (under the pair's own `backups/` prefix) may not be
 * there yet: the workflow waits for its manifest (returns since when), up to
 * SEED_WAIT_TIMEOUT_MS. A backup anywhere else must exist now.
 */
async function awaitedBackup(d: SeedDeps, pair: Pair, sinceMs: number | undefined): Promise<number | undefined> {
  const url = pair.seed!.source;
  const { key } = parseS3Url(url);
  if (!key.startsWith(`pairs/${pair.pairId}/backups/`) || (await d.store.size(key)) !== undefined) return undefined;
  const now = (d.now ?? Date.now)();
  const since = sinceMs ?? now;
  if (now - since > (d.waitTimeoutMs ?? SEED_WAIT_TIMEOUT_MS)) {
    throw new BackupError('MISSING_CHUNK', url, `no backup appeared within ${Math.round((now - since) / 1000)} s (is the pair's agent running? \`livesync backup --pair ${pair.pairId}\` takes it)`);
  }
  return since;
}

async function readSource(d: SeedDeps, url: string, pairId: string): Promise<Source> {
  const { bucket, key } = parseS3Url(url);
  checkSeedKey(pairId, bucket, key);
  const store = d.sourceStore(bucket);
  const size = await store.size(key);
  if (size === undefined) throw new BackupError('MISSING_CHUNK', url, 'no such object');
  if (!key.endsWith('.json')) {
    // A single raw image object: the whole of a one-disk pair (its name comes from the pair).
    return { kind: 'raw', bucket, key, manifest: { format: 'livesync-raw-image', version: 1, disks: [{ name: '', sizeBytes: size, parts: [{ key, bytes: size }] }] } };
  }
  if (size > MAX_MANIFEST_BYTES) throw new BackupError('MALFORMED', url, `manifest of ${size} bytes is over ${MAX_MANIFEST_BYTES}`);
  const text = (await store.get(key)).toString('utf8');
  const format = /"format"\s*:\s*"([^"]*)"/.exec(text)?.[1];
  if (format === 'livesync-raw-image') {
    const manifest = parseRawImageManifest(text, url);
    // Every part it names, before any is read.
    for (const disk of manifest.disks) for (const p of disk.parts) checkSeedKey(pairId, bucket, p.key);
    return { kind: 'raw', bucket, key, manifest };
  }
  return { kind: 'backup', bucket, key, manifest: parseBackupManifest(text, url) };
}

function checkDisks(pair: Pair, src: Source): void {
  const where = `s3://${src.bucket}/${src.key}`;
  if (src.kind === 'backup' && src.manifest.pairId !== pair.pairId) throw new BackupError('MISMATCH', where, `is a backup of pair '${src.manifest.pairId}', not '${pair.pairId}'`);
  const disks = src.manifest.disks;
  if (src.kind === 'raw' && disks[0].name === '') {
    if (pair.disks.length !== 1) throw new BackupError('MISMATCH', where, `one raw image cannot seed the ${pair.disks.length} disks of pair '${pair.pairId}': give a raw-image manifest`);
    disks[0].name = pair.disks[0].name;
  }
  const names = (xs: { name: string }[]): string => xs.map((x) => x.name).sort().join(', ');
  if (names(disks) !== names(pair.disks)) throw new BackupError('MISMATCH', where, `holds disks [${names(disks)}], pair '${pair.pairId}' has [${names(pair.disks)}]`);
  for (const disk of pair.disks) {
    const b = disks.find((x) => x.name === disk.name)!;
    if (b.sizeBytes !== disk.sizeBytes) throw new BackupError('MISMATCH', where, `disk '${disk.name}' is ${b.sizeBytes} bytes, the pair's is ${disk.sizeBytes}`);
  }
}

/** Every chunk (or part) exists with the size the manifest implies. */
async function checkObjects(d: SeedDeps, src: Source): Promise<void> {
  const store = d.sourceStore(src.bucket);
  if (src.kind === 'raw') {
    const parts = src.manifest.disks.flatMap((disk) => disk.parts.map((p) => ({ disk: disk.name, ...p })));
    await mapLimit(parts, HEAD_CONCURRENCY, async (p) => {
      const size = await store.size(p.key);
      const where = `s3://${src.bucket}/${p.key} (disk '${p.disk}')`;
      if (size === undefined) throw new BackupError('MISSING_CHUNK', where, 'part missing');
      if (size !== p.bytes) throw new BackupError('TRUNCATED', where, `part is ${size} bytes, the manifest says ${p.bytes}`);
    });
    return;
  }
  const chunks = src.manifest.disks.flatMap((disk) => disk.chunks.map((c) => ({ disk: disk.name, c })));
  await mapLimit(chunks, HEAD_CONCURRENCY, async ({ disk, c }) => {
    const key = backupChunkKey(src.key, c.sha256);
    const size = await store.size(key);
    if (size === undefined) throw new BackupError('MISSING_CHUNK', `s3://${src.bucket}/${key}`, `chunk ${c.index} of disk '${disk}' (offset ${c.index * CHUNK_BYTES}) is missing`);
  });
}

// ---- plan ------------------------------------------------------------------------------

/** Cuts the work into ranges (descriptors in S3, small Map items) and records the totals. */
export async function planSeed(d: SeedDeps, run: SeedRun): Promise<{ items: (SeedRun & { range: number })[]; ranges: number; bytesTotal: number }> {
  const pair = await seedingPair(d, run, ['SEEDING']);
  const src = await readSource(d, pair.seed!.source, run.pairId);
  checkDisks(pair, src);
  const work: RangeWork[] = [];
  let bytesTotal = 0;
  if (src.kind === 'backup') {
    const total = src.manifest.disks.reduce((n, x) => n + x.chunks.length, 0);
    const per = Math.max(CHUNKS_PER_RANGE, Math.ceil(total / MAX_RANGES));
    for (const disk of src.manifest.disks) {
      for (let i = 0; i < disk.chunks.length; i += per) {
        const chunks = disk.chunks.slice(i, i + per);
        work.push({ kind: 'backup', bucket: src.bucket, manifestKey: src.key, disk: disk.name, chunks });
        bytesTotal += chunks.reduce((n, c) => n + c.length, 0);
      }
    }
  } else {
    const total = src.manifest.disks.reduce((n, x) => n + Math.ceil(x.sizeBytes / CHUNK_BYTES), 0);
    const per = Math.max(CHUNKS_PER_RANGE, Math.ceil(total / MAX_RANGES));
    for (const disk of src.manifest.disks) {
      const count = Math.ceil(disk.sizeBytes / CHUNK_BYTES);
      for (let c = 0; c < count; c += per) {
        work.push({ kind: 'raw', bucket: src.bucket, disk: disk.name, sizeBytes: disk.sizeBytes, parts: disk.parts, firstChunk: c, endChunk: Math.min(count, c + per) });
      }
      bytesTotal += disk.sizeBytes;
    }
  }
  // Descriptors are rewritten identically by a re-run: a finished range's marker stays valid.
  await mapLimit(
    work.map((w, i) => [w, i] as const),
    CONCURRENCY,
    ([w, i]) => d.store.put(seedRangeKey(run.pairId, run.seedId, i), Buffer.from(JSON.stringify(w))),
  );
  await d.index.updateSeed(run.pairId, run.seedId, { seed: { rangesTotal: work.length, bytesTotal } });
  return { items: work.map((_, range) => ({ ...run, range })), ranges: work.length, bytesTotal };
}

// ---- seed one range --------------------------------------------------------------------

/** Stores one range's chunks in the base, then its done marker. A finished range is skipped. */
export async function seedRange(d: SeedDeps, item: SeedRun & { range: number }): Promise<{ range: number; skipped: boolean; bytesStored: number }> {
  const doneKey = seedDoneKey(item.pairId, item.seedId, item.range);
  if ((await d.store.size(doneKey)) !== undefined) return { range: item.range, skipped: true, bytesStored: 0 };
  let done: RangeDone;
  try {
    const work = JSON.parse((await d.store.get(seedRangeKey(item.pairId, item.seedId, item.range), undefined, MAX_MANIFEST_BYTES)).toString('utf8')) as RangeWork;
    done = work.kind === 'backup' ? await copyBackupChunks(d, item.pairId, work) : await chunkRawImage(d, item.pairId, work);
  } catch (err) {
    // Kept on the pair: a Distributed Map that gives up reports only that a child failed.
    const lastRangeError = `range ${item.range}: ${(err as Error).message}`.slice(0, 2000);
    await d.index.updateSeed(item.pairId, item.seedId, { seed: { lastRangeError } }).catch(() => undefined);
    throw err;
  }
  await d.store.put(doneKey, Buffer.from(JSON.stringify(done)));
  await d.index.updateSeed(item.pairId, item.seedId, { add: { rangesDone: 1, bytesDone: done.bytesRead } });
  return { range: item.range, skipped: false, bytesStored: done.bytesStored };
}

/** Backup chunks are verified end to end (header, then the data's SHA-256 on a worker thread) before they are stored. */
async function copyBackupChunks(d: SeedDeps, pairId: string, w: Extract<RangeWork, { kind: 'backup' }>): Promise<RangeDone> {
  const src = d.sourceStore(w.bucket);
  const done: RangeDone = { disk: w.disk, chunks: w.chunks, bytesRead: 0, bytesStored: 0, zeroChunks: 0 };
  await mapLimit(w.chunks, CONCURRENCY, async (c) => {
    const key = backupChunkKey(w.manifestKey, c.sha256);
    const body = await src.get(key, undefined, CHUNK_BYTES + 1024 * 1024);
    await verifyChunk(body, c, `s3://${w.bucket}/${key} (disk '${w.disk}' offset ${c.index * CHUNK_BYTES})`);
    await d.store.put(baseChunkKey(pairId, c.sha256), body);
    done.bytesRead += c.length;
    done.bytesStored += body.length;
  });
  return done;
}

/** A raw image is read chunk by chunk (ranged GETs over its parts); zero chunks are skipped. */
async function chunkRawImage(d: SeedDeps, pairId: string, w: Extract<RangeWork, { kind: 'raw' }>): Promise<RangeDone> {
  const src = d.sourceStore(w.bucket);
  const done: RangeDone = { disk: w.disk, chunks: [], bytesRead: 0, bytesStored: 0, zeroChunks: 0 };
  const indexes = Array.from({ length: w.endChunk - w.firstChunk }, (_, i) => w.firstChunk + i);
  await mapLimit(indexes, CONCURRENCY, async (index) => {
    const start = index * CHUNK_BYTES;
    const data = await readRaw(src, w, start, Math.min(start + CHUNK_BYTES, w.sizeBytes));
    done.bytesRead += data.length;
    if (isAllZero(data)) {
      done.zeroChunks++;
      return;
    }
    const { body, ref } = await encodeChunk(index, data);
    await d.store.put(baseChunkKey(pairId, ref.sha256), body);
    done.chunks.push(ref);
    done.bytesStored += body.length;
  });
  done.chunks.sort((a, b) => a.index - b.index);
  return done;
}

/** Bytes [start, end) of a disk stored as consecutive parts. */
async function readRaw(src: ObjectStore, w: Extract<RangeWork, { kind: 'raw' }>, start: number, end: number): Promise<Buffer> {
  const out: Buffer[] = [];
  let partStart = 0;
  for (const p of w.parts) {
    const partEnd = partStart + p.bytes;
    const a = Math.max(start, partStart);
    const b = Math.min(end, partEnd);
    if (a < b) {
      const bytes = await src.get(p.key, { start: a - partStart, end: b - partStart });
      if (bytes.length !== b - a) throw new BackupError('TRUNCATED', `s3://${w.bucket}/${p.key}`, `read ${bytes.length} of ${b - a} bytes at ${a - partStart}`);
      out.push(bytes);
    }
    partStart = partEnd;
  }
  const data = out.length === 1 ? out[0] : Buffer.concat(out);
  // A raw disk's size is a multiple of 4 KiB (validated), so every chunk is too.
  if (data.length % BLOCK_SIZE !== 0) throw new BackupError('TRUNCATED', w.disk, `chunk at ${start} has ${data.length} bytes`);
  return data;
}

// ---- finalize, catch up, activate, fail -------------------------------------------------

/** What activate needs to write the first RP; finalize passes it on so no step reads the backup manifest again. */
export interface FirstRp {
  firstRpSeq: number;
  /** The backup was application-consistent: the first RP is an ACRP with this tag. */
  app: boolean;
  appTag?: string;
  /** When the backup was taken: the RP's time if no batch is at its seq. */
  takenMs: number;
}

/**
 * Some ranges of a run have no done marker at finalize: the Map went on without them (a
 * Distributed Map whose items failed can still report success, as LocalStack's did).
 */
export class SeedIncompleteError extends Error {
  constructor(
    readonly pairId: string,
    readonly seedId: string,
    /** The ranges without a marker, ascending. */
    readonly missing: number[],
    readonly ranges: number,
  ) {
    super(`seed ${seedId} of pair '${pairId}': ${missing.length} of ${ranges} ranges have no done marker: ${rangeList(missing)}`);
    this.name = 'SeedIncompleteError';
  }
}

/** `0-5, 9, 12-15`: ascending numbers with runs collapsed, cut after 40 runs (a reason stays short). */
export function rangeList(ns: number[]): string {
  const runs: string[] = [];
  for (let i = 0; i < ns.length; ) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j] + 1) j++;
    runs.push(i === j ? String(ns[i]) : `${ns[i]}-${ns[j]}`);
    i = j + 1;
  }
  return runs.length > 40 ? `${runs.slice(0, 40).join(', ')}, …` : runs.join(', ');
}

/**
 * Every range's done marker, read. Finalize does not trust the Map's outcome: whatever it
 * reported, a range without a marker fails the run, naming every such range.
 */
async function rangesDone(d: SeedDeps, run: SeedRun & { ranges: number }): Promise<RangeDone[]> {
  if (!Number.isInteger(run.ranges) || run.ranges < 0) throw new InvalidArgumentError(`seed ${run.seedId} of pair '${run.pairId}': finalize needs the plan's range count, got ${String(run.ranges)}`);
  const done: (RangeDone | undefined)[] = [];
  const ids = Array.from({ length: run.ranges }, (_, i) => i);
  await mapLimit(
    ids,
    CONCURRENCY,
    async (i) => {
      try {
        done[i] = JSON.parse((await d.store.get(seedDoneKey(run.pairId, run.seedId, i))).toString('utf8')) as RangeDone;
      } catch (err) {
        if (!(err instanceof ObjectNotFoundError)) throw err;
      }
    },
  );
  const missing = ids.filter((i) => !done[i]);
  if (missing.length) throw new SeedIncompleteError(run.pairId, run.seedId, missing, run.ranges);
  return done as RangeDone[];
}

/** Writes the base manifest from the ranges' markers (every one, or the run fails) and puts it on the pair. */
export async function finalizeSeed(d: SeedDeps, run: SeedRun & { ranges: number }): Promise<SeedRun & FirstRp> {
  const pair = await seedingPair(d, run, ['SEEDING', 'ERROR']);
  const src = await readSource(d, pair.seed!.source, run.pairId);
  checkDisks(pair, src);
  const done = await rangesDone(d, run);
  const baseSeq = src.kind === 'backup' ? src.manifest.startSeq - 1 : 0;
  const firstRpSeq = src.kind === 'backup' ? Math.max(baseSeq, src.manifest.endSeq) : 0;
  const manifest: BaseManifest = {
    format: 'livesync-base',
    version: 1,
    pairId: run.pairId,
    seedId: run.seedId,
    baseSeq,
    firstRpSeq,
    source: pair.seed!.source,
    createdMs: (d.now ?? Date.now)(),
    chunkBytes: CHUNK_BYTES,
    disks: pair.disks.map((disk) => ({
      name: disk.name,
      sizeBytes: disk.sizeBytes,
      chunks: done
        .filter((r) => r.disk === disk.name)
        .flatMap((r) => r.chunks)
        .sort((a, b) => a.index - b.index)
        .map((c) => [c.index, c.sha256, c.crc32c, c.length] as [number, string, number, number]),
    })),
  };
  const key = baseManifestKey(run.pairId, run.seedId);
  await d.store.put(key, Buffer.from(JSON.stringify(manifest)));
  const bytesDone = done.reduce((n, r) => n + r.bytesRead, 0);
  if (!(await d.index.updateSeed(run.pairId, run.seedId, { base: { key, baseSeq, firstRpSeq }, seed: { rangesDone: run.ranges, bytesDone } }))) {
    throw new Error(`pair '${run.pairId}' is no longer seeded by ${run.seedId}`);
  }
  const app = src.kind === 'backup' && src.manifest.appConsistent;
  return {
    pairId: run.pairId,
    seedId: run.seedId,
    firstRpSeq,
    app,
    ...(app && src.kind === 'backup' && src.manifest.appTag ? { appTag: src.manifest.appTag } : {}),
    takenMs: src.kind === 'backup' ? src.manifest.createdMs : manifest.createdMs,
  };
}

/**
 * Whether the journal has been applied up to the first RP (writes made while the backup
 * ran). The workflow polls it; after SEED_WAIT_TIMEOUT_MS without getting there it fails.
 */
export async function catchUpSeed<R extends SeedRun & FirstRp & { catchUpSinceMs?: number }>(
  d: SeedDeps,
  run: R,
): Promise<R & { caughtUp: boolean; watermark: number; catchUpSinceMs: number }> {
  const pair = await seedingPair(d, run, ['SEEDING', 'ERROR']);
  const now = (d.now ?? Date.now)();
  const since = run.catchUpSinceMs ?? now;
  const caughtUp = pair.watermark >= run.firstRpSeq;
  if (!caughtUp && now - since > (d.waitTimeoutMs ?? SEED_WAIT_TIMEOUT_MS)) {
    const why = pair.error ? `: batch ${pair.error.seq} is quarantined (${pair.error.reason})` : ' (is the agent running and uploading?)';
    throw new Error(`pair '${run.pairId}': the journal stayed at seq ${pair.watermark}, below the backup's end seq ${run.firstRpSeq}, for ${Math.round((now - since) / 1000)} s${why}`);
  }
  return { ...run, caughtUp, watermark: pair.watermark, catchUpSinceMs: since };
}

/**
 * The first RP (APP with the backup's tag when it was application-consistent), the RPs of
 * batches applied while seeding, and REPLICATING, in one transaction.
 */
export async function activateSeed(d: SeedDeps, run: SeedRun & FirstRp): Promise<{ pairId: string; seedId: string; state: PairState; rp: RecoveryPoint; laterRps: number }> {
  // A batch applied between the read and the commit (no RP timer runs while seeding) makes the
  // commit fail: plan again over the new watermark, so the newest state gets its RP.
  for (let attempt = 1; ; attempt++) {
    const done = await tryActivateSeed(d, run);
    if (done) return done;
    if (attempt === ACTIVATE_ATTEMPTS) {
      throw new Error(`pair '${run.pairId}': seed ${run.seedId} could not be activated (watermark below ${run.firstRpSeq}, or the run moved on)`);
    }
  }
}

/** Tries before activation fails (each failure is a batch applied during the attempt). */
const ACTIVATE_ATTEMPTS = 5;

async function tryActivateSeed(d: SeedDeps, run: SeedRun & FirstRp): Promise<{ pairId: string; seedId: string; state: PairState; rp: RecoveryPoint; laterRps: number } | undefined> {
  const pair = await seedingPair(d, run, ['SEEDING', 'ERROR']);
  if (pair.watermark < run.firstRpSeq) {
    throw new Error(`pair '${run.pairId}': seed ${run.seedId} cannot be activated: watermark ${pair.watermark} is below the first RP ${run.firstRpSeq}`);
  }
  const batch = run.firstRpSeq > 0 ? (await d.index.batchesAfter(run.pairId, run.firstRpSeq - 1, 1))[0] : undefined;
  const atMs = batch?.seq === run.firstRpSeq ? batch.cutMs : run.takenMs;
  const rp: RecoveryPoint = {
    pairId: run.pairId,
    seq: run.firstRpSeq,
    type: run.app ? 'APP' : 'CRASH',
    tag: run.app ? run.appTag : undefined,
    atMs,
    ...judgeNew({ atMs, app: run.app }, pair.retention),
  };
  const later = await laterRps(d, pair, rp);
  const state: PairState = pair.error ? 'ERROR' : pair.resyncing ? 'RESYNCING' : 'REPLICATING';
  if (!(await d.index.activateSeed(run.pairId, run.seedId, state, [rp, ...later], pair.watermark))) return undefined;
  return { pairId: run.pairId, seedId: run.seedId, state, rp, laterRps: later.length };
}

/** Batches applied while seeding that activation looks at for RPs (the most recent ones). */
const LATER_BATCHES = 2000;
/** RPs activation adds besides the first (one transaction holds 100 items). */
const LATER_RPS = 90;

/**
 * Writes that arrived while seeding were applied without RPs. Activation offers them as
 * the apply path would have (the pair's RP rules over its most recent LATER_BATCHES
 * batches, the latest LATER_RPS of those RPs), and always one at the watermark, so the
 * newest state is recoverable at once.
 */
async function laterRps(d: SeedDeps, pair: Pair, first: RecoveryPoint): Promise<RecoveryPoint[]> {
  if (pair.watermark <= first.seq) return [];
  const from = Math.max(first.seq, pair.watermark - LATER_BATCHES);
  const batches = (await d.index.batchesAfter(pair.pairId, from, pair.watermark - from)).filter((b) => b.seq <= pair.watermark);
  const plan = planAdvance({
    pairId: pair.pairId,
    progress: { watermark: from, lastRpMs: first.atMs, lastAppRpMs: first.type === 'APP' ? first.atMs : undefined },
    ccrpIntervalMs: pair.ccrpIntervalMs,
    retention: pair.retention,
    pending: batches,
    maxRps: Infinity,
  });
  const rps: Pick<RecoveryPoint, 'seq' | 'type' | 'tag' | 'atMs'>[] = plan.rps;
  const top = batches[batches.length - 1];
  if (top && top.seq === pair.watermark && rps[rps.length - 1]?.seq !== top.seq && !plan.progress.resyncing) rps.push({ seq: top.seq, type: 'CRASH', atMs: top.cutMs });
  // Judged again against the RPs actually written before each (the plan's earlier ones may be
  // left out): the facts each RP keeps are those of its stored predecessors.
  let prevAtMs = first.atMs;
  let prevAppAtMs = first.type === 'APP' ? first.atMs : undefined;
  return rps.slice(-LATER_RPS).map(({ seq, type, tag, atMs }) => {
    const rp: RecoveryPoint = { pairId: pair.pairId, seq, type, tag, atMs, ...judgeNew({ atMs, prevAtMs, prevAppAtMs, app: type === 'APP' }, pair.retention) };
    prevAtMs = atMs;
    if (type === 'APP') prevAppAtMs = atMs;
    return rp;
  });
}

/** A Step Functions error as a Catch passes it on: `Cause` is the Lambda's error JSON, or plain text. */
export interface StepError {
  Error?: string;
  Cause?: string;
}

/**
 * SEED_FAILED with the reason. Nothing the run wrote is referenced, so nothing is offered.
 * The reason is `reason` if given, else taken from the caught error.
 */
export async function failSeed(d: SeedDeps, run: SeedRun & { reason?: string; error?: StepError }): Promise<{ pairId: string; seedId: string; reason: string }> {
  const pair = await d.index.getPair(run.pairId);
  const reason = (run.reason ?? failureReason(run.error ?? {}, pair?.seed?.seedId === run.seedId ? pair.seed.lastRangeError : undefined)).slice(0, 2000);
  await d.index.updateSeed(run.pairId, run.seedId, {
    state: 'SEED_FAILED',
    seed: { status: 'FAILED', reason, finishedMs: (d.now ?? Date.now)() },
    fromStates: ['CONFIGURED', 'SEEDING', 'ERROR'],
  });
  return { pairId: run.pairId, seedId: run.seedId, reason };
}

/**
 * The operator-facing reason of a caught error. A Lambda's Cause is JSON with its
 * errorMessage; a Distributed Map that gave up says only that (States.*), so the last
 * range error recorded on the pair says what happened.
 */
export function failureReason(error: StepError, lastRangeError?: string): string {
  let message = error.Cause ?? '';
  try {
    const parsed = JSON.parse(message) as { errorMessage?: unknown };
    if (typeof parsed?.errorMessage === 'string') message = parsed.errorMessage;
  } catch {
    // plain text
  }
  const name = error.Error ?? 'Error';
  if (name.startsWith('States.') && lastRangeError) return `${name}: ${lastRangeError}`;
  if (!message) return name;
  return message.includes(name) || name === 'Error' ? message : `${name}: ${message}`;
}

/** The pair, checked to be seeded by this run and in one of `states`. */
async function seedingPair(d: SeedDeps, run: SeedRun, states: PairState[]): Promise<Pair & { rev: number }> {
  checkPairId(run.pairId);
  const pair = await d.index.getPair(run.pairId);
  if (!pair) throw new UnknownPairError(run.pairId);
  if (!pair.seed || pair.seed.seedId !== run.seedId) throw new InvalidArgumentError(`pair '${run.pairId}' is not being seeded by ${run.seedId}`);
  if (!states.includes(pair.state)) throw new InvalidArgumentError(`pair '${run.pairId}' is ${pair.state}, not ${states.join(' or ')}`);
  return pair;
}
