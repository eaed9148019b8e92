// The source side: collects block writes, coalesces overwrites, cuts batches at
// consistency boundaries and uploads them to the pair's journal with retry and backoff.
// The NBD agent sits on top of this.

import type { BodyPool } from './body-pool';
import { BATCH_FLAGS, BLOCK_SIZE, batchObjectCrc32c, encodeBatchAsync, MAX_BATCH_DATA_BYTES, type BatchHeader, type ExtentInput } from '../core/batch-format';
import { CompressionGate } from '../core/compression-gate';
import { InvalidArgumentError } from '../core/errors';
import { checkAppTag, checkDiskName, checkPairId, journalKey } from '../core/keys';
import type { DiskSpec } from '../core/model';
import type { ObjectStore } from '../replica/ports';
import { sleep } from '../replica/concurrency';
import { ObjectConflictError, putOnce } from '../replica/put-once';

export interface RetryPolicy {
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface UploadedBatch {
  seq: number;
  key: string;
  bytes: number;
  dataBytes: number;
  flags: number;
  appTag?: string;
  cutMs: number;
}

/** A batch as cut: its seq, encoded bytes and what it holds. */
export interface CutBatch {
  seq: number;
  body: Buffer;
  dataBytes: number;
  flags: number;
  appTag?: string;
  cutMs: number;
}

/** Default target size of a stored batch. */
const DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024;
/** Default bound on a batch's raw (distinct pending) bytes, as a multiple of maxBatchBytes. */
const DEFAULT_RAW_FACTOR = 4;
/** Slab chunk size at most: a batch's pending data takes chunks as it grows. */
const MAX_CHUNK_BYTES = 4 * 1024 * 1024;
/** Batches encoded lately whose sizes estimate how the next one compresses. */
const MEASURED_KEPT = 4;

/**
 * Where cut batches go, once encoded. Called in seq order (the calls' promises may overlap);
 * the writer waits for them before `flush` resolves and counts them against maxInFlight.
 * A rejection fails the writer.
 */
export type BatchSink = (batch: CutBatch) => Promise<void>;

export interface BatchWriterOptions {
  pairId: string;
  disks: DiskSpec[];
  /** Uploads each batch to the journal with retry (unless `sink` is given). */
  store?: ObjectStore;
  /** Instead of uploading: hand each batch to this (the agent's spool). */
  sink?: BatchSink;
  /** Seq of the first batch this writer cuts (default 1: a new pair). */
  firstSeq?: number;
  /**
   * Target stored size of a batch (default 8 MiB): a batch is cut once this many bytes of
   * distinct blocks are pending, or k times as many while recent batches were stored at no
   * more than 1/k of their raw bytes (k ≤ maxRawBatchBytes / maxBatchBytes; see `limit`).
   */
  maxBatchBytes?: number;
  /** Hard bound on a batch's distinct pending bytes, whatever it compresses to (default 4 × maxBatchBytes). */
  maxRawBatchBytes?: number;
  /** Cut once the oldest pending write is this old (default 1000 ms; 0 disables). */
  maxBatchAgeMs?: number;
  /** Uploads in flight before `write` waits (default 4). */
  maxInFlight?: number;
  /** Extents of one batch compressed at once (default 4; the agent uses 1 to save memory). */
  compressConcurrency?: number;
  /** Where bodies come from (default: a new buffer each); the sink gives them back. */
  bodies?: BodyPool;
  retry?: Partial<RetryPolicy>;
  /** Current contents of a block, for writes that cover only part of one. */
  readBlock?: (disk: string, blockIndex: number) => Promise<Buffer>;
  clock?: () => number;
  /**
   * While this says true, the age rule does not cut (the agent: a backlog of batches not yet
   * uploaded; the open batch grows to its size limit instead, so a slow link gets fewer, larger objects).
   */
  holdAgeCut?: () => boolean;
  /**
   * Called synchronously when a batch is cut, before the write that caused it (if any) is
   * recorded, with what the batch holds (data extents are views of the writer's buffers: read
   * them now, or not at all).
   */
  onCut?: (seq: number, extents: readonly ExtentInput[]) => void;
  /** After each upload by the default sink (with the key it went to). */
  onUploaded?: (b: UploadedBatch) => void;
}

export interface CutOptions {
  /** Mark the boundary application-consistent (an ACRP) with this tag. */
  appTag?: string;
  /** Ask for a crash-consistent RP at this boundary regardless of the interval. */
  rp?: boolean;
  /** The resync is complete at this boundary (BATCH_FLAGS.RESYNC_END). */
  resyncEnd?: boolean;
  /** Cut even with nothing pending (a marker batch, e.g. the start of a resync). */
  force?: boolean;
}

/** What `takeTouched` hands out: the open batch's blocks written since the previous take, copied. */
export interface TouchedBlocks {
  /** Seq of the open batch, which holds them. */
  seq: number;
  /** Header of a batch of that seq (flags: the writer's extraFlags; cutMs: now). */
  header: BatchHeader;
  extents: ExtentInput[];
}

/**
 * A block's pending content: its slot in the batch's slab (≥ 0), or zeros (trim /
 * write-zeroes): -1, or -(slot + 2) when it had data first (the slot stays its own).
 */
type Pending = Map<number, number>;
const isZeroed = (v: number): boolean => v < 0;
/** The block's slot, with data now or before it was zeroed; undefined if it never had data. */
const slotOf = (v: number): number | undefined => (v >= 0 ? v : v === -1 ? undefined : -v - 2);
/** A pending zeroed run of blocks [start, end): large TRIMs cost one entry, not one per block. */
interface ZeroRun {
  start: number;
  end: number;
}

/** Zeroing at least this many blocks is kept as a run (mkfs may discard a whole disk). */
export const ZERO_RUN_BLOCKS = 256;
const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE);

/** Whether the block at byte `at` of `buf` is all zeros (most data blocks answer at their first byte). */
function isZeroBlock(buf: Buffer, at: number): boolean {
  return buf[at] === 0 && buf[at + BLOCK_SIZE - 1] === 0 && buf.compare(ZERO_BLOCK, 0, BLOCK_SIZE, at, at + BLOCK_SIZE) === 0;
}

const DEFAULT_RETRY: RetryPolicy = { attempts: 10, baseDelayMs: 100, maxDelayMs: 10_000 };

/** Full jitter: spreads the retries of many agents after a shared outage. */
export function backoffMs(p: Pick<RetryPolicy, 'baseDelayMs' | 'maxDelayMs'>, attempt: number): number {
  return Math.random() * Math.min(p.maxDelayMs, p.baseDelayMs * 2 ** (attempt - 1));
}

/**
 * Callers await each write before the next one that may overlap it (the NBD agent orders
 * overlapping requests): a write covering part of a block reads that block first.
 */
export class BatchWriter {
  private readonly diskIndex: Map<string, number>;
  private readonly pending: Pending[];
  /**
   * The pending blocks' data, one 4 KiB slot per distinct block, so a write costs a copy and
   * no allocation: slot s is in chunk ⌊s / chunkSlots⌋. Chunks are taken as the batch grows
   * (a batch within maxBatchBytes takes one, as a rule) and reused once the batch is encoded.
   */
  private slab: Buffer[] = [];
  private slots = 0;
  private readonly spareChunks: Buffer[] = [];
  private readonly chunkSlots: number;
  /** Distinct pending bytes and stored bytes of the last batches encoded (newest last). */
  private readonly measured: { raw: number; stored: number }[] = [];
  /** The open batch's bound on distinct pending bytes, fixed at its first use in the batch. */
  private batchLimit: number | undefined;
  /** Across batches: a source whose data has not been compressing is stored raw for a while. */
  private readonly gate = new CompressionGate();
  private readonly zeroRuns: ZeroRun[][];
  /** Per disk: blocks of the open batch written since the last takeTouched, and how many of its zero runs were taken. */
  private readonly touched: Set<number>[];
  private readonly runsTaken: number[];
  private pendingBytes = 0;
  private firstWriteMs: number | undefined;
  private nextSeqValue: number;
  private readonly inFlight = new Set<Promise<void>>();
  /** The same, by seq: `settled` waits for those up to a seq. */
  private readonly inFlightBySeq = new Map<number, Promise<void>>();
  private failure: Error | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly sink: BatchSink;
  /** Sink calls in seq order: each waits for the one before (uploads themselves overlap). */
  private sinkChain: Promise<void> = Promise.resolve();
  /** OR-ed into the flags of every batch cut (the agent sets BATCH_FLAGS.RESYNC while resyncing). */
  extraFlags = 0;
  private readonly o: Required<Omit<BatchWriterOptions, 'readBlock' | 'onCut' | 'onUploaded' | 'retry' | 'store' | 'sink' | 'bodies' | 'holdAgeCut'>> &
    Pick<BatchWriterOptions, 'readBlock' | 'onCut' | 'onUploaded' | 'bodies' | 'holdAgeCut'> & { retry: RetryPolicy };

  constructor(options: BatchWriterOptions) {
    checkPairId(options.pairId);
    for (const d of options.disks) {
      checkDiskName(d.name);
      if (!Number.isSafeInteger(d.sizeBytes) || d.sizeBytes <= 0 || d.sizeBytes % BLOCK_SIZE) throw new InvalidArgumentError(`disk '${d.name}': size ${d.sizeBytes} is not a positive multiple of 4 KiB`);
    }
    if (options.disks.length === 0 || new Set(options.disks.map((d) => d.name)).size !== options.disks.length) {
      throw new InvalidArgumentError(`pair '${options.pairId}' needs disks with distinct names`);
    }
    const { store, sink, ...given } = options;
    // An option passed as undefined takes its default.
    const rest = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) as typeof given;
    if (!sink && !store) throw new InvalidArgumentError('a batch writer needs a store or a sink');
    this.o = {
      firstSeq: 1,
      maxBatchBytes: DEFAULT_MAX_BATCH_BYTES,
      maxRawBatchBytes: DEFAULT_RAW_FACTOR * (rest.maxBatchBytes ?? DEFAULT_MAX_BATCH_BYTES),
      maxBatchAgeMs: 1000,
      maxInFlight: 4,
      compressConcurrency: 4,
      clock: Date.now,
      ...rest,
      retry: { ...DEFAULT_RETRY, ...options.retry },
    };
    this.sink =
      sink ??
      (async (b) => {
        const key = await this.upload(store!, journalKey(this.o.pairId, b.seq), b.body);
        this.o.onUploaded?.({ seq: b.seq, key, bytes: b.body.length, dataBytes: b.dataBytes, flags: b.flags, appTag: b.appTag, cutMs: b.cutMs });
      });
    const { maxBatchBytes, maxRawBatchBytes } = this.o;
    if (!Number.isSafeInteger(maxBatchBytes) || maxBatchBytes < BLOCK_SIZE) throw new InvalidArgumentError(`maxBatchBytes ${maxBatchBytes} is not an integer of at least 4096`);
    if (!Number.isSafeInteger(maxRawBatchBytes) || maxRawBatchBytes < maxBatchBytes) {
      throw new InvalidArgumentError(`maxRawBatchBytes ${maxRawBatchBytes} is not an integer of at least maxBatchBytes (${maxBatchBytes})`);
    }
    this.chunkSlots = Math.ceil(Math.min(maxBatchBytes, MAX_CHUNK_BYTES) / BLOCK_SIZE);
    this.diskIndex = new Map(options.disks.map((d, i) => [d.name, i]));
    this.pending = options.disks.map(() => new Map());
    this.zeroRuns = options.disks.map(() => []);
    this.touched = options.disks.map(() => new Set());
    this.runsTaken = options.disks.map(() => 0);
    this.nextSeqValue = this.o.firstSeq;
    if (this.o.maxBatchAgeMs > 0) {
      // Checked ten times per interval (at most every 100 ms): a batch is cut within a tenth of its age limit.
      this.timer = setInterval(() => this.cutIfOld(), Math.max(10, Math.min(100, this.o.maxBatchAgeMs / 10)));
      this.timer.unref();
    }
  }

  /** Seq the next cut batch will get. */
  get nextSeq(): number {
    return this.nextSeqValue;
  }

  /** Whether the open batch holds anything (a write or a zeroed range). */
  get hasPending(): boolean {
    return this.pending.some((m) => m.size > 0) || this.zeroRuns.some((r) => r.length > 0);
  }

  get maxBatchBytes(): number {
    return this.o.maxBatchBytes;
  }

  /** The bound on any batch's distinct pending bytes (a batch's raw size is at most this). */
  get maxRawBatchBytes(): number {
    return this.o.maxRawBatchBytes;
  }

  /**
   * The open batch's bound on distinct pending bytes: maxBatchBytes × k, k = ⌊1 / r⌋ within
   * [1, maxRawBatchBytes / maxBatchBytes], so the batch is expected to be stored in
   * maxBatchBytes or less. r (1 before any batch was encoded) is the stored/raw ratio of the
   * last four batches encoded together (by bytes: a small age-cut batch of a few raw 4 KiB
   * blocks barely counts), or the ratio of either of the last two if it held at least a
   * quarter of maxBatchBytes and was worse: a large batch that did not compress ends the
   * growth at once. Fixed for the batch at its first use, so a measurement arriving meanwhile
   * never splits an operation.
   */
  private limit(): number {
    if (this.batchLimit === undefined) {
      const m = this.measured;
      let r = m.length ? m.reduce((n, x) => n + x.stored, 0) / m.reduce((n, x) => n + x.raw, 0) : 1;
      for (const x of m.slice(-2)) if (x.raw >= this.o.maxBatchBytes / 4) r = Math.max(r, x.stored / x.raw);
      const maxK = Math.floor(this.o.maxRawBatchBytes / this.o.maxBatchBytes);
      const k = Math.max(1, Math.min(maxK, Math.floor(1 / r)));
      // Never past what a decoder accepts, whatever the options (core/batch-format.ts).
      this.batchLimit = Math.min(k * this.o.maxBatchBytes, MAX_BATCH_DATA_BYTES);
    }
    return this.batchLimit;
  }

  /** A batch of `rawBytes` distinct pending bytes was stored in `storedBytes`. */
  private measure(rawBytes: number, storedBytes: number): void {
    if (rawBytes === 0) return;
    this.measured.push({ raw: rawBytes, stored: storedBytes });
    if (this.measured.length > MEASURED_KEPT) this.measured.shift();
  }

  /**
   * The open batch's blocks written (or zeroed) since the previous take or cut, copied (later
   * writes do not change them); undefined if there are none. The agent's FLUSH logs them.
   */
  takeTouched(): TouchedBlocks | undefined {
    this.throwIfFailed();
    const extents: ExtentInput[] = [];
    this.zeroRuns.forEach((runs, disk) => {
      for (let i = this.runsTaken[disk]; i < runs.length; i++) extents.push({ disk, blockIndex: runs[i].start, zeroBlocks: runs[i].end - runs[i].start });
      this.runsTaken[disk] = runs.length;
    });
    this.touched.forEach((set, disk) => {
      if (set.size === 0) return;
      const m = this.pending[disk];
      const blocks = [...set].sort((a, b) => a - b);
      set.clear();
      for (let i = 0; i < blocks.length; ) {
        const zero = isZeroed(m.get(blocks[i])!);
        let j = i + 1;
        while (j < blocks.length && blocks[j] === blocks[j - 1] + 1 && isZeroed(m.get(blocks[j])!) === zero) j++;
        if (zero) extents.push({ disk, blockIndex: blocks[i], zeroBlocks: j - i });
        else {
          const data = Buffer.allocUnsafe((j - i) * BLOCK_SIZE);
          for (let k = i; k < j; k++) this.slotData(m.get(blocks[k])!).copy(data, (k - i) * BLOCK_SIZE);
          extents.push({ disk, blockIndex: blocks[i], data });
        }
        i = j;
      }
    });
    if (extents.length === 0) return undefined;
    const seq = this.nextSeqValue;
    const now = this.o.clock();
    const header: BatchHeader = { pairId: this.o.pairId, seq, prevSeq: seq - 1, firstWriteMs: this.firstWriteMs ?? now, cutMs: now, flags: this.extraFlags, disks: this.o.disks.map((d) => d.name) };
    return { seq, header, extents };
  }

  /** Resolves once every batch cut so far with a seq up to `seq` is stored (rejects if the writer failed). */
  async settled(seq: number): Promise<void> {
    const waits = [...this.inFlightBySeq].filter(([s]) => s <= seq).map(([, p]) => p);
    if (waits.length) await Promise.all(waits);
    this.throwIfFailed();
  }

  /**
   * Records a write of `data` at byte `offset` of `disk`. Resolves once accepted
   * (backpressure). A write of whole blocks is recorded before this returns.
   */
  async write(disk: string, offset: number, data: Buffer): Promise<void> {
    const d = this.checkRange(disk, offset, data.length);
    const end = offset + data.length;
    this.makeRoom(offset, data.length);
    if (offset % BLOCK_SIZE === 0 && data.length % BLOCK_SIZE === 0) {
      this.putBlocks(d, offset / BLOCK_SIZE, data);
      return this.afterWrite();
    }
    for (let at = offset; at < end; ) {
      const block = Math.floor(at / BLOCK_SIZE);
      const inBlock = at - block * BLOCK_SIZE;
      const n = Math.min(BLOCK_SIZE - inBlock, end - at);
      const src = data.subarray(at - offset, at - offset + n);
      if (n === BLOCK_SIZE) {
        this.put(d, block, src);
      } else {
        const base = await this.currentBlock(disk, d, block);
        src.copy(base, inBlock);
        this.put(d, block, base);
      }
      at += n;
    }
    await this.afterWrite();
  }

  /** Whether `writeNow` takes a write of this shape: whole blocks, and no wait for the sink. */
  canWriteNow(offset: number, length: number): boolean {
    return offset % BLOCK_SIZE === 0 && length % BLOCK_SIZE === 0 && this.inFlight.size < this.o.maxInFlight && !this.failure;
  }

  /** `write` without a promise, for a write `canWriteNow` takes (anything else throws). */
  writeNow(disk: string, offset: number, data: Buffer): void {
    if (!this.canWriteNow(offset, data.length)) throw new Error(`write of ${data.length} bytes at ${offset} of disk '${disk}' cannot be taken at once`);
    const d = this.checkRange(disk, offset, data.length);
    this.makeRoom(offset, data.length);
    this.putBlocks(d, offset / BLOCK_SIZE, data);
  }

  /** Records that a byte range now reads as zeros (TRIM / WRITE_ZEROES); whole blocks before this returns, as `write`. */
  async zero(disk: string, offset: number, length: number): Promise<void> {
    const d = this.checkRange(disk, offset, length);
    this.makeRoom(offset, length);
    if (offset % BLOCK_SIZE !== 0 || length % BLOCK_SIZE !== 0) {
      // Partial blocks at the edges are ordinary writes of zeros.
      const head = Math.min(length, (BLOCK_SIZE - (offset % BLOCK_SIZE)) % BLOCK_SIZE);
      if (head) await this.write(disk, offset, Buffer.alloc(head));
      const bodyLen = Math.floor((length - head) / BLOCK_SIZE) * BLOCK_SIZE;
      if (bodyLen) await this.zero(disk, offset + head, bodyLen);
      const tail = length - head - bodyLen;
      if (tail) await this.write(disk, offset + head + bodyLen, Buffer.alloc(tail));
      return;
    }
    const start = offset / BLOCK_SIZE;
    const end = (offset + length) / BLOCK_SIZE;
    if (end - start >= ZERO_RUN_BLOCKS) {
      // Runs and blocks of one batch never overlap: cut first if this run would.
      if (this.overlapsPending(d, start, end)) this.cut();
      this.zeroRuns[d].push({ start, end });
      this.firstWriteMs ??= this.o.clock();
    } else {
      for (let b = start; b < end; b++) this.put(d, b, null);
    }
    await this.afterWrite();
  }

  /**
   * Cuts a batch at this boundary (every point between writes is crash-consistent).
   * An ACRP or RP request cuts even with no pending writes. Returns the seq, if any.
   */
  cut(opts: CutOptions = {}): number | undefined {
    this.throwIfFailed();
    if (opts.appTag !== undefined) checkAppTag(opts.appTag);
    const marked = opts.appTag !== undefined || opts.rp === true || opts.resyncEnd === true || opts.force === true;
    const empty = this.pending.every((m) => m.size === 0) && this.zeroRuns.every((r) => r.length === 0);
    if (empty && !marked) return undefined;
    const seq = this.nextSeqValue;
    const cutMs = this.o.clock();
    const flags =
      (opts.appTag ? BATCH_FLAGS.APP_CONSISTENT : 0) | (opts.rp ? BATCH_FLAGS.RP_REQUESTED : 0) | (opts.resyncEnd ? BATCH_FLAGS.RESYNC_END : 0) | this.extraFlags;
    const slab = this.slab;
    const extents = this.pendingExtents();
    const rawBytes = this.pendingBytes;
    const header = { pairId: this.o.pairId, seq, prevSeq: seq - 1, firstWriteMs: this.firstWriteMs ?? cutMs, cutMs, flags, appTag: opts.appTag, disks: this.o.disks.map((d) => d.name) };
    // Compression runs on the thread pool, so the caller's event loop keeps serving; batches
    // still reach the sink in seq order.
    const body = encodeBatchAsync(header, extents, { concurrency: this.o.compressConcurrency, gate: this.gate, alloc: this.o.bodies && ((n) => this.o.bodies!.take(n)) });
    // The encoded body holds copies: the slab's chunks serve later batches (at most two
    // batches' worth at the current limit are kept spare).
    const spares = 2 * Math.ceil(this.limit() / (this.chunkSlots * BLOCK_SIZE));
    this.slab = [];
    this.slots = 0;
    this.batchLimit = undefined;
    void body.then(
      (b) => {
        this.measure(rawBytes, b.length);
        for (const c of slab) if (this.spareChunks.length < spares) this.spareChunks.push(c);
      },
      () => {},
    );
    const dataBytes = extents.reduce((n, e) => n + (e.data?.length ?? (e.zeroBlocks ?? 0) * BLOCK_SIZE), 0);
    this.nextSeqValue++;
    this.firstWriteMs = undefined;
    this.pending.forEach((m) => m.clear());
    this.zeroRuns.forEach((r) => (r.length = 0));
    this.touched.forEach((t) => t.clear());
    this.runsTaken.fill(0);
    this.pendingBytes = 0;
    this.o.onCut?.(seq, extents);
    const started = this.sinkChain.then(async () => {
      const b = await body;
      return { b, stored: this.sink({ seq, body: b, dataBytes, flags, appTag: opts.appTag, cutMs }) };
    });
    this.sinkChain = started.then(
      () => {},
      () => {},
    );
    const upload = started
      .then(({ stored }) => stored)
      .catch((err: Error) => {
        this.failure ??= new Error(`batch ${seq} of pair '${this.o.pairId}' was not stored: ${err.message}`);
      });
    this.inFlight.add(upload);
    this.inFlightBySeq.set(seq, upload);
    void upload.finally(() => {
      this.inFlight.delete(upload);
      this.inFlightBySeq.delete(seq);
    });
    return seq;
  }

  /** Cuts (with `opts`) and waits until every batch cut so far is stored. Returns the last seq. */
  async flush(opts: CutOptions = {}): Promise<number> {
    this.cut(opts);
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
    this.throwIfFailed();
    return this.nextSeqValue - 1;
  }

  /** Stops the age rule and flushes (with `opts`: a clean stop of the agent asks for an RP). */
  async close(opts: CutOptions = {}): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.flush(opts);
  }

  private put(d: number, block: number, content: Buffer | null): void {
    if (this.zeroRuns[d].some((r) => block >= r.start && block < r.end)) this.cut();
    const m = this.pending[d];
    const v = m.get(block);
    if (v === undefined) {
      // makeRoom left room for the whole operation, unless it is larger than a batch:
      // only then is it split here.
      if (this.pendingBytes + BLOCK_SIZE > this.limit()) this.cut();
      this.pendingBytes += BLOCK_SIZE;
    }
    const slot = v === undefined ? undefined : slotOf(v);
    // All-zero data is stored as a zero extent: no payload at all.
    if (content === null || isZeroBlock(content, 0)) m.set(block, slot === undefined ? -1 : -slot - 2);
    else {
      // One slot per distinct block; the slab takes a chunk when a slot needs one.
      const s = slot ?? this.slots++;
      this.copyToSlots(content, s);
      m.set(block, s);
    }
    this.touched[d].add(block);
    this.firstWriteMs ??= this.o.clock();
  }

  /**
   * Whole blocks from `first` on (a write of `data.length / BLOCK_SIZE` blocks). When none of
   * them is pending or in a zero run and they fit the open batch (a sequential write, as a
   * rule), they take consecutive slots: one copy into the slab, and the run is one view of it
   * at the cut. An all-zero block keeps its slot, unused, as put does for data later zeroed.
   * Otherwise block by block through put (overwrites, zero runs, a write larger than a batch).
   */
  private putBlocks(d: number, first: number, data: Buffer): void {
    const n = data.length / BLOCK_SIZE;
    const m = this.pending[d];
    const fresh = n > 1 && this.pendingBytes + data.length <= this.limit() && !this.zeroRuns[d].some((r) => r.start < first + n && first < r.end);
    let i = 0;
    while (fresh && i < n && !m.has(first + i)) i++;
    if (i < n) {
      for (let at = 0; at < data.length; at += BLOCK_SIZE) this.put(d, first + at / BLOCK_SIZE, data.subarray(at, at + BLOCK_SIZE));
      return;
    }
    const s0 = this.slots;
    this.slots += n;
    this.pendingBytes += data.length;
    this.copyToSlots(data, s0);
    const touched = this.touched[d];
    for (i = 0; i < n; i++) {
      m.set(first + i, isZeroBlock(data, i * BLOCK_SIZE) ? -(s0 + i) - 2 : s0 + i);
      touched.add(first + i);
    }
    this.firstWriteMs ??= this.o.clock();
  }

  /** Copies whole blocks into consecutive slots from `first` on, across chunks, taking chunks as needed. */
  private copyToSlots(data: Buffer, first: number): void {
    for (let at = 0; at < data.length; ) {
      const s = first + at / BLOCK_SIZE;
      const c = Math.floor(s / this.chunkSlots);
      while (this.slab.length <= c) this.slab.push(this.spareChunks.pop() ?? Buffer.allocUnsafeSlow(this.chunkSlots * BLOCK_SIZE));
      const from = (s - c * this.chunkSlots) * BLOCK_SIZE;
      at += data.copy(this.slab[c], from, at); // up to the chunk's end
    }
  }

  /** View of `blocks` slots from `slot` on, within one chunk. */
  private slotData(slot: number, blocks = 1): Buffer {
    const c = Math.floor(slot / this.chunkSlots);
    const from = (slot - c * this.chunkSlots) * BLOCK_SIZE;
    return this.slab[c].subarray(from, from + blocks * BLOCK_SIZE);
  }

  /**
   * Batches end between writes: cut first if the blocks this operation touches would
   * overflow the batch. Only one operation larger than the batch's limit is split (in put):
   * a disk may tear such a write in a crash anyway.
   */
  private makeRoom(offset: number, length: number): void {
    const span = (Math.ceil((offset + length) / BLOCK_SIZE) - Math.floor(offset / BLOCK_SIZE)) * BLOCK_SIZE;
    if (this.pendingBytes > 0 && this.pendingBytes + span > this.limit()) this.cut();
  }

  private overlapsPending(d: number, start: number, end: number): boolean {
    if (this.zeroRuns[d].some((r) => r.start < end && start < r.end)) return true;
    for (const block of this.pending[d].keys()) if (block >= start && block < end) return true;
    return false;
  }

  private async currentBlock(disk: string, d: number, block: number): Promise<Buffer> {
    const pending = this.pending[d].get(block);
    if (pending !== undefined) return isZeroed(pending) ? Buffer.alloc(BLOCK_SIZE) : Buffer.from(this.slotData(pending));
    if (!this.o.readBlock) throw new InvalidArgumentError(`write to part of block ${block} of disk '${disk}' needs readBlock (writes must otherwise be 4 KiB aligned)`);
    const b = await this.o.readBlock(disk, block);
    if (b.length !== BLOCK_SIZE) throw new Error(`readBlock returned ${b.length} bytes for block ${block} of disk '${disk}'`);
    return Buffer.from(b);
  }

  private async afterWrite(): Promise<void> {
    while (this.inFlight.size >= this.o.maxInFlight) await Promise.race(this.inFlight);
    this.throwIfFailed();
  }

  private cutIfOld(): void {
    if (this.firstWriteMs === undefined || this.failure || this.o.clock() - this.firstWriteMs < this.o.maxBatchAgeMs || this.o.holdAgeCut?.()) return;
    try {
      this.cut();
    } catch (err) {
      this.failure = err as Error; // surfaced by the next write or flush, not an uncaught timer error
    }
  }

  /**
   * Pending blocks as extents of contiguous data or zeros, plus the zero runs. A run whose
   * slots are in block order is views of the slab, one per chunk it spans (extents side by side).
   */
  private pendingExtents(): ExtentInput[] {
    const out: ExtentInput[] = [];
    this.zeroRuns.forEach((runs, disk) => runs.forEach((r) => out.push({ disk, blockIndex: r.start, zeroBlocks: r.end - r.start })));
    this.pending.forEach((m, disk) => {
      const blocks = [...m.keys()].sort((a, b) => a - b);
      for (let i = 0; i < blocks.length; ) {
        const first = m.get(blocks[i])!;
        const zero = isZeroed(first);
        let j = i + 1;
        let adjacent = true; // slots in block order: the run is one view of the slab (a sequential write)
        for (; j < blocks.length && blocks[j] === blocks[j - 1] + 1 && isZeroed(m.get(blocks[j])!) === zero; j++) adjacent &&= m.get(blocks[j])! === m.get(blocks[j - 1])! + 1;
        if (zero) out.push({ disk, blockIndex: blocks[i], zeroBlocks: j - i });
        else if (!adjacent) out.push({ disk, blockIndex: blocks[i], data: Buffer.concat(blocks.slice(i, j).map((b) => this.slotData(m.get(b)!))) });
        else {
          for (let k = 0; k < j - i; ) {
            const n = Math.min(j - i - k, this.chunkSlots - ((first + k) % this.chunkSlots));
            out.push({ disk, blockIndex: blocks[i] + k, data: this.slotData(first + k, n) });
            k += n;
          }
        }
        i = j;
      }
    });
    return out;
  }

  private async upload(store: ObjectStore, key: string, body: Buffer): Promise<string> {
    const { attempts } = this.o.retry;
    for (let attempt = 1; ; attempt++) {
      try {
        await putOnce(store, key, body, { crc32c: batchObjectCrc32c(body) });
        return key;
      } catch (err) {
        if (err instanceof ObjectConflictError) throw err; // another batch holds the seq: retrying changes nothing
        if (attempt >= attempts) throw new Error(`upload to ${key} failed after ${attempts} attempts: ${(err as Error).message}`);
        await sleep(backoffMs(this.o.retry, attempt));
      }
    }
  }

  private checkRange(disk: string, offset: number, length: number): number {
    this.throwIfFailed();
    const d = this.diskIndex.get(disk);
    if (d === undefined) throw new InvalidArgumentError(`unknown disk '${disk}' (pair '${this.o.pairId}' has ${[...this.diskIndex.keys()].join(', ')})`);
    const size = this.o.disks[d].sizeBytes;
    if (!Number.isInteger(offset) || offset < 0 || offset + length > size) {
      throw new InvalidArgumentError(`write of ${length} bytes at ${offset} is outside disk '${disk}' (${size} bytes)`);
    }
    return d;
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}
