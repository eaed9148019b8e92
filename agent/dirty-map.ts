// The agent's persistent dirty-region map: one bit per region of each disk, set (durably)
// before a write reaches the image and cleared once the batch holding that write is in the
// spool. After an unclean stop, every set bit is a region the image may have that the
// journal lacks; while the spool is full, writes only set bits. Either way those regions
// are resynced later. Like DRBD's activity log and bitmap, hot regions stay set for a
// while so that a busy region does not pay a sync per write (docs/design.md, "Agent").
//
// File `dirty.map`: a 16-byte header ("LSDM", version u16, disk count u16, 8 reserved
// bytes), then per disk {sizeBytes u64, regionBytes u32} (12 bytes), then each disk's
// bitmap (bit r of byte r>>3, least significant first), padded to 4 KiB pages.

import { writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { DiskSpec } from '../core/model';

const MAGIC = 'LSDM';
const VERSION = 1;
const PAGE = 4096;
/** Smallest region; larger disks get larger regions so a bitmap stays ≤ 512 KiB. */
const MIN_REGION = 64 * 1024;
const MAX_REGIONS = 1 << 22;

export function regionBytesFor(sizeBytes: number): number {
  let r = MIN_REGION;
  while (Math.ceil(sizeBytes / r) > MAX_REGIONS) r *= 2;
  return r;
}

interface DiskBits {
  sizeBytes: number;
  regionBytes: number;
  regions: number;
  /** Mirrors the file: set = hot or needs resync. */
  onDisk: Uint8Array;
  /** Set = the journal may lack this region's current content: resend it. */
  resync: Uint8Array;
  fileOffset: number;
}

const has = (bits: Uint8Array, r: number): boolean => (bits[r >> 3] & (1 << (r & 7))) !== 0;
const set = (bits: Uint8Array, r: number): void => void (bits[r >> 3] |= 1 << (r & 7));
const unset = (bits: Uint8Array, r: number): void => void (bits[r >> 3] &= ~(1 << (r & 7)));
/** One number per (disk, region) for the maps: regions < 2^32, disks < 2^16. */
const keyOf = (d: number, r: number): number => d * 2 ** 32 + r;

export interface Region {
  disk: number;
  region: number;
  offset: number;
  length: number;
}

export class DirtyMap {
  /** Regions whose writes are captured, with the batch seq holding the latest. */
  private readonly captured = new Map<number, { seq: number; atMs: number }>();
  private readonly inflight = new Map<number, number>();
  /** Bitmap pages changed in memory and not yet written, by file offset. */
  private readonly changedPages = new Set<number>();
  /**
   * Pages holding a mark that is not on file yet (not synced, with syncMarks), each with the
   * commit that writes it. A write into such a region waits for that commit too, not only
   * the write that set the mark: else its data could reach the image before the mark.
   */
  private readonly unsettled = new Map<number, Promise<void>>();
  private commit: Promise<void> | undefined;
  private commitQueued: Promise<void> | undefined;
  private wantSync = false;
  private resyncCount = 0;

  private constructor(
    private readonly fh: FileHandle,
    private readonly disks: DiskBits[],
    /**
     * fdatasync new marks before the image write. Without it a mark is written (to the page
     * cache) before the image write, which survives an agent crash but not a host crash;
     * the agent then compares with the replica after a reboot instead (agent.ts).
     */
    readonly syncMarks: boolean,
  ) {}

  /**
   * Opens the map for these disks. Every bit found set needs a resync (its region may hold
   * writes no batch has). `trusted` is false when the file was missing or describes other disks.
   */
  static async open(path: string, disks: DiskSpec[], syncMarks = false): Promise<{ map: DirtyMap; trusted: boolean; existed: boolean }> {
    let at = 16 + 12 * disks.length;
    const layout: DiskBits[] = disks.map((d) => {
      const regionBytes = regionBytesFor(d.sizeBytes);
      const regions = Math.ceil(d.sizeBytes / regionBytes);
      const bytes = Math.ceil(Math.ceil(regions / 8) / PAGE) * PAGE;
      at = Math.ceil(at / PAGE) * PAGE;
      const bits: DiskBits = { sizeBytes: d.sizeBytes, regionBytes, regions, onDisk: new Uint8Array(bytes), resync: new Uint8Array(bytes), fileOffset: at };
      at += bytes;
      return bits;
    });
    const header = Buffer.alloc(16 + 12 * disks.length);
    header.write(MAGIC, 0, 'latin1');
    header.writeUInt16LE(VERSION, 4);
    header.writeUInt16LE(disks.length, 6);
    layout.forEach((d, i) => {
      header.writeBigUInt64LE(BigInt(d.sizeBytes), 16 + 12 * i);
      header.writeUInt32LE(d.regionBytes, 24 + 12 * i);
    });

    let fh = await open(path, 'r+').catch(() => undefined);
    const existed = fh !== undefined;
    let trusted = false;
    if (fh) {
      const old = Buffer.alloc(header.length);
      await fh.read(old, 0, old.length, 0);
      trusted = old.equals(header) && (await fh.stat()).size === at;
      if (trusted) for (const d of layout) await fh.read(d.onDisk, 0, d.onDisk.length, d.fileOffset);
      else await fh.close();
    }
    if (!trusted) {
      fh = await open(path, 'w+');
      await fh.write(header, 0, header.length, 0);
      await fh.truncate(at);
      await fh.datasync();
    }
    const map = new DirtyMap(fh!, layout, syncMarks);
    for (const d of layout) {
      d.resync.set(d.onDisk);
      for (let r = 0; r < d.regions; r++) if (has(d.resync, r)) map.resyncCount++;
    }
    return { map, trusted, existed };
  }

  /** Regions set in the map (hot or awaiting resync). */
  get dirtyRegions(): number {
    let n = 0;
    for (const d of this.disks) for (const byte of d.onDisk) n += popcount(byte);
    return n;
  }

  /** Regions awaiting resync. */
  get pendingResync(): number {
    return this.resyncCount;
  }

  regionBytes(disk: number): number {
    return this.disks[disk].regionBytes;
  }

  /**
   * Before a write reaches the image: its regions are marked (durably, if newly marked).
   * Without `capturing` (the spool is full) they also need a resync.
   */
  async beforeWrite(disk: number, offset: number, length: number, capturing: boolean): Promise<void> {
    const fresh: number[] = [];
    const waits: Promise<void>[] = [];
    for (const r of this.regionsOf(disk, offset, length)) {
      this.enter(disk, r);
      if (!capturing) this.needResync(disk, r);
      const page = this.pageOf(this.disks[disk], r);
      if (this.mark(disk, r)) fresh.push(page);
      else if (this.unsettled.has(page)) waits.push(this.unsettled.get(page)!); // marked by a write still persisting it
    }
    // The mark reaches the file before the image write does; concurrent marks share a write.
    if (fresh.length) {
      const commit = this.persist(this.syncMarks);
      for (const page of fresh) this.unsettleUntil(page, commit);
      waits.push(commit);
    }
    if (waits.length) await Promise.all(waits);
  }

  /**
   * Whether a write there needs no beforeWrite: every region of the range marked, and on
   * file. The caller then writes and captures it synchronously (no sweep can come between)
   * and calls afterWriteNow.
   */
  markedOnFile(disk: number, offset: number, length: number): boolean {
    const d = this.disks[disk];
    const last = Math.floor((offset + Math.max(length, 1) - 1) / d.regionBytes);
    for (let r = Math.floor(offset / d.regionBytes); r <= last; r++) if (!has(d.onDisk, r) || this.unsettled.has(this.pageOf(d, r))) return false;
    return true;
  }

  /** A write into region r has begun (afterWrite ends it): the sweep leaves the region set meanwhile. */
  private enter(disk: number, r: number): void {
    const k = keyOf(disk, r);
    this.inflight.set(k, (this.inflight.get(k) ?? 0) + 1);
  }

  /** The page's mark is not on file (synced, with syncMarks) until `commit` settles. */
  private unsettleUntil(page: number, commit: Promise<void>): void {
    this.unsettled.set(page, commit);
    const settled = (): void => {
      if (this.unsettled.get(page) === commit) this.unsettled.delete(page);
    };
    commit.then(settled, settled);
  }

  /** After the write: `seq` is the batch that holds it (undefined: not captured). */
  afterWrite(disk: number, offset: number, length: number, seq: number | undefined, nowMs = Date.now()): void {
    for (const r of this.regionsOf(disk, offset, length)) {
      const k = keyOf(disk, r);
      const n = (this.inflight.get(k) ?? 1) - 1;
      if (n === 0) this.inflight.delete(k);
      else this.inflight.set(k, n);
    }
    this.afterWriteNow(disk, offset, length, seq, nowMs);
  }

  /** After a write that `markedOnFile` let go without beforeWrite (or the end of afterWrite). */
  afterWriteNow(disk: number, offset: number, length: number, seq: number | undefined, nowMs = Date.now()): void {
    const d = this.disks[disk];
    const last = Math.floor((offset + Math.max(length, 1) - 1) / d.regionBytes);
    for (let r = Math.floor(offset / d.regionBytes); r <= last; r++) {
      if (seq === undefined) this.needResync(disk, r);
      else if (!has(d.resync, r)) {
        const c = this.captured.get(keyOf(disk, r));
        if (!c) this.captured.set(keyOf(disk, r), { seq, atMs: nowMs });
        else {
          c.seq = Math.max(seq, c.seq);
          c.atMs = nowMs;
        }
      }
    }
  }

  /** The batches from `fromSeq` on are lost (spool overflow): their regions need a resync. */
  escalate(fromSeq: number): void {
    for (const [k, c] of this.captured) if (c.seq >= fromSeq) this.needResync(Math.floor(k / 2 ** 32), k % 2 ** 32);
    for (const k of this.inflight.keys()) this.needResync(Math.floor(k / 2 ** 32), k % 2 ** 32);
  }

  /** Marks the given regions for resync (found to differ from the replica). */
  async markResync(regions: Region[]): Promise<void> {
    for (const { disk, region } of regions) {
      this.needResync(disk, region);
      this.mark(disk, region);
    }
    await this.persist(true);
  }

  /** Regions awaiting resync, in disk and offset order (a snapshot). */
  *resyncRegions(): Generator<Region> {
    for (let disk = 0; disk < this.disks.length; disk++) {
      const d = this.disks[disk];
      for (let byte = 0; byte < d.resync.length; byte++) {
        if (d.resync[byte] === 0) continue;
        for (let bit = 0; bit < 8; bit++) {
          const r = byte * 8 + bit;
          if (r < d.regions && has(d.resync, r)) yield this.region(disk, r);
        }
      }
    }
  }

  /** Every region of a disk (checksum comparison walks them all). */
  region(disk: number, r: number): Region {
    const d = this.disks[disk];
    const offset = r * d.regionBytes;
    return { disk, region: r, offset, length: Math.min(d.regionBytes, d.sizeBytes - offset) };
  }

  regionCount(disk: number): number {
    return this.disks[disk].regions;
  }

  /** The region's content was resent in batch `seq`: it is an ordinary captured region now. */
  resynced(disk: number, r: number, seq: number, nowMs = Date.now()): void {
    const d = this.disks[disk];
    if (!has(d.resync, r)) return;
    unset(d.resync, r);
    this.resyncCount--;
    this.captured.set(keyOf(disk, r), { seq, atMs: nowMs });
  }

  /**
   * Clears regions whose latest write is in a spooled batch (seq ≤ sealedThrough), idle for
   * `coolMs` and not being written. Clears are written lazily: a lost clear costs a resend.
   */
  async sweep(sealedThrough: number, coolMs: number, nowMs = Date.now()): Promise<void> {
    for (const [k, c] of this.captured) {
      if (c.seq > sealedThrough || nowMs - c.atMs < coolMs || this.inflight.has(k)) continue;
      const disk = Math.floor(k / 2 ** 32);
      const r = k % 2 ** 32;
      this.captured.delete(k);
      const d = this.disks[disk];
      if (has(d.resync, r)) continue;
      unset(d.onDisk, r);
      this.pageChanged(d, r);
    }
    if (this.changedPages.size) await this.persist(false);
  }

  async close(): Promise<void> {
    await this.persist(true);
    await this.fh.close();
  }

  /** Indexes of the regions a byte range touches. */
  private *regionsOf(disk: number, offset: number, length: number): Generator<number> {
    const size = this.disks[disk].regionBytes;
    for (let r = Math.floor(offset / size), last = Math.floor((offset + Math.max(length, 1) - 1) / size); r <= last; r++) yield r;
  }

  /** Sets the region's bit in memory; true if it was clear (its page must then be written). */
  private mark(disk: number, r: number): boolean {
    const d = this.disks[disk];
    if (has(d.onDisk, r)) return false;
    set(d.onDisk, r);
    this.pageChanged(d, r);
    return true;
  }

  private pageChanged(d: DiskBits, r: number): void {
    this.changedPages.add(this.pageOf(d, r));
  }

  /** File offset of the bitmap page holding region r's bit. */
  private pageOf(d: DiskBits, r: number): number {
    return d.fileOffset + Math.floor((r >> 3) / PAGE) * PAGE;
  }

  private needResync(disk: number, r: number): void {
    const d = this.disks[disk];
    this.captured.delete(keyOf(disk, r));
    if (has(d.resync, r)) return;
    set(d.resync, r);
    this.resyncCount++;
  }

  /** Group commit: every page changed before this call is written (and synced) when it resolves. */
  private persist(sync: boolean): Promise<void> {
    this.wantSync ||= sync;
    if (!this.commit) return this.startCommit();
    // A commit is running: pages changed since then go in the next one.
    this.commitQueued ??= this.commit.then(() => {
      this.commitQueued = undefined;
      return this.startCommit();
    });
    return this.commitQueued;
  }

  private startCommit(): Promise<void> {
    const sync = this.wantSync;
    this.wantSync = false;
    this.commit = this.writePages(sync).finally(() => (this.commit = undefined));
    return this.commit;
  }

  private pageOwner(at: number): DiskBits {
    return this.disks.find((x) => at >= x.fileOffset && at < x.fileOffset + x.onDisk.length)!;
  }

  private async writePages(sync: boolean): Promise<void> {
    const pages = [...this.changedPages];
    this.changedPages.clear();
    for (const at of pages) {
      const d = this.pageOwner(at);
      writeSync(this.fh.fd, d.onDisk, at - d.fileOffset, PAGE, at); // page cache: cheaper than the pool round trip
    }
    if (sync && pages.length) await this.fh.datasync();
  }
}

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}
