// The agent's local pieces on their own: range lock ordering, the dirty map's persistence
// and clearing rules, the spool's durability and corruption checks, the uploader's pacing.

import { mkdtemp, readFile, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirtyMap } from '../agent/dirty-map';
import { RangeLock } from '../agent/range-lock';
import { Spool, SpoolCorruptError } from '../agent/spool';
import { Uploader } from '../agent/uploader';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { BodyPool } from '../source/body-pool';
import { decodeBatch, encodeBatch } from '../core/batch-format';

const MiB = 1024 * 1024;
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('RangeLock', () => {
  test('overlapping writes run in arrival order, disjoint ones and shared reads at once', async () => {
    const lock = new RangeLock();
    const order: string[] = [];
    const a = await lock.acquire(0, 8192);
    const b = lock.acquire(4096, 12288).then((release) => (order.push('b'), release));
    const c = lock.acquire(16384, 20480).then((release) => (order.push('c'), release));
    const d = lock.acquire(8192, 12288).then((release) => (order.push('d'), release)); // after b: overlaps it
    await tick();
    expect(order).toEqual(['c']);
    a();
    (await b)();
    (await d)();
    (await c)();
    expect(order).toEqual(['c', 'b', 'd']);
    const r1 = await lock.acquire(0, 4096, true);
    const r2 = await lock.acquire(0, 4096, true); // readers share
    let wrote = false;
    const w = lock.acquire(0, 4096).then((release) => ((wrote = true), release));
    await tick();
    expect(wrote).toBe(false);
    r1();
    r2();
    (await w)();
    expect(wrote).toBe(true);
  });
});

describe('DirtyMap', () => {
  const disks = [{ name: 'a', sizeBytes: 64 * MiB }, { name: 'b', sizeBytes: 8 * MiB }];

  test('a mark survives a reopen as a region to resync; a cleared one does not', async () => {
    const path = join(await mkdtemp(join(tmpdir(), 'livesync-map-')), 'dirty.map');
    const { map, trusted, existed } = await DirtyMap.open(path, disks);
    expect({ trusted, existed }).toEqual({ trusted: false, existed: false });
    await map.beforeWrite(0, 3 * 65536 + 100, 10, true);
    map.afterWrite(0, 3 * 65536 + 100, 10, 7, 0);
    await map.beforeWrite(1, 0, 2 * 65536, true);
    map.afterWrite(1, 0, 2 * 65536, 9, 0);
    // Seq 7 is spooled and the region idle: cleared. Seq 9 is not spooled yet: kept.
    await map.sweep(8, 1000, 5000);
    expect(map.dirtyRegions).toBe(2);
    await map.close();

    const again = await DirtyMap.open(path, disks);
    expect(again.trusted).toBe(true);
    expect([...again.map.resyncRegions()].map((r) => [r.disk, r.offset, r.length])).toEqual([[1, 0, 65536], [1, 65536, 65536]]);
    again.map.resynced(1, 0, 12, 0);
    again.map.resynced(1, 1, 12, 0);
    expect(again.map.pendingResync).toBe(0);
    await again.map.close();
    // Other disks: the map is not trusted and starts empty.
    const other = await DirtyMap.open(path, [{ name: 'a', sizeBytes: 32 * MiB }]);
    expect({ trusted: other.trusted, dirty: other.map.dirtyRegions }).toEqual({ trusted: false, dirty: 0 });
    await other.map.close();
  });

  test('an overflow escalates captured regions of lost batches and writes in flight; a hot region is not cleared', async () => {
    const path = join(await mkdtemp(join(tmpdir(), 'livesync-map-')), 'dirty.map');
    const { map } = await DirtyMap.open(path, disks);
    await map.beforeWrite(0, 0, 4096, true);
    map.afterWrite(0, 0, 4096, 3, 0); // in batch 3 (kept)
    await map.beforeWrite(0, MiB, 4096, true);
    map.afterWrite(0, MiB, 4096, 5, 0); // in batch 5 (lost)
    await map.beforeWrite(0, 2 * MiB, 4096, true); // still in flight
    map.escalate(5);
    map.afterWrite(0, 2 * MiB, 4096, 6, 0);
    expect([...map.resyncRegions()].map((r) => r.offset)).toEqual([MiB, 2 * MiB]);
    await map.sweep(10, 1000, 500); // region 0 was written 500 ms ago: still hot
    expect(map.dirtyRegions).toBe(3);
    await map.close();
  });

  test("a write into a region whose mark is still on its way to the file waits for it; markedOnFile is false until then", async () => {
    const path = join(await mkdtemp(join(tmpdir(), 'livesync-map-')), 'dirty.map');
    const { map } = await DirtyMap.open(path, disks);
    const markOnFile = async (): Promise<boolean> => ((await readFile(path))[4096] & 1) === 1; // disk a's bitmap starts at page 1
    // A synced commit is running (a comparison's marks), so region 0's new mark queues behind it.
    const compared = map.markResync([{ disk: 1, region: 0, offset: 0, length: 65536 }]);
    const first = map.beforeWrite(0, 0, 4096, true);
    expect(map.markedOnFile(0, 4096, 4096)).toBe(false);
    let second = false;
    const seen = map.beforeWrite(0, 4096, 4096, true).then(async () => ((second = true), markOnFile()));
    expect(await seen).toBe(true); // the second write could go ahead only with the mark on file
    await Promise.all([first, compared]);
    expect(second).toBe(true);
    expect(map.markedOnFile(0, 8192, 4096)).toBe(true);
    expect(map.markedOnFile(0, 65536, 4096)).toBe(false); // region 1: never marked
    for (const at of [0, 4096]) map.afterWrite(0, at, 4096, 1, 0);
    await map.close();
  });
});

describe('Spool', () => {
  const batch = (seq: number): Buffer => encodeBatch({ pairId: 'p', seq, prevSeq: seq - 1, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['d'] }, [{ disk: 0, blockIndex: seq, data: Buffer.alloc(4096, seq) }]);

  test('keeps batches across a reopen, drops leftovers of interrupted writes, refuses a rotten file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const spool = await Spool.open(dir, MiB);
    await spool.add(2, batch(2));
    await spool.add(1, batch(1));
    expect(spool.seqs()).toEqual([1, 2]);
    expect(spool.fits(MiB)).toBe(false);
    await writeFile(join(dir, '00000000000000000003.batch.tmp'), 'half a batch');
    const again = await Spool.open(dir, MiB);
    expect(again.seqs()).toEqual([1, 2]);
    expect(await readdir(dir)).not.toContain('00000000000000000003.batch.tmp');
    expect((await again.read(1)).equals(batch(1))).toBe(true);
    const file = join(dir, '00000000000000000002.batch');
    const body = await readFile(file);
    body[100] ^= 1;
    await writeFile(file, body);
    await expect(again.read(2)).rejects.toThrow(SpoolCorruptError);
    // The process that spooled it still holds the encoded body: the upload sends that.
    expect((await spool.read(2)).equals(batch(2))).toBe(true);
    await again.remove(2);
    expect(again.seqs()).toEqual([1]);
  });

  test('gives each body back to its pool once: after its write, or (kept or read back) when removed', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const given: number[] = [];
    const pool = new BodyPool(MiB);
    const give = pool.give.bind(pool);
    pool.give = (body) => void (given.push(decodeBatch(body, 'given back').header.seq), give(body));
    const spool = await Spool.open(dir, MiB, { memoryBytes: batch(1).length, bodies: pool }); // room in memory for one
    await spool.add(1, batch(1));
    await spool.add(2, batch(2));
    expect(given).toEqual([2]); // written, not kept: the spool holds it no more
    expect((await spool.read(1)).equals(batch(1))).toBe(true);
    const readBack = await spool.read(2); // from its file, into a body from the pool
    expect(readBack.equals(batch(2))).toBe(true);
    expect(given).toEqual([2]); // both held for their uploads
    await spool.remove(2);
    await spool.remove(1);
    expect(given).toEqual([2, 2, 1]);
    expect(pool.take(readBack.length).buffer).toBe(readBack.buffer); // reused
  });

  test('the memory budget counts a pooled body as its whole buffer, and not the bodies uploads hold', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const pool = new BodyPool(MiB);
    const pooled = (seq: number): Buffer => {
      const b = batch(seq);
      const body = pool.take(b.length);
      b.copy(body);
      return body;
    };
    const spool = await Spool.open(dir, 64 * MiB, { memoryBytes: 1.5 * MiB, bodies: pool });
    const files = async (): Promise<string[]> => (await readdir(dir)).filter((n) => n.endsWith('.batch'));
    await spool.add(1, pooled(1), { durable: false });
    expect(await files()).toEqual([]); // one 1 MiB buffer: held
    await spool.add(2, pooled(2), { durable: false });
    expect(await files()).toEqual(['00000000000000000001.batch']); // two would be 2 MiB: the oldest is written out
    expect(spool.filesWritten).toBe(1);
    await spool.read(2); // handed to an upload: its memory is the upload's now
    await spool.add(3, pooled(3), { durable: false });
    expect(await files()).toEqual(['00000000000000000001.batch']); // 1 MiB waiting (seq 3): within the budget
    expect(spool.heldCount).toBe(2);
  });

  test('checking every spooled batch at start holds none of them', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const first = await Spool.open(dir, 64 * MiB);
    for (let seq = 1; seq <= 20; seq++) await first.add(seq, batch(seq));
    const pool = new BodyPool(MiB, 1);
    const taken: Buffer[] = [];
    const take = pool.take.bind(pool);
    pool.take = (n) => { const b = take(n); taken.push(b); return b; };
    const again = await Spool.open(dir, 64 * MiB, { bodies: pool });
    for (const seq of again.seqs()) await again.check(seq);
    expect(new Set(taken.map((b) => b.buffer)).size).toBe(1); // one body, taken and given back each time
  });

  test('keeps only as many bodies in memory as allowed; the rest are read back and checked', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const one = batch(1).length;
    const spool = await Spool.open(dir, MiB, { memoryBytes: one });
    await spool.add(1, batch(1));
    await spool.add(2, batch(2));
    for (const seq of [1, 2]) {
      const file = join(dir, `${String(seq).padStart(20, '0')}.batch`);
      const body = await readFile(file);
      body[100] ^= 1;
      await writeFile(file, body);
    }
    expect((await spool.read(1)).equals(batch(1))).toBe(true);
    await expect(spool.read(2)).rejects.toThrow(SpoolCorruptError);
    await spool.remove(1);
    await spool.add(3, batch(3)); // room again
    await writeFile(join(dir, '00000000000000000003.batch'), 'rot');
    expect((await spool.read(3)).equals(batch(3))).toBe(true);
  });
});

describe('Uploader', () => {
  const batch = (seq: number): Buffer =>
    encodeBatch({ pairId: 'p', seq, prevSeq: seq - 1, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['d'] }, [{ disk: 0, blockIndex: 0, data: Buffer.alloc(64 * 1024, seq) }]);

  /** A spool holding batches 1..n, and a store that notes when each PUT arrived. */
  async function setUp(n: number): Promise<{ spool: Spool; store: MemoryObjectStore; putAt: number[] }> {
    const spool = await Spool.open(await mkdtemp(join(tmpdir(), 'livesync-upload-')), 64 * MiB);
    for (let seq = 1; seq <= n; seq++) await spool.add(seq, batch(seq));
    const store = new MemoryObjectStore();
    const putAt: number[] = [];
    const put = store.put.bind(store);
    store.put = async (key, body, opts) => {
      putAt.push(Date.now());
      return put(key, body, opts);
    };
    return { spool, store, putAt };
  }

  test('keeps under its bandwidth limit: upload i starts no sooner than i body-lengths / rate after the first could', async () => {
    const { spool, store, putAt } = await setUp(4);
    const bytes = batch(1).length;
    const rate = bytes * 4; // one batch every 250 ms
    const uploader = new Uploader({ pairId: 'p', spool, store, bandwidthBytesPerSec: rate });
    // From the kick, not from the previous PUT: a PUT that started late (a busy host) must not make the next look early.
    const kicked = Date.now();
    uploader.kick();
    await uploader.idle(5000);
    expect(spool.count).toBe(0);
    expect(putAt).toHaveLength(4);
    for (let i = 1; i < 4; i++) expect(putAt[i] - kicked).toBeGreaterThanOrEqual(i * 250 - 10);
    await uploader.stop();
  });

  test('stop does not wait out the bandwidth limit: waiting batches stay spooled for the next start', async () => {
    const { spool, store, putAt } = await setUp(4);
    const uploader = new Uploader({ pairId: 'p', spool, store, bandwidthBytesPerSec: batch(1).length / 10 }); // one batch every 10 s
    uploader.kick();
    while (putAt.length === 0) await new Promise((r) => setTimeout(r, 10));
    const t0 = Date.now();
    await uploader.stop();
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(spool.seqs()).toEqual([2, 3, 4]);
    await new Promise((r) => setTimeout(r, 300));
    expect(putAt).toHaveLength(1); // none of the waiting ones went after the stop
  });

  test('a PUT whose reply was lost is retried under its key and done; another batch under a key stops the uploads and is not overwritten', async () => {
    const { spool, store } = await setUp(4);
    const put = store.put.bind(store);
    const keys: string[] = [];
    const foreign = batch(3);
    foreign[100] ^= 1;
    store.put = async (key, body, opts) => {
      keys.push(key);
      expect(opts?.createOnly).toBe(true);
      const seq = Number(/journal\/(\d{20})-/.exec(key)![1]);
      // Batch 3's key is taken just before its PUT lands (another writer that learnt the key).
      if (seq === 3) store.objects.set(key, foreign);
      await put(key, body, opts);
      // Batch 1 reaches the store but its reply is lost: the retry finds its own bytes (412).
      if (seq === 1 && keys.length === 1) throw new Error('socket hang up');
    };
    const conflicts: string[] = [];
    const uploader = new Uploader({ pairId: 'p', spool, store, baseDelayMs: 1, maxInFlight: 1, onConflict: (err) => conflicts.push(err.message) });
    uploader.kick();
    await uploader.idle(5000);
    expect(keys.slice(0, 2)).toEqual([keys[0], keys[0]]); // the retry reused the key
    expect(store.objects.get(keys[0])!.equals(batch(1))).toBe(true);
    const key3 = keys.find((k) => k.includes(`/${'3'.padStart(20, '0')}-`))!;
    expect(store.objects.get(key3)!.equals(foreign)).toBe(true); // left as it was
    expect(conflicts).toEqual([expect.stringMatching(/exists with other contents/)]);
    expect(uploader.lastError).toMatch(/^batch 3: /);
    expect(spool.seqs()).toEqual([3, 4]); // kept: nothing past the conflict is uploaded
    expect([...store.objects.keys()].filter((k) => k.includes(`/${'4'.padStart(20, '0')}-`))).toEqual([]);
    await uploader.stop();
  });
});
