// The read path's heavy work on worker threads: zstd decompression and the data checksums
// (SHA-256 of backup chunks, CRC-32C of batch extents), and for recovery also placing the
// verified data into the image window. The event loop that moves the bytes (S3 GETs and PUTs;
// locally also the S3 server itself) keeps its core.
//
// - verifyChunk (seeding): a backup chunk checked end to end; the body stays ours to store.
// - placeVerified (recovery): the objects' bytes read by one GET hold payloads (extents or a
//   chunk); each is decompressed and checked in a worker, and only data that matches its
//   checksum is copied into the window, a SharedArrayBuffer the workers write directly. What
//   each payload turned into (its length and checksum, or why it did not decompress) comes
//   back, and the caller judges it: a mismatch fails recovery, naming the extent.
//
// The worker is inline source using only Node built-ins (and the CRC-32C binary by its
// resolved path where that loads), so it needs no file of its own in a bundle. A worker
// keeps the process alive only while it has work.

import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { checkChunkData, checkChunkHeader, type ChunkRef } from '../core/chunk-format';
import { nativeCrc32c } from '../core/crc32c';

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { zstdDecompressSync } = require('node:zlib');
const { createHash } = require('node:crypto');
let crc32c;
try {
  const f = workerData.crcModule && require(workerData.crcModule).crc32c;
  if (f && f(Buffer.from('123456789')) === 0xe3069283) crc32c = f;
} catch {}
if (!crc32c) {
  // Bytewise CRC-32C (Castagnoli): where the binary does not load.
  const T = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    T[n] = c >>> 0;
  }
  crc32c = (b) => {
    let c = ~0;
    for (let i = 0; i < b.length; i++) c = T[(c ^ b[i]) & 0xff] ^ (c >>> 8);
    return ~c >>> 0;
  };
}
if (crc32c(Buffer.from('123456789')) !== 0xe3069283) throw new Error('CRC-32C self-check failed');
const sha256 = (data) => createHash('sha256').update(data).digest('hex');
// The output in one buffer of its known size, not 16 KiB pieces joined (a copy of every byte).
const decode = (payload, zstd, length) => (zstd ? zstdDecompressSync(payload, { maxOutputLength: length, chunkSize: Math.max(64, length) }) : payload);
parentPort.on('message', (m) => {
  try {
    if (m.type === 'chunk') {
      const data = decode(m.payload, m.zstd, m.length);
      parentPort.postMessage({ id: m.id, length: data.length, sha256: sha256(data) });
      return;
    }
    // place: every item's payload decoded and checked; its pieces copied only if it matches.
    const body = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength);
    const win = Buffer.from(m.window);
    const results = m.items.map((it) => {
      let data;
      try {
        data = decode(body.subarray(it.start, it.end), it.zstd, it.length);
      } catch (err) {
        return { error: String((err && err.message) || err) };
      }
      const out = it.sha256 !== undefined ? { length: data.length, sha256: sha256(data) } : { length: data.length, crc: crc32c(data) };
      if (data.length === it.length && (it.sha256 !== undefined ? out.sha256 === it.sha256 : out.crc === it.crc)) {
        for (const [src, dst, len] of it.places) data.copy(win, dst, src, src + len);
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

/** One worker per core but one (the event loop keeps that), at least one, at most 4. */
function workers(): PoolWorker[] {
  if (!pool) {
    const n = Math.max(1, Math.min(4, availableParallelism() - 1));
    pool = Array.from({ length: n }, () => {
      const w: PoolWorker = { worker: new Worker(WORKER_SOURCE, { eval: true, workerData: { crcModule } }), pending: new Map() };
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

/** Sends a task to the least busy worker; resolves with its answer. */
function ask(message: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<Answer> {
  const w = workers().reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
  const id = nextId++;
  return new Promise<Answer>((resolve) => {
    if (w.pending.size === 0) w.worker.ref();
    w.pending.set(id, resolve);
    w.worker.postMessage({ ...message, id }, transfer);
  });
}

/** Checks a chunk object end to end against the manifest's ref; throws BackupError naming `where`. */
export async function verifyChunk(body: Buffer, expected: ChunkRef, where: string): Promise<void> {
  const chunk = checkChunkHeader(body, expected, where);
  // The payload is copied to the worker (structured clone); the body stays ours to store.
  const answer = await ask({ type: 'chunk', payload: chunk.payload, zstd: chunk.zstd, length: chunk.length });
  // Not the chunk's fault: a plain error, which the workflow retries.
  if ('died' in answer) throw new Error(`verifying ${where}: the verifier thread died: ${answer.died}`);
  if ('results' in answer) throw new Error(`verifying ${where}: unexpected answer`);
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
  /** [offset in the data, offset in the window, length] of each piece to copy. */
  places: [number, number, number][];
}

/**
 * Decodes and checks each item in a worker, copying the pieces of those that match into
 * `window` (a SharedArrayBuffer). `body` is copied to the worker, unless `giveAway` says it is
 * the caller's alone (a store's `freshReads`) and it spans its whole ArrayBuffer: then that is
 * transferred, and `body` is empty afterwards (detached). Resolves with each item's outcome,
 * in order; the caller decides what a mismatch means. Rejects (plain Error) if the worker failed.
 */
export async function placeVerified(body: Buffer, items: PlaceItem[], window: SharedArrayBuffer, giveAway = false): Promise<PayloadOutcome[]> {
  // Exactly the view's bytes: transferred as they are when they are a whole buffer of ours,
  // else copied once and that copy transferred (cloning a view would clone its whole
  // ArrayBuffer, which may be a larger object's, or a store's own memory).
  const whole = giveAway && body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && body.buffer instanceof ArrayBuffer;
  const sent = whole ? new Uint8Array(body.buffer, 0, body.byteLength) : new Uint8Array(body);
  const answer = await ask({ type: 'place', body: sent, items, window }, [sent.buffer as ArrayBuffer]);
  if ('died' in answer) throw new Error(`decoding thread died: ${answer.died}`);
  if ('error' in answer) throw new Error(`decoding thread failed: ${answer.error}`);
  if (!('results' in answer)) throw new Error('decoding thread: unexpected answer');
  return answer.results;
}
