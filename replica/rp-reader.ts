// Reading an RP: the pair's RP item and history (the manifest, under a reader lease), the L0
// batches above the manifest's frontier resolved per disk, and any window of a disk filled on
// demand from the sources the manifest and the L0 give for it, every payload verified as it is
// placed (docs/design.md, "Recovery (read path)"). materialize() walks a disk with it window
// by window; the recovery workflow's ranges and an export read the windows they need.

import { randomBytes } from 'node:crypto';
import { BLOCK_SIZE, EXTENT_FLAGS, TRAILER_SIZE, checkExtentData, decodeIndex, decodeTrailer, type ExtentEntry } from '../core/batch-format';
import { checkChunkData, checkChunkHeader, type ChunkRef } from '../core/chunk-format';
import { BackupError, BatchError, CorruptExtentError, CorruptHistoryError, HistoryPrunedError, InvalidArgumentError, ReaderLeaseLostError, UnknownPairError } from '../core/errors';
import { baseChunkKey } from '../core/keys';
import { RANGE_BLOCKS, rangeId, type Manifest, type PieceEntry } from '../core/manifest';
import { rangeSources, readable, type RangeSources } from '../core/read-sources';
import { rpLives } from '../core/retention';
import { decodePiece, pieceBlocksBitmap, type PieceVersionEntry } from '../core/run-format';
import { parseBaseManifest } from '../core/seed-manifests';
import type { BatchRecord, DiskSpec, Pair, RecoveryPoint } from '../core/model';
import { resolvePieces, type BlockVersion, type Piece } from '../core/recovery-plan';
import type { ByteRange, HistoryHead, HistoryIndex, ObjectStore, ReaderLease, ReplicaIndex } from './ports';
import { hashHeld, keepBody, placeVerified, release, warmDecoders, type HeldBody, type HeldRange, type PayloadOutcome, type PlaceTarget } from './chunk-verifier';
import { manifestOf, pairInitialManifest } from './history-manifest';
import { checkAppliedSha256 } from './applied-batch';
import { mapLimit } from './concurrency';

/** A stored extent that some RP reads: which object, which entry. */
interface ExtentRef {
  batch: BatchRecord;
  entry: ExtentEntry;
}

/** A stored chunk (a base chunk or a history image) some RP reads where nothing newer wrote. */
interface ChunkVersionRef {
  chunk: ChunkRef;
  key: string;
}

/** A piece read whole (one ranged GET, checked end to end) whose versions a window reads. */
interface FetchedPiece {
  /** `key@offset`: how errors name it. */
  where: string;
  entries: PieceVersionEntry[];
  /** The GET that brought it, and the piece's offset in its body. */
  stretch: Stretch;
  at: number;
}

/** The bytes of one ranged GET of a run object, shared by the pieces it brought. */
interface Stretch {
  /** The GET's body, on this thread: its pieces are all one window's, which gives it away. */
  body?: Buffer;
  /**
   * Or the worker that keeps it: some of its pieces are later windows' (read ahead). `left`
   * counts those not yet placed (or passed over) by their windows; at 0 the worker drops it.
   */
  held?: HeldBody;
  bytes: number;
  left: number;
}

/** One version held in a fetched piece. */
interface PieceVersionRef {
  piece: FetchedPiece;
  entry: PieceVersionEntry;
}

type Ref = ExtentRef | ChunkVersionRef | PieceVersionRef;
const isChunk = (r: Ref): r is ChunkVersionRef => 'chunk' in r;
const isPieceVersion = (r: Ref): r is PieceVersionRef => 'piece' in r;


/** Two extents of one object closer than this are fetched with one ranged GET. */
const MERGE_GAP = 1024 * 1024;

export interface RpReadOptions {
  pairId: string;
  /** The RP's seq; it must be a live (unexpired) RP of the pair. */
  seq: number;
  /**
   * Internal reads (the agent's checksum resync): any applied seq, RP or not. Such a state
   * may be mid-resync and is never offered to an operator as a recovery point.
   */
  anyAppliedSeq?: boolean;
  /** Only these disks are read (default: every disk of the pair). */
  disks?: string[];
  /** Parallel reads of L0 batch indexes (default 16). */
  concurrency?: number;
  /**
   * Bytes of L0 batches read whole (to check them against their SHA-256) kept for the windows
   * to take their extents from, instead of GETting those again (default 128 MiB; 0: none).
   */
  checkedBatchBytes?: number;
  nowMs?: number;
  /**
   * The pair's history index (RpStore.history): the manifest, and the reader lease held while
   * reading. Without it the pair is read as never compacted, which is refused once it was
   * (the pair's compactedThrough is set).
   */
  history?: HistoryIndex;
  /** What the reader lease says reads (default 'recovery'). */
  readerKind?: ReaderLease['kind'];
  /** The reader lease's lifetime (default 5 min); it is renewed every third of it while reading. */
  leaseTtlMs?: number;
  /**
   * false: read the history without a reader lease, for a reader that may not write index
   * items (the agent's checksum resync, whose role only reads its pair). Safe because GC
   * deletes an object only a grace period (1 h) after the publish that stopped referencing
   * it; such a read must therefore end within LEASELESS_READ_MS, or it fails (never reads
   * wrong: a collected object is a missing one). Default true.
   */
  lease?: boolean;
  /**
   * A lease the caller holds already on the manifest `head` names (the recovery workflow's
   * run, whose ranges read under one lease): renewed while reading only if still live
   * (ReaderLeaseLostError otherwise, never revived), and not deleted at close.
   */
  heldLease?: { id: string; head: HistoryHead };
}

/** The longest a read without a reader lease may run: well inside GC's default grace of 1 h. */
export const LEASELESS_READ_MS = 15 * 60 * 1000;
const DEFAULT_LEASE_TTL_MS = 5 * 60 * 1000;
const DEFAULT_CHECKED_BATCH_BYTES = 128 * 1024 * 1024;

/**
 * L0 batches read whole and checked against the SHA-256 apply recorded (readIndex), held by
 * the decoding workers while the reader is open, up to a byte budget: a window takes their
 * extents from there. A batch over the budget is read again by ranged GETs of its extents.
 */
class CheckedBatches {
  private readonly held = new Map<string, HeldBody>();
  private bytes = 0;
  private closed = false;

  constructor(private readonly budget: number) {}

  /** Reserves room for a body of `length` bytes: false when it would pass the budget. */
  reserve(length: number): boolean {
    if (this.bytes + length > this.budget) return false;
    this.bytes += length;
    return true;
  }

  /** Gives back a reservation that was not kept. */
  unreserve(length: number): void {
    this.bytes -= length;
  }

  /** Keeps `body` for the windows; once cleared (the reader closed, or failed to open), lets it go at once. */
  keep(key: string, body: HeldBody): void {
    if (this.closed) release([body]);
    else this.held.set(key, body);
  }

  /** Bytes [start, end) of the batch at `key`, if it is kept. */
  slice(key: string, start: number, end: number): HeldRange | undefined {
    const held = this.held.get(key);
    return held && { held, start, end };
  }

  clear(): void {
    this.closed = true;
    release([...this.held.values()]);
    this.held.clear();
    this.bytes = 0;
  }
}

/** What reading cost so far, and the read bound observed. */
export interface ReadStats {
  gets: number;
  bytesRead: number;
  /** The most objects the read of any one range touched (image or base chunk, pieces, L0 batches). */
  sources: number;
}
type Stats = ReadStats;

/** Runs a read task under the caller's limit on GETs in flight. */
export type Run = <T>(task: () => Promise<T>) => Promise<T>;

/** A window of `length` bytes of an image file (its descriptor), from byte `offset` of the file on. */
export interface FileWindow {
  fd: number;
  offset: number;
  length: number;
}

/** An RP opened for reading: its windows are filled on demand; close() gives up its lease. */
export interface RpReader {
  pair: Pair;
  /** The RP read (absent for an `anyAppliedSeq` read of a seq that is not one). */
  rp?: RecoveryPoint;
  seq: number;
  manifest: Manifest;
  /** L0 batches read (those above the manifest's frontier, up to the seq). */
  segments: number;
  stats: ReadStats;
  /** Windows should start and end on this many bytes (a compacted history's range, 4 MiB; else a block), so each piece is read once. */
  alignBytes: number;
  /**
   * Fills `window` (over a SharedArrayBuffer) with disk `disk` from block `firstBlock` on,
   * every payload verified; resolves with the byte ranges of the window that hold data. The
   * window is zeros, but for `stale` (sorted, disjoint byte ranges left from an earlier use):
   * the parts of those that this fill places no data over are zeroed by it, so the window
   * is written once where data goes rather than zeroed and then written. With `dataOnly` (the
   * caller reads only the data ranges it resolves with, so the window may hold any earlier
   * bytes elsewhere) only the ranges of zero versions are zeroed.
   * `readAheadTo`: the caller goes on to fill the windows after this one, in order, up to that
   * block (or further), so the reads of this window may take along pieces those read.
   * `window` may instead be a FileWindow: the verified data is written straight into that file
   * (by the workers that check it), which must hold zeros there (a fresh sparse file): a zero
   * version writes nothing.
   */
  fill(disk: string, firstBlock: number, window: Buffer | FileWindow, run: Run, o?: { stale?: ByteRange[]; dataOnly?: boolean; readAheadTo?: number }): Promise<ByteRange[]>;
  /** Throws if the lease could not be renewed (the history it holds may be collected). */
  check(): void;
  close(): Promise<void>;
}

/** Opens RP `o.seq` of `o.pairId`: its item and pair, the history under a lease, the L0 batches' indexes. */
export async function openRp(store: ObjectStore, index: ReplicaIndex, o: RpReadOptions): Promise<RpReader> {
  const concurrency = o.concurrency ?? 16;
  warmDecoders(); // their start overlaps the index reads below
  const started = Date.now();
  const clock = (): number => (o.nowMs ?? started) + (Date.now() - started);
  // The RP first (one GetItem), then the pair: an RP is written with (or after) the watermark covering it.
  const item = await index.getRecoveryPoint(o.pairId, o.seq);
  const rp = item && rpLives(item, clock()) ? item : undefined;
  const pair = await index.getPair(o.pairId);
  if (!pair) throw new UnknownPairError(o.pairId);
  if (!rp && !(o.anyAppliedSeq && o.seq <= pair.watermark)) throw new InvalidArgumentError(`pair '${o.pairId}' has no live recovery point at seq ${o.seq}`);
  if (o.seq > pair.watermark) throw new Error(`RP ${o.seq} of pair '${o.pairId}' is above the watermark ${pair.watermark}: index inconsistent`);
  const wanted = o.disks ?? pair.disks.map((d) => d.name);
  for (const d of wanted) if (!pair.disks.some((p) => p.name === d)) throw new InvalidArgumentError(`pair '${o.pairId}' has no disk '${d}'`);

  const stats: Stats = { gets: 0, bytesRead: 0, sources: 0 };
  const checked = new CheckedBatches(o.checkedBatchBytes ?? DEFAULT_CHECKED_BATCH_BYTES);
  const reader = await openHistory(store, o.history, pair, { seq: o.seq, kind: o.readerKind ?? 'recovery', ttlMs: o.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS, clock, lease: o.lease ?? true, held: o.heldLease }, stats);
  try {
    const m = reader.manifest;
    if (!readable(m, o.seq)) throw new HistoryPrunedError(o.pairId, o.seq, m.frontierSeq);
    // The L0: batches above the frontier (those at or below it are folded into the history,
    // or into the base), read after the lease so that none is collected under us.
    const segments = o.seq > m.frontierSeq ? (await index.batchesAfter(o.pairId, m.frontierSeq, o.seq - m.frontierSeq)).filter((b) => b.seq <= o.seq) : [];
    if (reader.wholeL0 && segments.length !== o.seq - m.frontierSeq) {
      throw new Error(`pair '${o.pairId}' was compacted through seq ${pair.compactedThrough} and GC has collected batches it folded: reading it needs its history index`);
    }
    const disks = new Map<string, DiskRead>(wanted.map((d) => [d, { versions: [], l0Ranges: new Map(), baseChunks: new Map() }]));
    if (m.base) {
      const base = parseBaseManifest((await store.get(m.base.key)).toString('utf8'), m.base.key);
      stats.gets++;
      for (const disk of base.disks) {
        if (!pair.disks.some((d) => d.name === disk.name)) throw new Error(`base ${m.base.key} names disk '${disk.name}', which pair '${o.pairId}' does not have`);
        const read = disks.get(disk.name);
        if (!read) continue;
        for (const [index, sha256, crc32c, length] of disk.chunks) read.baseChunks.set(index, { chunk: { index, sha256, crc32c, length }, key: baseChunkKey(o.pairId, sha256) });
      }
    }
    await mapLimit(segments, concurrency, async (batch) => {
      for (const entry of await readIndex(store, batch, stats, checked)) {
        const read = disks.get(batch.disks[entry.disk]);
        if (!read) continue;
        read.versions.push({ blockIndex: entry.blockIndex, blockCount: entry.blockCount, seq: batch.seq, ref: { batch, entry } });
        const last = Math.floor((entry.blockIndex + entry.blockCount - 1) / RANGE_BLOCKS);
        for (let r = Math.floor(entry.blockIndex / RANGE_BLOCKS); r <= last; r++) {
          const seqs = read.l0Ranges.get(r);
          if (!seqs) read.l0Ranges.set(r, [batch.seq]);
          else if (seqs[seqs.length - 1] !== batch.seq) seqs.push(batch.seq);
        }
      }
    });
    // Per disk, resolved once: the pieces hold what the disk reads from the L0.
    const resolved = new Map<string, { l0: Piece<Ref>[]; plan: WindowPlanner; spec: DiskSpec }>();
    for (const spec of pair.disks) {
      const read = disks.get(spec.name);
      if (!read) continue;
      for (const seqs of read.l0Ranges.values()) seqs.sort((a, b) => a - b);
      const l0 = resolvePieces(read.versions);
      read.versions = [];
      resolved.set(spec.name, { l0, plan: windowPlanner(store, m, spec, o.seq, read, stats), spec });
    }
    return {
      pair,
      rp,
      seq: o.seq,
      manifest: m,
      segments: segments.length,
      stats,
      alignBytes: m.version > 0 ? RANGE_BLOCKS * BLOCK_SIZE : BLOCK_SIZE,
      async fill(disk, firstBlock, window, run, { stale, dataOnly, readAheadTo } = {}) {
        const d = resolved.get(disk);
        if (!d) throw new InvalidArgumentError(`disk '${disk}' is not one this read of pair '${o.pairId}' opened`);
        const last = firstBlock + Math.ceil(window.length / BLOCK_SIZE);
        if (firstBlock < 0 || last * BLOCK_SIZE > Math.ceil(d.spec.sizeBytes / BLOCK_SIZE) * BLOCK_SIZE) throw new RangeError(`blocks [${firstBlock}, ${last}) are not all within disk '${disk}' (${d.spec.sizeBytes} bytes)`);
        const planned = await d.plan.plan(firstBlock, last, l0Within(d.l0, firstBlock, last), run, Math.max(last, readAheadTo ?? 0));
        const data = dataRanges(planned.pieces, firstBlock, window.length);
        if (stale && Buffer.isBuffer(window)) {
          // Zero versions are not placed (the window's zeros are taken for them): zeroed here.
          // A caller reading only data ranges zeroes nothing else, so such a window may hold
          // any earlier use's bytes outside `stale`: every zero version's range is zeroed.
          const placed = dataRanges(planned.pieces.filter(placesData), firstBlock, window.length);
          for (const r of subtract(dataOnly ? data : stale, placed)) window.fill(0, r.start, r.end);
        }
        await fillWindow(store, window, firstBlock, planned, run, stats, checked);
        return data;
      },
      check: () => reader.check(),
      close: () => {
        checked.clear();
        for (const d of resolved.values()) d.plan.close();
        return reader.close();
      },
    };
  } catch (err) {
    checked.clear(); // and the reads still in flight let theirs go as they end
    await reader.close();
    throw err;
  }
}

/** The pieces of `pieces` (sorted, disjoint) over blocks [first, last), clipped to them. */
function l0Within(pieces: Piece<Ref>[], first: number, last: number): Piece<Ref>[] {
  let lo = 0;
  let hi = pieces.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (pieces[mid].blockIndex + pieces[mid].blockCount <= first) lo = mid + 1;
    else hi = mid;
  }
  const out: Piece<Ref>[] = [];
  for (let i = lo; i < pieces.length && pieces[i].blockIndex < last; i++) out.push(clip(pieces[i], first, last));
  return out;
}

/** What a read gathers about one disk before its windows: the L0's versions, per range the L0 seqs touching it, the base's chunks. */
interface DiskRead {
  versions: BlockVersion<ExtentRef>[];
  /** Range index → ascending seqs of the L0 batches whose extents touch it. */
  l0Ranges: Map<number, number[]>;
  /** Chunk (= range) index → the base's stored chunk. */
  baseChunks: Map<number, ChunkVersionRef>;
}

/** The manifest a read goes by, and the lease that holds it. */
interface HistoryReader {
  manifest: Manifest;
  /**
   * Read without the history index a pair that was compacted: as version 0, which is sound
   * only while GC has collected none of the batches (BATCH# items go before their objects, so
   * a gap-free L0 from the base up is all there; an object collected during the read fails it).
   */
  wholeL0?: boolean;
  /** Throws if the lease could not be renewed (the history it holds may be collected). */
  check(): void;
  /** Stops renewing and deletes the lease (a failure to delete leaves it to expire). */
  close(): Promise<void>;
}

/**
 * Reads HISTORY, puts the reader lease on its version, and reads HISTORY again: if a publish
 * came in between, the lease moves to the new version (and so on), so the version read is one
 * the lease held before GC could collect what it references. Then the manifest object.
 */
async function openHistory(
  store: ObjectStore,
  history: HistoryIndex | undefined,
  pair: Pair,
  l: { seq: number; kind: ReaderLease['kind']; ttlMs: number; clock: () => number; lease: boolean; held?: { id: string; head: HistoryHead } },
  stats: Stats,
): Promise<HistoryReader> {
  if (!history) return { manifest: pairInitialManifest(pair), wholeL0: pair.compactedThrough !== undefined, check: () => {}, close: async () => {} };
  /** The manifest `head` names, its GETs (head and parts) counted. */
  const manifestAt = async (head: HistoryHead): Promise<Manifest> => {
    const read = await manifestOf(store, pair, head);
    stats.gets += read.gets;
    stats.bytesRead += read.bytes;
    return read.manifest;
  };
  if (l.held) return heldReader(history, pair.pairId, l.held.id, await manifestAt(l.held.head), l);
  if (!l.lease) {
    const manifest = await manifestAt(await history.getHistory(pair.pairId));
    const until = l.clock() + LEASELESS_READ_MS;
    return {
      manifest,
      check() {
        if (l.clock() >= until) throw new Error(`a read of pair '${pair.pairId}' without a reader lease ran past ${LEASELESS_READ_MS / 60000} min (GC may collect what it reads)`);
      },
      close: async () => {},
    };
  }
  const lease: ReaderLease = { id: `${l.kind}-${randomBytes(8).toString('hex')}`, kind: l.kind, seq: l.seq, manifestVersion: 0, expiresMs: 0 };
  const put = async (): Promise<void> => {
    const next = { ...lease, expiresMs: l.clock() + l.ttlMs };
    await history.putReaderLease(pair.pairId, next);
    lease.expiresMs = next.expiresMs;
  };
  let manifest: Manifest;
  try {
    manifest = await manifestAt(await holdHistory(history, pair.pairId, lease, put));
  } catch (err) {
    await history.releaseReaderLease(pair.pairId, lease.id, l.clock()).catch(() => {});
    throw err;
  }
  const renewal = renewEvery(l.ttlMs / 3, put, () => lease.expiresMs, pair.pairId, lease.id, l.clock);
  return {
    manifest,
    check: renewal.check,
    async close() {
      await renewal.stop(); // a renewal in flight lands before the release, not after it
      await history.releaseReaderLease(pair.pairId, lease.id, l.clock()).catch(() => {});
    },
  };
}

/**
 * Puts `lease` (through `put`) on the version HISTORY names and reads HISTORY again: if a
 * publish came in between, the lease moves to the new version, until the two reads agree.
 * Resolves with the head whose version the lease now holds. On failure the caller deletes it.
 */
export async function holdHistory(history: HistoryIndex, pairId: string, lease: ReaderLease, put: () => Promise<void>): Promise<HistoryHead> {
  let head = await history.getHistory(pairId);
  for (;;) {
    lease.manifestVersion = head.version;
    await put();
    const again = await history.getHistory(pairId);
    if (again.version === head.version) return head;
    head = again;
  }
}

/**
 * A lease the caller took (the recovery workflow's): renewed at once and then every third of
 * its lifetime, each time only if still live; the caller deletes it.
 */
async function heldReader(history: HistoryIndex, pairId: string, id: string, manifest: Manifest, l: { ttlMs: number; clock: () => number }): Promise<HistoryReader> {
  let expiresMs = 0;
  const renew = async (): Promise<void> => {
    const next = l.clock() + l.ttlMs;
    if (!(await history.renewReaderLease(pairId, id, next, l.clock()))) throw new ReaderLeaseLostError(pairId, id);
    expiresMs = next;
  };
  await renew();
  const renewal = renewEvery(l.ttlMs / 3, renew, () => expiresMs, pairId, id, l.clock);
  return { manifest, check: renewal.check, close: renewal.stop };
}

/** Calls `renew` every `everyMs` until stopped; check() throws once a renewal failed or the lease ran out. */
function renewEvery(everyMs: number, renew: () => Promise<void>, expiresMs: () => number, pairId: string, id: string, clock: () => number): { check(): void; stop(): Promise<void> } {
  let failed: Error | undefined;
  let renewing: Promise<void> = Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      renewing = renew().then(schedule, (err: Error) => void (failed = err));
    }, everyMs);
    timer.unref();
  };
  schedule();
  return {
    check() {
      if (failed instanceof ReaderLeaseLostError) throw failed;
      if (failed) throw new Error(`reader lease ${id} of pair '${pairId}' could not be renewed: ${failed.message}`);
      if (clock() >= expiresMs()) throw new Error(`reader lease ${id} of pair '${pairId}' expired while reading`);
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await renewing;
    },
  };
}

/** A window's plan: what fills it, and the pieces (read whole) its ranges took. */
interface WindowPlan {
  pieces: Piece<Ref>[];
  fetched: FetchedPiece[];
}

/** Plans one window [first, last) of a disk: the L0's pieces in it over what the manifest holds there. close() drops what was read ahead. */
interface WindowPlanner {
  plan(first: number, last: number, l0: Piece<Ref>[], run: Run, readAheadTo: number): Promise<WindowPlan>;
  close(): void;
}

/** Read-ahead of pieces: ranges past a window whose pieces a run object's GET may take along, while reads go on in order. */
const READ_AHEAD_RANGES = 64;
/** The most one ranged GET of a run object's pieces spans. */
const MAX_PIECE_READ = 8 * 1024 * 1024;
/** The most bytes of pieces read ahead that no window has taken yet. */
const READ_AHEAD_BUDGET = 128 * 1024 * 1024;

/**
 * A piece a window reads from a run object, with the image seq its range reads above; no
 * `floor`: a later window's piece, read ahead (that window has its own).
 */
interface PieceWant {
  p: PieceEntry;
  range: number;
  floor?: number;
}
const readAhead = (w: PieceWant): boolean => w.floor === undefined;

/**
 * For each range of the window: its image or base chunk and its pieces (each read whole with
 * one ranged GET and checked), resolved with the window's L0 pieces on top (every L0 batch
 * read is above the frontier, so newer than anything in the manifest).
 *
 * A run object holds its pieces in range order, about one per range a batch wrote, so one
 * window finds only a few of them together. Where the caller reads on in order (up to block
 * `readAheadTo`), a run object's GET stretches over the pieces of the next READ_AHEAD_RANGES
 * ranges in it too (within MAX_PIECE_READ and READ_AHEAD_BUDGET): those are checked when they
 * arrive and kept for the windows that take them, one GET where there were several.
 */
function windowPlanner(store: ObjectStore, m: Manifest, disk: DiskSpec, seq: number, read: DiskRead, stats: Stats): WindowPlanner {
  const diskBlocks = disk.sizeBytes / BLOCK_SIZE;
  /** Per range, its sources: worked out once, for the read-ahead or the range's window. */
  const known = new Map<number, RangeSources>();
  const sourcesOf = (r: number): RangeSources => {
    let s = known.get(r);
    if (!s) known.set(r, (s = rangeSources(m, read.l0Ranges.get(r) ?? [], rangeId(disk.name, r), seq)));
    return s;
  };
  /** Pieces read ahead for later windows, by `key@offset`. */
  const ahead = new Map<string, { piece: Promise<FetchedPiece>; bytes: number }>();
  let aheadBytes = 0;
  const idOf = (p: PieceEntry): string => `${p.key}@${p.offset}`;

  /** Stretches workers keep for later windows, until those have taken every piece. */
  const kept = new Set<Stretch>();
  let closed = false;

  /**
   * One ranged GET of a stretch of a run object; each piece in it checked when it arrives.
   * A stretch later windows read too goes to a worker to keep at once: held here across
   * windows, bodies would outlive the young generation and bring on full collections.
   */
  const readStretch = (rd: RangeRead<PieceWant>, run: Run): Promise<FetchedPiece>[] => {
    const read = run(async () => {
      const bytes = await store.get(rd.key, { start: rd.start, end: rd.end });
      stats.gets++;
      stats.bytesRead += bytes.length;
      const stretch: Stretch = { bytes: bytes.length, left: rd.items.length };
      const pieces = rd.items.map(({ p, range }) => checkPiece(bytes, p.offset - rd.start, p, disk.name, range, diskBlocks, stretch));
      if (closed) throw new Error(`the read of ${rd.key} ended while a GET of it was in flight`);
      if (!rd.items.some(readAhead)) stretch.body = bytes;
      else {
        stretch.held = keepBody(bytes, store.freshReads === true);
        kept.add(stretch);
      }
      return pieces;
    });
    return rd.items.map((_, i) => read.then((pieces) => pieces[i]));
  };

  const close = (): void => {
    closed = true;
    release([...kept].map((k) => k.held!));
    kept.clear();
    ahead.clear();
  };

  const plan = async (first: number, last: number, l0: Piece<Ref>[], run: Run, readAheadTo: number): Promise<WindowPlan> => {
    const versions: BlockVersion<Ref | { l0: Piece<Ref> }>[] = [];
    const taken: { piece: Promise<FetchedPiece>; range: number; floor: number }[] = [];
    /** Per run object, the window's pieces not read ahead. */
    const toRead = new Map<string, PieceWant[]>();
    const lastRange = Math.ceil(last / RANGE_BLOCKS);
    for (let r = Math.floor(first / RANGE_BLOCKS); r < lastRange; r++) {
      const s = sourcesOf(r);
      known.delete(r);
      const baseChunk = s.base ? read.baseChunks.get(r) : undefined;
      stats.sources = Math.max(stats.sources, s.count - (s.base && !baseChunk ? 1 : 0));
      const start = r * RANGE_BLOCKS;
      if (baseChunk) versions.push({ blockIndex: start, blockCount: baseChunk.chunk.length / BLOCK_SIZE, seq: m.base!.seq, ref: baseChunk });
      const image = s.image;
      if (image && !image.zero) {
        versions.push({ blockIndex: start, blockCount: image.length / BLOCK_SIZE, seq: image.seq, ref: { chunk: { index: r, sha256: image.sha256, crc32c: image.crc32c, length: image.length }, key: image.key } });
      }
      const floor = image ? image.seq : -1;
      for (const p of s.pieces) {
        const early = ahead.get(idOf(p));
        if (early) {
          ahead.delete(idOf(p));
          aheadBytes -= early.bytes;
          taken.push({ piece: early.piece, range: r, floor });
          continue;
        }
        const list = toRead.get(p.key) ?? [];
        list.push({ p, range: r, floor });
        toRead.set(p.key, list);
      }
    }
    if (toRead.size > 0) {
      // The later ranges' pieces in the same run objects, not read ahead yet.
      const later = new Map<string, PieceWant[]>();
      const aheadEnd = Math.min(Math.ceil(readAheadTo / RANGE_BLOCKS), lastRange + READ_AHEAD_RANGES);
      for (let r = lastRange; r < aheadEnd; r++) {
        for (const p of sourcesOf(r).pieces) {
          if (!toRead.has(p.key) || ahead.has(idOf(p))) continue;
          const list = later.get(p.key) ?? [];
          list.push({ p, range: r });
          later.set(p.key, list);
        }
      }
      for (const [key, mine] of toRead) {
        for (const rd of mergeReads(key, [...mine, ...(later.get(key) ?? [])], (w) => [w.p.offset, w.p.offset + w.p.length], MAX_PIECE_READ)) {
          // A stretch of later pieces only is left to their windows; the budget trims a stretch's later tail.
          let extra = rd.items.reduce((n, w) => n + (readAhead(w) ? w.p.length : 0), 0);
          while (aheadBytes + extra > READ_AHEAD_BUDGET && readAhead(rd.items[rd.items.length - 1])) extra -= rd.items.pop()!.p.length;
          if (rd.items.every(readAhead)) continue;
          const lastItem = rd.items[rd.items.length - 1].p;
          rd.end = lastItem.offset + lastItem.length;
          const pieces = readStretch(rd, run);
          rd.items.forEach((w, i) => {
            if (!readAhead(w)) return void taken.push({ piece: pieces[i], range: w.range, floor: w.floor! });
            pieces[i].catch(() => {}); // handled: the window that takes it awaits it
            ahead.set(idOf(w.p), { piece: pieces[i], bytes: w.p.length });
            aheadBytes += w.p.length;
          });
        }
      }
    }
    const fetched = await Promise.all(taken.map((t) => t.piece));
    fetched.forEach((piece, i) => {
      const { range, floor } = taken[i];
      for (const entry of piece.entries) {
        if (entry.seq > floor && entry.seq <= seq) versions.push({ blockIndex: range * RANGE_BLOCKS + entry.blockIndex, blockCount: entry.blockCount, seq: entry.seq, ref: { piece, entry } });
      }
    });
    if (versions.length === 0) return { pieces: l0, fetched }; // the L0 alone (a pair never compacted, without a base)
    for (const q of l0) versions.push({ blockIndex: q.blockIndex, blockCount: q.blockCount, seq: (q.ref as ExtentRef).batch.seq, ref: { l0: q } });
    const out: Piece<Ref>[] = [];
    for (const q of resolvePieces(versions)) {
      const c = clip(q, first, last);
      const under = 'l0' in c.ref ? c.ref.l0 : undefined;
      out.push(under ? { blockIndex: c.blockIndex, blockCount: c.blockCount, offsetBlocks: under.offsetBlocks + c.offsetBlocks, ref: under.ref } : (c as Piece<Ref>));
    }
    return { pieces: out, fetched };
  };
  return { plan, close };
}

/** A piece (at byte `at` of a ranged GET's body), checked whole against its manifest entry: CRC, disk, range, span, data bytes, bitmap, the disk's end. */
function checkPiece(body: Buffer, at: number, p: PieceEntry, disk: string, range: number, diskBlocks: number, stretch: Stretch): FetchedPiece {
  const where = `${p.key}@${p.offset}`;
  // Raw payloads by their entries' data CRCs: fillWindow checks each version's data before placing it.
  const decoded = decodePiece(body.subarray(at, at + p.length), where, p.crc32c, { rawByEntry: true });
  const bad = (what: string): CorruptHistoryError => new CorruptHistoryError(where, what);
  if (decoded.disk !== disk || decoded.rangeIndex !== range) throw bad(`holds range ${decoded.disk}:${decoded.rangeIndex}, the manifest lists it under ${disk}:${range}`);
  if (decoded.seqLo !== p.seqLo || decoded.seqHi !== p.seqHi) throw bad(`spans seqs [${decoded.seqLo}, ${decoded.seqHi}], the manifest says [${p.seqLo}, ${p.seqHi}]`);
  if (decoded.dataBytes !== p.dataBytes) throw bad(`holds ${decoded.dataBytes} bytes of data, the manifest says ${p.dataBytes}`);
  if (pieceBlocksBitmap(decoded.entries) !== p.blocks) throw bad('holds other blocks than its bitmap in the manifest says');
  const past = decoded.entries.find((e) => range * RANGE_BLOCKS + e.blockIndex + e.blockCount > diskBlocks);
  if (past) throw bad(`entry (seq ${past.seq}, block ${past.blockIndex}) runs past the disk's end (${diskBlocks} blocks)`);
  return { where, entries: decoded.entries, stretch, at };
}

/**
 * A segment's index and trailer, both checksum-verified: one ranged GET of them, or, when apply
 * recorded the batch's SHA-256, one GET of the whole object checked against it, kept in
 * `checked` (within its budget) for the windows to take the payloads from. The index read
 * from verified bytes vouches (CRC-32C per extent) for payloads read later by ranged GETs
 * where it was not kept; between the two reads nothing can replace the object (create-only
 * writes, only GC deletes: "Trust boundaries").
 */
async function readIndex(store: ObjectStore, b: BatchRecord, stats: Stats, checked: CheckedBatches): Promise<ExtentEntry[]> {
  const len = b.extentCount * 32 + TRAILER_SIZE;
  let tail: Buffer;
  if (b.sha256 !== undefined) {
    const whole = await store.get(b.key, undefined, undefined, b.versionId);
    stats.gets++;
    stats.bytesRead += whole.length;
    if (whole.length !== b.sizeBytes) throw new CorruptExtentError(b.key, `is ${whole.length} bytes, batch ${b.seq} was ${b.sizeBytes} when it was applied`);
    // Hashed in a worker, which keeps the body (within the budget) for the windows.
    const hold = checked.reserve(whole.length);
    let hashed: Awaited<ReturnType<typeof hashHeld>> | undefined;
    try {
      hashed = await hashHeld(whole, { hold, tailFrom: b.sizeBytes - len, giveAway: store.freshReads === true });
      checkAppliedSha256(hashed.sha256, b);
    } catch (err) {
      if (hashed?.held) release([hashed.held]);
      if (hold) checked.unreserve(b.sizeBytes);
      throw err;
    }
    if (hashed.held) checked.keep(b.key, hashed.held);
    tail = hashed.tail;
  } else {
    tail = await store.get(b.key, { start: b.sizeBytes - len, end: b.sizeBytes }, undefined, b.versionId);
    stats.gets++;
    stats.bytesRead += tail.length;
  }
  const trailer = decodeTrailer(tail, b.sizeBytes, b.key);
  if (trailer.seq !== b.seq || trailer.objectCrc !== b.objectCrc) {
    throw new CorruptExtentError(b.key, `trailer (seq ${trailer.seq}, crc ${trailer.objectCrc}) does not match the registered batch (seq ${b.seq}, crc ${b.objectCrc})`);
  }
  return decodeIndex(tail.subarray(0, len - TRAILER_SIZE), trailer, b.disks.length, b.key);
}

/**
 * Fetches what the window's pieces need: extents in merged ranged GETs per object, chunks
 * (base chunks, images) with one GET each; the pieces' versions are already in memory. A
 * worker decodes and checks each payload and copies its pieces into the window (shared
 * memory), or writes them into the image file, while this thread goes on with the next GETs.
 */
async function fillWindow(
  store: ObjectStore,
  window: Buffer | FileWindow,
  firstBlock: number,
  { pieces, fetched }: WindowPlan,
  run: Run,
  stats: Stats,
  checked: CheckedBatches,
): Promise<void> {
  const target: PlaceTarget = Buffer.isBuffer(window) ? (window.buffer as SharedArrayBuffer) : { fd: window.fd, base: window.offset };
  const byObject = new Map<string, Piece<ExtentRef>[]>();
  const byChunk = new Map<string, Piece<ChunkVersionRef>[]>();
  const byPiece = new Map<FetchedPiece, Piece<PieceVersionRef>[]>();
  for (const q of pieces) {
    if (isChunk(q.ref)) {
      const list = byChunk.get(q.ref.key) ?? [];
      list.push(q as Piece<ChunkVersionRef>);
      byChunk.set(q.ref.key, list);
      continue;
    }
    if (q.ref.entry.payloadLength === 0) continue; // zero version: the window (or file) is already zeros
    if (isPieceVersion(q.ref)) {
      const list = byPiece.get(q.ref.piece) ?? [];
      list.push(q as Piece<PieceVersionRef>);
      byPiece.set(q.ref.piece, list);
      continue;
    }
    const list = byObject.get(q.ref.batch.key) ?? [];
    list.push(q as Piece<ExtentRef>);
    byObject.set(q.ref.batch.key, list);
  }
  const places = (qs: Piece<unknown>[]): [number, number, number][] =>
    qs.map((q) => {
      const dst = (q.blockIndex - firstBlock) * BLOCK_SIZE;
      return [q.offsetBlocks * BLOCK_SIZE, dst, Math.min(q.blockCount * BLOCK_SIZE, window.length - dst)];
    });
  /**
   * The payloads of each group's entries, held in `bytes` (which start at byte `at` of the
   * group's entries' frame: their object, or their piece), in one message to a worker: each
   * entry decoded and checked once, with every piece the window takes from it, and judged by
   * its group.
   */
  const placeEntries = async <E extends PayloadEntry>(bytes: Buffer | HeldRange, groups: { at: number; qs: Piece<{ entry: E }>[]; judge: (e: E, outcome: PayloadOutcome) => void }[], giveAway = false): Promise<void> => {
    const judged: { e: E; judge: (e: E, outcome: PayloadOutcome) => void }[] = [];
    const items = [];
    for (const { at, qs, judge } of groups) {
      const byEntry = new Map<E, Piece<unknown>[]>();
      for (const q of qs) {
        const list = byEntry.get(q.ref.entry);
        if (list) list.push(q);
        else byEntry.set(q.ref.entry, [q]);
      }
      for (const [e, eqs] of byEntry) {
        judged.push({ e, judge });
        items.push({ start: e.payloadOffset - at, end: e.payloadOffset - at + e.payloadLength, zstd: (e.flags & EXTENT_FLAGS.ZSTD) !== 0, length: e.blockCount * BLOCK_SIZE, crc: e.dataCrc, places: places(eqs) });
      }
    }
    const outcomes = await placeVerified(bytes, items, target, giveAway);
    judged.forEach(({ e, judge }, i) => judge(e, outcomes[i]));
  };
  // Chunks: one whole-object GET each, verified end to end: the header here (magic, header
  // CRC, lengths, its name and CRC-32C equal to the manifest's), the data's SHA-256 (the
  // chunk's name) in the worker. Not only its CRC-32C: a CRC the writer chose can be forged,
  // a content address cannot (docs/design.md, "Recovery").
  const chunkReads = [...byChunk.values()].map((qs) => async () => {
    const { key, chunk } = qs[0].ref;
    const body = await store.get(key);
    stats.gets++;
    stats.bytesRead += body.length;
    try {
      const checked = checkChunkHeader(body, chunk, key);
      const start = body.length - checked.payload.length;
      // The body is read for this chunk only: a store's fresh memory goes to the worker uncopied.
      const [outcome] = await placeVerified(body, [{ start, end: body.length, zstd: checked.zstd, length: checked.length, sha256: chunk.sha256, places: places(qs) }], target, store.freshReads === true);
      checkChunkData(checked, chunk, outcome as Parameters<typeof checkChunkData>[2], key);
    } catch (err) {
      if (err instanceof BackupError) throw new CorruptExtentError(err.where, err.reason);
      throw err;
    }
  });
  const extentSpan = (q: Piece<ExtentRef>): [number, number] => [q.ref.entry.payloadOffset, q.ref.entry.payloadOffset + q.ref.entry.payloadLength];
  const extentReads = [...byObject.entries()].flatMap(([key, qs]) => mergeReads(key, qs, extentSpan)).map((r) => async () => {
    // From the checked whole batch where a worker keeps it, else one ranged GET.
    const kept = checked.slice(r.key, r.start, r.end);
    let bytes: Buffer | HeldRange | undefined = kept;
    if (!bytes) {
      const got = await store.get(r.key, { start: r.start, end: r.end }, undefined, byObject.get(r.key)![0].ref.batch.versionId);
      stats.gets++;
      stats.bytesRead += got.length;
      bytes = got;
    }
    const judge = (e: ExtentRef['entry'], outcome: PayloadOutcome): void => {
      try {
        checkExtentData(e, outcome, `${r.key} block ${e.blockIndex}`);
      } catch (err) {
        if (err instanceof BatchError) throw new CorruptExtentError(err.where, err.reason);
        throw err;
      }
    };
    await placeEntries(bytes, [{ at: r.start, qs: r.items, judge }], !kept && store.freshReads === true); // read for these extents only
  });
  // Pieces: read whole and checked when the window was planned; only their versions' data is
  // left to check. All the pieces one GET brought that this window reads go to a worker in one
  // message: the body itself, given away (uncopied where it is the store's fresh memory), or,
  // where a worker keeps it for later windows too, by reference.
  const byStretch = new Map<Stretch, { piece: FetchedPiece; qs: Piece<PieceVersionRef>[] }[]>();
  for (const [piece, qs] of byPiece) {
    const list = byStretch.get(piece.stretch);
    if (list) list.push({ piece, qs });
    else byStretch.set(piece.stretch, [{ piece, qs }]);
  }
  const takenOf = new Map<Stretch, number>();
  for (const piece of fetched) takenOf.set(piece.stretch, (takenOf.get(piece.stretch) ?? 0) + 1);
  /** This window is done with its pieces of `stretch`: the last window to be lets the worker drop it. */
  const done = (stretch: Stretch): void => {
    stretch.left -= takenOf.get(stretch)!;
    if (stretch.left === 0 && stretch.held) release([stretch.held]);
  };
  for (const stretch of takenOf.keys()) if (!byStretch.has(stretch)) done(stretch); // nothing of it placed here
  const pieceReads = [...byStretch.entries()].map(([stretch, ps]) => async () => {
    // A piece's entries count their payloads from the piece's start, `at` bytes into the body.
    const groups = ps.map(({ piece, qs }) => ({
      at: -piece.at,
      qs,
      judge: (e: PieceVersionEntry, outcome: PayloadOutcome): void => {
        try {
          checkExtentData({ disk: 0, ...e }, outcome, `${piece.where} entry (seq ${e.seq}, block ${e.blockIndex})`);
        } catch (err) {
          if (err instanceof BatchError) throw new CorruptHistoryError(err.where, err.reason);
          throw err;
        }
      },
    }));
    if (!stretch.held) return placeEntries(stretch.body!, groups, store.freshReads === true);
    try {
      await placeEntries({ held: stretch.held, start: 0, end: stretch.bytes }, groups);
    } finally {
      done(stretch);
    }
  });
  // Every task settles before the fill does, failed or not: once a caller sees a fill fail, no
  // worker still puts data into its window or file (which the caller may close or reuse).
  const settled = await Promise.allSettled([...chunkReads, ...extentReads, ...pieceReads].map(run));
  const failed = settled.find((t): t is PromiseRejectedResult => t.status === 'rejected');
  if (failed) throw failed.reason;
}

/** What placing a stored payload needs of its entry (a batch extent or a piece version). */
type PayloadEntry = Pick<ExtentEntry, 'payloadOffset' | 'payloadLength' | 'flags' | 'blockCount' | 'dataCrc'>;

/** One ranged GET of an object serving several items (extents, pieces) of it. */
interface RangeRead<T> {
  key: string;
  start: number;
  end: number;
  items: T[];
}

/** Items of one object, [start, end) each, merged into ranged GETs where less than MERGE_GAP lies between them (and the GET would span at most `maxBytes`). */
function mergeReads<T>(key: string, items: T[], span: (t: T) => [number, number], maxBytes = Infinity): RangeRead<T>[] {
  const sorted = items.map((t) => ({ t, at: span(t) })).sort((a, b) => a.at[0] - b.at[0]);
  const reads: RangeRead<T>[] = [];
  for (const { t, at: [start, end] } of sorted) {
    const last = reads[reads.length - 1];
    if (last && start - last.end <= MERGE_GAP && Math.max(last.end, end) - last.start <= maxBytes) {
      last.end = Math.max(last.end, end);
      last.items.push(t);
    } else {
      reads.push({ key, start, end, items: [t] });
    }
  }
  return reads;
}

/** A piece whose stored payload fillWindow copies into the window (a zero version's is not). */
const placesData = (q: Piece<Ref>): boolean => isChunk(q.ref) || q.ref.entry.payloadLength > 0;

/** Byte ranges of the window that hold data, adjacent pieces merged (fewer, larger writes). */
function dataRanges(pieces: Piece<Ref>[], firstBlock: number, size: number): ByteRange[] {
  const out: ByteRange[] = [];
  for (const q of pieces) {
    const start = (q.blockIndex - firstBlock) * BLOCK_SIZE;
    const end = Math.min(size, start + q.blockCount * BLOCK_SIZE);
    const last = out[out.length - 1];
    if (last && last.end === start) last.end = end;
    else out.push({ start, end });
  }
  return out;
}

/** The parts of `a` outside `b` (both sorted and disjoint). */
export function subtract(a: readonly ByteRange[], b: readonly ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let j = 0;
  for (const r of a) {
    let start = r.start;
    while (j < b.length && b[j].end <= start) j++;
    for (let k = j; k < b.length && b[k].start < r.end && start < r.end; k++) {
      if (b[k].start > start) out.push({ start, end: b[k].start });
      start = Math.max(start, b[k].end);
    }
    if (start < r.end) out.push({ start, end: r.end });
  }
  return out;
}

function clip<R>(q: Piece<R>, first: number, last: number): Piece<R> {
  const start = Math.max(q.blockIndex, first);
  const end = Math.min(q.blockIndex + q.blockCount, last);
  return { blockIndex: start, blockCount: end - start, offsetBlocks: q.offsetBlocks + (start - q.blockIndex), ref: q.ref };
}

