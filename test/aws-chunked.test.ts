// local/aws-chunked.ts and the local S3: a body sent aws-chunked (SigV4 streaming, as the AWS
// SDK with default checksums and restic's minio-go send it) is stored as its data, not its framing.

import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { AwsChunkedDecoder, isAwsChunked } from '../local/aws-chunked';
import { startS3Local } from '../local/s3-local';

const frame = (parts: Buffer[], trailer = ''): Buffer =>
  Buffer.concat([...parts.flatMap((p) => [Buffer.from(`${p.length.toString(16)};chunk-signature=${'0'.repeat(64)}\r\n`), p, Buffer.from('\r\n')]), Buffer.from(`0;chunk-signature=${'0'.repeat(64)}\r\n${trailer}\r\n`)]);

async function decode(body: Buffer, cuts: number[]): Promise<Buffer> {
  const out: Buffer[] = [];
  const d = new AwsChunkedDecoder();
  d.on('data', (b: Buffer) => out.push(b));
  const done = new Promise<void>((resolve, reject) => d.on('end', resolve).on('error', reject));
  let at = 0;
  for (const c of [...cuts, body.length]) {
    d.write(body.subarray(at, c));
    at = c;
  }
  d.end();
  await done;
  return Buffer.concat(out);
}

test('decodes chunks split anywhere, with signatures and trailers', async () => {
  const parts = [randomBytes(8192), randomBytes(1), randomBytes(65536)];
  for (const trailer of ['', 'x-amz-checksum-crc32:AAAAAA==\r\n']) {
    const body = frame(parts, trailer);
    for (const cuts of [[], [1, 2, 3], [70, 8300, 8301, 9000], Array.from({ length: 50 }, (_, i) => i * 1500 + 7)]) {
      expect((await decode(body, cuts.filter((c) => c < body.length))).equals(Buffer.concat(parts))).toBe(true);
    }
  }
});

test('malformed framing fails, naming the byte', async () => {
  await expect(decode(Buffer.from('zz\r\nabc'), [])).rejects.toThrow('aws-chunked chunk header at byte 0 has no size');
  await expect(decode(Buffer.from('3\r\nabcX\r\n0\r\n\r\n'), [])).rejects.toThrow('aws-chunked chunk at byte 6 does not end with CRLF');
  await expect(decode(Buffer.from('3\r\nabc\r\n'), [])).rejects.toThrow('aws-chunked body ends at byte 8 before its final chunk');
});

test('which requests are aws-chunked', () => {
  expect(isAwsChunked({ 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD' })).toBe(true);
  expect(isAwsChunked({ 'x-amz-content-sha256': 'STREAMING-UNSIGNED-PAYLOAD-TRAILER' })).toBe(true);
  expect(isAwsChunked({ 'content-encoding': 'gzip, aws-chunked' })).toBe(true);
  expect(isAwsChunked({ 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' })).toBe(false);
});

test('the local S3 stores what the SDK streams with its default checksums (aws-chunked) as the data', async () => {
  const dir = await mkdtemp(join(tmpdir(), 's3-chunked-'));
  const s3 = await startS3Local(dir, 'b');
  const client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' }, requestChecksumCalculation: 'WHEN_SUPPORTED' });
  try {
    const data = randomBytes(300_000);
    const body = new PassThrough();
    Readable.from([data.subarray(0, 100_000), data.subarray(100_000)]).pipe(body);
    await client.send(new PutObjectCommand({ Bucket: 'b', Key: 'k', Body: body, ContentLength: data.length }));
    const got = await client.send(new GetObjectCommand({ Bucket: 'b', Key: 'k' }));
    expect(Buffer.from(await got.Body!.transformToByteArray()).equals(data)).toBe(true);
  } finally {
    client.destroy();
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
