// An S3-compatible server (s3rver, disk-backed) on 127.0.0.1, with its ObjectCreated
// notifications exposed so the local event source can forward them like S3 does, and its
// requests counted (by S3's request classes) so a benchmark can say how many were made. Plain
// object GETs are served from the object's file by local/s3-fast-get.ts, not by s3rver.

import crypto, { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { link, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { dirname, join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import S3rver from 's3rver';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const S3Error = require('s3rver/lib/models/error') as new (code: string, message: string, detail?: Record<string, string>) => Error;
import { AwsChunkedDecoder, isAwsChunked } from './aws-chunked';
import { refuseRequest, type EdgeFaults } from './edge-faults';
import { plainGet, serveGet, type ObjectFiles } from './s3-fast-get';

/**
 * s3rver encrypts ListObjectsV2 continuation tokens with single DES, which OpenSSL 3 (Node 22)
 * offers only with the legacy provider: any listing of more than 1000 keys failed with
 * InternalError. Triple DES with the key three times is DES itself (same block size, same
 * bytes), and the default provider has it; the token only has to round-trip locally.
 */
function allowS3rverTokens(): void {
  const c = crypto as unknown as Record<'createCipheriv' | 'createDecipheriv', (alg: string, key: Buffer, iv: Buffer) => unknown>;
  for (const fn of ['createCipheriv', 'createDecipheriv'] as const) {
    const original = c[fn];
    if ((original as { desShim?: true }).desShim) continue;
    const shim = (alg: string, key: Buffer, iv: Buffer): unknown => (alg === 'des' && key.length === 8 ? original('des-ede3-cbc', Buffer.concat([key, key, key]), iv) : original(alg, key, iv));
    c[fn] = Object.assign(shim, { desShim: true as const });
  }
}

/**
 * Requests by class: `PUT`, `GET`, `HEAD`, `DELETE`, `POST` on an object, `LIST` (a GET of
 * the bucket); and the same per kind of key under `pairs/{pair}/{kind}/…`, e.g. `PUT journal`.
 */
export type S3RequestCounts = Record<string, number>;

export interface RunningS3 {
  endpoint: string;
  onEvent(listener: (event: { Records: any[] }) => void): void;
  /** A snapshot of the requests received so far. */
  requests(): S3RequestCounts;
  stop(): Promise<void>;
}

/** The request class of a path-style request (`/bucket/key?query`), and its key's kind. */
export function s3RequestClass(method: string, url: string): { op: string; kind?: string } {
  const path = url.split('?')[0];
  const slash = path.indexOf('/', 1);
  const key = slash < 0 ? '' : decodeURIComponent(path.slice(slash + 1));
  if (!key) return { op: method === 'GET' ? 'LIST' : method };
  const m = /^pairs\/[^/]+\/([^/]+)\//.exec(key);
  return { op: method, kind: m?.[1] };
}

/** `faults`: requests it refuses (503 SlowDown) before s3rver sees them, for the fault campaign. */
export async function startS3Local(directory: string, bucket: string, faults?: EdgeFaults): Promise<RunningS3> {
  allowS3rverTokens();
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
    allowMismatchedSignatures: true,
  });
  makePutsAtomic(server);
  const { port } = await server.run();
  const counts: S3RequestCounts = {};
  const count = (name: string): void => void (counts[name] = (counts[name] ?? 0) + 1);
  const http = (server as unknown as { httpServer: Server }).httpServer;
  // One handler in front of s3rver's: it counts every request; a refused one never reaches
  // s3rver; a plain GET is served from the object's file (local/s3-fast-get.ts) unless that
  // path hands it back.
  const s3rverHandlers = http.listeners('request') as ((req: IncomingMessage, res: ServerResponse) => void)[];
  http.removeAllListeners('request');
  const toS3rver = (req: IncomingMessage, res: ServerResponse): void => {
    for (const h of s3rverHandlers) h.call(http, req, res);
  };
  const buckets = new Set([bucket]);
  const files = server.store as unknown as ObjectFiles;
  http.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const { op, kind } = s3RequestClass(req.method ?? '', req.url ?? '/');
    count(op);
    if (kind) count(`${op} ${kind}`);
    if (faults?.refuse('s3')) return refuseRequest('s3', req, res);
    const want = process.env.LIVESYNC_S3_SLOW_GET ? undefined : plainGet(req, buckets);
    if (!want) return toS3rver(req, res);
    serveGet(files, want, req, res).then(
      (served) => served || toS3rver(req, res),
      () => res.destroy(), // the connection ends, as a broken S3 response does
    );
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    onEvent: (listener) => server.on('event', listener),
    requests: () => ({ ...counts }),
    stop: () => server.close(),
  };
}

/** Metadata without the aws-chunked content encoding (the stored object is the decoded data). */
function withoutAwsChunked(metadata: Record<string, string>): Record<string, string> {
  const enc = (metadata['content-encoding'] ?? '').split(',').map((e) => e.trim()).filter((e) => e && e !== 'aws-chunked');
  const { 'content-encoding': _enc, ...rest } = metadata;
  return enc.length ? { ...rest, 'content-encoding': enc.join(',') } : rest;
}

/**
 * s3rver writes a PUT into the object's file in place (truncating it first), and answers
 * before the write is done: a GET during a re-PUT of the same key could read a short object.
 * S3 makes an object visible whole or not at all, as the ObjectStore contract says; here the
 * body goes to a temporary file (not an object name to s3rver's listings), renamed over the
 * object once written. Journal keys are written once or re-PUT with the same bytes, so the
 * metadata written after the rename matches the object either way.
 *
 * `If-None-Match: *` (a create-only PUT) is honoured as S3 does: when the key exists the
 * object stays as it was and the answer is 412 PreconditionFailed. The temporary file is
 * hard-linked to the object's name, which fails if the name exists: two such PUTs of one
 * key racing each other cannot both win. (s3rver ignored the header and replaced it.)
 */
function makePutsAtomic(server: S3rver): void {
  const store = server.store;
  // Multipart: a part streamed aws-chunked is decoded too; a part for, or the completion of, an
  // upload that does not exist (completed, aborted, never started) is NoSuchUpload, as in S3
  // (s3rver made the part's directory, or answered InternalError). Missing from s3rver's types.
  const parts = store as unknown as {
    putPart: (bucket: string, uploadId: string, partNumber: number, content: Readable) => Promise<unknown>;
    putObjectMultipart: (bucket: string, uploadId: string, parts: unknown[]) => Promise<unknown>;
  };
  const putPart = parts.putPart.bind(store);
  const putObjectMultipart = parts.putObjectMultipart.bind(store);
  const uploadExists = async (bucket: string, uploadId: string): Promise<void> => {
    if (!/^[\w.-]+$/.test(uploadId) || !(await stat(join(store.getResourcePath(bucket, '', 'uploads'), uploadId, 'key')).catch(() => undefined))) {
      throw new S3Error('NoSuchUpload', 'The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.', { UploadId: uploadId });
    }
  };
  parts.putPart = async (bucket: string, uploadId: string, partNumber: number, content: Readable & { headers?: Record<string, string | string[] | undefined> }) => {
    await uploadExists(bucket, uploadId);
    if (!content.headers || !isAwsChunked(content.headers)) return putPart(bucket, uploadId, partNumber, content);
    const decoded = new AwsChunkedDecoder();
    decoded.on('error', (err) => content.destroy(err));
    return putPart(bucket, uploadId, partNumber, content.pipe(decoded));
  };
  parts.putObjectMultipart = async (bucket: string, uploadId: string, list: unknown[]) => {
    await uploadExists(bucket, uploadId);
    return putObjectMultipart(bucket, uploadId, list);
  };
  store.putObject = async (object) => {
    const objectPath = store.getResourcePath(object.bucket, object.key, 'object');
    const tmp = `${objectPath}.${randomBytes(8).toString('hex')}.tmp`;
    const md5 = createHash('md5');
    let size = 0;
    try {
      await mkdir(dirname(objectPath), { recursive: true });
      if (Buffer.isBuffer(object.content)) {
        md5.update(object.content);
        size = object.content.length;
        await writeFile(tmp, object.content);
      } else {
        const content = object.content as Readable & { headers?: Record<string, string | string[] | undefined> };
        const chunked = content.headers && isAwsChunked(content.headers);
        if (chunked) object.metadata = withoutAwsChunked(object.metadata);
        const count = new Transform({
          transform(chunk: Buffer, _encoding, done) {
            md5.update(chunk);
            size += chunk.length;
            done(null, chunk);
          },
        });
        if (chunked) await pipeline(content, new AwsChunkedDecoder(), count, createWriteStream(tmp));
        else await pipeline(content, count, createWriteStream(tmp));
      }
      const digest = md5.digest('hex');
      if (createOnly(object.content)) {
        try {
          await link(tmp, objectPath);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          throw new S3Error('PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', { Condition: 'If-None-Match' });
        }
        await rm(tmp, { force: true });
      } else {
        await rename(tmp, objectPath);
      }
      await store.putMetadata(object.bucket, object.key, object.metadata, digest);
      return { size, md5: digest };
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  };
}

/** Whether the PUT carried `If-None-Match: *` (its body is the request, with its headers). */
function createOnly(content: unknown): boolean {
  const headers = (content as { headers?: Record<string, string | string[] | undefined> } | undefined)?.headers;
  return headers?.['if-none-match'] === '*';
}
