// Instant access: the disks of an RP as NBD exports (agent/nbd-server.ts's BlockExport), read
// straight from the RP Store through the RP's reader (replica/rp-reader.ts, under an `export`
// reader lease held until close). Reads go through a bounded cache of windows shared by the
// disks; one fill serves every read of a window; sequential reads fill the next windows
// ahead; every window filled is also copied to local disk (bounded), which serves it again
// once the memory cache has let it go. Read-only, or writable into a copy-on-write overlay on
// local disk: nothing is ever written to the RP Store (docs/design.md, "Instant access
// (export)").

import { mkdir, mkdtemp, open, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockExport, Extent } from '../agent/nbd-server';
import { BLOCK_SIZE } from '../core/batch-format';
import { InvalidArgumentError } from '../core/errors';
import type { ByteRange, ObjectStore, ReplicaIndex } from './ports';
import { limiter } from './concurrency';
import { openRp, type RpReader, type RpReadOptions } from './rp-reader';
import { writeFully } from './write-fully';

const MiB = 1024 * 1024;

export interface RpExportOptions {
  /** Bytes of windows the cache may hold, filling ones included (default 256 MiB; at least two windows). */
  cacheBytes?: number;
  /** Bytes per window (default 4 MiB), rounded up to the reader's alignment (a compacted history's 4 MiB range). */
  windowBytes?: number;
  /** Windows filled ahead of a sequential run of reads (default 2). */
  readaheadWindows?: number;
  /** GETs in flight over all windows (default 16). */
  concurrency?: number;
  /**
   * Bytes of data the local copy of the windows read may hold (copy on read, in a temporary
   * directory removed at close; default 2 GiB; 0: none).
   */
  localCopyBytes?: number;
  /**
   * Writable: each disk gets a copy-on-write overlay in `dir` (`DISK.overlay`, sparse, and
   * `DISK.map`), which must not hold one already. Without `dir` the overlays go to a
   * temporary directory removed at close (the writes are discarded).
   */
  writable?: { dir?: string };
  log?: (m: string) => void;
}

/** What the cache did so far, and its bound. */
export interface ExportStats {
  cacheLimit: number;
  windowBytes: number;
  /** Bytes of windows held now (filling or filled). */
  cachedBytes: number;
  /** The most ever held at once: never above cacheLimit. */
  peakCachedBytes: number;
  /** Windows filled from the RP Store (readahead ones included). */
  fills: number;
  /** Window reads served by a window cached or being filled. */
  hits: number;
  /** Fills started ahead of a sequential run. */
  readaheads: number;
  /** Reads that waited for room in the cache. */
  waits: number;
  /** The reader's GETs and bytes. */
  gets: number;
  bytesRead: number;
  /** 4 KiB blocks the overlays hold (written or zeroed). */
  overlayBlocks: number;
  /** Window reads served by the local copy; the windows it holds, and their bytes of data (≤ localCopyBytes). */
  localHits: number;
  localWindows: number;
  localBytes: number;
}

/** An RP's disks as block exports; close() ends them and gives up the lease. */
export interface RpExport {
  reader: RpReader;
  exports: BlockExport[];
  /** The overlays' directory (writable exports). */
  overlayDir?: string;
  /** The local copy's directory (removed at close). */
  localCopyDir?: string;
  stats(): ExportStats;
  close(): Promise<void>;
}

/** Opens RP `o.seq` of `o.pairId` under an `export` reader lease and exports its disks. */
export async function openRpExport(store: ObjectStore, index: ReplicaIndex, o: RpReadOptions & RpExportOptions): Promise<RpExport> {
  const reader = await openRp(store, index, { ...o, readerKind: 'export' });
  try {
    return await rpExport(reader, o, () => reader.close());
  } catch (err) {
    await reader.close();
    throw err;
  }
}

/** Exports the disks of an opened RP; close() runs `closeReader` once reads have stopped. */
export async function rpExport(reader: RpReader, o: RpExportOptions & { disks?: string[] }, closeReader: () => Promise<void>): Promise<RpExport> {
  const windowBytes = Math.ceil((o.windowBytes ?? 4 * MiB) / reader.alignBytes) * reader.alignBytes;
  const cacheBytes = o.cacheBytes ?? 256 * MiB;
  if (!Number.isSafeInteger(windowBytes) || windowBytes <= 0) throw new InvalidArgumentError(`export window of ${o.windowBytes} bytes is not a positive size`);
  if (!(cacheBytes >= 2 * windowBytes)) throw new InvalidArgumentError(`export cache of ${cacheBytes} bytes is less than two windows (${2 * windowBytes} bytes)`);
  const readahead = o.readaheadWindows ?? 2;
  const run = limiter(o.concurrency ?? 16);
  const log = o.log ?? (() => {});
  let lostLogged = false;
  const cache = new WindowCache(cacheBytes, windowBytes);
  const disks = reader.pair.disks.filter((d) => !o.disks || o.disks.includes(d.name));
  const localCopyBytes = o.localCopyBytes ?? 2 * 1024 * MiB;
  if (!(Number.isSafeInteger(localCopyBytes) && localCopyBytes >= 0)) throw new InvalidArgumentError(`export local copy of ${o.localCopyBytes} bytes is not a size`);
  let overlayDir: string | undefined;
  let tempDir = false;
  if (o.writable) {
    overlayDir = o.writable.dir ?? (await mkdtemp(join(tmpdir(), 'livesync-export-')));
    tempDir = o.writable.dir === undefined;
  }
  const overlays: Overlay[] = [];
  const copy = localCopyBytes > 0 ? await LocalCopy.create(localCopyBytes, windowBytes, log) : undefined;
  try {
    const exports: BlockExport[] = [];
    for (const d of disks) {
      const local = await copy?.disk(d.name, d.sizeBytes);
      const fill = async (w: number, window: Buffer): Promise<unknown> => {
        try {
          reader.check(); // a lost lease: what it held may be collected; the read fails (EIO)
        } catch (err) {
          if (!lostLogged) log(`export of pair '${reader.pair.pairId}' RP ${reader.seq}: ${(err as Error).message}; reads fail from now on`);
          lostLogged = true;
          throw err;
        }
        const ranges = await reader.fill(d.name, (w * windowBytes) / BLOCK_SIZE, window, run);
        local?.keep(w, window, ranges); // verified: copied to local disk, not waited for
        return ranges;
      };
      const base = diskReader(cache, d.name, d.sizeBytes, fill, readahead, local);
      if (!overlayDir) {
        exports.push(readOnlyExport(d.name, d.sizeBytes, base));
        continue;
      }
      const overlay = await Overlay.create(overlayDir, d.name, d.sizeBytes, base);
      overlays.push(overlay);
      exports.push(overlay.export());
    }
    let closing: Promise<void> | undefined;
    return {
      reader,
      exports,
      overlayDir,
      localCopyDir: copy?.dir,
      stats: () => ({ ...cache.stats(), gets: reader.stats.gets, bytesRead: reader.stats.bytesRead, overlayBlocks: overlays.reduce((n, ov) => n + ov.blocks(), 0), localHits: copy?.hits ?? 0, localWindows: copy?.windows ?? 0, localBytes: copy?.bytes ?? 0 }),
      close: () =>
        (closing ??= (async () => {
          run.stop(); // fills not started yet start no GETs
          await cache.settle();
          for (const ov of overlays) await ov.close();
          await copy?.close();
          if (tempDir) await rm(overlayDir!, { recursive: true, force: true });
          await closeReader();
        })()),
    };
  } catch (err) {
    for (const ov of overlays) await ov.close().catch(() => {});
    await copy?.close().catch(() => {});
    if (tempDir) await rm(overlayDir!, { recursive: true, force: true });
    throw err;
  }
}

/** One disk's part of the local copy. */
interface LocalDisk {
  /** Whether window `w` is there, whole. */
  has(w: number): boolean;
  /** Reads `out.length` bytes at disk offset `offset`, within one window it has. */
  read(offset: number, out: Buffer): Promise<void>;
  /** Copies window `w` (filled and verified; `ranges` its data) there, unless that would pass the bound; not awaited. */
  keep(w: number, window: Buffer, ranges: ByteRange[]): void;
}

/**
 * Copy on read: the windows filled from the RP Store, each verified, written (their data
 * ranges) into a sparse file per disk in a temporary directory (0700, files 0600) up to a
 * bound of data bytes, and marked once written. A read of a window the memory cache no longer
 * holds takes its bytes from there, as a local disk would serve them, rather than filling the
 * window again: random reads over a disk larger than the memory cache stop going back to the
 * RP Store once each window was read. A write that fails (the disk full) is said once and
 * ends the copying; windows copied already still serve. Removed at close.
 */
class LocalCopy {
  hits = 0;
  windows = 0;
  bytes = 0;
  private readonly files: FileHandle[] = [];
  private readonly writing = new Set<Promise<void>>();
  private failed = false;

  private constructor(
    readonly dir: string,
    private readonly limit: number,
    private readonly windowBytes: number,
    private readonly log: (m: string) => void,
  ) {}

  static async create(limit: number, windowBytes: number, log: (m: string) => void): Promise<LocalCopy> {
    return new LocalCopy(await mkdtemp(join(tmpdir(), 'livesync-export-copy-')), limit, windowBytes, log);
  }

  async disk(name: string, size: number): Promise<LocalDisk> {
    const fh = await open(join(this.dir, `${this.files.length}.img`), 'w+', 0o600);
    this.files.push(fh);
    await fh.truncate(size);
    const present = new Uint8Array(Math.ceil(size / this.windowBytes));
    return {
      has: (w) => present[w] === 1,
      read: async (offset, out) => {
        this.hits++;
        await readFully(fh, out, offset);
      },
      keep: (w, window, ranges) => {
        const data = ranges.reduce((n, r) => n + r.end - r.start, 0);
        if (this.failed || present[w] !== 0 || this.bytes + data > this.limit) return;
        present[w] = 2; // being written
        this.bytes += data;
        const at = w * this.windowBytes;
        const done = (async () => {
          for (const r of ranges) await writeFully(fh, window.subarray(r.start, r.end), at + r.start, `the local copy of '${name}'`);
          present[w] = 1;
          this.windows++;
        })().catch((err: Error) => {
          if (!this.failed) this.log(`export: the local copy of '${name}' stopped (${err.message}); reads of windows not copied go to the RP Store`);
          this.failed = true;
        });
        this.writing.add(done);
        void done.finally(() => this.writing.delete(done));
      },
    };
  }

  async close(): Promise<void> {
    await Promise.all(this.writing);
    for (const fh of this.files) await fh.close().catch(() => {});
    await rm(this.dir, { recursive: true, force: true });
  }
}

interface Entry {
  bytes: number;
  filled: Promise<Buffer>;
  done: boolean;
  /** Reads waiting on it or copying from it: it is not evicted while any is. */
  users: number;
}

/**
 * Windows of every disk, least recently used first (a Map's order). Room is made by evicting
 * filled windows no read is using; a window is counted from the moment its fill starts, so
 * what is held never exceeds the limit: a read waits for room, a readahead is skipped.
 */
class WindowCache {
  private readonly entries = new Map<string, Entry>();
  private used = 0;
  private peak = 0;
  private waiters: (() => void)[] = [];
  private counts = { fills: 0, hits: 0, readaheads: 0, waits: 0 };

  constructor(
    private readonly limit: number,
    private readonly windowBytes: number,
  ) {}

  /** Calls `take` with window `key` (`size` bytes, filled by `fill` if not held), waiting for room if need be. */
  async use<T>(key: string, size: number, fill: (window: Buffer) => Promise<unknown>, take: (window: Buffer) => T): Promise<T> {
    let e = this.entries.get(key);
    if (e) {
      this.counts.hits++;
      this.entries.delete(key); // most recently used: last
      this.entries.set(key, e);
    }
    while (!e) {
      e = this.start(key, size, fill);
      if (e) break;
      this.counts.waits++;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
      e = this.entries.get(key); // another read may have started it meanwhile
    }
    e.users++;
    try {
      return take(await e.filled);
    } finally {
      e.users--;
      this.wake();
    }
  }

  /** Whether window `key` is held (filled or filling). */
  holds(key: string): boolean {
    return this.entries.has(key);
  }

  /** Starts filling window `key` ahead of the reads, if it is not held and there is room without waiting. */
  prefetch(key: string, size: number, fill: (window: Buffer) => Promise<unknown>): void {
    if (this.entries.has(key)) return;
    if (this.start(key, size, fill)) this.counts.readaheads++;
  }

  stats(): Pick<ExportStats, 'cacheLimit' | 'windowBytes' | 'cachedBytes' | 'peakCachedBytes' | 'fills' | 'hits' | 'readaheads' | 'waits'> {
    return { cacheLimit: this.limit, windowBytes: this.windowBytes, cachedBytes: this.used, peakCachedBytes: this.peak, ...this.counts };
  }

  /** Waits for every fill in flight to end (at close). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.entries.values()].map((e) => e.filled));
  }

  /** A new entry filling, or undefined when no room can be made for it now. */
  private start(key: string, size: number, fill: (window: Buffer) => Promise<unknown>): Entry | undefined {
    if (!this.makeRoom(size)) return undefined;
    const window = Buffer.from(new SharedArrayBuffer(size)); // zeros; the reader's workers place data into it
    const e: Entry = { bytes: size, filled: fill(window).then(() => window), done: false, users: 0 };
    e.filled.then(
      () => {
        e.done = true;
        this.wake();
      },
      () => {
        // A failed fill is not kept: the next read of the window tries again.
        if (this.entries.get(key) === e) {
          this.entries.delete(key);
          this.used -= e.bytes;
        }
        this.wake();
      },
    );
    this.entries.set(key, e);
    this.used += size;
    this.peak = Math.max(this.peak, this.used);
    this.counts.fills++;
    return e;
  }

  /** Evicts filled, unused windows, oldest first, until `size` more bytes fit; whether they do. */
  private makeRoom(size: number): boolean {
    if (this.used + size <= this.limit) return true;
    for (const [key, e] of this.entries) {
      if (!e.done || e.users > 0) continue;
      this.entries.delete(key);
      this.used -= e.bytes;
      if (this.used + size <= this.limit) return true;
    }
    return false;
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

/** Reads of one disk of the RP through the cache, with readahead. */
type DiskReader = (offset: number, out: Buffer) => Promise<void>;

/** A read starting this close to where the disk's previous read ended continues a sequential run (requests in flight may arrive a little out of order). */
const SEQUENTIAL_SLACK = 256 * 1024;

/**
 * A read copies from each window it spans (filled once, whoever asks first). A read that
 * continues the previous one (within SEQUENTIAL_SLACK) is sequential: the `readahead`
 * windows after its last start filling.
 */
function diskReader(cache: WindowCache, disk: string, size: number, fill: (w: number, window: Buffer) => Promise<unknown>, readahead: number, local?: LocalDisk): DiskReader {
  const windowBytes = cache.stats().windowBytes;
  const windows = Math.ceil(size / windowBytes);
  const key = (w: number): string => `${disk}\0${w}`;
  const fillOf = (w: number) => (window: Buffer) => fill(w, window);
  const sizeOf = (w: number): number => Math.min(windowBytes, size - w * windowBytes);
  let lastEnd = -1;
  return async (offset, out) => {
    const end = offset + out.length;
    const first = Math.floor(offset / windowBytes);
    const last = Math.floor((end - 1) / windowBytes);
    const sequential = Math.abs(offset - lastEnd) <= SEQUENTIAL_SLACK;
    lastEnd = end;
    const reads: Promise<void>[] = [];
    for (let w = first; w <= last; w++) {
      const at = w * windowBytes;
      if (local?.has(w) && !cache.holds(key(w))) {
        const from = Math.max(at, offset);
        reads.push(local.read(from, out.subarray(from - offset, Math.min(at + windowBytes, end) - offset)));
        continue;
      }
      reads.push(cache.use(key(w), sizeOf(w), fillOf(w), (window) => void window.copy(out, Math.max(at, offset) - offset, Math.max(0, offset - at), Math.min(window.length, end - at))));
    }
    if (sequential) for (let w = last + 1; w <= Math.min(windows - 1, last + readahead); w++) if (!local?.has(w)) cache.prefetch(key(w), sizeOf(w), fillOf(w));
    await Promise.all(reads);
  };
}

const allData = async (_offset: number, length: number): Promise<Extent[]> => [{ length, state: 0 }];

function readOnlyExport(name: string, size: number, base: DiskReader): BlockExport {
  const refuse = async (): Promise<never> => {
    throw new Error(`export '${name}' is read-only`); // the server answers EPERM before calling these
  };
  return {
    name,
    size,
    readOnly: true,
    async read(offset, length) {
      const out = Buffer.allocUnsafe(length);
      await base(offset, out);
      return out;
    },
    write: refuse,
    zero: refuse,
    flush: async () => {},
    allocation: allData,
  };
}

/** Per 4 KiB block of a writable export: where its bytes are. */
const AT_RP = 0;
const IN_OVERLAY = 1;
const ZEROED = 2;

/**
 * A disk's copy-on-write overlay: `DISK.overlay`, a sparse file of the disk's size holding the
 * blocks written at their offsets, and one byte per 4 KiB block saying where each block's
 * bytes are (0 the RP, 1 the overlay file, 2 zeros: trimmed or zeroed), kept in memory and
 * written to `DISK.map` at each flush and at close. A write of part of a block first takes
 * the block's current bytes. Writes, zeroes and flushes of a disk run one at a time; a block
 * is marked only after its bytes are in the file, so a read never sees it half written.
 */
class Overlay {
  private readonly map: Uint8Array;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly name: string,
    private readonly size: number,
    private readonly fh: FileHandle,
    private readonly mapPath: string,
    private readonly base: DiskReader,
  ) {
    this.map = new Uint8Array(Math.ceil(size / BLOCK_SIZE));
  }

  static async create(dir: string, name: string, size: number, base: DiskReader): Promise<Overlay> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, `${name}.overlay`);
    const fh = await open(path, 'wx+', 0o600).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EEXIST') throw new InvalidArgumentError(`overlay ${path} exists (an earlier writable export's writes): remove it or give another overlay directory`);
      throw err;
    });
    await fh.truncate(size);
    return new Overlay(name, size, fh, join(dir, `${name}.map`), base);
  }

  blocks(): number {
    let n = 0;
    for (const b of this.map) if (b !== AT_RP) n++;
    return n;
  }

  export(): BlockExport {
    return {
      name: this.name,
      size: this.size,
      read: async (offset, length) => {
        const out = Buffer.allocUnsafe(length);
        await this.read(offset, out);
        return out;
      },
      write: (offset, data, fua) => this.serial(() => this.write(offset, data, fua)),
      zero: (offset, length, fua) => this.serial(() => this.zero(offset, length, fua)),
      flush: () => this.serial(() => this.flush()),
      allocation: allData,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue.catch(() => {});
    await this.saveMap().catch(() => {});
    await this.fh.close();
  }

  private serial<T>(task: () => Promise<T>): Promise<T> {
    const next = this.queue.then(() => {
      if (this.closed) throw new Error(`export '${this.name}' is closed`);
      return task();
    });
    this.queue = next.catch(() => {});
    return next;
  }

  /** The disk's bytes at [offset, offset + out.length): the RP where no block was written, the overlay over it. */
  private async read(offset: number, out: Buffer): Promise<void> {
    const end = offset + out.length;
    const first = Math.floor(offset / BLOCK_SIZE);
    const last = Math.ceil(end / BLOCK_SIZE);
    if (this.map.subarray(first, last).some((b) => b === AT_RP)) await this.base(offset, out);
    for (let b = first; b < last; ) {
      const state = this.map[b];
      let e = b + 1;
      while (e < last && this.map[e] === state) e++;
      if (state !== AT_RP) {
        const from = Math.max(offset, b * BLOCK_SIZE);
        const to = Math.min(end, e * BLOCK_SIZE);
        if (state === ZEROED) out.fill(0, from - offset, to - offset);
        else await readFully(this.fh, out.subarray(from - offset, to - offset), from);
      }
      b = e;
    }
  }

  private async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (data.length === 0) return;
    const first = Math.floor(offset / BLOCK_SIZE);
    const last = Math.ceil((offset + data.length) / BLOCK_SIZE);
    const start = first * BLOCK_SIZE;
    const buf = Buffer.alloc(Math.min(last * BLOCK_SIZE, this.size) - start);
    // A block written in part keeps the rest of its current bytes (the disk's last block may be short).
    const head = offset > start;
    const tail = offset + data.length < start + buf.length;
    if (head) await this.read(start, buf.subarray(0, Math.min(BLOCK_SIZE, buf.length)));
    if (tail && !(head && last - 1 === first)) await this.read((last - 1) * BLOCK_SIZE, buf.subarray((last - 1 - first) * BLOCK_SIZE));
    data.copy(buf, offset - start);
    await writeFully(this.fh, buf, start, `the overlay of '${this.name}'`);
    if (fua) await this.fh.datasync();
    this.map.fill(IN_OVERLAY, first, last);
  }

  /** Whole blocks are marked zeroed (no file write); a block zeroed in part is written. */
  private async zero(offset: number, length: number, fua: boolean): Promise<void> {
    if (length === 0) return;
    const end = offset + length;
    const whole0 = Math.ceil(offset / BLOCK_SIZE);
    const whole1 = end === this.size ? Math.ceil(end / BLOCK_SIZE) : Math.floor(end / BLOCK_SIZE);
    if (whole0 >= whole1) return this.write(offset, Buffer.alloc(length), fua);
    if (offset < whole0 * BLOCK_SIZE) await this.write(offset, Buffer.alloc(whole0 * BLOCK_SIZE - offset), false);
    if (end > whole1 * BLOCK_SIZE) await this.write(whole1 * BLOCK_SIZE, Buffer.alloc(end - whole1 * BLOCK_SIZE), false);
    this.map.fill(ZEROED, whole0, whole1);
    if (fua) await this.flush();
  }

  private async flush(): Promise<void> {
    await this.fh.datasync();
    await this.saveMap();
  }

  private saveMap(): Promise<void> {
    return writeFile(this.mapPath, this.map, { mode: 0o600 });
  }
}

async function readFully(fh: FileHandle, into: Buffer, position: number): Promise<void> {
  for (let at = 0; at < into.length; ) {
    const { bytesRead } = await fh.read(into, at, into.length - at, position + at);
    if (bytesRead === 0) {
      into.fill(0, at); // past the file's end: never written
      return;
    }
    at += bytesRead;
  }
}
