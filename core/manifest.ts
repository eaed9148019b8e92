// The manifest: which objects make up a pair's history (images and pieces per range, the
// frontier above which batches are read as they were uploaded) and which retained points it
// was planned for. Versioned; published by one conditional transaction (docs/design.md,
// "History"). Types and constants here; the codec and checks join them in this module.

import { gunzipSync, gzipSync } from 'node:zlib';
import { BLOCK_SIZE } from './batch-format';
import { CHUNK_BYTES } from './chunk-format';
import { crc32c } from './crc32c';
import { CorruptHistoryError } from './errors';
import { baseChunkKey, checkDiskName, checkPairId, parseHistoryKey } from './keys';

/** The format a unit writes: 2, a head and per-group parts. Format 1 (one JSON object) still decodes. */
export const MANIFEST_FORMAT = 2;
/** Ranges of one disk per manifest part: ranges `[g·16, g·16 + 16)` are group `{disk}:{g}` (64 MiB of disk). */
export const RANGES_PER_PART = 16;
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

/** One part of a format-2 manifest: the ranges of one group, in their own object (gzip of JSON). */
export interface ManifestPart {
  /** `{disk}:{g}`: the ranges `{disk}:{g·RANGES_PER_PART …}` (partGroup). */
  group: string;
  /** A history `part-NNNN.json.gz` of the pair, written by the unit that first wrote this content; reused by later versions while the group is unchanged. */
  key: string;
  /** Bytes of the object (gzip) and their CRC-32C: checked before it is inflated. */
  length: number;
  crc32c: number;
}

export interface Manifest {
  /** 1: one JSON object (read only); 2: a head naming its parts (`parts`). */
  format: 1 | typeof MANIFEST_FORMAT;
  /** Format 2: the part objects `ranges` was read from or written to (absent before a unit encodes it, and in format 1). */
  parts?: ManifestPart[];
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

/** The group of a range: its disk and its index / RANGES_PER_PART. */
export function partGroup(id: RangeId): string {
  const { disk, index } = parseRangeId(id);
  return `${disk}:${Math.floor(index / RANGES_PER_PART)}`;
}

/** The objects of a format-2 manifest: its head and the part bodies to write (by key). */
export interface EncodedManifest {
  head: Buffer;
  bodies: Map<string, Buffer>;
  parts: ManifestPart[];
}

/**
 * Encodes `m` as a head and parts. A group not in `changed` whose part `prev` has (the input
 * manifest's parts) keeps that part's object: no PUT. Every other group with ranges gets a new
 * body under `prefix` (`part-NNNN.json.gz`, numbered in group order). Callers pass as
 * changed every group holding a range the unit planned (only those can differ from the input).
 */
export function encodeManifest(m: Manifest, prefix: string, changed: ReadonlySet<string>, prev: readonly ManifestPart[] = []): EncodedManifest {
  const groups = new Map<string, RangeId[]>();
  for (const id of Object.keys(m.ranges).sort()) {
    const g = partGroup(id);
    const list = groups.get(g);
    if (list) list.push(id);
    else groups.set(g, [id]);
  }
  const old = new Map(prev.map((p) => [p.group, p]));
  const bodies = new Map<string, Buffer>();
  const parts: ManifestPart[] = [];
  for (const g of [...groups.keys()].sort()) {
    const reuse = old.get(g);
    if (reuse && !changed.has(g)) {
      parts.push(reuse);
      continue;
    }
    const ranges: Record<RangeId, RangeHistory> = {};
    for (const id of groups.get(g)!) ranges[id] = m.ranges[id];
    const body = gzipSync(Buffer.from(JSON.stringify({ format: MANIFEST_FORMAT, pairId: m.pairId, group: g, ranges }), 'utf8'));
    const key = `${prefix}part-${String(bodies.size).padStart(4, '0')}.json.gz`;
    bodies.set(key, body);
    parts.push({ group: g, key, length: body.length, crc32c: crc32c(body) });
  }
  const head = { format: MANIFEST_FORMAT, pairId: m.pairId, version: m.version, generation: m.generation, publishedMs: m.publishedMs, frontierSeq: m.frontierSeq, base: m.base, retained: m.retained, parts };
  return { head: gzipSync(Buffer.from(JSON.stringify(head), 'utf8')), bodies, parts };
}

/**
 * A format-1 manifest object (one JSON object holding every range), as units wrote before
 * format 2. Still decoded; written only where one self-contained object is wanted (tests,
 * tooling), never by a unit.
 */
export function encodeManifestV1(m: Manifest): Buffer {
  const { parts: _parts, ...rest } = m;
  return Buffer.from(JSON.stringify({ ...rest, format: 1 }), 'utf8');
}

/** The part keys a stored manifest head names (none for format 1): what a reader GETs before decodeManifest. */
export function manifestPartKeys(buf: Buffer, where: string): ManifestPart[] {
  const o = parseJson(headJson(buf, where), where);
  return o.format === MANIFEST_FORMAT ? arr(o.parts, 'parts', badAt(where)).map((v, i) => part(v, `parts[${i}]`, badAt(where))) : [];
}

/**
 * Parses and checks a stored manifest: its shape field by field, then every rule
 * `manifestFaults` states. Format 2: `bodies` holds each part's object by key (as read): its
 * length and CRC-32C are checked against the head, then it is inflated and every range in it
 * must be of its group. The read bound (I1) is not a reason to refuse a manifest: one
 * over it still reads, only slower (checkManifest reports it). Throws CorruptHistoryError
 * naming `where` (or the part's key) and the first field or rule that is wrong.
 */
export function decodeManifest(buf: Buffer, where: string, bodies: ReadonlyMap<string, Buffer> = new Map()): Manifest {
  const m = shape(parseJson(headJson(buf, where), where), where);
  for (const p of m.parts ?? []) {
    const body = bodies.get(p.key);
    if (!body) throw new CorruptHistoryError(where, `part ${p.group} (${p.key}) was not read`);
    if (body.length !== p.length || crc32c(body) !== p.crc32c) throw new CorruptHistoryError(p.key, `part ${p.group} of ${where}: ${body.length} bytes with CRC-32C ${crc32c(body)}, the head says ${p.length} bytes with ${p.crc32c}`);
    let inflated: Buffer;
    try {
      inflated = gunzipSync(body);
    } catch (err) {
      throw new CorruptHistoryError(p.key, `part ${p.group} is not gzip: ${(err as Error).message}`);
    }
    const bad = badAt(p.key);
    const o = obj(parseJson(inflated, p.key), 'part', bad);
    if (o.format !== MANIFEST_FORMAT || o.pairId !== m.pairId || o.group !== p.group) throw bad('part', `is format ${JSON.stringify(o.format)} of pair ${JSON.stringify(o.pairId)}, group ${JSON.stringify(o.group)}; the head ${where} names format ${MANIFEST_FORMAT} of '${m.pairId}', group ${p.group}`);
    for (const [id, r] of Object.entries(rangesOf(o.ranges, bad))) {
      if (partGroup(id) !== p.group) throw bad(`ranges["${id}"]`, `is not in group ${p.group}`);
      if (m.ranges[id]) throw bad(`ranges["${id}"]`, 'is in two parts');
      m.ranges[id] = r;
    }
  }
  const faults = manifestFaults(m);
  if (faults.length > 0) throw new CorruptHistoryError(where, faults.slice(0, 3).join('; ') + (faults.length > 3 ? `; and ${faults.length - 3} more` : ''));
  return m;
}

/** A head's JSON: format 2 heads are gzip (they start with its magic 1f 8b), format 1 objects plain JSON (they start with `{`). */
function headJson(buf: Buffer, where: string): Buffer {
  if (buf.length < 2 || buf[0] !== 0x1f || buf[1] !== 0x8b) return buf;
  try {
    return gunzipSync(buf);
  } catch (err) {
    throw new CorruptHistoryError(where, `not gzip: ${(err as Error).message}`);
  }
}

function parseJson(buf: Buffer, where: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new CorruptHistoryError(where, `not JSON: ${(err as Error).message}`);
  }
  return obj(raw, 'manifest', badAt(where));
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
const PART_NAME = /^part-\d{4,}\.json\.gz$/;

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
  for (const p of m.parts ?? []) {
    const history = parseHistoryKey(p.key);
    if (history?.pair !== m.pairId || !PART_NAME.test(history.name)) out.push(`part ${p.group}: key ${p.key} is not a part-NNNN.json.gz under ${pairRoot}history/`);
  }
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

const badAt = (where: string): Bad => (field, what) => new CorruptHistoryError(where, `${field}: ${what}`);

/** The head's fields (format 2: ranges empty, filled from the parts; format 1: ranges inline). */
function shape(o: Record<string, unknown>, where: string): Manifest {
  const bad = badAt(where);
  if (o.format !== 1 && o.format !== MANIFEST_FORMAT) throw bad('format', `${JSON.stringify(o.format)}, this build reads 1 and ${MANIFEST_FORMAT}`);
  if (typeof o.pairId !== 'string' || !passes(checkPairId, o.pairId)) throw bad('pairId', `${JSON.stringify(o.pairId)} is not a pair id`);
  const m: Manifest = {
    format: o.format as Manifest['format'],
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
  if (o.format === 1) {
    m.ranges = rangesOf(o.ranges, bad);
    return m;
  }
  if (o.ranges !== undefined) throw bad('ranges', 'a format-2 head holds parts, not ranges');
  m.parts = arr(o.parts, 'parts', bad).map((v, i) => part(v, `parts[${i}]`, bad));
  const groups = m.parts.map((p) => p.group);
  if (new Set(groups).size !== groups.length) throw bad('parts', 'name a group twice');
  return m;
}

function rangesOf(v: unknown, bad: Bad): Record<RangeId, RangeHistory> {
  const out: Record<RangeId, RangeHistory> = {};
  for (const [id, rv] of Object.entries(obj(v, 'ranges', bad))) {
    const f = `ranges["${id}"]`;
    const r = obj(rv, f, bad);
    out[id] = {
      images: arr(r.images, `${f}.images`, bad).map((x, i) => image(x, `${f}.images[${i}]`, bad)),
      pieces: arr(r.pieces, `${f}.pieces`, bad).map((x, i) => piece(x, `${f}.pieces[${i}]`, bad)),
    };
  }
  return out;
}

function part(v: unknown, f: string, bad: Bad): ManifestPart {
  const o = obj(v, f, bad);
  return { group: str(o.group, `${f}.group`, bad), key: str(o.key, `${f}.key`, bad), length: int(o.length, `${f}.length`, bad), crc32c: u32(o.crc32c, `${f}.crc32c`, bad) };
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
