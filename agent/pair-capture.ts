// Capture of one pair's writes (all its disks: one seq stream): the batch writer cuts
// batches into the local spool, the uploader drains the spool into the journal, the dirty
// map covers what no spooled batch holds. Modes (docs/design.md, "Agent"):
//
//   streaming  writes are captured; FLUSH = image synced + the open batch's new blocks in
//              its flush log (agent/flush-log.ts) + every batch cut before it spooled
//   overflow   the spool is full: writes only mark the dirty map (durably) until the
//              uploads make room; the batch that did not fit becomes a RESYNC marker
//   resyncing  regions marked dirty are read back from the images and resent in RESYNC
//              batches, writes are captured as usual; a RESYNC_END batch closes it
//
// The cloud side shows the pair RESYNCING from the first RESYNC batch to RESYNC_END.

import type { FileHandle } from 'node:fs/promises';
import { BATCH_FLAGS, BLOCK_SIZE, encodeBatch, type ExtentInput } from '../core/batch-format';
import type { DiskSpec } from '../core/model';
import type { ObjectStore } from '../replica/ports';
import { BatchWriter, type CutBatch, type CutOptions } from '../source/batch-writer';
import type { BodyPool } from '../source/body-pool';
import type { DirtyMap, Region } from './dirty-map';
import { encodeRecord, type FlushLog } from './flush-log';
import { MAX_BACKED_EXTENTS, overlaps, type ImageRange } from './image-backing';
import { RangeLock } from './range-lock';
import { readFully } from './read-fully';
import type { Spool } from './spool';
import { Uploader } from './uploader';

export type CaptureMode = 'streaming' | 'overflow' | 'resyncing';

/** What `livesync agent-status` shows of the capture. */
export interface CaptureStatus {
  mode: CaptureMode;
  /** Seq of the last batch cut (0: none yet). */
  lastCutSeq: number;
  /**
   * The seq whose batch holds (or, still open, will hold) every write the last acknowledged
   * FLUSH covered: an RP at this seq or later includes them (0: no FLUSH yet). Asked right
   * after a FLUSH's reply, it covers that FLUSH.
   */
  lastFlushSeq: number;
  /** FLUSHes acknowledged, and flush-log records written for them (several FLUSHes may share one write). */
  flushes: number;
  flushLogWrites: number;
  /** Highest seq such that it and every seq below it are secured: on file in the spool, or uploaded. */
  sealedThrough: number;
  /**
   * held: batches in memory only; imageBacked: of those, the ones whose bodies were let go (the
   * disk images give them back); filesWritten: batch files this process wrote (most batches never need one).
   */
  spool: { batches: number; bytes: number; limitBytes: number; held: number; imageBacked: number; filesWritten: number };
  upload: { inFlight: number; batches: number; bytes: number; lastError?: string };
  dirtyRegions: number;
  resyncPendingRegions: number;
  overflows: number;
  resyncs: number;
  resyncedRegions: number;
  resyncedBytes: number;
  failure?: string;
}

export interface PairCaptureOptions {
  pairId: string;
  disks: DiskSpec[];
  /** Open image of each disk, in `disks` order. */
  files: FileHandle[];
  store: ObjectStore;
  spool: Spool;
  /** Where a FLUSH makes the open batch's new blocks durable (agent/flush-log.ts). */
  flushLog: FlushLog;
  /** Where batch bodies come from: the spool's pool, which they go back to. */
  bodies?: BodyPool;
  dirty: DirtyMap;
  firstSeq: number;
  maxBatchBytes?: number;
  /** The upload interval: cut once the open batch's first write is this old, unless uploads are behind (default 1000 ms). */
  maxBatchAgeMs?: number;
  uploadConcurrency?: number;
  bandwidthBytesPerSec?: number;
  retryBaseDelayMs?: number;
  /** A region stays marked this long after its last write (default 2000 ms). */
  coolMs?: number;
  /** Makes "no seq below n is cut again" durable (the spool forgets uploaded batches). */
  persistNextSeq: (n: number) => Promise<void>;
  log?: (m: string) => void;
}

export class PairCapture {
  readonly writer: BatchWriter;
  readonly uploader: Uploader;
  /** Per disk: overlapping requests keep their arrival order. */
  readonly locks: RangeLock[];
  private modeValue: CaptureMode = 'streaming';
  private readonly sealed = new Set<number>();
  private sealedThroughValue: number;
  private persistedNextSeq = 0;
  private resyncTask: Promise<void> | undefined;
  private lastFlushSeq = 0;
  private flushCount = 0;
  private flushLogWrites = 0;
  private roomWaiters: (() => void)[] = [];
  /**
   * Mutations that may have changed their image range and are not yet recorded by the writer:
   * a batch cut meanwhile does not hold what the image holds there, and is not image-backed.
   */
  private readonly changing = new Set<ImageRange>();
  private stopping = false;
  private readonly sweepTimer: NodeJS.Timeout;
  /** Before the resync loop: what must run first (the comparison with the replica). */
  private resyncPrelude: (() => Promise<void>) | undefined;
  /** A fault that stopped uploads or the resync (shown in status; client I/O goes on). */
  failure: Error | undefined;
  readonly stats = { overflows: 0, resyncs: 0, resyncedRegions: 0, resyncedBytes: 0 };

  constructor(private readonly o: PairCaptureOptions) {
    this.locks = o.disks.map(() => new RangeLock());
    this.sealedThroughValue = o.firstSeq - 1;
    // A batch's dirty marks may clear once it is safe from a crash of this process: on file, or in the journal.
    o.spool.onSecured = (seq) => {
      this.sealed.add(seq);
      while (this.sealed.delete(this.sealedThroughValue + 1)) this.sealedThroughValue++;
    };
    // Held batches the images can give back are let go of instead of written (agent/image-backing.ts).
    o.spool.readImage = async (disk, offset, into) => {
      const n = await readFully(o.files[disk], into, offset);
      into.fill(0, n); // past the end of the image file: zeros
    };
    this.writer = new BatchWriter({
      pairId: o.pairId,
      disks: o.disks,
      sink: (b) => this.spoolBatch(b),
      firstSeq: o.firstSeq,
      maxBatchBytes: o.maxBatchBytes,
      maxBatchAgeMs: o.maxBatchAgeMs,
      // Uploads behind (a batch spooled and not yet in the journal): no cut by age, the
      // batch grows to maxBatchBytes; the link bounds the RPO then anyway.
      holdAgeCut: () => o.spool.count > 0,
      onCut: (seq, extents) => this.trackImageRanges(seq, extents),
      maxInFlight: 2, // spool writes: local, and each holds a batch in memory
      compressConcurrency: 1, // one zstd context at a time: pool threads' allocator arenas stay small
      bodies: o.bodies,
      readBlock: async (disk, block) => readRange(this.file(disk), block * BLOCK_SIZE, BLOCK_SIZE),
    });
    this.uploader = new Uploader({
      pairId: o.pairId,
      spool: o.spool,
      store: o.store,
      maxInFlight: o.uploadConcurrency,
      bandwidthBytesPerSec: o.bandwidthBytesPerSec,
      baseDelayMs: o.retryBaseDelayMs,
      beforeRemove: (seq) => this.persistNextSeqPast(seq),
      onUploaded: () => this.onRoom(),
      onCorrupt: (err) => {
        this.failure ??= err;
        // Client I/O goes on (a replication fault never fails the machine's writes).
        o.log?.(`${err.message}: uploads stop here (the journal cannot skip a seq); a restart drops it and compares with the replica`);
      },
      onConflict: (err) => {
        this.failure ??= err;
        // Client I/O goes on; the batch stays spooled. Another writer used this pair's seq (a
        // second agent, a restored state directory, or a compromised one): not overwritten.
        o.log?.(`${err.message}: uploads stop here; check which agent writes this pair before restarting it`);
      },
      log: o.log,
    });
    const coolMs = o.coolMs ?? 2000;
    this.sweepTimer = setInterval(() => void this.sweep(coolMs).catch((err: Error) => o.log?.(`dirty map: ${err.message}`)), Math.max(100, coolMs / 2));
    this.sweepTimer.unref();
    this.uploader.kick(); // batches a previous run left in the spool go first
  }

  get mode(): CaptureMode {
    return this.modeValue;
  }

  /**
   * A client mutation of [offset, offset+length) on disk `d`: marked, applied to the image,
   * captured. The caller holds the range lock.
   */
  async mutate(d: number, offset: number, length: number, toImage: () => Promise<void>, toWriter: (w: BatchWriter) => Promise<void>): Promise<void> {
    await this.o.dirty.beforeWrite(d, offset, length, this.modeValue !== 'overflow');
    let seq: number | undefined;
    const changing: ImageRange = { disk: d, offset, length };
    this.changing.add(changing);
    try {
      // Batches the images back over this range are rebuilt first (no new one is: it is changing).
      await this.o.spool.beforeImageWrite(d, offset, length);
      await toImage();
      if (this.modeValue !== 'overflow') {
        const recorded = toWriter(this.writer);
        // Whole blocks are recorded before the writer returns (its promise is backpressure).
        if (offset % BLOCK_SIZE === 0 && length % BLOCK_SIZE === 0) this.changing.delete(changing);
        await recorded;
        seq = this.writer.nextSeq;
      }
    } finally {
      this.changing.delete(changing);
      // Not captured (overflow, or an error after the image may have changed): resync it.
      this.o.dirty.afterWrite(d, offset, length, this.modeValue === 'overflow' ? undefined : seq);
    }
  }

  /**
   * `mutate` at once, with no wait: only while streaming or resyncing, with every region of
   * the range marked durably already and the writer taking the data now. False: nothing was
   * done (the caller uses `mutate`). The caller checked that no request overlaps the range.
   */
  mutateNow(d: number, offset: number, length: number, toImage: () => void, toWriter: (w: BatchWriter) => void): boolean {
    if (this.modeValue === 'overflow' || !this.writer.canWriteNow(offset, length) || !this.o.dirty.markedOnFile(d, offset, length)) return false;
    // A batch whose body was let go relies on this range: `mutate` waits for its rebuild.
    if (this.o.spool.beforeImageWrite(d, offset, length)) return false;
    let seq: number | undefined;
    const changing: ImageRange = { disk: d, offset, length };
    this.changing.add(changing);
    try {
      toImage();
      toWriter(this.writer);
      seq = this.writer.nextSeq;
    } finally {
      this.changing.delete(changing);
      this.o.dirty.afterWriteNow(d, offset, length, seq);
    }
    return true;
  }

  /**
   * A FLUSH: every write captured so far becomes durable on local disk without a cut: the
   * open batch's blocks written since the last FLUSH go to its flush log (synced), after every
   * batch cut before it is spooled. Returns the seq whose batch holds them (see
   * CaptureStatus.lastFlushSeq). A boundary that must end a batch (an ACRP, an RP request) is `cut`.
   */
  async flush(): Promise<number> {
    const open = this.writer.nextSeq;
    const covered = this.writer.hasPending ? open : open - 1;
    const touched = this.writer.takeTouched();
    // The log of a seq is written only once every batch below it is spooled: a log found at
    // start-up never stands beyond a lost batch (the seq stream would have a hole).
    const before = this.writer.settled(open - 1).then(() => this.o.spool.syncThrough(open - 1));
    if (touched) {
      const appended = await this.o.flushLog.append(touched.seq, encodeRecord(touched.header, touched.extents), before);
      if (appended) this.flushLogWrites++;
      // Cut meanwhile, and its log already gone: the spooled batch holds these blocks.
      else {
        await this.writer.settled(touched.seq);
        await this.o.spool.syncThrough(touched.seq);
      }
      // A log that outgrows a batch (blocks rewritten between many FLUSHes while uploads are behind) is cut;
      // its records are raw, so against the writer's raw bound.
      if (this.o.flushLog.bytes(touched.seq) > 2 * this.writer.maxRawBatchBytes && this.writer.nextSeq === touched.seq) this.writer.cut();
    } else await before;
    this.flushCount++;
    this.lastFlushSeq = Math.max(this.lastFlushSeq, covered);
    return covered;
  }

  /** Cuts (with `opts`) and waits until every batch cut so far is in the spool. Returns the last seq. */
  async cut(opts: CutOptions = {}): Promise<number> {
    const seq = await this.writer.flush(opts);
    await this.o.spool.syncThrough(seq);
    this.lastFlushSeq = Math.max(this.lastFlushSeq, seq);
    return seq;
  }

  /** Starts resyncing the regions the dirty map holds (after `prelude`, e.g. a comparison with the replica). */
  startResync(prelude?: () => Promise<void>): void {
    if (prelude) this.resyncPrelude = prelude;
    if (this.resyncTask || this.stopping) return;
    this.modeValue = 'resyncing';
    this.writer.extraFlags = BATCH_FLAGS.RESYNC;
    this.stats.resyncs++;
    this.resyncTask = this.runResync()
      .catch((err: Error) => {
        this.failure ??= err;
        this.o.log?.(`resync failed: ${err.message}`);
      })
      .finally(() => {
        this.resyncTask = undefined;
        if (this.modeValue === 'overflow') this.onRoom(); // the room may have come while it wound down
      });
  }

  status(): CaptureStatus {
    return {
      mode: this.modeValue,
      lastCutSeq: this.writer.nextSeq - 1,
      lastFlushSeq: this.lastFlushSeq,
      flushes: this.flushCount,
      flushLogWrites: this.flushLogWrites,
      sealedThrough: this.sealedThroughValue,
      spool: {
        batches: this.o.spool.count,
        bytes: this.o.spool.bytes,
        limitBytes: this.o.spool.limitBytes,
        held: this.o.spool.heldCount,
        imageBacked: this.o.spool.imageBackedCount,
        filesWritten: this.o.spool.filesWritten,
      },
      upload: { inFlight: this.uploader.inFlight, batches: this.uploader.uploadedBatches, bytes: this.uploader.uploadedBytes, lastError: this.uploader.lastError },
      dirtyRegions: this.o.dirty.dirtyRegions,
      resyncPendingRegions: this.o.dirty.pendingResync,
      ...this.stats,
      failure: this.failure?.message,
    };
  }

  /**
   * Clean stop: cut what is pending into the spool, with RP_REQUESTED (also when nothing is
   * pending: the cloud side makes the state at the stop an RP at once), give the uploads
   * `drainMs` to empty it (what is left is uploaded by the next start), clear the map of
   * spooled regions.
   */
  async close(drainMs: number): Promise<void> {
    this.stopping = true;
    this.wakeRoomWaiters();
    await this.resyncTask;
    clearInterval(this.sweepTimer);
    await this.writer.close({ rp: true }).catch((err: Error) => this.o.log?.(`final cut failed: ${err.message}`));
    await this.o.flushLog.close();
    await this.uploader.idle(drainMs).catch((err: Error) => this.o.log?.(`${err.message}; the next start uploads them`));
    await this.uploader.stop();
    // A clean stop is trusted even after a reboot: every spooled batch must be on disk.
    await this.o.spool.syncThrough(this.writer.nextSeq - 1).catch((err: Error) => this.o.log?.(`spool sync failed: ${err.message}`));
    await this.sweep(0);
    await this.o.dirty.close();
    await this.o.persistNextSeq(this.writer.nextSeq);
  }

  /**
   * Clears the marks of cooled regions whose batches are secured (on file, or in the journal).
   * With `--sync-marks` the map is trusted after a host crash, so a cleared mark must not reach
   * the disk before the batch that holds its region's writes (held batches are written, and
   * spooled ones synced, only when something needs it: here, syncThrough does both).
   */
  private async sweep(coolMs: number): Promise<void> {
    const through = this.sealedThroughValue;
    if (this.o.dirty.syncMarks) await this.o.spool.syncThrough(through);
    await this.o.dirty.sweep(through, coolMs);
  }

  /**
   * At a cut: a batch of a few large data extents (a sequential write, as a rule) holds what
   * the images hold at their ranges, unless a mutation in flight has changed one and is not
   * recorded yet (`changing`); the spool may then let its body go while uploads are behind.
   */
  private trackImageRanges(seq: number, extents: readonly ExtentInput[]): void {
    const ranges: ImageRange[] = [];
    for (const e of extents) {
      if (!e.data) continue;
      const r = { disk: e.disk, offset: e.blockIndex * BLOCK_SIZE, length: e.data.length };
      if (ranges.length === MAX_BACKED_EXTENTS) return;
      for (const c of this.changing) if (overlaps(c, r)) return;
      ranges.push(r);
    }
    this.o.spool.trackImageRanges(seq, ranges);
  }

  private file(disk: string): FileHandle {
    return this.o.files[this.o.disks.findIndex((d) => d.name === disk)];
  }

  /** The writer's sink. Runs synchronously inside the cut until the first await. */
  private async spoolBatch(b: CutBatch): Promise<void> {
    let body = b.body;
    if (this.modeValue === 'overflow' || !this.o.spool.fits(b.body.length)) {
      if (this.modeValue !== 'overflow') {
        this.modeValue = 'overflow';
        this.stats.overflows++;
        this.o.log?.(`spool full (${this.o.spool.bytes} of ${this.o.spool.limitBytes} bytes): tracking dirty regions until the uploads catch up`);
      }
      // This batch's writes (and any in flight) are resent by the resync; its seq carries the marker.
      this.o.dirty.escalate(b.seq);
      body = encodeBatch({ pairId: this.o.pairId, seq: b.seq, prevSeq: b.seq - 1, firstWriteMs: b.cutMs, cutMs: b.cutMs, flags: BATCH_FLAGS.RESYNC, disks: this.o.disks.map((d) => d.name) }, []);
      this.o.bodies?.give(b.body);
    }
    // Held in memory here (the uploader usually PUTs it from there): a FLUSH that needs it on
    // disk writes and syncs it (syncThrough), and so does the discard of its flush log, if a
    // FLUSH wrote one, before the log is deleted.
    await this.o.spool.add(b.seq, body, { durable: false });
    await this.o.flushLog.discard(b.seq, () => this.o.spool.syncThrough(b.seq));
    this.uploader.kick();
  }

  private async runResync(): Promise<void> {
    // The pair shows RESYNCING from this marker on; no RP until RESYNC_END.
    this.writer.cut({ force: true });
    const prelude = this.resyncPrelude;
    this.resyncPrelude = undefined;
    if (prelude) await prelude();
    while (this.o.dirty.pendingResync > 0) {
      for (const r of this.o.dirty.resyncRegions()) {
        await this.waitForRoom();
        if (this.modeValue !== 'resyncing' || this.stopping) return;
        await this.resend(r);
      }
    }
    if (this.modeValue !== 'resyncing' || this.stopping) return;
    this.writer.extraFlags = 0;
    await this.writer.flush({ resyncEnd: true });
    // An overflow during that last cut turned it into a marker: the mode says so.
    if (this.modeValue === 'resyncing') {
      this.modeValue = 'streaming';
      this.o.log?.(`resync complete at seq ${this.writer.nextSeq - 1}`);
    }
  }

  /** Reads a dirty region back from the image (no client write overlaps) and captures it. */
  private async resend(r: Region): Promise<void> {
    const release = await this.locks[r.disk].acquire(r.offset, r.offset + r.length);
    try {
      if (this.modeValue !== 'resyncing') return;
      const data = await readRange(this.o.files[r.disk], r.offset, r.length);
      await this.writer.write(this.o.disks[r.disk].name, r.offset, data);
      if (this.modeValue !== 'resyncing') return; // it went into a batch the overflow dropped
      this.o.dirty.resynced(r.disk, r.region, this.writer.nextSeq);
      this.stats.resyncedRegions++;
      this.stats.resyncedBytes += r.length;
    } finally {
      release();
    }
  }

  /** Resync paces itself: it waits while the spool is over half full. */
  private async waitForRoom(): Promise<void> {
    while (!this.stopping && this.o.spool.bytes > this.o.spool.limitBytes / 2) {
      await new Promise<void>((r) => this.roomWaiters.push(r));
    }
  }

  private onRoom(): void {
    this.wakeRoomWaiters();
    if (this.modeValue === 'overflow' && this.o.spool.bytes <= this.o.spool.limitBytes / 2 && !this.stopping) {
      this.o.log?.(`spool has room again: resyncing ${this.o.dirty.pendingResync} dirty regions`);
      this.startResync();
    }
  }

  private wakeRoomWaiters(): void {
    const w = this.roomWaiters;
    this.roomWaiters = [];
    for (const f of w) f();
  }

  /**
   * Before spooled batch `seq` is deleted: no seq up to it may be cut again. Not the
   * writer's next seq: batches cut after `seq` may still be lost in a crash, and their seqs
   * must then be reused, not skipped (a hole would stop the watermark).
   */
  private async persistNextSeqPast(seq: number): Promise<void> {
    if (this.persistedNextSeq > seq) return;
    this.persistedNextSeq = seq + 1;
    await this.o.persistNextSeq(seq + 1);
  }
}

/** Reads exactly `length` bytes (zeros past the end of a sparse file). */
export async function readRange(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await readFully(fh, buf, offset);
  return buf;
}
