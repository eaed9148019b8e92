// The ObjectStore port's put with a known CRC-32C: the memory store and S3 both refuse a
// body that does not match it, and on S3 the signature then covers UNSIGNED-PAYLOAD rather
// than a SHA-256 of the body. The round trip runs against the test stack (or the endpoint set).
// S3 clients come from adapters/aws-clients.ts: path-style whenever an endpoint is configured.

import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { s3Client } from '../adapters/aws-clients';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { crc32cHeader, S3ObjectStore } from '../adapters/s3-object-store';
import { batchObjectCrc32c, encodeBatch } from '../core/batch-format';
import { crc32c } from '../core/crc32c';
import { ObjectExistsError, type ObjectStore } from '../replica/ports';
import { ObjectConflictError, putOnce } from '../replica/put-once';

const batch = encodeBatch({ pairId: 'p1', seq: 7, prevSeq: 6, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['disk0'] }, [
  { disk: 0, blockIndex: 3, data: Buffer.alloc(8192, 0x5a) },
  { disk: 0, blockIndex: 9, zeroBlocks: 4 },
]);

test("a batch's object CRC continued over its last 8 bytes is the CRC-32C of the whole body", () => {
  expect(batchObjectCrc32c(batch)).toBe(crc32c(batch));
});

test('the memory store refuses a body whose CRC-32C is not the one given, and stores nothing', async () => {
  const store = new MemoryObjectStore();
  await expect(store.put('k1', batch, { crc32c: crc32c(batch) ^ 1 })).rejects.toThrow(/k1: the body's CRC-32C/);
  expect(await store.size('k1')).toBeUndefined();
  await store.put('k1', batch, { crc32c: crc32c(batch) });
  expect((await store.get('k1')).equals(batch)).toBe(true);
});

describe('S3ObjectStore.put', () => {
  /** Signs and "sends" a put through a handler that records the request instead. */
  async function sentHeaders(opts: { crc32c?: number }): Promise<Record<string, string>> {
    let headers: Record<string, string> = {};
    const client = s3Client({
      region: 'us-east-1',
      endpoint: 'http://127.0.0.1:1',
      credentials: { accessKeyId: 'AKID', secretAccessKey: 'secret' },
      requestHandler: {
        handle: async (req: { headers: Record<string, string> }) => {
          headers = req.headers;
          return { response: { statusCode: 200, headers: {}, body: undefined } };
        },
      } as never,
    });
    await new S3ObjectStore('bucket', client).put('pairs/p1/journal/7', batch, opts);
    return headers;
  }

  test('with a CRC-32C: sends it for S3 to verify and signs UNSIGNED-PAYLOAD', async () => {
    const h = await sentHeaders({ crc32c: batchObjectCrc32c(batch) });
    expect(h['x-amz-checksum-crc32c']).toBe(crc32cHeader(crc32c(batch)));
    expect(h['x-amz-content-sha256']).toBe('UNSIGNED-PAYLOAD');
    expect(h.authorization).toMatch(/SignedHeaders=[^,]*x-amz-checksum-crc32c[^,]*x-amz-content-sha256/);
  });

  test('without one: the signature covers the SHA-256 of the body', async () => {
    const h = await sentHeaders({});
    expect(h['x-amz-content-sha256']).toMatch(/^[0-9a-f]{64}$/);
    expect(h['x-amz-checksum-crc32c']).toBeUndefined();
  });

  test('an object is whole or absent: GETs during a re-PUT of the same key never see part of it', async () => {
    const store = new S3ObjectStore(process.env.LIVESYNC_BUCKET!);
    const key = `tests/object-store/reput-${Date.now()}`;
    const body = Buffer.alloc(4 * 1024 * 1024, 0x5a);
    await store.put(key, body);
    const sizes: number[] = [];
    const reads = (async () => {
      for (let i = 0; i < 20; i++) sizes.push((await store.get(key)).length);
    })();
    for (let i = 0; i < 5; i++) await store.put(key, body); // a retried PUT reuses the key, same bytes
    await reads;
    expect(sizes.filter((n) => n !== body.length)).toEqual([]);
    store.client.destroy();
  });

  test('listKeys pages past 1000 keys (ListObjectsV2 continuation tokens) on the stack under test', async () => {
    const store = new S3ObjectStore(process.env.LIVESYNC_BUCKET!);
    const prefix = `tests/object-store-list/${Date.now()}/`;
    const keys = Array.from({ length: 1005 }, (_, i) => `${prefix}${String(i).padStart(5, '0')}`);
    for (let i = 0; i < keys.length; i += 50) await Promise.all(keys.slice(i, i + 50).map((k) => store.put(k, Buffer.from(k))));
    expect(await store.listKeys(prefix)).toEqual(keys);
    expect(await store.listKeys(prefix, keys[999])).toEqual(keys.slice(1000));
    await store.deleteKeys(keys);
    expect(await store.listKeys(prefix)).toEqual([]);
    store.client.destroy();
  });

  test('round trip through the stack under test', async () => {
    const store = new S3ObjectStore(process.env.LIVESYNC_BUCKET!);
    const key = `tests/object-store/${Date.now()}`;
    await store.put(key, batch, { crc32c: batchObjectCrc32c(batch) });
    expect((await store.get(key)).equals(batch)).toBe(true);
    store.client.destroy();
  });
});

describe('create-only writes (If-None-Match: *) and putOnce', () => {
  const other = Buffer.from(batch);
  other[40] ^= 1;

  /** The checks every store must pass: the memory store, and S3 on the stack under test. */
  async function createOnlyContract(store: ObjectStore, key: string): Promise<void> {
    await store.put(key, batch, { createOnly: true, crc32c: crc32c(batch) });
    // A second create-only write of the key, same bytes or not, is refused and changes nothing.
    await expect(store.put(key, other, { createOnly: true })).rejects.toThrow(ObjectExistsError);
    await expect(store.put(key, batch, { createOnly: true })).rejects.toThrow(new RegExp(`'${key}' exists already`));
    expect((await store.get(key)).equals(batch)).toBe(true);
    // putOnce: a retry that finds its own bytes is done; other bytes are a conflict, not overwritten.
    await putOnce(store, key, batch, { crc32c: crc32c(batch) });
    await expect(putOnce(store, key, other)).rejects.toThrow(ObjectConflictError);
    expect((await store.get(key)).equals(batch)).toBe(true);
    // Racing create-only writes of one new key: exactly one wins, and the object is the winner's.
    const raced = `${key}-race`;
    const bodies = Array.from({ length: 6 }, (_, i) => Buffer.alloc(256 * 1024, i + 1));
    const results = await Promise.allSettled(bodies.map((b) => store.put(raced, b, { createOnly: true })));
    const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
    expect(won).toHaveLength(1);
    expect(results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason instanceof ObjectExistsError)).toBe(true);
    expect((await store.get(raced)).equals(bodies[won[0]])).toBe(true);
  }

  test('the memory store', async () => {
    await createOnlyContract(new MemoryObjectStore(), 'pairs/p1/journal/00000000000000000007');
  });

  test('S3 on the stack under test: 412 for a taken key, the stored object unchanged', async () => {
    const store = new S3ObjectStore(process.env.LIVESYNC_BUCKET!);
    await createOnlyContract(store, `tests/object-store/create-only-${Date.now()}`);
    store.client.destroy();
  });
});

describe('S3 clients from adapters/aws-clients.ts', () => {
  test('path-style whenever an endpoint is configured (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or given); AWS itself keeps the default', async () => {
    const resolved = (env: NodeJS.ProcessEnv, config = {}): boolean => Boolean(s3Client(config, env).config.forcePathStyle);
    expect(resolved({ AWS_ENDPOINT_URL: 'http://localhost:4566' })).toBe(true);
    expect(resolved({ AWS_ENDPOINT_URL_S3: 'http://localhost:4566' })).toBe(true);
    expect(resolved({}, { endpoint: 'http://localhost:4566' })).toBe(true);
    expect(resolved({})).toBe(false);
  });

  // LocalStack's documented default is http://localhost:4566; virtual-hosted addressing would
  // ask DNS for `bucket.localhost`, which does not resolve (ENOTFOUND on every call).
  const endpoint = process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
  const viaLocalhost = endpoint && new URL(endpoint).hostname === '127.0.0.1' ? test : test.skip;
  viaLocalhost('the stack\'s S3 reached through a `localhost` endpoint: put, get and list work', async () => {
    const localhost = endpoint!.replace('//127.0.0.1', '//localhost');
    const saved = { s3: process.env.AWS_ENDPOINT_URL_S3, all: process.env.AWS_ENDPOINT_URL };
    // The endpoint as a user sets it, read from the environment by the SDK.
    process.env.AWS_ENDPOINT_URL_S3 = localhost;
    const client = s3Client();
    try {
      const store = new S3ObjectStore(process.env.LIVESYNC_BUCKET!, client);
      const prefix = `tests/object-store/localhost-${Date.now()}/`;
      await store.put(`${prefix}a`, batch, { crc32c: batchObjectCrc32c(batch) });
      expect((await store.get(`${prefix}a`)).equals(batch)).toBe(true);
      const listed = await client.send(new ListObjectsV2Command({ Bucket: store.bucket, Prefix: prefix }));
      expect(listed.Contents?.map((o) => o.Key)).toEqual([`${prefix}a`]);
    } finally {
      client.destroy();
      if (saved.s3 === undefined) delete process.env.AWS_ENDPOINT_URL_S3;
      else process.env.AWS_ENDPOINT_URL_S3 = saved.s3;
    }
  });
});
