// local/edge-faults.ts: the local S3 and the DynamoDB proxy refuse a share of requests as AWS
// does under load (the fault campaign turns it on). The SDK sees AWS's own throttling errors,
// retries them, and the services work as before once the rate is back to 0.

import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { dynamoClient, s3Client } from '../adapters/aws-clients';
import { startCountingProxy } from '../local/counting-proxy';
import { EdgeFaults } from '../local/edge-faults';
import { startS3Local } from '../local/s3-local';

const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

test('S3 answers 503 SlowDown to the share of requests asked, before the request is handled', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livesync-edge-'));
  const faults = new EdgeFaults();
  const s3 = await startS3Local(dir, 'edge', faults);
  const client = s3Client({ endpoint: s3.endpoint, region: 'us-east-1', credentials, maxAttempts: 2 });
  try {
    await client.send(new PutObjectCommand({ Bucket: 'edge', Key: 'a', Body: 'one' }));
    faults.set({ s3: 1 });
    await expect(client.send(new PutObjectCommand({ Bucket: 'edge', Key: 'a', Body: 'two' }))).rejects.toMatchObject({ name: 'SlowDown', $metadata: { httpStatusCode: 503, attempts: 2 } });
    expect(faults.injected()).toEqual({ s3: 2, dynamodb: 0 });
    faults.set({ s3: 0 });
    const got = await client.send(new GetObjectCommand({ Bucket: 'edge', Key: 'a' }));
    expect(await got.Body!.transformToString()).toBe('one'); // the refused PUT never reached the store
    expect(() => faults.set({ s3: 1.5 })).toThrow(/within 0–1/);
  } finally {
    client.destroy();
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the DynamoDB proxy answers ProvisionedThroughputExceededException instead of forwarding', async () => {
  let forwarded = 0;
  const upstream = createServer((req, res) => {
    forwarded++;
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/x-amz-json-1.0' }).end('{"TableNames":[]}'));
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const faults = new EdgeFaults();
  const proxy = await startCountingProxy(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, { faults });
  const client = dynamoClient({ endpoint: proxy.endpoint, region: 'us-east-1', credentials, maxAttempts: 3, retryMode: 'standard' });
  try {
    faults.set({ dynamodb: 1 });
    await expect(client.send(new ListTablesCommand({}))).rejects.toMatchObject({ name: 'ProvisionedThroughputExceededException', $metadata: { attempts: 3 } });
    expect(forwarded).toBe(0);
    expect(faults.injected().dynamodb).toBe(3);
    faults.set({ dynamodb: 0 });
    expect(await client.send(new ListTablesCommand({}))).toMatchObject({ TableNames: [] });
    expect(forwarded).toBe(1);
  } finally {
    client.destroy();
    await proxy.close();
    await new Promise((r) => upstream.close(r));
  }
});
