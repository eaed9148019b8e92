// One compaction unit of a pair (docs/design.md, "History", "A compaction unit"): under the
// compactor lease, fold the L0 batches up to the cut into pieces, merge and image per the
// plan (core/compaction-plan.ts), write the runs and images under a fresh prefix, read every
// one back and verify it, write the manifest, and publish it with one conditional
// transaction. A unit that fails or loses its lease publishes nothing: the old manifest stays.

import { BLOCK_SIZE, EXTENT_FLAGS, decodeBatch, decodeExtent, type DecodedBatch } from '../core/batch-format';
import { CHUNK_BYTES, decodeChunk, encodeChunk, isAllZero } from '../core/chunk-format';
import { DEFAULT_PLAN_CONFIG, applyUnit, pieceId, planUnit, removedKeys, type L0Summary, type PlanConfig, type RangePlan, type RangeResult, type UnitPlan } from '../core/compaction-plan';
import { BackupError, CorruptHistoryError, UnknownPairError } from '../core/errors';
import { keepVisible, type KeptPart } from '../core/keep';
import { baseChunkKey, historyPrefix } from '../core/keys';
import { RANGE_BLOCKS, checkManifest, encodeManifest, parseRangeId, partGroup, rangeId, type ImageEntry, type Manifest, type PieceEntry, type RangeId } from '../core/manifest';
import type { Pair } from '../core/model';
import { MAX_PIECE_PAYLOAD, decodePiece, encodePiece, pieceBlocksBitmap, pieceVersionData, type DecodedPiece, type PieceVersionInput } from '../core/run-format';
import { parseBaseManifest, type BaseManifest } from '../core/seed-manifests';
import { checkAppliedBatch } from './applied-batch';
import { mapLimit } from './concurrency';
import type { CompactorLease, HistoryIndex, ObjectStore, ReplicaIndex } from './ports';
import { manifestOf, PartCache, type ManifestRead } from './history-manifest';

export interface CompactorDeps {
  store: ObjectStore;
  index: ReplicaIndex;
  history: HistoryIndex;
}

/** Where a unit stops; a test makes it crash there by throwing. */
export type CompactStep = 'planned' | 'written' | 'verified' | 'manifest';

export interface CompactOptions extends Partial<PlanConfig> {
  /** Who holds the lease (e.g. the workflow execution). */
  holder: string;
  /** The clock (default Date.now); a number is a clock stopped there. */
  nowMs?: number | (() => number);
  /** Compactor lease time to live (default 5 min); renewed between steps. */
  leaseTtlMs?: number;
  /** L0 batches one unit folds at most (default 32): the cut is the newest RP within them. */
  maxBatches?: number;
  /** Objects read and ranges built at a time (default 8). */
  concurrency?: number;
  /** A run object is cut once it holds this many bytes (default 32 MiB). */
  runBytes?: number;
  /** Called after each step; what it throws ends the unit there (crash injection in tests). */
  onStep?: (step: CompactStep) => void | Promise<void>;
}

export interface CompactResult {
  published: boolean;
  /** Why nothing was published, when not. */
  reason?: string;
  /** The version in force after the unit. */
  version: number;
  frontierSeq: number;
  foldedSeqs: number[];
  /** Objects and bytes PUT (bytes: runs and images; imageBytes: images alone). */
  written: { runs: number; images: number; bytes: number; imageBytes: number };
  removedKeys: string[];
  /** Bytes of objects read: batches, pieces, images and base chunks. */
  readBytes: number;
}

/** A version of some blocks of one range, as a unit handles it: where its data comes from. */
interface Version {
  seq: number;
  /** Within the range. */
  blockIndex: number;
  blockCount: number;
  zero: boolean;
  /** The blocks' data (verified); only for data versions. */
  data: () => Buffer;
}

/** The manifest in force (replica/history-manifest.ts: version 0 is implicit, the pair's base if any, nothing folded). */
export async function currentManifest(store: ObjectStore, history: HistoryIndex, pair: Pair): Promise<ManifestRead> {
  return manifestOf(store, pair, await history.getHistory(pair.pairId), PARTS);
}

/** Manifest parts this process read or wrote: the next unit GETs only the head and the parts it has not seen. */
const PARTS = new PartCache();

export async function compactOnce(deps: CompactorDeps, pairId: string, opts: CompactOptions): Promise<CompactResult> {
  const clock = opts.nowMs ?? Date.now;
  const now = typeof clock === 'number' ? () => clock : clock;
  const ttl = opts.leaseTtlMs ?? 5 * 60_000;
  const concurrency = opts.concurrency ?? 8;
  const cfg: PlanConfig = {
    imageBytes: opts.imageBytes ?? DEFAULT_PLAN_CONFIG.imageBytes,
    maxPiecesPerSpan: opts.maxPiecesPerSpan ?? DEFAULT_PLAN_CONFIG.maxPiecesPerSpan,
    deadRewriteRatio: opts.deadRewriteRatio ?? DEFAULT_PLAN_CONFIG.deadRewriteRatio,
    recheckLoss: opts.recheckLoss ?? DEFAULT_PLAN_CONFIG.recheckLoss,
    mergeRatio: opts.mergeRatio ?? DEFAULT_PLAN_CONFIG.mergeRatio,
    smallSpanBytes: opts.smallSpanBytes ?? DEFAULT_PLAN_CONFIG.smallSpanBytes,
    smallSpanSeqs: opts.smallSpanSeqs ?? DEFAULT_PLAN_CONFIG.smallSpanSeqs,
    smallSpanPieces: opts.smallSpanPieces ?? DEFAULT_PLAN_CONFIG.smallSpanPieces,
  };
  const { store, index, history } = deps;
  const written = { runs: 0, images: 0, bytes: 0, imageBytes: 0 };
  const stats = { readBytes: 0 };
  const lease = await history.acquireCompactor(pairId, opts.holder, now(), ttl);
  const head0 = await history.getHistory(pairId);
  const idle = (reason: string, version = head0.version, frontierSeq = head0.frontierSeq): CompactResult => ({ published: false, reason, version, frontierSeq, foldedSeqs: [], written, removedKeys: [], readBytes: stats.readBytes });
  if (!lease) return idle('another unit holds the compactor lease');
  let held: CompactorLease | undefined = lease;
  const renew = async (): Promise<boolean> => {
    if (held && !(await history.renewCompactor(pairId, held, now(), ttl))) held = undefined;
    return held !== undefined;
  };
  try {
    const pair = await index.getPair(pairId);
    if (!pair) throw new UnknownPairError(pairId);
    const { manifest: m, key: oldKey } = await currentManifest(store, history, pair);
    const f = m.frontierSeq;
    // The cut: the newest RP (no RP is ever made at or below it later), or the maxBatches-th
    // batch above the frontier if that is older (a backlog is folded over several units).
    const batches = (await index.batchesAfter(pairId, f, opts.maxBatches ?? 32)).filter((b) => b.seq <= pair.watermark);
    const limit = batches.length > 0 ? batches[batches.length - 1].seq : f;
    // Nothing to fold (no RP above the frontier): a compacted pair still prunes what RPs that
    // expired since its last unit alone saw (a prune-only unit, cut = frontier), if anything.
    const pruneOnly = Math.min(pair.lastRpSeq ?? 0, limit) <= f;
    if (pruneOnly && m.version === 0) return idle(`no recovery point above the frontier ${f} (newest RP ${pair.lastRpSeq ?? 'none'}): nothing to fold`, m.version, f);
    const cut = pruneOnly ? f : Math.min(pair.lastRpSeq ?? 0, limit);
    const rps = (await index.listRecoveryPoints(pairId, Math.floor(now() / 1000))).map((r) => r.seq);
    const folded = batches.filter((b) => b.seq <= cut);
    const leases = await history.listReaderLeases(pairId, now());
    const points = [...rps, ...leases.map((l) => l.seq), cut];

    // The L0: every folded batch read whole and verified; its versions per range.
    const l0 = new Map<RangeId, Version[]>();
    const bodies = await mapLimit(folded, concurrency, async (b) => {
      const body = await store.get(b.key, undefined, undefined, b.versionId);
      stats.readBytes += body.length;
      checkAppliedBatch(body, b);
      return body;
    });
    const summaries: L0Summary[] = folded.map((b, i) => {
      const batch = decodeBatch(bodies[i], b.key);
      if (batch.header.seq !== b.seq) throw new CorruptHistoryError(b.key, `holds seq ${batch.header.seq}, registered as ${b.seq}`);
      return { seq: b.seq, key: b.key, ranges: addBatchVersions(l0, bodies[i], batch, b.key) };
    });
    if (!(await renew())) return idle('lost the compactor lease');

    const plan = planUnit(m, summaries, points, cut, cfg, await runSizes(store, m, concurrency));
    if (pruneOnly && plan.ranges.length === 0) return idle(`nothing to fold or prune above the frontier ${f}`, m.version, f);
    await opts.onStep?.('planned');
    const prefix = historyPrefix(pairId, m.version + 1);
    const ctx: UnitContext = { store, pair, m, plan, l0, stats, pieces: new Map(), runs: new RunWriter(store, prefix, opts.runBytes ?? 32 * 1024 * 1024, written), images: new Map() };
    const results = new Map<RangeId, RangeResult>();
    let renewedMs = now();
    let lost = false;
    // Ranges are built `concurrency` at a time; the lease is renewed as they finish.
    await mapLimit(plan.ranges, concurrency, async (r) => {
      if (lost) return;
      results.set(r.range, await buildRange(ctx, r, cfg));
      if (now() - renewedMs > ttl / 3) {
        renewedMs = now();
        if (!(await renew())) lost = true;
      }
    });
    if (lost) return idle('lost the compactor lease');
    await ctx.runs.flush();
    await mapLimit([...ctx.images], concurrency, async ([key, body]) => {
      await store.put(key, body);
      written.images++;
      written.bytes += body.length;
      written.imageBytes += body.length;
    });
    await opts.onStep?.('written');
    if (!(await renew())) return idle('lost the compactor lease');

    // Read back and verify every object written before any manifest names it.
    await verifyWritten(ctx, concurrency);
    await opts.onStep?.('verified');

    const publishedMs = now();
    const next = applyUnit(m, plan, results, { generation: lease.gen, publishedMs });
    const faults = checkManifest(next);
    if (faults.length > 0) throw new CorruptHistoryError(`${prefix}manifest.json`, `the unit's manifest breaks its rules: ${faults.slice(0, 3).join('; ')}`);
    const manifestKey = `${prefix}manifest.json`;
    // Format 2: a head and per-group parts; a group no planned range is in keeps its part object.
    const encoded = encodeManifest(next, prefix, new Set(plan.ranges.map((r) => partGroup(r.range))), m.parts);
    next.parts = encoded.parts;
    // Parts are read back like runs and images before the head names them.
    await mapLimit([...encoded.bodies], concurrency, async ([key, body]) => {
      await store.put(key, body);
      const back = await store.get(key);
      if (!back.equals(body)) throw new CorruptHistoryError(key, `manifest part read back is not what was written (${back.length} bytes read, ${body.length} written)`);
      PARTS.set(key, body);
    });
    await store.put(manifestKey, encoded.head);
    await opts.onStep?.('manifest');
    const removed = [...(oldKey ? [oldKey] : []), ...removedKeys(m, next), ...plan.foldedKeys];
    if (!(await renew())) return idle('lost the compactor lease');
    const ok = await history.publish(pairId, held!, m.version, { version: next.version, manifestKey, publishedMs, removedKeys: removed, foldedSeqs: plan.foldedSeqs }, cut, now());
    if (!ok) return idle('the lease or the version moved before publish');
    return { published: true, version: next.version, frontierSeq: cut, foldedSeqs: plan.foldedSeqs, written, removedKeys: removed, readBytes: stats.readBytes };
  } finally {
    if (held) await history.releaseCompactor(pairId, held).catch(() => {});
  }
}

/** Object sizes of run keys: objects are never overwritten, so a size once read holds for the process's life. */
const RUN_SIZES = new Map<string, number>();

/** The size of every run object the manifest references (HEAD once per run per process). */
async function runSizes(store: ObjectStore, m: Manifest, concurrency: number): Promise<Map<string, number>> {
  const keys = [...new Set(Object.values(m.ranges).flatMap((r) => r.pieces.map((q) => q.key)))];
  await mapLimit(keys.filter((k) => !RUN_SIZES.has(k)), concurrency, async (key) => {
    const size = await store.size(key);
    if (size !== undefined) RUN_SIZES.set(key, size);
  });
  return new Map(keys.filter((k) => RUN_SIZES.has(k)).map((k) => [k, RUN_SIZES.get(k)!]));
}

/** Adds a decoded batch's versions to `l0`, split per range; returns the data bytes it writes per range. */
function addBatchVersions(l0: Map<RangeId, Version[]>, body: Buffer, batch: DecodedBatch, key: string): Map<RangeId, number> {
  const bytes = new Map<RangeId, number>();
  for (const [i, e] of batch.extents.entries()) {
    const disk = batch.header.disks[e.disk];
    const zero = (e.flags & EXTENT_FLAGS.ZERO) !== 0;
    let decoded: Buffer | undefined;
    const all = (): Buffer => (decoded ??= decodeExtent(e, body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), `${key} extent ${i}`));
    for (let b = e.blockIndex; b < e.blockIndex + e.blockCount; ) {
      const index = Math.floor(b / RANGE_BLOCKS);
      const end = Math.min(e.blockIndex + e.blockCount, (index + 1) * RANGE_BLOCKS);
      const id = rangeId(disk, index);
      const skip = b - e.blockIndex;
      const count = end - b;
      const list = l0.get(id) ?? [];
      list.push({ seq: batch.header.seq, blockIndex: b - index * RANGE_BLOCKS, blockCount: count, zero, data: () => all().subarray(skip * BLOCK_SIZE, (skip + count) * BLOCK_SIZE) });
      l0.set(id, list);
      bytes.set(id, (bytes.get(id) ?? 0) + (zero ? 0 : count * BLOCK_SIZE));
      b = end;
    }
  }
  return bytes;
}

interface UnitContext {
  store: ObjectStore;
  pair: Pair;
  m: Manifest;
  plan: UnitPlan;
  l0: Map<RangeId, Version[]>;
  stats: { readBytes: number };
  /** The pair's base manifest, read once when a range first needs it. */
  base?: Promise<BaseManifest>;
  /** Pieces read by the unit, by pieceId. */
  pieces: Map<string, Promise<{ buf: Buffer; decoded: DecodedPiece }>>;
  runs: RunWriter;
  /** Image objects to write, by key. */
  images: Map<string, Buffer>;
}

/** Reads and verifies one piece of the input manifest (once per unit). */
function readPiece(ctx: UnitContext, q: PieceEntry): Promise<{ buf: Buffer; decoded: DecodedPiece }> {
  const id = pieceId(q);
  let got = ctx.pieces.get(id);
  if (!got) {
    got = ctx.store.get(q.key, { start: q.offset, end: q.offset + q.length }).then((buf) => {
      ctx.stats.readBytes += buf.length;
      return { buf, decoded: decodePiece(buf, id, q.crc32c) };
    });
    ctx.pieces.set(id, got);
  }
  return got;
}

async function pieceVersions(ctx: UnitContext, q: PieceEntry): Promise<Version[]> {
  const { buf, decoded } = await readPiece(ctx, q);
  const where = pieceId(q);
  return decoded.entries.map((e) => {
    let data: Buffer | undefined;
    return { seq: e.seq, blockIndex: e.blockIndex, blockCount: e.blockCount, zero: (e.flags & EXTENT_FLAGS.ZERO) !== 0, data: () => (data ??= pieceVersionData(buf, e, where)) };
  });
}

/** Bytes of a range: CHUNK_BYTES, or less at the end of its disk. */
function rangeBytes(ctx: UnitContext, id: RangeId): number {
  const { disk, index } = parseRangeId(id);
  const spec = ctx.pair.disks.find((d) => d.name === disk);
  if (!spec) throw new CorruptHistoryError(id, `names disk '${disk}', which pair '${ctx.pair.pairId}' does not have`);
  return Math.min(CHUNK_BYTES, spec.sizeBytes - index * CHUNK_BYTES);
}

/** The data of an image (or, below a range's first image, of its base chunk, or zeros). */
async function imageData(ctx: UnitContext, id: RangeId, img: ImageEntry | undefined): Promise<Buffer> {
  const size = rangeBytes(ctx, id);
  if (img?.zero) return Buffer.alloc(size);
  if (img) return readChunk(ctx, img.key, { index: parseRangeId(id).index, sha256: img.sha256, crc32c: img.crc32c, length: img.length });
  const chunk = await baseChunk(ctx, id);
  return chunk ? readChunk(ctx, chunk.key, chunk) : Buffer.alloc(size);
}

async function baseChunk(ctx: UnitContext, id: RangeId): Promise<{ key: string; index: number; sha256: string; crc32c: number; length: number } | undefined> {
  const key = ctx.m.base?.key;
  if (!key) return undefined;
  ctx.base ??= ctx.store.get(key).then((body) => {
    ctx.stats.readBytes += body.length;
    return parseBaseManifest(body.toString('utf8'), key);
  });
  const { disk, index } = parseRangeId(id);
  const c = (await ctx.base).disks.find((d) => d.name === disk)?.chunks.find((x) => x[0] === index);
  return c ? { key: baseChunkKey(ctx.pair.pairId, c[1]), index, sha256: c[1], crc32c: c[2], length: c[3] } : undefined;
}

async function readChunk(ctx: UnitContext, key: string, ref: { index: number; sha256: string; crc32c: number; length: number }): Promise<Buffer> {
  const body = await ctx.store.get(key);
  ctx.stats.readBytes += body.length;
  try {
    return decodeChunk(body, ref, key);
  } catch (err) {
    if (err instanceof BackupError) throw new CorruptHistoryError(err.where, err.reason);
    throw err;
  }
}

/** Applies versions (ascending by seq) onto a range's data. */
function overlay(data: Buffer, versions: Version[]): void {
  for (const v of [...versions].sort((a, b) => a.seq - b.seq)) {
    const at = v.blockIndex * BLOCK_SIZE;
    if (v.zero) data.fill(0, at, at + v.blockCount * BLOCK_SIZE);
    else v.data().copy(data, at);
  }
}

/** Builds what the plan says for one range: new images, built pieces, re-checked pieces rewritten when mostly dead. */
async function buildRange(ctx: UnitContext, r: RangePlan, cfg: PlanConfig): Promise<RangeResult> {
  const { m, plan } = ctx;
  const old = m.ranges[r.range] ?? { images: [], pieces: [] };
  const l0 = ctx.l0.get(r.range) ?? [];
  const result: RangeResult = { images: [], pieces: [], replaced: [] };
  // Images: the range's state at each new image's seq, read as the input manifest reads it (all above its frontier).
  let state: { seq: number; data: Buffer } | undefined;
  for (const p of r.newImages) {
    if (!state) {
      const img = [...old.images].reverse().find((i) => i.seq <= p);
      const floor = img?.seq ?? -1;
      const data = Buffer.from(await imageData(ctx, r.range, img));
      const below: Version[] = [];
      for (const q of old.pieces.filter((x) => x.seqLo <= p && x.seqHi > floor)) below.push(...(await pieceVersions(ctx, q)).filter((v) => v.seq > floor && v.seq <= p));
      overlay(data, below);
      state = { seq: floor, data };
    }
    overlay(state.data, l0.filter((v) => v.seq > Math.max(state!.seq, m.frontierSeq) && v.seq <= p));
    state.seq = p;
    result.images.push(await imageEntry(ctx, r.range, p, state.data, old.images));
  }
  // Visibility is judged once over every version the unit holds for the range (the L0's and
  // those of the pieces it merges or re-checks), so a version superseded in the fold or in
  // another build's piece, with no point in between, is dead here too. Each version's next
  // is then a real version at or after its true next: never drops what a point reads.
  const opts = { retained: plan.retained, future: true, images: r.imageSeqs };
  const inputs = new Map<string, Version[]>();
  for (const q of [...r.builds.flatMap((b) => b.from), ...r.recheck]) inputs.set(pieceId(q), await pieceVersions(ctx, q));
  const partsOf = new Map<Version, KeptPart<Version>[]>();
  for (const k of keepVisible([...l0, ...[...inputs.values()].flat()], opts)) {
    const list = partsOf.get(k.of);
    if (list) list.push(k);
    else partsOf.set(k.of, [k]);
  }
  const keptOf = (vs: Version[]): KeptPart<Version>[] => vs.flatMap((v) => partsOf.get(v) ?? []);
  for (const b of r.builds) {
    const versions = b.from.flatMap((q) => inputs.get(pieceId(q))!);
    if (b.l0) versions.push(...l0.filter((v) => v.seq >= b.seqLo && v.seq <= b.seqHi));
    result.pieces.push(...(await writePieces(ctx, r.range, b.seqLo, b.seqHi, keptOf(versions))));
  }
  // Re-checked pieces: rewritten with their visible versions when enough of them is dead.
  for (const q of r.recheck) {
    const versions = inputs.get(pieceId(q))!;
    const kept = keptOf(versions);
    const live = kept.reduce((n, k) => n + (k.of.zero ? 0 : k.blockCount * BLOCK_SIZE), 0);
    const relocate = r.relocate.includes(q);
    if (!relocate && (q.dataBytes > 0 ? 1 - live / q.dataBytes < cfg.deadRewriteRatio : kept.length === versions.length)) continue;
    result.replaced.push(q);
    result.pieces.push(...(await writePieces(ctx, r.range, q.seqLo, q.seqHi, kept)));
  }
  // A piece belongs to one range: what was read for it is not needed again.
  for (const q of old.pieces) ctx.pieces.delete(pieceId(q));
  return result;
}

/** An image entry for `data` at `seq`: zero, a key the input already holds for the range, the base chunk, or a new object. */
async function imageEntry(ctx: UnitContext, id: RangeId, seq: number, data: Buffer, old: ImageEntry[]): Promise<ImageEntry> {
  if (isAllZero(data)) return { seq, zero: true };
  const { body, ref } = await encodeChunk(parseRangeId(id).index, data);
  const same = old.find((i): i is Extract<ImageEntry, { key: string }> => !i.zero && i.sha256 === ref.sha256);
  const base = await baseChunk(ctx, id);
  let key: string;
  if (same) key = same.key;
  else if (base?.sha256 === ref.sha256) key = base.key;
  else {
    key = `${ctx.runs.prefix}image-${ref.sha256}.chunk`;
    ctx.images.set(key, body);
  }
  return { seq, key, sha256: ref.sha256, crc32c: ref.crc32c, length: ref.length };
}

/** Encodes kept parts into pieces over [seqLo, seqHi] (cut at MAX_PIECE_PAYLOAD of data into consecutive seq spans) and adds them to the unit's runs. */
async function writePieces(ctx: UnitContext, id: RangeId, seqLo: number, seqHi: number, kept: KeptPart<Version>[]): Promise<PieceEntry[]> {
  if (kept.length === 0) return [];
  const { disk, index } = parseRangeId(id);
  const bySeq = [...kept].sort((a, b) => a.of.seq - b.of.seq);
  const groups: KeptPart<Version>[][] = [[]];
  let bytes = 0;
  for (let i = 0; i < bySeq.length; i++) {
    const k = bySeq[i];
    const size = k.of.zero ? 0 : k.blockCount * BLOCK_SIZE;
    const group = groups[groups.length - 1];
    // A new group only between seqs: a piece's span holds whole seqs.
    if (bytes + size > MAX_PIECE_PAYLOAD && group.length > 0 && group[group.length - 1].of.seq !== k.of.seq) {
      groups.push([]);
      bytes = 0;
    }
    groups[groups.length - 1].push(k);
    bytes += size;
  }
  const out: PieceEntry[] = [];
  groups.forEach((g, i) => {
    const lo = i === 0 ? seqLo : g[0].of.seq;
    const hi = i === groups.length - 1 ? seqHi : groups[i + 1][0].of.seq - 1;
    const versions: PieceVersionInput[] = g.map((k) => {
      const skip = k.blockIndex - k.of.blockIndex;
      return k.of.zero
        ? { seq: k.of.seq, blockIndex: k.blockIndex, blockCount: k.blockCount, zero: true }
        : { seq: k.of.seq, blockIndex: k.blockIndex, blockCount: k.blockCount, data: k.of.data().subarray(skip * BLOCK_SIZE, (skip + k.blockCount) * BLOCK_SIZE) };
    });
    const body = encodePiece({ disk, rangeIndex: index, seqLo: lo, seqHi: hi, versions });
    const decoded = decodePiece(body, `${id} [${lo}, ${hi}]`);
    out.push({ ...ctx.runs.add(body), crc32c: decoded.crc32c, seqLo: lo, seqHi: hi, blocks: pieceBlocksBitmap(decoded.entries), dataBytes: decoded.dataBytes });
  });
  return out;
}

/** Packs pieces into run objects under the unit's prefix, PUT as each fills. */
class RunWriter {
  private parts: Buffer[] = [];
  private size = 0;
  private n = 0;
  /** Every run written: key → pieces (offset, length, crc) in it. */
  readonly written = new Map<string, { offset: number; length: number; crc32c: number }[]>();

  constructor(private readonly store: ObjectStore, readonly prefix: string, private readonly runBytes: number, private readonly stats: { runs: number; bytes: number }) {}

  private key(): string {
    return `${this.prefix}run-${String(this.n).padStart(4, '0')}.run`;
  }

  /** Places a piece in the open run: its key and offset. */
  add(piece: Buffer): { key: string; offset: number; length: number } {
    const at = { key: this.key(), offset: this.size, length: piece.length };
    const list = this.written.get(at.key) ?? [];
    list.push({ offset: at.offset, length: at.length, crc32c: piece.readUInt32LE(piece.length - 4) });
    this.written.set(at.key, list);
    this.parts.push(piece);
    this.size += piece.length;
    if (this.size >= this.runBytes) this.closeOpen();
    return at;
  }

  private pending: Promise<void>[] = [];

  private async close(): Promise<void> {
    const key = this.key();
    const body = Buffer.concat(this.parts);
    this.parts = [];
    this.size = 0;
    this.n++;
    await this.store.put(key, body);
    this.stats.runs++;
    this.stats.bytes += body.length;
  }

  /** Starts the PUT of the open run; a failure surfaces at flush (not as an unhandled rejection before it). */
  private closeOpen(): void {
    const put = this.close();
    put.catch(() => {});
    this.pending.push(put);
  }

  async flush(): Promise<void> {
    if (this.size > 0) this.closeOpen();
    await Promise.all(this.pending);
    this.pending = [];
  }
}

/** Reads back every run and image the unit wrote: each piece's CRCs and every entry's data CRC, each image's SHA-256. */
async function verifyWritten(ctx: UnitContext, concurrency: number): Promise<void> {
  await mapLimit([...ctx.runs.written], concurrency, async ([key, pieces]) => {
    const body = await ctx.store.get(key);
    for (const p of pieces) {
      const where = `${key}@${p.offset}`;
      if (p.offset + p.length > body.length) throw new CorruptHistoryError(where, `piece of ${p.length} bytes runs past the object's end (${body.length}) as read back`);
      const buf = body.subarray(p.offset, p.offset + p.length);
      const decoded = decodePiece(buf, where, p.crc32c);
      for (const e of decoded.entries) pieceVersionData(buf, e, where);
    }
  });
  await mapLimit([...ctx.images], concurrency, async ([key, written]) => {
    const body = await ctx.store.get(key);
    const sha256 = key.slice(key.lastIndexOf('image-') + 6, -'.chunk'.length);
    const length = written.readUInt32LE(8);
    const crc = written.readUInt32LE(12);
    try {
      decodeChunk(body, { index: 0, sha256, crc32c: crc, length }, key);
    } catch (err) {
      if (err instanceof BackupError) throw new CorruptHistoryError(err.where, err.reason);
      throw err;
    }
  });
}
