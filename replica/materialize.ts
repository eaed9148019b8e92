// Recovery: reconstruct every disk of a pair at an RP, streaming, in bounded memory,
// verifying every extent's checksum as it is read.

import { open, rm } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import { once } from 'node:events';
import { BLOCK_SIZE, EXTENT_FLAGS, TRAILER_SIZE, checkExtentData, decodeIndex, decodeTrailer, type ExtentEntry } from '../core/batch-format';
import { CHUNK_BYTES, checkChunkData, checkChunkHeader, type ChunkRef } from '../core/chunk-format';
import { BackupError, BatchError, CorruptExtentError, InvalidArgumentError, UnknownPairError } from '../core/errors';
import { baseChunkKey } from '../core/keys';
import { parseBaseManifest } from '../core/seed-manifests';
import type { BatchRecord, RecoveryPoint } from '../core/model';
import { resolvePieces, type BlockVersion, type Piece } from '../core/recovery-plan';
import type { ObjectStore, ReplicaIndex } from './ports';
import { placeVerified } from './chunk-verifier';
import { limiter, mapLimit } from './concurrency';

/** A stored extent that some RP reads: which object, which entry. */
interface ExtentRef {
  batch: BatchRecord;
  entry: ExtentEntry;
}

/** A base chunk some RP reads where no segment above the base wrote. */
interface ChunkVersionRef {
  chunk: ChunkRef;
  key: string;
}

type Ref = ExtentRef | ChunkVersionRef;
const isChunk = (r: Ref): r is ChunkVersionRef => 'chunk' in r;

/** Receives one disk image as consecutive windows; `pieces` say which bytes hold data. */
export interface ImageSink {
  write(offset: number, window: Buffer, dataRanges: { start: number; end: number }[]): Promise<void>;
  close(): Promise<void>;
  /** Recovery failed: release resources and leave no partial image behind. */
  abort(err: Error): Promise<void>;
}

export interface MaterializeOptions {
  pairId: string;
  /** The RP's seq; it must be a live (unexpired) RP of the pair. */
  seq: number;
  /**
   * Internal reads (the agent's checksum resync): any applied seq, RP or not. Such a state
   * may be mid-resync and is never offered to an operator as a recovery point.
   */
  anyAppliedSeq?: boolean;
  /** Called once per disk for its sink. */
  sinkFor: (disk: string, sizeBytes: number) => Promise<ImageSink>;
  /** Bytes of image assembled per window (default 32 MiB); at most 3 windows are in memory (2 filling, 1 being written). */
  windowBytes?: number;
  /** Parallel object reads (default 16). */
  concurrency?: number;
  nowMs?: number;
}

export interface MaterializeResult {
  /** The RP read (absent for an `anyAppliedSeq` read of a seq that is not one). */
  rp?: RecoveryPoint;
  disks: { name: string; sizeBytes: number; dataBytes: number }[];
  segments: number;
  gets: number;
  bytesRead: number;
}

/** Two extents of one object closer than this are fetched with one ranged GET. */
const MERGE_GAP = 1024 * 1024;

export async function materialize(store: ObjectStore, index: ReplicaIndex, o: MaterializeOptions): Promise<MaterializeResult> {
  const windowBytes = o.windowBytes ?? 32 * 1024 * 1024;
  if (windowBytes % BLOCK_SIZE !== 0 || windowBytes <= 0) throw new InvalidArgumentError(`window of ${windowBytes} bytes is not a positive multiple of ${BLOCK_SIZE}`);
  const concurrency = o.concurrency ?? 16;
  const nowSec = Math.floor((o.nowMs ?? Date.now()) / 1000);
  // The RP first, then the pair: an RP is written with (or after) the watermark covering it.
  const rp = (await index.listRecoveryPoints(o.pairId, nowSec)).find((r) => r.seq === o.seq);
  const pair = await index.getPair(o.pairId);
  if (!pair) throw new UnknownPairError(o.pairId);
  if (!rp && !(o.anyAppliedSeq && o.seq <= pair.watermark)) throw new InvalidArgumentError(`pair '${o.pairId}' has no live recovery point at seq ${o.seq}`);
  if (o.seq > pair.watermark) throw new Error(`RP ${o.seq} of pair '${o.pairId}' is above the watermark ${pair.watermark}: index inconsistent`);

  const stats = { gets: 0, bytesRead: 0 };
  // Segments at or below the base's seq are folded into it (a seeded pair's backup).
  const baseSeq = pair.base?.baseSeq ?? 0;
  const segments = (await index.segmentsUpTo(o.pairId, o.seq)).filter((b) => b.seq > baseSeq);
  const versions = new Map<string, BlockVersion<Ref>[]>(pair.disks.map((d) => [d.name, []]));
  if (pair.base) {
    const base = parseBaseManifest((await store.get(pair.base.key)).toString('utf8'), pair.base.key);
    stats.gets++;
    for (const disk of base.disks) {
      const list = versions.get(disk.name);
      if (!list) throw new Error(`base ${pair.base.key} names disk '${disk.name}', which pair '${o.pairId}' does not have`);
      for (const [index, sha256, crc32c, length] of disk.chunks) {
        // Seq 0: every segment read over the base is newer.
        list.push({ blockIndex: (index * CHUNK_BYTES) / BLOCK_SIZE, blockCount: length / BLOCK_SIZE, seq: 0, ref: { chunk: { index, sha256, crc32c, length }, key: baseChunkKey(o.pairId, sha256) } });
      }
    }
  }
  await mapLimit(segments, concurrency, async (batch) => {
    for (const entry of await readIndex(store, batch, stats)) {
      versions.get(batch.disks[entry.disk])!.push({ blockIndex: entry.blockIndex, blockCount: entry.blockCount, seq: batch.seq, ref: { batch, entry } });
    }
  });

  const disks: MaterializeResult['disks'] = [];
  for (const disk of pair.disks) {
    const pieces = resolvePieces(versions.get(disk.name)!);
    const sink = await o.sinkFor(disk.name, disk.sizeBytes);
    let dataBytes = 0;
    try {
      dataBytes = await writeDisk(store, sink, disk.sizeBytes, pieces, windowBytes, concurrency, stats);
      await sink.close();
    } catch (err) {
      await sink.abort(err as Error).catch(() => {});
      throw err;
    }
    disks.push({ name: disk.name, sizeBytes: disk.sizeBytes, dataBytes });
  }
  return { rp, disks, segments: segments.length, ...stats };
}

/** Windows being filled at once: their GETs share one limit, the oldest window's first. */
const WINDOWS_AHEAD = 2;

/**
 * Writes one disk window by window, in order. Up to WINDOWS_AHEAD windows are filled at once
 * (so the GETs of the next window start while the last ones of this window are still
 * decoding) while the window before them is written: at most WINDOWS_AHEAD + 1 in memory.
 */
async function writeDisk(
  store: ObjectStore,
  sink: ImageSink,
  sizeBytes: number,
  pieces: Piece<Ref>[],
  windowBytes: number,
  concurrency: number,
  stats: { gets: number; bytesRead: number },
): Promise<number> {
  let dataBytes = 0;
  let p = 0;
  let writing: Promise<void> = Promise.resolve();
  const run = limiter(concurrency);
  const filling: { offset: number; window: Buffer; ranges: { start: number; end: number }[]; filled: Promise<void> }[] = [];
  const writeOldest = async (): Promise<void> => {
    const w = filling.shift()!;
    await w.filled;
    await writing;
    writing = sink.write(w.offset, w.window, w.ranges);
    writing.catch(() => {}); // handled: the next `await writing` rethrows it
  };
  try {
    for (let offset = 0; offset < sizeBytes; offset += windowBytes) {
      const size = Math.min(windowBytes, sizeBytes - offset);
      const first = offset / BLOCK_SIZE;
      const last = first + Math.ceil(size / BLOCK_SIZE);
      const inWindow: Piece<Ref>[] = [];
      while (p < pieces.length && pieces[p].blockIndex < last) {
        inWindow.push(clip(pieces[p], first, last));
        if (pieces[p].blockIndex + pieces[p].blockCount > last) break;
        p++;
      }
      const window = Buffer.from(new SharedArrayBuffer(size)); // zeros; workers place data into it
      const filled = fillWindow(store, window, first, inWindow, run, stats);
      filled.catch(() => {}); // handled: awaited in order by writeOldest
      const ranges = dataRanges(inWindow, first, size);
      dataBytes += ranges.reduce((n, r) => n + r.end - r.start, 0);
      filling.push({ offset, window, ranges, filled });
      if (filling.length >= WINDOWS_AHEAD) await writeOldest();
    }
    while (filling.length > 0) await writeOldest();
    await writing;
  } catch (err) {
    run.stop(); // the windows still filling start no more GETs
    throw err;
  }
  return dataBytes;
}

/** One ranged GET of a segment's index and trailer; both are checksum-verified. */
async function readIndex(store: ObjectStore, b: BatchRecord, stats: { gets: number; bytesRead: number }): Promise<ExtentEntry[]> {
  const len = b.extentCount * 32 + TRAILER_SIZE;
  const tail = await store.get(b.key, { start: b.sizeBytes - len, end: b.sizeBytes });
  stats.gets++;
  stats.bytesRead += tail.length;
  const trailer = decodeTrailer(tail, b.sizeBytes, b.key);
  if (trailer.seq !== b.seq || trailer.objectCrc !== b.objectCrc) {
    throw new CorruptExtentError(b.key, `trailer (seq ${trailer.seq}, crc ${trailer.objectCrc}) does not match the registered batch (seq ${b.seq}, crc ${b.objectCrc})`);
  }
  return decodeIndex(tail.subarray(0, len - TRAILER_SIZE), trailer, b.disks.length, b.key);
}

/**
 * Fetches the extents and base chunks the window's pieces need, in merged ranged GETs per
 * object; a worker decodes and checks each payload and copies its pieces into the window
 * (shared memory) while this thread goes on with the next GETs.
 */
async function fillWindow(
  store: ObjectStore,
  window: Buffer,
  firstBlock: number,
  pieces: Piece<Ref>[],
  run: <T>(task: () => Promise<T>) => Promise<T>,
  stats: { gets: number; bytesRead: number },
): Promise<void> {
  const shared = window.buffer as SharedArrayBuffer;
  const byObject = new Map<string, Piece<ExtentRef>[]>();
  const byChunk = new Map<string, Piece<ChunkVersionRef>[]>();
  for (const q of pieces) {
    if (isChunk(q.ref)) {
      const list = byChunk.get(q.ref.key) ?? [];
      list.push(q as Piece<ChunkVersionRef>);
      byChunk.set(q.ref.key, list);
      continue;
    }
    if (q.ref.entry.payloadLength === 0) continue; // zero extent: the window is already zeros
    const list = byObject.get(q.ref.batch.key) ?? [];
    list.push(q as Piece<ExtentRef>);
    byObject.set(q.ref.batch.key, list);
  }
  const places = (qs: Piece<Ref>[]): [number, number, number][] =>
    qs.map((q) => {
      const dst = (q.blockIndex - firstBlock) * BLOCK_SIZE;
      return [q.offsetBlocks * BLOCK_SIZE, dst, Math.min(q.blockCount * BLOCK_SIZE, window.length - dst)];
    });
  // Base chunks: one whole-object GET each, verified end to end (header here; SHA-256 of the data in the worker).
  const chunkReads = [...byChunk.values()].map((qs) => async () => {
    const { key, chunk } = qs[0].ref;
    const body = await store.get(key);
    stats.gets++;
    stats.bytesRead += body.length;
    try {
      const checked = checkChunkHeader(body, chunk, key);
      const start = body.length - checked.payload.length;
      const [outcome] = await placeVerified(body, [{ start, end: body.length, zstd: checked.zstd, length: checked.length, sha256: chunk.sha256, places: places(qs) }], shared);
      checkChunkData(checked, chunk, outcome as Parameters<typeof checkChunkData>[2], key);
    } catch (err) {
      if (err instanceof BackupError) throw new CorruptExtentError(err.where, err.reason);
      throw err;
    }
  });
  const extentReads = [...byObject.entries()].flatMap(([key, qs]) => mergeReads(key, qs)).map((r) => async () => {
    const bytes = await store.get(r.key, { start: r.start, end: r.end });
    stats.gets++;
    stats.bytesRead += bytes.length;
    // Each extent once, with every piece the window takes from it.
    const byEntry = new Map<ExtentEntry, Piece<ExtentRef>[]>();
    for (const q of r.pieces) {
      const list = byEntry.get(q.ref.entry);
      if (list) list.push(q);
      else byEntry.set(q.ref.entry, [q]);
    }
    const entries = [...byEntry.keys()];
    const items = entries.map((e) => ({
      start: e.payloadOffset - r.start,
      end: e.payloadOffset - r.start + e.payloadLength,
      zstd: (e.flags & EXTENT_FLAGS.ZSTD) !== 0,
      length: e.blockCount * BLOCK_SIZE,
      crc: e.dataCrc,
      places: places(byEntry.get(e)!),
    }));
    const outcomes = await placeVerified(bytes, items, shared);
    entries.forEach((e, i) => {
      try {
        checkExtentData(e, outcomes[i], `${r.key} block ${e.blockIndex}`);
      } catch (err) {
        if (err instanceof BatchError) throw new CorruptExtentError(err.where, err.reason);
        throw err;
      }
    });
  });
  await Promise.all([...chunkReads, ...extentReads].map(run));
}


interface RangeRead {
  key: string;
  start: number;
  end: number;
  pieces: Piece<ExtentRef>[];
}

function mergeReads(key: string, pieces: Piece<ExtentRef>[]): RangeRead[] {
  const sorted = [...pieces].sort((a, b) => a.ref.entry.payloadOffset - b.ref.entry.payloadOffset);
  const reads: RangeRead[] = [];
  for (const q of sorted) {
    const start = q.ref.entry.payloadOffset;
    const end = start + q.ref.entry.payloadLength;
    const last = reads[reads.length - 1];
    if (last && start - last.end <= MERGE_GAP) {
      last.end = Math.max(last.end, end);
      last.pieces.push(q);
    } else {
      reads.push({ key, start, end, pieces: [q] });
    }
  }
  return reads;
}

/** Byte ranges of the window that hold data, adjacent pieces merged (fewer, larger writes). */
function dataRanges(pieces: Piece<Ref>[], firstBlock: number, size: number): { start: number; end: number }[] {
  const out: { start: number; end: number }[] = [];
  for (const q of pieces) {
    const start = (q.blockIndex - firstBlock) * BLOCK_SIZE;
    const end = Math.min(size, start + q.blockCount * BLOCK_SIZE);
    const last = out[out.length - 1];
    if (last && last.end === start) last.end = end;
    else out.push({ start, end });
  }
  return out;
}

function clip<R>(q: Piece<R>, first: number, last: number): Piece<R> {
  const start = Math.max(q.blockIndex, first);
  const end = Math.min(q.blockIndex + q.blockCount, last);
  return { blockIndex: start, blockCount: end - start, offsetBlocks: q.offsetBlocks + (start - q.blockIndex), ref: q.ref };
}

/** A local image file: sized up front (sparse), only data ranges written. */
export async function fileSink(path: string, sizeBytes: number): Promise<ImageSink> {
  const fh = await open(path, 'w');
  await fh.truncate(sizeBytes);
  return {
    async write(offset, window, ranges) {
      for (const r of ranges) {
        // fs may write less than asked (e.g. a full disk); go on until all is written or it throws.
        for (let at = r.start; at < r.end; ) {
          const { bytesWritten } = await fh.write(window, at, r.end - at, offset + at);
          if (bytesWritten === 0) throw new Error(`no progress writing ${path} at byte ${offset + at}`);
          at += bytesWritten;
        }
      }
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
