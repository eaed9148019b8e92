// ObjectStore on S3. The client comes from the environment (AWS_ENDPOINT_URL_S3 or
// AWS_ENDPOINT_URL locally / for LocalStack; nothing in AWS): never a hard-coded endpoint.

import type { Readable } from 'node:stream';
import { GetObjectCommand, HeadObjectCommand, NoSuchKey, NotFound, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { ObjectNotFoundError, ObjectTooLargeError, type ByteRange, type ObjectStore } from '../replica/ports';

export class S3ObjectStore implements ObjectStore {
  constructor(
    readonly bucket: string,
    readonly client: S3Client = new S3Client({}),
  ) {}

  async put(key: string, body: Buffer): Promise<void> {
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentLength: body.length }));
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
