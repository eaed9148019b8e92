// The manifest: which objects make up a pair's history (images and pieces per range, the
// frontier above which batches are read as they were uploaded) and which retained points it
// was planned for. Versioned; published by one conditional transaction (docs/design.md,
// "History"). Types and constants here; the codec and checks join them in this module.

import { BLOCK_SIZE } from './batch-format';
import { CHUNK_BYTES } from './chunk-format';
import { CorruptHistoryError } from './errors';
import { baseChunkKey, checkDiskName, checkPairId, parseHistoryKey } from './keys';

export const MANIFEST_FORMAT = 1;
/** Blocks of one range: a range is CHUNK_BYTES of one disk, aligned. */
export const RANGE_BLOCKS = CHUNK_BYTES / BLOCK_SIZE;
/** I1: pieces of one range between two consecutive images. */
export const MAX_PIECES_PER_SPAN = 4;

/** `{disk}:{index}`: the range covering blocks [index·RANGE_BLOCKS, +RANGE_BLOCKS) of the disk. */
export type RangeId = string;
export const rangeId = (disk: string, index: number): RangeId => `${disk}:${index}`;
export function parseRangeId(id: RangeId): { disk: string; index: number } {
  const at = id.lastIndexOf(':');
  return { disk: id.slice(0, at), index: Number(id.slice(at + 1)) };
}

/** The full state of a range at `seq`: a stored chunk (LSCK), or all zeros (no object). */
export type ImageEntry =
  | { seq: number; zero?: false; key: string; sha256: string; crc32c: number; length: number }
  | { seq: number; zero: true };

/** Where a piece is (one ranged GET reads and verifies it) and what it holds. */
export interface PieceEntry {
  key: string;
  offset: number;
  length: number;
  /** The CRC-32C stored in the piece's last 4 bytes: over every byte of the piece before them (core/run-format.ts). */
  crc32c: number;
  seqLo: number;
  seqHi: number;
  /** Base64 of a RANGE_BLOCKS-bit bitmap: bit i set iff the piece holds a version of block i of the range. */
  blocks: string;
  /** Uncompressed bytes of its data versions (zero versions count 0). */
  dataBytes: number;
}

export interface RangeHistory {
  /** Ascending by seq. Below the first, the range reads from the base (if the pair has one) or as zeros. */
  images: ImageEntry[];
  /** Ascending by seqLo; spans disjoint; none straddles an image's seq. */
  pieces: PieceEntry[];
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  pairId: string;
  /** 0 is the implicit manifest of a pair that was never compacted. */
  version: number;
  /** The compactor lease generation that published it. */
  generation: number;
  publishedMs: number;
  /** Every batch ≤ it is in pieces or images; batches above it are read as uploaded. */
  frontierSeq: number;
  /** The seeded base: read below a range's first image (key of the base manifest, its seq). */
  base?: { key: string; seq: number };
  /** The retained points (ascending) it was planned with: the seqs ≤ frontierSeq it guarantees to read. */
  retained: number[];
  ranges: Record<RangeId, RangeHistory>;
}

/** The implicit version 0: nothing folded; the base (if any) below every range. */
export function initialManifest(pairId: string, base?: { key: string; seq: number }): Manifest {
  return { format: MANIFEST_FORMAT, pairId, version: 0, generation: 0, publishedMs: 0, frontierSeq: base?.seq ?? 0, base, retained: [], ranges: {} };
}

// ---- Codec and checks -------------------------------------------------------------------

/** The manifest object's bytes: JSON, UTF-8. */
export function encodeManifest(m: Manifest): Buffer {
  return Buffer.from(JSON.stringify(m), 'utf8');
}

/**
 * Parses and checks a stored manifest: its shape field by field, then every rule
 * `manifestFaults` states. The read bound (I1) is not a reason to refuse a manifest: one
 * over it still reads, only slower (checkManifest reports it). Throws CorruptHistoryError
 * naming `where` and the first field or rule that is wrong.
 */
export function decodeManifest(buf: Buffer, where: string): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new CorruptHistoryError(where, `not JSON: ${(err as Error).message}`);
  }
  const m = shape(raw, where);
  const faults = manifestFaults(m);
  if (faults.length > 0) throw new CorruptHistoryError(where, faults.slice(0, 3).join('; ') + (faults.length > 3 ? `; and ${faults.length - 3} more` : ''));
  return m;
}

/** Every rule a manifest breaks (empty when it is sound), the read bound I1 included: run before every publish. */
export function checkManifest(m: Manifest): string[] {
  return [...manifestFaults(m), ...boundFaults(m)];
}

/** Bytes of a piece's `blocks` bitmap. */
export const BITMAP_BYTES = RANGE_BLOCKS / 8;

/** Whether block `block` of the range is set in a piece's `blocks` (base64 of BITMAP_BYTES). */
export function bitmapHas(blocks: string, block: number): boolean {
  const bits = Buffer.from(blocks, 'base64');
  return (bits[block >> 3] & (1 << (block & 7))) !== 0;
}

const SHA256 = /^[0-9a-f]{64}$/;
const RUN_NAME = /^run-\d{4,}\.run$/;

/** Correctness rules (a manifest breaking one is refused on read). */
function manifestFaults(m: Manifest): string[] {
  const out: string[] = [];
  const pairRoot = `pairs/${m.pairId}/`;
  if (m.base && !m.base.key.startsWith(`${pairRoot}base/`)) out.push(`base ${m.base.key} is not under ${pairRoot}base/`);
  if (m.base && m.base.seq > m.frontierSeq) out.push(`base seq ${m.base.seq} is above the frontier ${m.frontierSeq}`);
  m.retained.forEach((p, i) => {
    if (i > 0 && p <= m.retained[i - 1]) out.push(`retained: ${p} does not ascend from ${m.retained[i - 1]}`);
    if (p > m.frontierSeq) out.push(`retained: ${p} is above the frontier ${m.frontierSeq}`);
  });
  if (m.version > 0 && m.retained[m.retained.length - 1] !== m.frontierSeq) out.push(`retained does not end with the frontier ${m.frontierSeq} (the cut is a retained point)`);
  /** Per run object: [offset, end, who] of each piece in it (pieces of one run must not overlap). */
  const inRuns = new Map<string, [number, number, string][]>();
  for (const [id, r] of Object.entries(m.ranges)) {
    const { disk, index } = parseRangeId(id);
    if (!passes(checkDiskName, disk) || !Number.isSafeInteger(index) || index < 0 || rangeId(disk, index) !== id) out.push(`range id '${id}' is not {disk}:{index}`);
    const at = `range ${id}`;
    r.images.forEach((img, i) => {
      if (i > 0 && img.seq <= r.images[i - 1].seq) out.push(`${at}: image ${i} at seq ${img.seq} does not ascend from ${r.images[i - 1].seq}`);
      if (img.seq > m.frontierSeq) out.push(`${at}: image ${i} at seq ${img.seq} is above the frontier ${m.frontierSeq}`);
      if (img.zero) return;
      const history = parseHistoryKey(img.key);
      const underPair = img.key === baseChunkKey(m.pairId, img.sha256) || (history?.pair === m.pairId && history.name === `image-${img.sha256}.chunk`);
      if (!underPair) out.push(`${at}: image ${i} key ${img.key} is neither ${pairRoot}base/chunks/${img.sha256} nor a history image-${img.sha256}.chunk of the pair`);
    });
    r.pieces.forEach((p, i) => {
      const who = `${at}: piece ${i} (${p.key}@${p.offset}, seqs [${p.seqLo}, ${p.seqHi}])`;
      if (p.seqLo > p.seqHi) out.push(`${who}: empty span`);
      if (p.seqHi > m.frontierSeq) out.push(`${who}: above the frontier ${m.frontierSeq}`);
      const prev = r.pieces[i - 1];
      if (prev && p.seqLo <= prev.seqHi) out.push(`${who}: does not start above piece ${i - 1}'s span [${prev.seqLo}, ${prev.seqHi}]`);
      const straddled = r.images.find((img) => p.seqLo <= img.seq && img.seq < p.seqHi);
      if (straddled) out.push(`${who}: straddles the image at seq ${straddled.seq}`);
      if (Buffer.from(p.blocks, 'base64').length !== BITMAP_BYTES) out.push(`${who}: blocks bitmap is ${Buffer.from(p.blocks, 'base64').length} bytes, not ${BITMAP_BYTES}`);
      const history = parseHistoryKey(p.key);
      if (history?.pair !== m.pairId || !RUN_NAME.test(history.name)) out.push(`${who}: key is not a run-NNNN.run under ${pairRoot}history/`);
      const list = inRuns.get(p.key) ?? [];
      list.push([p.offset, p.offset + p.length, who]);
      inRuns.set(p.key, list);
    });
  }
  for (const list of inRuns.values()) {
    list.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < list.length; i++) if (list[i][0] < list[i - 1][1]) out.push(`${list[i][2]}: overlaps the bytes of ${list[i - 1][2]}`);
  }
  return out;
}

/** I1: at most MAX_PIECES_PER_SPAN pieces of a range between two consecutive images (or below its first). */
function boundFaults(m: Manifest): string[] {
  const out: string[] = [];
  for (const [id, r] of Object.entries(m.ranges)) {
    const perSpan = new Map<number, number>();
    for (const p of r.pieces) {
      // The span a piece is in: the newest image at or below its seqLo (-1: below the first).
      let span = -1;
      for (const img of r.images) if (img.seq <= p.seqLo) span = img.seq;
      perSpan.set(span, (perSpan.get(span) ?? 0) + 1);
    }
    for (const [span, n] of perSpan) {
      if (n > MAX_PIECES_PER_SPAN) out.push(`range ${id}: ${n} pieces ${span < 0 ? 'below its first image' : `above its image at seq ${span}`}, over I1's ${MAX_PIECES_PER_SPAN}`);
    }
  }
  return out;
}

/** Whether `check` (one of core/keys.ts's, which throw) accepts `s`. */
const passes = (check: (s: string) => string, s: string): boolean => {
  try {
    check(s);
    return true;
  } catch {
    return false;
  }
};

// The shape of a parsed manifest, field by field: each failure names the field.

type Bad = (field: string, what: string) => CorruptHistoryError;

function shape(raw: unknown, where: string): Manifest {
  const bad: Bad = (field, what) => new CorruptHistoryError(where, `${field}: ${what}`);
  const o = obj(raw, 'manifest', bad);
  if (o.format !== MANIFEST_FORMAT) throw bad('format', `${JSON.stringify(o.format)}, this build reads ${MANIFEST_FORMAT}`);
  if (typeof o.pairId !== 'string' || !passes(checkPairId, o.pairId)) throw bad('pairId', `${JSON.stringify(o.pairId)} is not a pair id`);
  const m: Manifest = {
    format: MANIFEST_FORMAT,
    pairId: o.pairId,
    version: int(o.version, 'version', bad),
    generation: int(o.generation, 'generation', bad),
    publishedMs: int(o.publishedMs, 'publishedMs', bad),
    frontierSeq: int(o.frontierSeq, 'frontierSeq', bad),
    retained: arr(o.retained, 'retained', bad).map((v, i) => int(v, `retained[${i}]`, bad)),
    ranges: {},
  };
  if (o.base !== undefined) {
    const b = obj(o.base, 'base', bad);
    m.base = { key: str(b.key, 'base.key', bad), seq: int(b.seq, 'base.seq', bad) };
  }
  for (const [id, rv] of Object.entries(obj(o.ranges, 'ranges', bad))) {
    const f = `ranges["${id}"]`;
    const r = obj(rv, f, bad);
    m.ranges[id] = {
      images: arr(r.images, `${f}.images`, bad).map((v, i) => image(v, `${f}.images[${i}]`, bad)),
      pieces: arr(r.pieces, `${f}.pieces`, bad).map((v, i) => piece(v, `${f}.pieces[${i}]`, bad)),
    };
  }
  return m;
}

function image(v: unknown, f: string, bad: Bad): ImageEntry {
  const o = obj(v, f, bad);
  const seq = int(o.seq, `${f}.seq`, bad);
  if (o.zero === true) {
    if (o.key !== undefined) throw bad(f, 'a zero image has no key');
    return { seq, zero: true };
  }
  if (o.zero !== undefined && o.zero !== false) throw bad(`${f}.zero`, `${JSON.stringify(o.zero)} is not a boolean`);
  const sha256 = str(o.sha256, `${f}.sha256`, bad);
  if (!SHA256.test(sha256)) throw bad(`${f}.sha256`, `'${sha256}' is not 64 lower-case hex digits`);
  const length = int(o.length, `${f}.length`, bad);
  if (length === 0 || length % BLOCK_SIZE !== 0 || length > CHUNK_BYTES) throw bad(`${f}.length`, `${length} is not a positive multiple of ${BLOCK_SIZE} up to ${CHUNK_BYTES}`);
  return { seq, key: str(o.key, `${f}.key`, bad), sha256, crc32c: u32(o.crc32c, `${f}.crc32c`, bad), length };
}

function piece(v: unknown, f: string, bad: Bad): PieceEntry {
  const o = obj(v, f, bad);
  const length = int(o.length, `${f}.length`, bad);
  if (length === 0) throw bad(`${f}.length`, 'is 0');
  const blocks = str(o.blocks, `${f}.blocks`, bad);
  if (!BASE64.test(blocks)) throw bad(`${f}.blocks`, 'is not base64');
  return {
    key: str(o.key, `${f}.key`, bad),
    offset: int(o.offset, `${f}.offset`, bad),
    length,
    crc32c: u32(o.crc32c, `${f}.crc32c`, bad),
    seqLo: int(o.seqLo, `${f}.seqLo`, bad),
    seqHi: int(o.seqHi, `${f}.seqHi`, bad),
    blocks,
    dataBytes: int(o.dataBytes, `${f}.dataBytes`, bad),
  };
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function obj(v: unknown, f: string, bad: Bad): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(f, 'is not an object');
  return v as Record<string, unknown>;
}
function arr(v: unknown, f: string, bad: Bad): unknown[] {
  if (!Array.isArray(v)) throw bad(f, 'is not an array');
  return v;
}
function str(v: unknown, f: string, bad: Bad): string {
  if (typeof v !== 'string' || v.length === 0) throw bad(f, 'is not a non-empty string');
  return v;
}
function int(v: unknown, f: string, bad: Bad): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(f, `${JSON.stringify(v)} is not a non-negative integer`);
  return v;
}
function u32(v: unknown, f: string, bad: Bad): number {
  const n = int(v, f, bad);
  if (n > 0xffffffff) throw bad(f, `${n} is not a 32-bit checksum`);
  return n;
}
