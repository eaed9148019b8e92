// The local stack's request counters (what bench:agent prices): the local S3 counts each
// request by S3's class and key kind, and the counting proxy in front of DynamoDB Local and
// the SQS emulator counts by operation, adds its details, and passes requests and answers
// through unchanged.

import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { s3Client } from '../adapters/aws-clients';
import { jsonOf, startCountingProxy } from '../local/counting-proxy';
import { s3RequestClass, startS3Local } from '../local/s3-local';

test.each([
  ['PUT', '/b/pairs/p1/journal/00000000000000000007-0123456789abcdef.batch', 'PUT', 'journal'],
  ['GET', '/b/pairs/p1/backups/x/manifest.json?x-id=GetObject', 'GET', 'backups'],
  ['GET', '/b?list-type=2&prefix=pairs%2F', 'LIST', undefined],
  ['GET', '/b/', 'LIST', undefined],
  ['HEAD', '/b/other/key', 'HEAD', undefined],
  ['DELETE', '/b/pairs/p%2D1/journal/k', 'DELETE', 'journal'],
])('%s %s is %s (kind %s)', (method, url, op, kind) => {
  expect(s3RequestClass(method, url)).toEqual({ op, kind });
});

test('the local S3 counts what it received, by class and kind', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livesync-s3count-'));
  const s3 = await startS3Local(dir, 'b');
  const client = s3Client({ endpoint: s3.endpoint, region: 'us-east-1', credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  try {
    const key = 'pairs/p1/journal/00000000000000000001-0000000000000000.batch';
    for (const k of [key, 'pairs/p1/backups/m.json', 'loose']) await client.send(new PutObjectCommand({ Bucket: 'b', Key: k, Body: Buffer.from(k) }));
    expect(Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: 'b', Key: key }))).Body!.transformToByteArray()).toString()).toBe(key);
    await client.send(new HeadObjectCommand({ Bucket: 'b', Key: 'loose' }));
    await client.send(new ListObjectsV2Command({ Bucket: 'b', Prefix: 'pairs/' }));
    expect(s3.requests()).toEqual({ PUT: 3, 'PUT journal': 1, 'PUT backups': 1, GET: 1, 'GET journal': 1, HEAD: 1, LIST: 1 });
  } finally {
    client.destroy();
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

describe('the counting proxy', () => {
  let upstream: Server;
  let seen: { target?: string; body: string }[];
  beforeAll(async () => {
    upstream = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString();
        seen.push({ target: req.headers['x-amz-target'] as string | undefined, body });
        res.writeHead(req.headers['x-amz-target'] === 'Svc.Fail' ? 400 : 200, { 'content-type': 'application/x-amz-json-1.0', 'x-echo': 'yes' });
        res.end(JSON.parse(body).answer ?? '{}');
      });
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
  });
  afterAll(() => new Promise((r) => upstream.close(r)));
  beforeEach(() => (seen = []));

  test('counts by X-Amz-Target, adds the details of the operations named, and passes both ways unchanged', async () => {
    const proxy = await startCountingProxy(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, {
      detailed: ['Receive'],
      detail: (op, request, answer) => ({ [`${op}.asked`]: jsonOf(request).n, [`${op}.got`]: (jsonOf(answer)?.Messages ?? []).length }),
    });
    const send = async (target: string, body: object): Promise<{ status: number; echo: string | null; text: string }> => {
      const res = await fetch(proxy.endpoint, { method: 'POST', headers: { 'x-amz-target': target }, body: JSON.stringify(body) });
      return { status: res.status, echo: res.headers.get('x-echo'), text: await res.text() };
    };
    try {
      const big = 'x'.repeat(300_000); // more than one chunk each way
      expect(await send('Svc.Put', { answer: JSON.stringify({ big }) })).toEqual({ status: 200, echo: 'yes', text: JSON.stringify({ big }) });
      expect(await send('Svc.Put', {})).toEqual({ status: 200, echo: 'yes', text: '{}' });
      expect(await send('Svc.Receive', { n: 10, answer: JSON.stringify({ Messages: [1, 2, 3] }) })).toMatchObject({ status: 200, text: '{"Messages":[1,2,3]}' });
      expect(await send('Svc.Receive', { n: 5 })).toMatchObject({ text: '{}' });
      expect(await send('Svc.Fail', {})).toMatchObject({ status: 400 });
      expect(seen.map((s) => s.target)).toEqual(['Svc.Put', 'Svc.Put', 'Svc.Receive', 'Svc.Receive', 'Svc.Fail']);
      expect(seen[0].body).toBe(JSON.stringify({ answer: JSON.stringify({ big }) }));
      expect(proxy.counts()).toEqual({ Put: 2, Receive: 2, 'Receive.asked': 15, 'Receive.got': 3, Fail: 1 });
    } finally {
      await proxy.close();
    }
  });
});
