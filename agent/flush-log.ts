// The agent's flush log: what a FLUSH makes durable without cutting a batch. A FLUSH appends
// the blocks (and zeroed ranges) written since the previous flush to the log of the open
// batch's seq, `{stateDir}/flushlog/{seq:020}.log`, fdatasyncs it and replies; the batch is
// cut later (by age or size, docs/design.md "Agent"), spooled durably, and only then is its log
// deleted. At start-up a log whose batch is not spooled is replayed into that batch.
//
// File: a 16-byte header (`LSFL`, version u16 = 1, reserved u16 = 0, seq u64), then records,
// each `bodyLength u32, bodyCrc u32, body`: the body is a batch object (format version 1) of
// that seq holding the record's blocks raw; bodyCrc is the CRC-32C of the whole body. A record
// that is short or fails a check ends the log there: it was never acknowledged.

import { mkdir, open, readdir, readFile, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import {
  batchObjectCrc32c,
  BLOCK_SIZE,
  decodeBatch,
  decodeExtent,
  encodeBatch,
  encodeBatchAsync,
  EXTENT_FLAGS,
  type BatchHeader,
  type DecodedBatch,
  type ExtentInput,
} from '../core/batch-format';
import { CompressionGate } from '../core/compression-gate';
import { crc32c } from '../core/crc32c';
import { ZERO_RUN_BLOCKS } from '../source/batch-writer';
import { syncDir, type Spool } from './spool';

const MAGIC = Buffer.from('LSFL', 'latin1');
const VERSION = 1;
export const FLUSH_LOG_HEADER = 16;
const FRAME = 8;
const NAME = /^(\d{20})\.log$/;

/** A record's blocks are stored raw: a FLUSH waits for its log write, not for zstd. */
class NeverCompress extends CompressionGate {
  override shouldTry(): boolean {
    return false;
  }
}
const RAW = new NeverCompress();

/** A record's body: a batch object of the open seq with the blocks written since the last record, raw. */
export function encodeRecord(header: BatchHeader, extents: ExtentInput[]): Promise<Buffer> {
  return encodeBatchAsync(header, extents, { gate: RAW, concurrency: 1 });
}

interface Pending {
  seq: number;
  body: Promise<Buffer>;
  /** The record may be written once this settles (every batch below its seq is spooled). */
  after: Promise<unknown>;
  done: (appended: boolean) => void;
  failed: (err: Error) => void;
}

/**
 * Appends records, in call order, to the log of their seq; records queued while a write runs
 * share the next write and fdatasync (group commit). A log is deleted by `discard` once its
 * batch is spooled; later appends to it do nothing (they resolve false).
 */
export class FlushLog {
  private readonly queue: Pending[] = [];
  private pumping = false;
  private file: { seq: number; fh: FileHandle; size: number } | undefined;
  /** The write in progress and its seq: `discard` of that seq waits for it. */
  private writing: { seq: number; done: Promise<void> } | undefined;
  private readonly discarded = new Set<number>();
  private readonly sizes = new Map<number, number>();

  private constructor(readonly dir: string) {}

  static async open(dir: string): Promise<FlushLog> {
    await mkdir(dir, { recursive: true });
    return new FlushLog(dir);
  }

  /** Bytes in the log of `seq` (0: none). */
  bytes(seq: number): number {
    return this.sizes.get(seq) ?? 0;
  }

  /**
   * Appends a record to the log of `seq` once `after` settles; resolves true when it is
   * synced, false if the log was discarded first (its batch, which holds the record's
   * blocks, is spooled). Rejects if `after` or the write fails.
   */
  append(seq: number, body: Promise<Buffer>, after: Promise<unknown>): Promise<boolean> {
    return new Promise<boolean>((done, failed) => {
      this.queue.push({ seq, body, after, done, failed });
      void this.pump();
    });
  }

  /**
   * The batch of `seq` is spooled: its log goes, after any write to it in progress, and, if
   * there is a log, after `beforeDelete` (which makes the spooled batch durable).
   */
  async discard(seq: number, beforeDelete?: () => Promise<void>): Promise<void> {
    this.discarded.add(seq);
    if (this.writing?.seq === seq) await this.writing.done.catch(() => {});
    // Most batches had no FLUSH while open: no file to delete.
    if (!this.sizes.has(seq) && this.file?.seq !== seq) return;
    await beforeDelete?.();
    this.sizes.delete(seq);
    if (this.file?.seq === seq) {
      const { fh } = this.file;
      this.file = undefined;
      await fh.close();
    }
    // Not synced: a log found beside its spooled batch at start-up is deleted then.
    await rm(pathOf(this.dir, seq), { force: true });
    // A seq is never logged again after its batch: keep the set small.
    for (const s of this.discarded) if (s < seq - 64) this.discarded.delete(s);
  }

  async close(): Promise<void> {
    const f = this.file;
    this.file = undefined;
    await f?.fh.close();
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length > 0) {
        const head = this.queue[0];
        try {
          await head.after;
        } catch (err) {
          this.queue.shift();
          head.failed(err as Error);
          continue;
        }
        // Every record of this seq queued so far: their `after` is the same condition.
        const group: Pending[] = [];
        while (this.queue.length > 0 && this.queue[0].seq === head.seq) group.push(this.queue.shift()!);
        if (this.discarded.has(head.seq)) {
          for (const p of group) p.done(false);
          continue;
        }
        let bodies: Buffer[];
        try {
          bodies = await Promise.all(group.map((p) => p.body));
        } catch (err) {
          for (const p of group) p.failed(err as Error);
          continue;
        }
        // Discarded while the bodies were encoded: the batch holds these blocks.
        if (this.discarded.has(head.seq)) {
          for (const p of group) p.done(false);
          continue;
        }
        const done = this.write(head.seq, bodies);
        this.writing = { seq: head.seq, done };
        try {
          await done;
          for (const p of group) p.done(true);
        } catch (err) {
          for (const p of group) p.failed(new Error(`flush log ${pathOf(this.dir, head.seq)}: ${(err as Error).message}`));
        } finally {
          this.writing = undefined;
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  /** One write of the records (behind the file header if the log is new), fdatasync, and the directory synced for a new file. */
  private async write(seq: number, bodies: Buffer[]): Promise<void> {
    const parts: Buffer[] = [];
    let fresh = false;
    if (this.file?.seq !== seq) {
      await this.file?.fh.close();
      this.file = { seq, fh: await open(pathOf(this.dir, seq), 'w'), size: 0 };
      fresh = true;
      parts.push(fileHeader(seq));
    }
    for (const body of bodies) {
      const frame = Buffer.allocUnsafe(FRAME);
      frame.writeUInt32LE(body.length, 0);
      frame.writeUInt32LE(batchObjectCrc32c(body), 4); // the whole body's CRC-32C, continued from its trailer: O(1)
      parts.push(frame, body);
    }
    const f = this.file;
    const n = parts.reduce((s, p) => s + p.length, 0);
    let written = 0;
    while (written < n) {
      const { bytesWritten } = await f.fh.writev(written === 0 ? parts : [Buffer.concat(parts).subarray(written)], f.size + written);
      written += bytesWritten;
    }
    await f.fh.datasync();
    if (fresh) await syncDir(this.dir);
    f.size += n;
    this.sizes.set(seq, f.size);
  }
}

function fileHeader(seq: number): Buffer {
  const h = Buffer.alloc(FLUSH_LOG_HEADER);
  MAGIC.copy(h, 0);
  h.writeUInt16LE(VERSION, 4);
  h.writeBigUInt64LE(BigInt(seq), 8);
  return h;
}

export function pathOf(dir: string, seq: number): string {
  return join(dir, `${String(seq).padStart(20, '0')}.log`);
}

/** Seqs that have a flush log in `dir`, ascending. */
export async function flushLogSeqs(dir: string): Promise<number[]> {
  const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
  return names
    .map((n) => NAME.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

export interface ReadLog {
  /** Records that passed every check, in order: each body and what it decodes to. */
  records: { body: Buffer; batch: DecodedBatch }[];
  /** Where the valid records end, and why, if bytes follow (a torn or corrupt tail: never acknowledged). */
  tail?: { offset: number; reason: string };
}

/** Reads a log: its records up to the first that is short or fails a check. */
export function parseFlushLog(buf: Buffer, seq: number, where: string, pairId: string, disks: string[]): ReadLog {
  const records: ReadLog['records'] = [];
  if (buf.length < FLUSH_LOG_HEADER || !buf.subarray(0, 4).equals(MAGIC) || buf.readUInt16LE(4) !== VERSION || buf.readBigUInt64LE(8) !== BigInt(seq)) {
    return { records, tail: { offset: 0, reason: 'no valid file header' } };
  }
  let at = FLUSH_LOG_HEADER;
  while (at < buf.length) {
    const bad = (reason: string): ReadLog => ({ records, tail: { offset: at, reason } });
    if (buf.length - at < FRAME) return bad('short record frame');
    const len = buf.readUInt32LE(at);
    const crc = buf.readUInt32LE(at + 4);
    if (len > buf.length - at - FRAME) return bad(`record of ${len} bytes runs past the end`);
    const body = buf.subarray(at + FRAME, at + FRAME + len);
    if (crc32c(body) !== crc) return bad('record CRC-32C mismatch');
    let b: DecodedBatch;
    try {
      b = decodeBatch(body, `${where} @${at}`);
    } catch (err) {
      return bad((err as Error).message);
    }
    const h = b.header;
    if (h.seq !== seq || h.pairId !== pairId || h.disks.join('\0') !== disks.join('\0')) return bad(`record of seq ${h.seq}, pair '${h.pairId}', disks ${h.disks.join(',')}`);
    records.push({ body, batch: b });
    at += FRAME + len;
  }
  return { records };
}

/**
 * The batch a log's records add up to (in order, the last write of a block wins), or
 * undefined if no record is valid. Its flags are the records' (RESYNC while resyncing), its
 * first write the first record's, its cut time the last record's: the last acknowledged FLUSH.
 */
export function replayRecords(records: ReadLog['records'], pairId: string, disks: string[]): Buffer | undefined {
  if (records.length === 0) return undefined;
  const blocks = disks.map(() => new Map<number, Buffer | null>());
  /** Zeroed runs [start, end) per disk, disjoint from each other and from `blocks`' keys. */
  const runs: { start: number; end: number }[][] = disks.map(() => []);
  /** A block's content (null: zeros) replaces whatever a run said there. */
  const setBlock = (d: number, b: number, v: Buffer | null): void => {
    const i = runs[d].findIndex((r) => b >= r.start && b < r.end);
    if (i >= 0) {
      const r = runs[d][i];
      runs[d].splice(i, 1, ...[{ start: r.start, end: b }, { start: b + 1, end: r.end }].filter((x) => x.end > x.start));
    }
    blocks[d].set(b, v);
  };
  const setRun = (d: number, start: number, end: number): void => {
    for (const b of blocks[d].keys()) if (b >= start && b < end) blocks[d].delete(b);
    const overlapping = runs[d].filter((r) => r.start <= end && start <= r.end);
    runs[d] = runs[d].filter((r) => !overlapping.includes(r));
    runs[d].push({ start: Math.min(start, ...overlapping.map((r) => r.start)), end: Math.max(end, ...overlapping.map((r) => r.end)) });
  };
  let flags = 0;
  for (const { body, batch } of records) {
    flags |= batch.header.flags;
    for (const e of batch.extents) {
      if (e.flags & EXTENT_FLAGS.ZERO) {
        if (e.blockCount >= ZERO_RUN_BLOCKS) setRun(e.disk, e.blockIndex, e.blockIndex + e.blockCount);
        else for (let i = 0; i < e.blockCount; i++) setBlock(e.disk, e.blockIndex + i, null);
        continue;
      }
      const data = decodeExtent(e, body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), 'flush log');
      for (let i = 0; i < e.blockCount; i++) setBlock(e.disk, e.blockIndex + i, data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
    }
  }
  const extents: ExtentInput[] = runs.flatMap((rs, disk) => rs.map((r) => ({ disk, blockIndex: r.start, zeroBlocks: r.end - r.start })));
  blocks.forEach((m, disk) => {
    const sorted = [...m.keys()].sort((a, b) => a - b);
    for (let i = 0; i < sorted.length; ) {
      const zero = m.get(sorted[i]) === null;
      let j = i + 1;
      while (j < sorted.length && sorted[j] === sorted[j - 1] + 1 && (m.get(sorted[j]) === null) === zero) j++;
      if (zero) extents.push({ disk, blockIndex: sorted[i], zeroBlocks: j - i });
      else extents.push({ disk, blockIndex: sorted[i], data: Buffer.concat(sorted.slice(i, j).map((b) => m.get(b)!)) });
      i = j;
    }
  });
  const first = records[0].batch.header;
  const last = records[records.length - 1].batch.header;
  return encodeBatch({ pairId, seq: first.seq, prevSeq: first.seq - 1, firstWriteMs: first.firstWriteMs, cutMs: last.cutMs, flags, disks }, extents);
}

/** Reads and replays the log of `seq` in `dir`: the batch body (if any record is valid) and the torn tail (if any). */
export async function replayFlushLog(dir: string, seq: number, pairId: string, disks: string[]): Promise<{ body?: Buffer; records: number; tail?: ReadLog['tail'] }> {
  const path = pathOf(dir, seq);
  const log = parseFlushLog(await readFile(path), seq, path, pairId, disks);
  return { body: replayRecords(log.records, pairId, disks), records: log.records.length, tail: log.tail };
}

/** Deletes the log of `seq` (start-up: replayed, or its batch is spooled or in the journal). */
export async function removeFlushLog(dir: string, seq: number): Promise<void> {
  await rm(pathOf(dir, seq), { force: true });
}

/**
 * Start-up: the flush log of a seq whose batch was never spooled is replayed into that batch
 * (spooled durably, then the log is deleted). A log whose batch is spooled, or in the journal
 * already (seq ≤ `journalHas`), is deleted. A log is written only once every batch below its
 * seq is spooled, so it is always the next seq; one beyond that (a hole) is dropped with a
 * warning: the dirty map still holds its regions, which the resync after an unclean stop resends.
 */
export async function replayFlushLogs(dir: string, pairId: string, disks: string[], spool: Spool, journalHas: number, log: (m: string) => void): Promise<void> {
  for (const seq of await flushLogSeqs(dir)) {
    const spooled = spool.seqs();
    const next = Math.max(journalHas, ...spooled) + 1;
    if (seq === next) {
      const r = await replayFlushLog(dir, seq, pairId, disks);
      if (r.tail) log(`flush log of seq ${seq}: ${r.records} records, then ${r.tail.reason} at byte ${r.tail.offset}: ignored from there (never acknowledged)`);
      if (r.body) {
        await spool.add(seq, r.body);
        log(`flush log of seq ${seq}: replayed ${r.records} records into batch ${seq} (${r.body.length} bytes)`);
      }
    } else if (seq > next) {
      log(`flush log of seq ${seq} stands beyond seq ${next - 1}, the last spooled or in the journal: dropped (the resync of dirty regions resends its writes)`);
    }
    await removeFlushLog(dir, seq);
  }
}
