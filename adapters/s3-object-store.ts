// ObjectStore on S3. The client comes from the environment (AWS_ENDPOINT_URL_S3 or
// AWS_ENDPOINT_URL locally / for LocalStack, then path-style; nothing in AWS) through
// adapters/aws-clients.ts: never a hard-coded endpoint.

import type { Readable } from 'node:stream';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, NoSuchKey, NotFound, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { s3Client } from './aws-clients';
import { ObjectNotFoundError, ObjectTooLargeError, type ByteRange, type KeyLister, type ObjectStore, type PutOptions } from '../replica/ports';

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

export class S3ObjectStore implements ObjectStore, KeyLister {
  constructor(
    readonly bucket: string,
    readonly client: S3Client = s3Client(),
  ) {}

  async put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    const command = new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length, ChecksumCRC32C: opts.crc32c === undefined ? undefined : crc32cHeader(opts.crc32c) });
    // S3 checks the CRC-32C on receipt, so the signature need not cover a SHA-256 of the body
    // (a pass over every byte the agent uploads). TLS protects the request in transit.
    if (opts.crc32c !== undefined) command.middlewareStack.add(unsignedPayload, { step: 'build', name: 'livesyncUnsignedPayload' });
    await this.client.send(command);
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

  async get(key: string, range?: ByteRange, maxBytes?: number): Promise<Buffer> {
    try {
      const out = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: key, Range: range ? `bytes=${range.start}-${range.end - 1}` : undefined }),
      );
      if (maxBytes !== undefined && (out.ContentLength ?? 0) > maxBytes) {
        await out.Body!.transformToWebStream().cancel(); // do not read it into memory
        throw new ObjectTooLargeError(key, out.ContentLength!, maxBytes);
      }
      const bytes = await out.Body!.transformToByteArray();
      // A view, not a copy: chunks are megabytes and the copy was pure GC work.
      const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      if (range && body.length !== range.end - range.start) {
        throw new Error(`short read of ${key} ${range.start}-${range.end}: got ${body.length} bytes`);
      }
      return body;
    } catch (err) {
      if (err instanceof NoSuchKey || (err as { name?: string }).name === 'NoSuchKey') throw new ObjectNotFoundError(key);
      throw err;
    }
  }

  async upload(key: string, body: Readable): Promise<void> {
    await new Upload({ client: this.client, params: { Bucket: this.bucket, Key: key, Body: body }, partSize: 16 * 1024 * 1024, queueSize: 4 }).done();
  }

  async size(key: string): Promise<number | undefined> {
    try {
      return (await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }))).ContentLength;
    } catch (err) {
      if (err instanceof NotFound || (err as { name?: string }).name === 'NotFound' || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
      throw err;
    }
  }
}
