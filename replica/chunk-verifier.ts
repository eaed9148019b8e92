// The heavy work of reading stored objects, on worker threads: zstd decompression and the data
// checksums (SHA-256 of backup chunks and batch objects, CRC-32C of batch extents), and for
// recovery also placing the verified data into the image window. The event loop that moves
// the bytes (S3 GETs and PUTs, DynamoDB calls; locally also the S3 server itself) keeps its core.
//
// - checkBatchPayloads (apply): every stored payload of a batch decoded and its length and
//   CRC-32C taken, and the body's SHA-256; the caller judges them against the index.
// - verifyChunk (seeding): a backup chunk checked end to end; the body stays ours to store.
// - placeVerified (recovery): the objects' bytes read by one GET hold payloads (extents or a
//   chunk); each is decompressed and checked in a worker, and only data that matches its
//   checksum is copied into the window, a SharedArrayBuffer the workers write directly (or,
//   for an image file, written by the worker straight into the file). What
//   each payload turned into (its length and checksum, or why it did not decompress) comes
//   back, and the caller judges it: a mismatch fails recovery, naming the extent.
// - hashHeld (recovery): a whole batch object's SHA-256, taken in a worker, which can keep the
//   body (a HeldBody) so that placeVerified takes payloads from it there: the bytes cross to
//   the worker once, uncopied, and the event loop neither hashes them nor holds them (its
//   heap's collector is not made to run by them). keepBody: the same for bytes checked already
//   (a stretch of pieces read ahead, which later windows take).
//
// The worker is inline source using only Node built-ins (and the CRC-32C binary by its
// resolved path where that loads), so it needs no file of its own in a bundle. A worker
// keeps the process alive only while it has work.

import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { checkChunkData, checkChunkHeader, type ChunkRef } from '../core/chunk-format';
import { CRC32C_TABLES, crc32c, nativeCrc32c } from '../core/crc32c';

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { zstdDecompressSync } = require('node:zlib');
const { createHash } = require('node:crypto');
const { writeSync } = require('node:fs');
// CRC-32C: slicing-by-16 over core/crc32c.ts's tables (its table code, the same as
// crc32cPortable), or the CPU's instruction through the binary where that loads. Both are
// checked at start against a sample the parent checksummed (aligned and not).
const T = workerData.crcTables;
const crc32cPortable = (buf) => {
  let c = ~0 >>> 0;
  let i = 0;
  const len = buf.length;
  for (; i < len && ((buf.byteOffset + i) & 3) !== 0; i++) c = T[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  const blocks = (len - i) >>> 4;
  if (blocks > 0) {
    const w = new Uint32Array(buf.buffer, buf.byteOffset + i, blocks * 4);
    for (let j = 0; j < w.length; j += 4) {
      const a = w[j] ^ c, b = w[j + 1], d = w[j + 2], e = w[j + 3];
      c =
        T[3840 + (a & 0xff)] ^ T[3584 + ((a >>> 8) & 0xff)] ^ T[3328 + ((a >>> 16) & 0xff)] ^ T[3072 + (a >>> 24)] ^
        T[2816 + (b & 0xff)] ^ T[2560 + ((b >>> 8) & 0xff)] ^ T[2304 + ((b >>> 16) & 0xff)] ^ T[2048 + (b >>> 24)] ^
        T[1792 + (d & 0xff)] ^ T[1536 + ((d >>> 8) & 0xff)] ^ T[1280 + ((d >>> 16) & 0xff)] ^ T[1024 + (d >>> 24)] ^
        T[768 + (e & 0xff)] ^ T[512 + ((e >>> 8) & 0xff)] ^ T[256 + ((e >>> 16) & 0xff)] ^ T[e >>> 24];
    }
    i += blocks * 16;
  }
  for (; i < len; i++) c = T[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
};
const sample = Buffer.from(workerData.crcSample);
const agrees = (f) => f(sample) === workerData.crcSampleCrc && f(sample.subarray(3)) === workerData.crcSampleCrc3;
if (!agrees(crc32cPortable)) throw new Error('CRC-32C self-check failed');
let crc32c = crc32cPortable;
try {
  const f = workerData.crcModule && require(workerData.crcModule).crc32c;
  if (f && agrees(f)) crc32c = (b) => (b.length >= 256 ? f(b) : crc32cPortable(b));
} catch {}
const sha256 = (data) => createHash('sha256').update(data).digest('hex');
// fs may write less than asked (e.g. a full disk): on until all is written, or it throws.
const writeAll = (fd, data, src, len, at) => {
  for (let done = 0; done < len; ) {
    const n = writeSync(fd, data, src + done, len - done, at + done);
    if (n === 0) throw new Error('no progress writing the image file at byte ' + (at + done));
    done += n;
  }
};
// Into a fresh sparse file: only the runs of 4 KiB blocks that are not all zeros are written (an
// image's zeros stay holes; the file reads zeros there anyway).
const ZERO_BLOCK = Buffer.alloc(4096);
const writeData = (fd, data, src, len, at) => {
  let run = -1;
  for (let i = 0; i < len; i += 4096) {
    const n = Math.min(4096, len - i);
    const zero = data.compare(ZERO_BLOCK, 0, n, src + i, src + i + n) === 0;
    if (!zero && run < 0) run = i;
    if (zero && run >= 0) {
      writeAll(fd, data, src + run, i - run, at + run);
      run = -1;
    }
  }
  if (run >= 0) writeAll(fd, data, src + run, len - run, at + run);
};
// The output in one buffer of its known size, not 16 KiB pieces joined (a copy of every byte).
const decode = (payload, zstd, length) => (zstd ? zstdDecompressSync(payload, { maxOutputLength: length, chunkSize: Math.max(64, length) }) : payload);
// An item's payload within body, decoded; or { error } saying why it did not decompress.
const decodeItem = (body, it) => {
  try {
    return decode(body.subarray(it.start, it.end), it.zstd, it.length);
  } catch (err) {
    return { error: String((err && err.message) || err) };
  }
};
// Bodies kept for the caller (hash with hold), by the id of the message that brought them.
const held = new Map();
const asBuffer = (u) => Buffer.from(u.buffer, u.byteOffset, u.byteLength);
parentPort.on('message', (m) => {
  try {
    if (m.type === 'drop') {
      for (const id of m.ids) held.delete(id);
      return;
    }
    if (m.type === 'held') {
      let bytes = 0;
      for (const b of held.values()) bytes += b.length;
      parentPort.postMessage({ id: m.id, bytes });
      return;
    }
    if (m.type === 'keep') {
      held.set(m.id, asBuffer(m.body));
      return;
    }
    if (m.type === 'chunk') {
      const data = decode(m.payload, m.zstd, m.length);
      parentPort.postMessage({ id: m.id, length: data.length, sha256: sha256(data) });
      return;
    }
    if (m.type === 'batch') {
      // apply: every item's payload decoded and its length and CRC-32C taken; the body's SHA-256.
      const body = asBuffer(m.body);
      const outcomes = m.items.map((it) => {
        const data = decodeItem(body, it);
        return data.error !== undefined ? data : { length: data.length, crc: crc32c(data) };
      });
      parentPort.postMessage({ id: m.id, sha256: sha256(body), outcomes });
      return;
    }
    if (m.type === 'hash') {
      const body = asBuffer(m.body);
      if (m.hold) held.set(m.id, body);
      // The tail back as a copy of its own (the body stays here, or is dropped).
      parentPort.postMessage({ id: m.id, sha256: sha256(body), tail: new Uint8Array(body.subarray(m.tailFrom)) });
      return;
    }
    // place: every item's payload decoded and checked; its pieces copied only if it matches.
    let body;
    if (m.held === undefined) body = asBuffer(m.body);
    else {
      const whole = held.get(m.held);
      if (!whole) throw new Error('no body held as ' + m.held + ' (dropped, or another thread holds it)');
      body = whole.subarray(m.start, m.end);
    }
    // Into the window (shared memory), or straight into the image file at base + the window's byte
    // (a fresh sparse file: its zero blocks are left as holes).
    const win = m.window && Buffer.from(m.window);
    const put = win ? (data, src, dst, len) => data.copy(win, dst, src, src + len) : (data, src, dst, len) => writeData(m.fd, data, src, len, m.base + dst);
    const results = m.items.map((it) => {
      const data = decodeItem(body, it);
      if (data.error !== undefined) return data;
      const out = it.sha256 !== undefined ? { length: data.length, sha256: sha256(data) } : { length: data.length, crc: crc32c(data) };
      if (data.length === it.length && (it.sha256 !== undefined ? out.sha256 === it.sha256 : out.crc === it.crc)) {
        for (const [src, dst, len] of it.places) put(data, src, dst, len);
      }
      return out;
    });
    parentPort.postMessage({ id: m.id, results });
  } catch (err) {
    parentPort.postMessage({ id: m.id, error: String((err && err.message) || err) });
  }
});`;

/** What a payload turned into: its length and checksum, or why it did not decompress. */
export type PayloadOutcome = { length: number; crc?: number; sha256?: string } | { error: string };

type Answer =
  | { id: number; length: number; sha256: string }
  | { id: number; sha256: string; tail: Uint8Array }
  | { id: number; bytes: number }
  | { id: number; sha256: string; outcomes: PayloadOutcome[] }
  | { id: number; results: PayloadOutcome[] }
  | { id: number; error: string }
  | { id: number; died: string };

interface PoolWorker {
  worker: Worker;
  pending: Map<number, (a: Answer) => void>;
}

let pool: PoolWorker[] | undefined;
let nextId = 0;

/** The resolved path of the CRC-32C binary's module, where it loads here. */
const crcModule = ((): string | undefined => {
  try {
    return nativeCrc32c ? require.resolve('@node-rs/crc32') : undefined;
  } catch {
    return undefined;
  }
})();

/** What a worker checks its CRC-32C code against at start: 1 KiB of a fixed pattern, and its CRCs (whole, and from byte 3). */
const CRC_SAMPLE = ((): { crcSample: Uint8Array; crcSampleCrc: number; crcSampleCrc3: number } => {
  const b = Buffer.alloc(1024);
  for (let i = 0, x = 1; i < b.length; i++) b[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  return { crcSample: b, crcSampleCrc: crc32c(b), crcSampleCrc3: crc32c(b.subarray(3)) };
})();

/** One worker per core but one (the event loop keeps that), at least one, at most 4. */
function workers(): PoolWorker[] {
  if (!pool) {
    const n = Math.max(1, Math.min(4, availableParallelism() - 1));
    pool = Array.from({ length: n }, () => {
      // execArgv []: the inline source needs none of the parent's flags (under tsx, its loader would load in each worker).
      const w: PoolWorker = { worker: new Worker(WORKER_SOURCE, { eval: true, execArgv: [], workerData: { crcModule, crcTables: CRC32C_TABLES, ...CRC_SAMPLE } }), pending: new Map() };
      w.worker.on('message', (a: Answer) => {
        const done = w.pending.get(a.id);
        w.pending.delete(a.id);
        if (w.pending.size === 0) w.worker.unref();
        done?.(a);
      });
      w.worker.on('error', (err) => {
        // A dead worker fails what it held; the next call starts a new pool.
        for (const done of w.pending.values()) done({ id: -1, died: err.message });
        if (pool?.includes(w)) pool = undefined;
      });
      // Referenced only while it has work (after the listeners: adding one refs it again).
      w.worker.unref();
      return w;
    });
  }
  return pool;
}

/**
 * Starts the workers now, if they are not running: a reader that will need them calls this
 * before it waits on the index, so that their start-up (tens of ms each) overlaps that wait.
 */
export function warmDecoders(): void {
  workers();
}

/** The worker with the fewest tasks in flight. */
const leastBusy = (): PoolWorker => workers().reduce((a, b) => (b.pending.size < a.pending.size ? b : a));

/** Sends a task to the least busy worker (or to `to`); resolves with its answer. */
function ask(message: Record<string, unknown>, transfer: ArrayBuffer[] = [], w: PoolWorker = leastBusy(), id = nextId++): Promise<Answer> {
  return new Promise<Answer>((resolve) => {
    if (w.pending.size === 0) w.worker.ref();
    w.pending.set(id, resolve);
    w.worker.postMessage({ ...message, id }, transfer);
  });
}

/** `answer` if it carries `key`; else a plain Error saying the worker (`thread`) died, failed, or answered something else. */
function answered<K extends string>(answer: Answer, key: K, thread: string): Extract<Answer, Record<K, unknown>> {
  if ('died' in answer) throw new Error(`${thread} died: ${answer.died}`);
  if ('error' in answer) throw new Error(`${thread} failed: ${answer.error}`);
  if (!(key in answer)) throw new Error(`${thread}: unexpected answer`);
  return answer as Extract<Answer, Record<K, unknown>>;
}

/** Checks a chunk object end to end against the manifest's ref; throws BackupError naming `where`. */
export async function verifyChunk(body: Buffer, expected: ChunkRef, where: string): Promise<void> {
  const chunk = checkChunkHeader(body, expected, where);
  // The payload is copied to the worker (structured clone); the body stays ours to store.
  const answer = await ask({ type: 'chunk', payload: chunk.payload, zstd: chunk.zstd, length: chunk.length });
  // Not the chunk's fault: a plain error, which the workflow retries.
  if ('died' in answer) throw new Error(`verifying ${where}: the verifier thread died: ${answer.died}`);
  if (!('length' in answer || 'error' in answer)) throw new Error(`verifying ${where}: unexpected answer`);
  // What the payload turned into, or why it did not decompress: judged as the chunk's.
  checkChunkData(chunk, expected, answer, where);
}

/** One payload within a GET's bytes, what it must decode to, and where its data goes. */
export interface PlaceItem {
  /** Its bytes within the body: [start, end). */
  start: number;
  end: number;
  zstd: boolean;
  /** Decoded length. */
  length: number;
  /** The data's CRC-32C (batch extents) or SHA-256 in hex (backup chunks). */
  crc?: number;
  sha256?: string;
  /** [offset in the data, offset in the window, length] of each piece to put. */
  places: [number, number, number][];
}

/** One stored payload of a batch, for checkBatchPayloads: its bytes within the body, and what it decodes to. */
export interface BatchPayload {
  start: number;
  end: number;
  zstd: boolean;
  /** Decoded length. */
  length: number;
}

/**
 * Decodes each payload of a batch object in a worker, and takes the body's SHA-256 there:
 * each payload's outcome (its length and CRC-32C, or why it did not decompress), in order,
 * for the caller to judge. `body` is copied to the worker unless `giveAway` (see
 * placeVerified). Rejects (plain Error) if the worker failed.
 */
export async function checkBatchPayloads(body: Buffer, payloads: BatchPayload[], giveAway: boolean): Promise<{ sha256: string; outcomes: PayloadOutcome[] }> {
  const sent = sendable(body, giveAway);
  return answered(await ask({ type: 'batch', body: sent, items: payloads }, [sent.buffer as ArrayBuffer]), 'outcomes', 'decoding thread');
}

/** A whole object kept by a worker (hashHeld), for placeVerified to take payloads from there. */
export interface HeldBody {
  readonly worker: PoolWorker;
  readonly id: number;
}

/** Bytes [start, end) of a held body. */
export interface HeldRange {
  held: HeldBody;
  start: number;
  end: number;
}

/**
 * The SHA-256 (hex) of `body`, taken in a worker, with a copy of its bytes from `tailFrom`
 * on; with `hold`, the worker keeps the body (a HeldBody, until release()). `body` is copied
 * to the worker, unless `giveAway` says it is the caller's alone (see placeVerified). Rejects
 * (plain Error) if the worker failed.
 */
export async function hashHeld(body: Buffer, o: { hold: boolean; tailFrom: number; giveAway: boolean }): Promise<{ sha256: string; tail: Buffer; held?: HeldBody }> {
  const sent = sendable(body, o.giveAway);
  const w = leastBusy();
  const id = nextId++;
  const answer = answered(await ask({ type: 'hash', body: sent, hold: o.hold, tailFrom: o.tailFrom }, [sent.buffer as ArrayBuffer], w, id), 'tail', 'hashing thread');
  const tail = Buffer.from(answer.tail.buffer, answer.tail.byteOffset, answer.tail.byteLength);
  return { sha256: answer.sha256, tail, held: o.hold ? { worker: w, id } : undefined };
}

/**
 * Has a worker keep `body` (a HeldBody, until release()) for placeVerified to take payloads
 * from there, checking nothing: for bytes the caller checked already. Copied to the worker
 * unless `giveAway` (see placeVerified). Unanswered: a worker takes its messages in order, so
 * a later placeVerified finds it there (or fails, if the worker died).
 */
export function keepBody(body: Buffer, giveAway: boolean): HeldBody {
  const sent = sendable(body, giveAway);
  const w = leastBusy();
  const id = nextId++;
  w.worker.postMessage({ type: 'keep', body: sent, id }, [sent.buffer as ArrayBuffer]);
  return { worker: w, id };
}

/** Lets the workers drop these bodies (fire and forget: a dead worker held nothing). */
export function release(held: HeldBody[]): void {
  const byWorker = new Map<PoolWorker, number[]>();
  for (const h of held) {
    const ids = byWorker.get(h.worker);
    if (ids) ids.push(h.id);
    else byWorker.set(h.worker, [h.id]);
  }
  for (const [w, ids] of byWorker) if (pool?.includes(w)) w.worker.postMessage({ type: 'drop', ids });
}

/** Bytes the workers hold now (hashHeld's bodies not yet released): 0 when no read is open. */
export async function heldBytes(): Promise<number> {
  if (!pool) return 0;
  const answers = await Promise.all(pool.map((w) => ask({ type: 'held' }, [], w)));
  return answers.reduce((n, a) => n + ('bytes' in a ? a.bytes : 0), 0);
}

/**
 * Exactly the view's bytes, to post: transferred as they are when they are a whole buffer of
 * ours, else copied once and that copy transferred (cloning a view would clone its whole
 * ArrayBuffer, which may be a larger object's, or a store's own memory).
 */
function sendable(body: Buffer, giveAway: boolean): Uint8Array {
  const whole = giveAway && body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && body.buffer instanceof ArrayBuffer;
  return whole ? new Uint8Array(body.buffer, 0, body.byteLength) : new Uint8Array(body);
}

/** Where placeVerified puts verified data: a window's shared memory, or an image file (its descriptor) from byte `base` on. */
export type PlaceTarget = SharedArrayBuffer | { fd: number; base: number };

/**
 * Decodes and checks each item in a worker, putting the pieces of those that match into
 * `target`: copied into a window (a SharedArrayBuffer), or written by the worker straight into
 * a file at `base` + their offset in the window (no window in between). The items' bytes are
 * `body`, or a range of a body a worker holds (then that worker does it). `body` is copied to
 * the worker, unless `giveAway` says it is the caller's alone (a store's `freshReads`) and it
 * spans its whole ArrayBuffer: then that is transferred, and `body` is empty afterwards
 * (detached). Resolves with each item's outcome, in order; the caller decides what a mismatch
 * means. Rejects (plain Error) if the worker failed (a write that failed among them).
 */
export async function placeVerified(body: Buffer | HeldRange, items: PlaceItem[], target: PlaceTarget, giveAway = false): Promise<PayloadOutcome[]> {
  const into = target instanceof SharedArrayBuffer ? { window: target } : target;
  let answer: Answer;
  if (Buffer.isBuffer(body)) {
    const sent = sendable(body, giveAway);
    answer = await ask({ type: 'place', body: sent, items, ...into }, [sent.buffer as ArrayBuffer]);
  } else {
    if (!pool?.includes(body.held.worker)) throw new Error('decoding thread died: the body it held is gone');
    answer = await ask({ type: 'place', held: body.held.id, start: body.start, end: body.end, items, ...into }, [], body.held.worker);
  }
  return answered(answer, 'results', 'decoding thread').results;
}
