// Verifies backup chunks while seeding, with the heavy part (zstd decompress + SHA-256,
// ~5 ms per 4 MiB chunk) on worker threads: the event loop that moves the bytes (S3 GETs
// and PUTs; locally also the S3 server itself) keeps its core. The header checks stay here.
//
// The worker is inline source using only Node built-ins, so it needs no file of its own in
// a Lambda bundle. A worker keeps the process alive only while it has a chunk to answer.

import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { checkChunkData, checkChunkHeader, type ChunkRef } from '../core/chunk-format';

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { zstdDecompressSync } = require('node:zlib');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, payload, zstd, length }) => {
  try {
    const data = zstd ? zstdDecompressSync(payload, { maxOutputLength: length }) : payload;
    parentPort.postMessage({ id, length: data.length, sha256: createHash('sha256').update(data).digest('hex') });
  } catch (err) {
    parentPort.postMessage({ id, error: String((err && err.message) || err) });
  }
});`;

type Answer = { id: number; length: number; sha256: string } | { id: number; error: string } | { id: number; died: string };

interface PoolWorker {
  worker: Worker;
  pending: Map<number, (a: Answer) => void>;
}

let pool: PoolWorker[] | undefined;
let nextId = 0;

/** One worker per core but one (the event loop keeps that), at least one, at most 4. */
function workers(): PoolWorker[] {
  if (!pool) {
    const n = Math.max(1, Math.min(4, availableParallelism() - 1));
    pool = Array.from({ length: n }, () => {
      const w: PoolWorker = { worker: new Worker(WORKER_SOURCE, { eval: true }), pending: new Map() };
      w.worker.on('message', (a: Answer) => {
        const done = w.pending.get(a.id);
        w.pending.delete(a.id);
        if (w.pending.size === 0) w.worker.unref();
        done?.(a);
      });
      w.worker.on('error', (err) => {
        // A dead worker fails what it held; the next call starts a new pool.
        for (const done of w.pending.values()) done({ id: -1, died: err.message });
        pool = undefined;
      });
      // Referenced only while it has work (after the listeners: adding one refs it again).
      w.worker.unref();
      return w;
    });
  }
  return pool;
}

/** Checks a chunk object end to end against the manifest's ref; throws BackupError naming `where`. */
export async function verifyChunk(body: Buffer, expected: ChunkRef, where: string): Promise<void> {
  const chunk = checkChunkHeader(body, expected, where);
  const all = workers();
  // The least busy worker.
  const w = all.reduce((a, b) => (b.pending.size < a.pending.size ? b : a));
  const id = nextId++;
  const answer = await new Promise<Answer>((resolve) => {
    if (w.pending.size === 0) w.worker.ref();
    w.pending.set(id, resolve);
    // The payload is copied to the worker (structured clone); the body stays ours to store.
    w.worker.postMessage({ id, payload: chunk.payload, zstd: chunk.zstd, length: chunk.length });
  });
  // Not the chunk's fault: a plain error, which the workflow retries.
  if ('died' in answer) throw new Error(`verifying ${where}: the verifier thread died: ${answer.died}`);
  checkChunkData(chunk, expected, answer, where);
}
