// ObjectStore on S3. The client comes from the environment (AWS_ENDPOINT_URL_S3 or
// AWS_ENDPOINT_URL locally / for LocalStack, then path-style; nothing in AWS) through
// adapters/aws-clients.ts: never a hard-coded endpoint.

import { Stream, type Readable } from 'node:stream';
import { AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectsCommand, GetObjectCommand, type GetObjectCommandOutput, UploadPartCommand, HeadObjectCommand, ListObjectsV2Command, NoSuchKey, NotFound, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { s3Client } from './aws-clients';
import { sleep } from '../replica/concurrency';
import { ObjectExistsError, ObjectNotFoundError, ObjectTooLargeError, type ByteRange, type KeyLister, type ObjectDeleter, type ObjectStore, type PartUploads, type PutOptions } from '../replica/ports';

/** x-amz-checksum-crc32c: the big-endian CRC, base64. */
export const crc32cHeader = (crc: number): string => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(crc >>> 0);
  return b.toString('base64');
};

/** Signs the request with the literal UNSIGNED-PAYLOAD instead of the body's SHA-256 (SigV4, single chunk). */
const unsignedPayload = <A extends { request: unknown }, R>(next: (args: A) => Promise<R>) => async (args: A): Promise<R> => {
  const { headers } = args.request as { headers?: Record<string, string> };
  if (headers) headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
  return next(args);
};

/**
 * A GET's body in one buffer. With its length announced (S3 always sends it) the socket's
 * chunks are copied straight into a buffer of that size: the SDK's transformToByteArray keeps
 * every chunk and then joins them, a second copy of every byte and most of a recovery's
 * garbage. More bytes than announced, or fewer, is an error naming the object.
 */
async function readBody(body: NonNullable<GetObjectCommandOutput['Body']>, length: number | undefined, key: string): Promise<Buffer> {
  if (length === undefined || !(body instanceof Stream)) {
    const bytes = await body.transformToByteArray();
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength); // a view: no copy
  }
  const stream = body as Readable;
  let out: Buffer | undefined;
  let at = 0;
  await new Promise<void>((resolve, reject) => {
    stream.on('data', (chunk: Buffer) => {
      if (out === undefined && chunk.length === length) {
        out = chunk; // the whole body in one buffer (S3GetHandler's): taken as it is
        at = length;
        return;
      }
      out ??= Buffer.allocUnsafe(length);
      if (at + chunk.length > length) {
        stream.destroy(new Error(`GET ${key}: more than the ${length} bytes announced`));
        return;
      }
      chunk.copy(out, at);
      at += chunk.length;
    });
    stream.once('end', resolve);
    stream.once('error', reject);
    // Closed without its end (destroyed before this read began, or without an error to say why).
    stream.once('close', () => reject(stream.errored ?? new Error(`GET ${key}: the body closed after ${at} of its ${length} bytes`)));
    if (stream.destroyed) reject(stream.errored ?? new Error(`GET ${key}: the body was closed before it was read`));
  });
  if (at !== length) throw new Error(`short read of ${key}: ${at} of the ${length} bytes announced`);
  return out ?? Buffer.alloc(0);
}

/** S3 DeleteObjects takes at most this many keys a request. */
export const DELETE_OBJECTS_MAX = 1000;
/** Tries of one DeleteObjects request's failed keys (the first included) before giving up. */
const DELETE_ATTEMPTS = 5;

/** A key S3 would not delete after every retry: its error code and message as S3 gave them. */
export class ObjectDeleteError extends Error {
  constructor(readonly key: string, readonly code: string, readonly detail: string, readonly failedKeys: number) {
    super(`delete of '${key}' failed: ${code}: ${detail}${failedKeys > 1 ? ` (and ${failedKeys - 1} more keys)` : ''}`);
    this.name = 'ObjectDeleteError';
  }
}

export class S3ObjectStore implements ObjectStore, KeyLister, ObjectDeleter, PartUploads {
  /** A GET's body is a new array the SDK assembled: the caller's to give away. */
  readonly freshReads = true;

  constructor(
    readonly bucket: string,
    readonly client: S3Client = s3Client(),
  ) {}

  async put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    const command = new PutObjectCommand({
      Bucket: this.bucket,
      Key: key,
      Body: body,
      ContentLength: body.length,
      ChecksumCRC32C: opts.crc32c === undefined ? undefined : crc32cHeader(opts.crc32c),
      IfNoneMatch: opts.createOnly ? '*' : undefined,
    });
    // S3 checks the CRC-32C on receipt, so the signature need not cover a SHA-256 of the body
    // (a pass over every byte the agent uploads). TLS protects the request in transit.
    if (opts.crc32c !== undefined) command.middlewareStack.add(unsignedPayload, { step: 'build', name: 'livesyncUnsignedPayload' });
    try {
      await this.client.send(command);
    } catch (err) {
      // 412: the key exists. (409 ConditionalRequestConflict, a concurrent conditional write of
      // the key still in flight, stays an error to retry: the retry then sees 412 or succeeds.)
      if (opts.createOnly && ((err as { name?: string }).name === 'PreconditionFailed' || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 412)) throw new ObjectExistsError(key);
      throw err;
    }
  }

  async listKeys(prefix: string, startAfter?: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, StartAfter: token ? undefined : startAfter, ContinuationToken: token }));
      for (const o of page.Contents ?? []) if (o.Key) keys.push(o.Key);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return keys;
  }

  async get(key: string, range?: ByteRange, maxBytes?: number, versionId?: string): Promise<Buffer> {
    return (await this.read(key, range, maxBytes, versionId)).body;
  }

  async getVersion(key: string, maxBytes?: number): Promise<{ body: Buffer; versionId?: string }> {
    return this.read(key, undefined, maxBytes);
  }

  private async read(key: string, range?: ByteRange, maxBytes?: number, versionId?: string): Promise<{ body: Buffer; versionId?: string }> {
    try {
      const out = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: key, Range: range ? `bytes=${range.start}-${range.end - 1}` : undefined, VersionId: versionId }),
      );
      if (maxBytes !== undefined && (out.ContentLength ?? 0) > maxBytes) {
        await out.Body!.transformToWebStream().cancel(); // do not read it into memory
        throw new ObjectTooLargeError(key, out.ContentLength!, maxBytes);
      }
      const body = await readBody(out.Body!, out.ContentLength, key);
      if (range && body.length !== range.end - range.start) {
        throw new Error(`short read of ${key} ${range.start}-${range.end}: got ${body.length} bytes`);
      }
      // An unversioned bucket answers no version id (or "null", for objects written before versioning).
      return { body, versionId: out.VersionId && out.VersionId !== 'null' ? out.VersionId : undefined };
    } catch (err) {
      if (err instanceof NoSuchKey || (err as { name?: string }).name === 'NoSuchKey' || (err as { name?: string }).name === 'NoSuchVersion') throw new ObjectNotFoundError(key);
      throw err;
    }
  }

  async upload(key: string, body: Readable): Promise<void> {
    await new Upload({ client: this.client, params: { Bucket: this.bucket, Key: key, Body: body }, partSize: 16 * 1024 * 1024, queueSize: 4 }).done();
  }

  async startUpload(key: string): Promise<string> {
    const out = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key }));
    return out.UploadId!;
  }

  async uploadPart(key: string, uploadId: string, partNumber: number, body: Readable, length: number): Promise<string> {
    const out = await this.client.send(new UploadPartCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: partNumber, Body: body, ContentLength: length }));
    return out.ETag!;
  }

  async completeUpload(key: string, uploadId: string, parts: { partNumber: number; etag: string }[]): Promise<void> {
    await this.client.send(
      new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) } }),
    );
  }

  async abortUpload(key: string, uploadId: string): Promise<void> {
    await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }));
  }

  async size(key: string): Promise<number | undefined> {
    try {
      return (await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }))).ContentLength;
    } catch (err) {
      if (err instanceof NotFound || (err as { name?: string }).name === 'NotFound' || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
      throw err;
    }
  }

  /**
   * DeleteObjects, ≤ 1000 keys a request, Quiet (only failures come back). A key S3 reports
   * failed (per-key errors arrive in a 200 answer: InternalError, SlowDown…) is sent again, with
   * backoff; one still failing after DELETE_ATTEMPTS throws ObjectDeleteError naming it. A
   * missing key is no error (S3 answers it as deleted).
   */
  async deleteKeys(keys: string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_OBJECTS_MAX) {
      let pending = keys.slice(i, i + DELETE_OBJECTS_MAX);
      for (let attempt = 1; pending.length > 0; attempt++) {
        const out = await this.client.send(new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: pending.map((Key) => ({ Key })), Quiet: true } }));
        const failed = (out.Errors ?? []).filter((e) => e.Key !== undefined);
        if (failed.length === 0) break;
        if (attempt >= DELETE_ATTEMPTS) throw new ObjectDeleteError(failed[0].Key!, failed[0].Code ?? 'unknown', failed[0].Message ?? '', failed.length);
        pending = failed.map((e) => e.Key!);
        await sleep(Math.min(5000, 100 * 2 ** attempt));
      }
    }
  }
}
