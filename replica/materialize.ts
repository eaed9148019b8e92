// Recovery: reconstruct every disk of a pair at an RP (or one byte range of one disk, for a
// range of the recovery workflow), streaming, in bounded memory, every payload verified as it
// is read (replica/rp-reader.ts). Windows go to a sink in order: a file, an S3 object, an EBS
// snapshot, a part of a multipart upload; into a file, the workers that check the data write it.

import { open, rm } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import { once } from 'node:events';
import { BLOCK_SIZE } from '../core/batch-format';
import { InvalidArgumentError } from '../core/errors';
import type { RecoveryPoint } from '../core/model';
import type { ByteRange, ImageSink, ObjectStore, ReplicaIndex } from './ports';
import { limiter } from './concurrency';
import { openRp, type RpReader, type RpReadOptions } from './rp-reader';
import { writeFully } from './write-fully';

export { LEASELESS_READ_MS } from './rp-reader';

export type { ImageSink } from './ports';

export interface MaterializeOptions extends RpReadOptions {
  /** Called once per disk for its sink. */
  sinkFor: (disk: string, sizeBytes: number) => Promise<ImageSink>;
  /**
   * One byte range of one disk instead of every disk whole: [start, end), start on the
   * reader's alignment (4 MiB through a compacted history), end on it or the disk's end. The
   * sink gets the range's windows at their offsets in the disk.
   */
  only?: { disk: string; start: number; end: number };
  /**
   * Bytes of image assembled per window (default 32 MiB); at most 3 windows are in memory (2
   * filling, 1 being written). Through a compacted history it is rounded up to whole ranges
   * (4 MiB), so each piece is read once.
   */
  windowBytes?: number;
  /** Parallel object reads (default 16). */
  concurrency?: number;
}

export interface MaterializeResult {
  /** The RP read (absent for an `anyAppliedSeq` read of a seq that is not one). */
  rp?: RecoveryPoint;
  disks: { name: string; sizeBytes: number; dataBytes: number }[];
  /** L0 batches read (those above the manifest's frontier, up to the seq). */
  segments: number;
  gets: number;
  bytesRead: number;
  /** The manifest version read through (0: never compacted). */
  manifestVersion: number;
  /** The most objects the read of any one range touched (image or base chunk, pieces, L0 batches): the read bound, observed. */
  sources: number;
}

export async function materialize(store: ObjectStore, index: ReplicaIndex, o: MaterializeOptions): Promise<MaterializeResult> {
  let windowBytes = o.windowBytes ?? 32 * 1024 * 1024;
  if (windowBytes % BLOCK_SIZE !== 0 || windowBytes <= 0) throw new InvalidArgumentError(`window of ${windowBytes} bytes is not a positive multiple of ${BLOCK_SIZE}`);
  const concurrency = o.concurrency ?? 16;
  const reader = await openRp(store, index, { ...o, disks: o.only ? [o.only.disk] : o.disks });
  try {
    windowBytes = Math.ceil(windowBytes / reader.alignBytes) * reader.alignBytes;
    const out: MaterializeResult['disks'] = [];
    for (const disk of reader.pair.disks) {
      if (o.only ? disk.name !== o.only.disk : o.disks && !o.disks.includes(disk.name)) continue;
      const span = o.only ? checkRange(o.only, disk.sizeBytes, reader.alignBytes) : { start: 0, end: disk.sizeBytes };
      const sink = await o.sinkFor(disk.name, disk.sizeBytes);
      let dataBytes = 0;
      try {
        dataBytes = await writeDisk(reader, disk.name, sink, span, windowBytes, concurrency);
        await sink.close();
      } catch (err) {
        await sink.abort(err as Error).catch(() => {});
        throw err;
      }
      out.push({ name: disk.name, sizeBytes: disk.sizeBytes, dataBytes });
    }
    const { gets, bytesRead, sources } = reader.stats;
    return { rp: reader.rp, disks: out, segments: reader.segments, gets, bytesRead, manifestVersion: reader.manifest.version, sources };
  } finally {
    await reader.close();
  }
}

function checkRange(r: { disk: string; start: number; end: number }, sizeBytes: number, align: number): { start: number; end: number } {
  const ok = Number.isSafeInteger(r.start) && Number.isSafeInteger(r.end) && r.start >= 0 && r.start < r.end && r.end <= sizeBytes && r.start % align === 0 && (r.end % align === 0 || r.end === sizeBytes);
  if (!ok) throw new InvalidArgumentError(`range [${r.start}, ${r.end}) of disk '${r.disk}' (${sizeBytes} bytes) must start on a multiple of ${align} bytes and end on one or at the disk's end`);
  return { start: r.start, end: r.end };
}

/** Windows being filled at once: their GETs share one limit, the oldest window's first. */
const WINDOWS_AHEAD = 2;

/**
 * Writes [span.start, span.end) of one disk window by window, in order. Up to WINDOWS_AHEAD
 * windows are planned and filled at once (so the GETs of the next window start while the last
 * ones of this window are still decoding) while the window before them is written: at most
 * WINDOWS_AHEAD + 1 in memory, with the pieces the windows being filled read.
 */
async function writeDisk(reader: RpReader, disk: string, sink: ImageSink, span: { start: number; end: number }, windowBytes: number, concurrency: number): Promise<number> {
  let dataBytes = 0;
  let writing: Promise<void> = Promise.resolve();
  const run = limiter(concurrency);
  type Ranges = ByteRange[];
  const filling: { offset: number; length: number; window?: Buffer; filled: Promise<Ranges> }[] = [];
  /** Windows the sink is done with (doneWithWindow), to fill again, with their last data ranges. */
  const spare: { window: Buffer; ranges: Ranges }[] = [];
  /**
   * A window to fill: new (zeros; workers place data into it), or a spare one whose last data
   * ranges (outside them it is zeros already) are stale: the fill zeroes what of them it does
   * not place data over.
   */
  const newWindow = (size: number): { window: Buffer; stale?: Ranges } => {
    const reused = spare.length > 0 && spare[spare.length - 1].window.length === size ? spare.pop()! : undefined;
    return reused ? { window: reused.window, stale: reused.ranges } : { window: Buffer.from(new SharedArrayBuffer(size)) };
  };
  const writeOldest = async (): Promise<void> => {
    const w = filling.shift()!;
    const ranges = await w.filled;
    dataBytes += ranges.reduce((n, r) => n + r.end - r.start, 0);
    await writing;
    if (!w.window) {
      writing = sink.direct!.wrote(w.offset, w.length, ranges); // in the file already
    } else {
      const window = w.window;
      writing = sink.write(w.offset, window, ranges);
      if (sink.doneWithWindow) writing = writing.then(() => void spare.push({ window, ranges }));
    }
    writing.catch(() => {}); // handled: the next `await writing` rethrows it
  };
  try {
    const readAheadTo = Math.ceil(span.end / BLOCK_SIZE);
    for (let offset = span.start; offset < span.end; offset += windowBytes) {
      reader.check();
      const length = Math.min(windowBytes, span.end - offset);
      let window: Buffer | undefined;
      let filled: Promise<Ranges>;
      if (sink.direct) {
        filled = reader.fill(disk, offset / BLOCK_SIZE, { fd: sink.direct.fd, offset, length }, run, { readAheadTo });
      } else {
        const fresh = newWindow(length);
        window = fresh.window;
        filled = reader.fill(disk, offset / BLOCK_SIZE, window, run, { stale: fresh.stale, dataOnly: sink.writesDataOnly, readAheadTo });
      }
      filled.catch(() => {}); // handled: awaited in order by writeOldest
      filling.push({ offset, length, window, filled });
      if (filling.length >= WINDOWS_AHEAD) await writeOldest();
    }
    while (filling.length > 0) await writeOldest();
    await writing;
  } catch (err) {
    run.stop(); // the windows still filling start no more GETs
    // ... and are waited for: the sink's abort closes the file their workers may write into.
    await Promise.allSettled(filling.map((w) => w.filled));
    throw err;
  }
  return dataBytes;
}

/**
 * A local image file: sized up front (sparse), only data ranges written; the reader's workers
 * write the verified data into it themselves (`direct`), or write() does from a window.
 */
export async function fileSink(path: string, sizeBytes: number): Promise<ImageSink> {
  const fh = await open(path, 'w');
  await fh.truncate(sizeBytes);
  return {
    direct: { fd: fh.fd, wrote: async () => {} },
    doneWithWindow: true,
    writesDataOnly: true,
    async write(offset, window, ranges) {
      for (const r of ranges) await writeFully(fh, window.subarray(r.start, r.end), offset + r.start, path);
    },
    close: () => fh.close(),
    async abort() {
      await fh.close().catch(() => {});
      await rm(path, { force: true });
    },
  };
}

/** A raw image object, uploaded in parts as the windows arrive. */
export function objectSink(store: ObjectStore, key: string): ImageSink {
  const stream = new PassThrough({ highWaterMark: 8 * 1024 * 1024 });
  const done = store.upload(key, stream);
  done.catch(() => {}); // surfaced by close()
  return {
    async write(_offset, window) {
      if (!stream.write(window)) await Promise.race([once(stream, 'drain'), done]);
    },
    async close() {
      stream.end();
      await done;
    },
    async abort(err) {
      stream.destroy(err); // lib-storage then aborts the multipart upload
      await done.catch(() => {});
    },
  };
}
