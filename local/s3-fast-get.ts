// A plain object GET, served without s3rver's request pipeline and without allocating its
// body: the bytes are read from the object's file into a small pool of reused buffers, each
// given back once the socket has sent it.
//
// Why: s3rver streams a body through `fs.createReadStream`, a new 64 KiB buffer per read. The
// buffers are memory outside the JavaScript heap, and every 64 MiB of them made V8 run a
// full collection of the process's heap (the whole local stack's): 13-23 per 400 MiB served,
// measured in bench:recover. Its Koa middleware also costs every request a few ms of CPU.
// The local S3 shares this machine's cores with whatever is measured against it.
//
// Only the common case takes this path: a signed, path-style GET or HEAD of an existing key of
// a configured bucket, with no query string but the SDK's `x-id` (a `versionId` goes to
// s3rver), no conditional header, and no Range or a `bytes=START-[END]` one. Anything else (and
// any error before the answer starts) is left to s3rver, which answers it as before. The
// answer carries the headers s3rver's would (its metadata, ETag, Last-Modified,
// Accept-Ranges, Content-Range), as S3 does.

import { open } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
// s3rver's own model of an object's headers (which metadata it sends, the default content
// type) and its header capitalization, so that this path answers with exactly its headers.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const S3Object = require('s3rver/lib/models/object') as new (bucket: string, key: string, content: null, metadata: Record<string, string | number>) => { metadata: Record<string, string | number> };
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { capitalizeHeader } = require('s3rver/lib/utils') as { capitalizeHeader: (header: string) => string };

/** What the fast path needs of s3rver's filesystem store. */
export interface ObjectFiles {
  getResourcePath(bucket: string, key: string, resource: string): string;
  getMetadata(bucket: string, key: string): Promise<Record<string, string | number>>;
}

const READ_BYTES = 1024 * 1024;
/** GETs and HEADs this path has answered, in this process (tests check it was taken). */
export let fastGetsServed = 0;
/** Buffers kept for reuse; more are made when every one is out (and dropped when given back). */
const POOL_SIZE = 32;
const pool: Buffer[] = [];
const take = (): Buffer => pool.pop() ?? Buffer.allocUnsafeSlow(READ_BYTES);
const giveBack = (b: Buffer): void => void (pool.length < POOL_SIZE && pool.push(b));

const CONDITIONAL = ['if-match', 'if-none-match', 'if-modified-since', 'if-unmodified-since', 'if-range'];

/** The bucket, key and range of a request this path serves, or undefined to leave it to s3rver. */
export function plainGet(req: IncomingMessage, buckets: ReadonlySet<string>): { bucket: string; key: string; start?: number; end?: number } | undefined {
  if ((req.method !== 'GET' && req.method !== 'HEAD') || !req.url || !req.headers.authorization) return undefined;
  // A conditional request, or a browser's (CORS), is s3rver's to answer.
  if (CONDITIONAL.some((h) => req.headers[h] !== undefined) || req.headers.origin !== undefined) return undefined;
  const [path, query] = req.url.split('?', 2);
  if (query !== undefined && !/^x-id=(GetObject|HeadObject)$/.test(query)) return undefined;
  const slash = path.indexOf('/', 1);
  if (slash < 0) return undefined;
  let bucket: string, key: string;
  try {
    bucket = decodeURIComponent(path.slice(1, slash));
    key = decodeURIComponent(path.slice(slash + 1));
  } catch {
    return undefined;
  }
  if (!buckets.has(bucket) || !key) return undefined;
  const range = req.headers.range;
  if (range === undefined) return { bucket, key };
  const m = /^bytes=(\d+)-(\d*)$/.exec(range);
  if (!m) return undefined;
  return { bucket, key, start: Number(m[1]), end: m[2] ? Number(m[2]) : undefined };
}

/**
 * Serves `want` from the store's files. Resolves false, having sent nothing, when s3rver should
 * answer instead (no such key, a range it refuses); a failure after the headers went ends the
 * connection, as a broken S3 response does.
 */
export async function serveGet(files: ObjectFiles, want: NonNullable<ReturnType<typeof plainGet>>, req: IncomingMessage, res: ServerResponse): Promise<boolean> {
  // The connection closing ends the answer: the response's 'close', or the socket's (a pipelined
  // response still queued behind another gets no 'close' of its own, and its writes no callback).
  let onClose = (): void => {};
  const closed = new Promise<void>((resolve) => {
    onClose = resolve;
    res.once('close', resolve);
    req.socket.once('close', resolve);
    if (req.socket.destroyed) resolve();
  });
  try {
    return await answer(files, want, req, res, closed);
  } finally {
    req.socket.removeListener('close', onClose); // a keep-alive connection carries many answers
  }
}

/** serveGet's answer, `closed` resolving when the connection does. */
async function answer(files: ObjectFiles, want: NonNullable<ReturnType<typeof plainGet>>, req: IncomingMessage, res: ServerResponse, closed: Promise<void>): Promise<boolean> {
  // The file first, its size from the open file: a PUT renamed over the key meanwhile cannot
  // make the length sent differ from the bytes read.
  let file;
  try {
    file = await open(files.getResourcePath(want.bucket, want.key, 'object'), 'r');
  } catch {
    return false;
  }
  let metadata: Record<string, string | number>;
  let size: number;
  try {
    metadata = new S3Object(want.bucket, want.key, null, await files.getMetadata(want.bucket, want.key)).metadata;
    size = (await file.stat()).size;
  } catch {
    await file.close();
    return false;
  }
  const last = size - 1;
  const ranged = want.start !== undefined;
  const start = want.start ?? 0;
  const end = Math.min(want.end ?? last, last);
  if (ranged && (start > end || start < 0)) {
    await file.close();
    return false;
  }
  const headers: Record<string, string> = { 'Accept-Ranges': 'bytes' };
  for (const [name, value] of Object.entries(metadata)) headers[capitalizeHeader(name)] = String(value);
  const length = size === 0 ? 0 : end + 1 - start;
  headers['Content-Length'] = String(length);
  if (ranged) headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
  try {
    res.writeHead(ranged ? 206 : 200, headers);
    fastGetsServed++;
    if (req.method === 'HEAD' || length === 0) {
      res.end();
      return true;
    }
    let at = start;
    // One buffer being sent while the next is read. A buffer goes back to the pool only when its
    // write's callback says the socket is done with it; a connection closed meanwhile drops it.
    let sending: Promise<void> = Promise.resolve();
    while (at <= end) {
      const buf = take();
      const { bytesRead } = await file.read(buf, 0, Math.min(READ_BYTES, end + 1 - at), at);
      if (bytesRead === 0) throw new Error(`${want.key}: the object's file ended at ${at}, before ${end + 1}`);
      at += bytesRead;
      await Promise.race([sending, closed]);
      if (res.destroyed || req.socket.destroyed) return true;
      sending = new Promise<void>((resolve, reject) => {
        res.write(buf.subarray(0, bytesRead), (err) => {
          if (err) return reject(err);
          giveBack(buf);
          resolve();
        });
      });
      sending.catch(() => undefined); // awaited below unless the connection closes first
    }
    await Promise.race([sending, closed]);
    res.end();
  } catch {
    res.destroy();
  } finally {
    await file.close();
  }
  return true;
}
