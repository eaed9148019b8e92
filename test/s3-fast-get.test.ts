// local/s3-fast-get.ts: the local S3's plain GETs, served from the object's file, answer as
// s3rver's did (the same bytes, headers and errors), and the buffers it reuses are never handed
// out while a socket still sends them.

import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client, type GetObjectCommandOutput } from '@aws-sdk/client-s3';
import * as fast from '../local/s3-fast-get';
import { startS3Local, type RunningS3 } from '../local/s3-local';

let dir: string;
let s3: RunningS3;
let client: S3Client;
const objects = new Map<string, Buffer>([
  ['plain', randomBytes(3 * 1024 * 1024 + 5)],
  ['dir/with space+plus/ü.bin', randomBytes(1000)],
  ['empty', Buffer.alloc(0)],
]);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 's3-fast-get-'));
  s3 = await startS3Local(dir, 'b');
  client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  for (const [key, body] of objects) {
    await client.send(new PutObjectCommand({ Bucket: 'b', Key: key, Body: body, ContentType: 'application/x-test', Metadata: { who: 'test' } }));
  }
});

afterAll(async () => {
  client.destroy();
  await s3.stop();
  await rm(dir, { recursive: true, force: true });
});

afterEach(() => delete process.env.LIVESYNC_S3_SLOW_GET);

/** A GET's answer as the SDK reads it: its fields (the request's id aside) and its body. */
async function get(key: string, range?: string, slow = false): Promise<{ fields: Record<string, unknown>; body: Buffer; fast: boolean }> {
  if (slow) process.env.LIVESYNC_S3_SLOW_GET = '1';
  const before = fast.fastGetsServed;
  const out: GetObjectCommandOutput = await client.send(new GetObjectCommand({ Bucket: 'b', Key: key, Range: range }));
  const body = Buffer.from(await out.Body!.transformToByteArray());
  delete process.env.LIVESYNC_S3_SLOW_GET;
  const { $metadata, Body, ...fields } = out;
  return { fields, body, fast: fast.fastGetsServed > before };
}

test('plain and ranged GETs answer with the bytes and headers s3rver gave, without s3rver', async () => {
  for (const [key, data] of objects) {
    const ranges: [string | undefined, number, number][] = [[undefined, 0, data.length]];
    if (data.length > 10) ranges.push(['bytes=0-0', 0, 1], ['bytes=3-9', 3, 10], [`bytes=5-`, 5, data.length], [`bytes=1-${data.length + 100}`, 1, data.length]);
    if (data.length > 2 * 1024 * 1024) ranges.push([`bytes=${1024 * 1024 - 1}-${2 * 1024 * 1024}`, 1024 * 1024 - 1, 2 * 1024 * 1024 + 1]);
    for (const [range, from, to] of ranges) {
      const f = await get(key, range);
      const s = await get(key, range, true);
      expect([key, range, f.fast, s.fast]).toEqual([key, range, true, false]);
      expect(f.body.equals(data.subarray(from, to))).toBe(true);
      expect(f.fields).toMatchObject({ ContentType: 'application/x-test', Metadata: { who: 'test' }, ContentLength: to - from });
      // s3rver answers `bytes=0-0` with the whole object (it reads the end 0 as "none"); S3, and this path, with one byte.
      if (range === 'bytes=0-0') continue;
      expect(s.body.equals(f.body)).toBe(true);
      expect(f.fields).toEqual(s.fields);
    }
  }
  const head = await client.send(new HeadObjectCommand({ Bucket: 'b', Key: 'plain' }));
  expect(head).toMatchObject({ ContentLength: objects.get('plain')!.length, ContentType: 'application/x-test', Metadata: { who: 'test' } });
});

test('a missing key and an unsatisfiable range get s3rver\'s errors', async () => {
  await expect(get('nope')).rejects.toMatchObject({ name: 'NoSuchKey' });
  await expect(get('plain', `bytes=${objects.get('plain')!.length + 1}-`)).rejects.toMatchObject({ name: 'InvalidRange' });
});

test('many GETs at once, and GETs abandoned mid-body, never get another answer\'s bytes', async () => {
  const data = objects.get('plain')!;
  for (let round = 0; round < 3; round++) {
    const aborted = Array.from({ length: 4 }, async () => {
      const ac = new AbortController();
      const out = await client.send(new GetObjectCommand({ Bucket: 'b', Key: 'plain' }), { abortSignal: ac.signal });
      const reader = (out.Body as NodeJS.ReadableStream)[Symbol.asyncIterator]();
      await reader.next();
      ac.abort();
      (out.Body as { destroy?: () => void }).destroy?.();
    });
    const whole = Array.from({ length: 8 }, (_, i) => get('plain', `bytes=${i * 1000}-`));
    const [, got] = await Promise.all([Promise.allSettled(aborted), Promise.all(whole)]);
    got.forEach((g, i) => expect(g.body.equals(data.subarray(i * 1000))).toBe(true));
  }
});

test('two GETs pipelined on one connection, the connection dropped mid-body: neither answer is left holding its file', async () => {
  const { connect } = await import('node:net');
  const { readdirSync } = await import('node:fs');
  const openFds = (): number => readdirSync('/proc/self/fd').length;
  const before = openFds();
  const url = new URL(s3.endpoint);
  const request = `GET /b/plain HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=S3RVER/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n`;
  for (let round = 0; round < 3; round++) {
    const socket = connect(Number(url.port), url.hostname);
    await new Promise((r) => socket.once('connect', r));
    const served = fast.fastGetsServed;
    socket.write(request + request);
    await new Promise((r) => socket.once('data', r)); // the first answer has begun
    socket.destroy();
    for (let t = 0; t < 50 && fast.fastGetsServed < served + 1; t++) await new Promise((r) => setTimeout(r, 10));
  }
  for (let t = 0; t < 100 && openFds() > before; t++) await new Promise((r) => setTimeout(r, 20));
  expect(openFds()).toBeLessThanOrEqual(before);
  // And the server goes on answering.
  expect((await get('plain', 'bytes=0-9')).body.equals(objects.get('plain')!.subarray(0, 10))).toBe(true);
});
