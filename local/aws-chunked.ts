// The `aws-chunked` content encoding (SigV4 streaming uploads, STREAMING-AWS4-HMAC-SHA256-PAYLOAD
// and its unsigned and trailer variants): the body comes as chunks `{size hex}[;ext]\r\n{data}\r\n`,
// ending with a 0-size chunk (and, with trailers, header lines and a blank line). S3 stores the
// data only; s3rver stores the framing too, so the local S3 decodes it (local/s3-local.ts).
// Clients such as restic (minio-go over plain HTTP) upload this way.

import { Transform, type TransformCallback } from 'node:stream';

/** Whether a request's body is aws-chunked. */
export function isAwsChunked(headers: Record<string, string | string[] | undefined>): boolean {
  const sha = String(headers['x-amz-content-sha256'] ?? '');
  return sha.startsWith('STREAMING-') || String(headers['content-encoding'] ?? '').split(',').some((e) => e.trim() === 'aws-chunked');
}

/** Decodes aws-chunked framing into the data it carries; malformed framing fails the stream, naming the byte. */
export class AwsChunkedDecoder extends Transform {
  private buf: Buffer = Buffer.alloc(0);
  private left = -1; // data bytes left in the current chunk; -1: a chunk header is next
  private at = 0; // bytes of input consumed, for errors
  private done = false;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    try {
      this.drain();
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    cb(this.done ? null : new Error(`aws-chunked body ends at byte ${this.at + this.buf.length} before its final chunk`));
  }

  private drain(): void {
    while (!this.done && this.buf.length) {
      if (this.left < 0) {
        const nl = this.buf.indexOf('\r\n');
        if (nl < 0) {
          if (this.buf.length > 4096) throw new Error(`aws-chunked chunk header at byte ${this.at} is longer than 4096 bytes`);
          return;
        }
        const size = parseInt(this.buf.subarray(0, nl).toString('latin1').split(';')[0], 16);
        if (!Number.isSafeInteger(size) || size < 0) throw new Error(`aws-chunked chunk header at byte ${this.at} has no size`);
        this.consume(nl + 2);
        if (size === 0) {
          this.done = true; // trailers (if any) and the final CRLF are not data
          return;
        }
        this.left = size;
      }
      const take = Math.min(this.left, this.buf.length);
      if (take > 0) {
        this.push(this.buf.subarray(0, take));
        this.consume(take);
        this.left -= take;
      }
      if (this.left > 0) return;
      if (this.buf.length < 2) return;
      if (this.buf[0] !== 0x0d || this.buf[1] !== 0x0a) throw new Error(`aws-chunked chunk at byte ${this.at} does not end with CRLF`);
      this.consume(2);
      this.left = -1;
    }
  }

  private consume(n: number): void {
    this.buf = this.buf.subarray(n);
    this.at += n;
  }
}
