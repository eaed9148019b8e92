// The read path: recovery into a raw image object in S3 (multipart), into a sparse local
// file, and refusal of stored data that no longer matches its checksums.

import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { BLOCK_SIZE } from '../core/batch-format';
import { CorruptExtentError } from '../core/errors';
import { heldBytes } from '../replica/chunk-verifier';
import { fileSink, materialize, objectSink } from '../replica/materialize';
import { subtract } from '../replica/rp-reader';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, newPairId, recover, SourceModel } from './helpers';

const MiB = 1024 * 1024;

async function replicate(pairId: string, disks: { name: string; sizeBytes: number }[], writes: [string, number, Buffer][]) {
  const c = cloud();
  await createPair(c.index, { pairId, disks });
  const model = new SourceModel(disks);
  const keys: string[] = [];
  const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 2 * MiB, onUploaded: (b) => keys.push(b.key) });
  for (const [disk, offset, data] of writes) {
    model.write(disk, offset, data);
    await w.write(disk, offset, data);
  }
  const seq = await w.flush({ rp: true });
  await waitForWatermark(c.index, pairId, seq, 60_000);
  return { c, model, seq, keys };
}

const pattern = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
};

describe('materialize', () => {
  test('into a raw image object in S3 (multipart, several parts) and into a sparse file', async () => {
    const disks = [{ name: 'big', sizeBytes: 40 * MiB }, { name: 'small', sizeBytes: MiB }];
    const pairId = newPairId('mat');
    const writes: [string, number, Buffer][] = [
      ['big', 0, pattern(3 * MiB, 1)],
      ['big', 17 * MiB + 8192, pattern(5 * MiB, 2)],
      ['big', 40 * MiB - BLOCK_SIZE, pattern(BLOCK_SIZE, 3)],
      ['small', 4096, pattern(64 * 1024, 4)],
      ['big', MiB, pattern(MiB, 5)], // overwrites part of the first write, in a later batch
    ];
    const { c, model, seq } = await replicate(pairId, disks, writes);
    const prefix = `recoveries/${pairId}/${seq}`;
    const held: number[] = [];
    const res = await materialize(c.store, c.index, { pairId, seq, windowBytes: 8 * MiB, sinkFor: async (disk) => (held.push(await heldBytes()), objectSink(c.store, `${prefix}/${disk}.img`)) });
    expect(res.disks.map((d) => d.name)).toEqual(['big', 'small']);
    // The checked batches were held by the decoding workers while reading, and let go after.
    expect(held[0]).toBeGreaterThan(0);
    expect(await heldBytes()).toBe(0);
    for (const d of disks) {
      const image = await c.store.get(`${prefix}/${d.name}.img`);
      expect({ disk: d.name, diff: firstDifference(image, model.disks.get(d.name)!) }).toEqual({ disk: d.name, diff: undefined });
    }

    const dir = await mkdtemp(join(tmpdir(), 'livesync-'));
    await materialize(c.store, c.index, { pairId, seq, sinkFor: async (disk, size) => fileSink(join(dir, `${disk}.img`), size) });
    const file = await readFile(join(dir, 'big.img'));
    expect(firstDifference(file, model.disks.get('big')!)).toBeUndefined();
    // Holes stay holes: far fewer blocks allocated than the disk size.
    expect((await stat(join(dir, 'big.img'))).blocks * 512).toBeLessThan(20 * MiB);
  });

  test('a stored extent that no longer matches its checksum stops recovery with the key', async () => {
    const disks = [{ name: 'd', sizeBytes: 4 * MiB }];
    const pairId = newPairId('rot');
    const { c, seq, keys } = await replicate(pairId, disks, [['d', 0, pattern(MiB, 9)]]);
    const key = keys[0];
    const body = Buffer.from(await c.store.get(key));
    body[200] ^= 0xff; // in the first extent's payload
    await c.store.put(key, body); // bit rot (or tampering) after apply
    await expect(recover(c, pairId, seq)).rejects.toThrow(CorruptExtentError);
    await expect(recover(c, pairId, seq)).rejects.toThrow(key);
    // No partial image is left behind.
    const out = join(await mkdtemp(join(tmpdir(), 'livesync-')), 'd.img');
    await expect(materialize(c.store, c.index, { pairId, seq, sinkFor: async (_d, size) => fileSink(out, size) })).rejects.toThrow(CorruptExtentError);
    await expect(stat(out)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await heldBytes()).toBe(0); // a read that failed to open holds nothing
  });

  test('into a file the workers write: a failed recovery waits for the reads still placing data before the file is closed', async () => {
    const disks = [{ name: 'd', sizeBytes: 16 * MiB }];
    const pairId = newPairId('rotdirect');
    const { c, seq, keys } = await replicate(pairId, disks, [['d', 0, pattern(MiB, 9)], ['d', 2 * MiB, pattern(2 * MiB, 10)], ['d', 5 * MiB, pattern(2 * MiB, 11)], ['d', 9 * MiB, pattern(3 * MiB, 12)]]);
    // Once the read is open (the batches checked whole), the first batch's extents come back
    // damaged at once, and every other GET answers late: still in flight when the first fails.
    let opened = false;
    const slow = new Proxy(c.store, {
      get: (t, k) => (k === 'get' ? async (key: string, ...rest: unknown[]) => {
        const got = await (t.get as (...a: unknown[]) => Promise<Buffer>)(key, ...rest);
        if (!opened) return got;
        if (key !== keys[0]) return new Promise((r) => setTimeout(() => r(got), 150));
        const bad = Buffer.from(got);
        bad[100] ^= 0xff;
        return bad;
      } : Reflect.get(t, k)),
    });
    const dir = await mkdtemp(join(tmpdir(), 'livesync-'));
    const fh = await open(join(dir, 'd.img'), 'w');
    await fh.truncate(disks[0].sizeBytes);
    let next: Awaited<ReturnType<typeof open>> | undefined;
    const sink = {
      direct: { fd: fh.fd, wrote: async () => {} },
      write: () => Promise.reject(new Error('not direct')),
      close: () => fh.close(),
      // Closed, and its descriptor number taken at once by another file: a worker writing late would write there.
      abort: async () => {
        await fh.close();
        next = await open(join(dir, 'other'), 'w+');
      },
    };
    // checkedBatchBytes 0: no batch is kept whole, the windows GET their extents.
    await expect(materialize(slow, c.index, { pairId, seq, windowBytes: 4 * MiB, checkedBatchBytes: 0, sinkFor: async () => ((opened = true), sink) })).rejects.toThrow(CorruptExtentError);
    await new Promise((r) => setTimeout(r, 500));
    expect((await next!.stat()).size).toBe(0);
    await next!.close();
    await rm(dir, { recursive: true });
  });

  test('a read that fails to open (one batch of several replaced) lets go of the batches it had checked', async () => {
    const disks = [{ name: 'd', sizeBytes: 16 * MiB }];
    const pairId = newPairId('rotmany');
    const writes: [string, number, Buffer][] = [0, 1, 2, 3].map((i) => ['d', i * 3 * MiB, pattern(3 * MiB, 20 + i)]);
    const { c, seq, keys } = await replicate(pairId, disks, writes);
    expect(keys.length).toBeGreaterThan(2);
    const key = keys[keys.length - 1];
    const body = Buffer.from(await c.store.get(key));
    body[200] ^= 0xff;
    await c.store.put(key, body);
    await expect(recover(c, pairId, seq)).rejects.toThrow(key);
    // The others' reads may still be ending: each lets its body go as it does.
    for (let t = 0; t < 100 && (await heldBytes()) > 0; t++) await new Promise((r) => setTimeout(r, 50));
    expect(await heldBytes()).toBe(0);
  });

  test('recovery of an unknown pair or a seq that is not an RP is refused clearly', async () => {
    const c = cloud();
    await expect(recover(c, 'no-such-pair', 1)).rejects.toThrow("unknown pair 'no-such-pair'");
    const pairId = newPairId('norp');
    await createPair(c.index, { pairId, disks: [{ name: 'd', sizeBytes: MiB }] });
    await expect(recover(c, pairId, 3)).rejects.toThrow(`pair '${pairId}' has no live recovery point at seq 3`);
  });

  test('an L0 batch read whole to check its SHA-256 is not read again: the windows take its extents from it (and a reader with no room for it GETs them)', async () => {
    const disks = [{ name: 'd', sizeBytes: 40 * MiB }];
    const pairId = newPairId('once');
    // Extents of three batches scattered over several windows (8 MiB each), partly overwritten.
    const writes: [string, number, Buffer][] = [
      ['d', 0, pattern(2 * MiB, 1)],
      ['d', 9 * MiB, pattern(2 * MiB, 2)],
      ['d', 17 * MiB, pattern(2 * MiB, 3)],
      ['d', MiB, pattern(3 * MiB, 4)],
      ['d', 20 * MiB, pattern(MiB, 5)],
      ['d', 33 * MiB, pattern(2 * MiB, 6)],
    ];
    const { c, model, seq, keys } = await replicate(pairId, disks, writes);
    const batchBytes = (await Promise.all(keys.map((k) => c.store.get(k)))).reduce((n, b) => n + b.length, 0);
    const dir = await mkdtemp(join(tmpdir(), 'livesync-'));
    const read = async (checkedBatchBytes?: number) => {
      const res = await materialize(c.store, c.index, { pairId, seq, windowBytes: 8 * MiB, checkedBatchBytes, sinkFor: async (disk, size) => fileSink(join(dir, `${disk}.img`), size) });
      expect(firstDifference(await readFile(join(dir, 'd.img')), model.disks.get('d')!)).toBeUndefined();
      return res;
    };
    const once = await read();
    expect(keys.length).toBeGreaterThan(1);
    expect({ gets: once.gets, bytesRead: once.bytesRead }).toEqual({ gets: keys.length, bytesRead: batchBytes });
    const again = await read(0);
    expect(again.gets).toBeGreaterThan(keys.length);
    expect(again.bytesRead).toBeGreaterThan(batchBytes);
  });

  test.each([
    ['whole windows', false],
    ['only the data ranges (writesDataOnly: stale bytes elsewhere are not zeroed)', true],
  ])('windows a sink gives back (doneWithWindow) are filled again and read as zeros wherever the RP has no data: a sink that writes %s', async (_, dataOnly) => {
    const disks = [{ name: 'd', sizeBytes: 96 * MiB }];
    const pairId = newPairId('reuse');
    // Data in different places of each 8 MiB window (windows 3 on reuse earlier ones, whose
    // data must not show through), and later zeros inside data of windows 0 to 5: a zero
    // version is not placed, the window's zeros stand for it. Windows 6 to 11 hold a little
    // data and a zero version each, at a different place each time: a window used a third time
    // holds its first use's data there, where neither of its last two uses wrote.
    const writes: [string, number, Buffer][] = [
      ['d', 0, pattern(6 * MiB, 1)],
      ['d', 8 * MiB, pattern(7 * MiB, 2)],
      ['d', 16 * MiB, pattern(8 * MiB, 3)],
      ['d', 26 * MiB, pattern(MiB, 4)],
      ['d', 32 * MiB, pattern(16 * MiB, 5)],
      ...[0, 1, 2, 4, 5].map((k): [string, number, Buffer] => ['d', k * 8 * MiB + 2 * MiB, Buffer.alloc(MiB)]),
      ...[6, 7, 8, 9, 10, 11].flatMap((k): [string, number, Buffer][] => [
        ['d', k * 8 * MiB + 7 * MiB, pattern(64 * 1024, k)],
        ['d', k * 8 * MiB + (k - 6) * MiB, Buffer.alloc(MiB)],
      ]),
    ];
    const { c, model, seq } = await replicate(pairId, disks, writes);
    // A sparse file reads as zeros where nothing was written.
    const image = Buffer.alloc(96 * MiB, dataOnly ? 0 : 0xee);
    const seen = new Set<ArrayBufferLike>();
    await materialize(c.store, c.index, {
      pairId,
      seq,
      windowBytes: 8 * MiB,
      sinkFor: async () => ({
        doneWithWindow: true,
        writesDataOnly: dataOnly,
        async write(offset, window, ranges) {
          seen.add(window.buffer);
          if (!dataOnly) window.copy(image, offset); // whole windows: the zeros count
          else for (const r of ranges) window.copy(image, offset + r.start, r.start, r.end); // zero versions are data ranges
        },
        close: async () => {},
        abort: async () => {},
      }),
    });
    expect(seen.size).toBeLessThan(4); // windows were reused, most of them three times or more
    expect(firstDifference(image, model.disks.get('d')!)).toBeUndefined();
  });

  test('property: random data and zero writes, random window sizes: a sink of whole windows, a sink of data ranges only and an image file (written by the workers, or from windows) all read the model, windows reused', async () => {
    const fileDir = await mkdtemp(join(tmpdir(), 'livesync-prop-'));
    const disks = [{ name: 'd', sizeBytes: 48 * MiB }];
    const blocks = disks[0].sizeBytes / BLOCK_SIZE;
    const extent = fc.record({ block: fc.integer({ min: 0, max: blocks - 1 }), count: fc.integer({ min: 1, max: 768 }), zero: fc.boolean(), seed: fc.integer({ min: 1, max: 1e6 }) });
    await fc.assert(
      fc.asyncProperty(fc.array(extent, { minLength: 8, maxLength: 40 }), fc.array(fc.integer({ min: 64, max: 2048 }), { minLength: 2, maxLength: 3 }), async (extents, windows) => {
        const writes = extents.map(({ block, count, zero, seed }): [string, number, Buffer] => {
          const n = Math.min(count, blocks - block) * BLOCK_SIZE;
          return ['d', block * BLOCK_SIZE, zero ? Buffer.alloc(n) : pattern(n, seed)];
        });
        const pairId = newPairId('reuseprop');
        const { c, model, seq } = await replicate(pairId, disks, writes);
        for (const windowBlocks of windows) {
          for (const dataOnly of [false, true]) {
            const image = Buffer.alloc(disks[0].sizeBytes, dataOnly ? 0 : 0xee);
            const seen = new Set<ArrayBufferLike>();
            await materialize(c.store, c.index, {
              pairId,
              seq,
              windowBytes: windowBlocks * BLOCK_SIZE,
              sinkFor: async () => ({
                doneWithWindow: true,
                writesDataOnly: dataOnly,
                async write(offset, window, ranges) {
                  seen.add(window.buffer);
                  if (!dataOnly) window.copy(image, offset);
                  else for (const r of ranges) window.copy(image, offset + r.start, r.start, r.end);
                },
                close: async () => {},
                abort: async () => {},
              }),
            });
            expect({ windowBlocks, dataOnly, diff: firstDifference(image, model.disks.get('d')!) }).toEqual({ windowBlocks, dataOnly, diff: undefined });
          }
          // An image file: the workers write it themselves (`direct`), or, from a wrapper that
          // does not pass that on, through write() with windows reused.
          for (const direct of [true, false]) {
            const path = join(fileDir, `${pairId}-${windowBlocks}-${direct}.img`);
            await materialize(c.store, c.index, {
              pairId,
              seq,
              windowBytes: windowBlocks * BLOCK_SIZE,
              sinkFor: async (_d, size) => {
                const sink = await fileSink(path, size);
                return direct ? { ...sink, write: () => Promise.reject(new Error('not direct')) } : { ...sink, direct: undefined };
              },
            });
            expect({ windowBlocks, direct, diff: firstDifference(await readFile(path), model.disks.get('d')!) }).toEqual({ windowBlocks, direct, diff: undefined });
            await rm(path);
          }
        }
      }),
      { numRuns: 4 },
    );
    await rm(fileDir, { recursive: true, force: true });
  });

  test('subtract: the parts of sorted ranges outside others (what a reused window zeroes)', () => {
    const r = (...xs: [number, number][]) => xs.map(([start, end]) => ({ start, end }));
    const table: [ReturnType<typeof r>, ReturnType<typeof r>, ReturnType<typeof r>][] = [
      [r([0, 10]), r(), r([0, 10])],
      [r([0, 10]), r([0, 10]), r()],
      [r([0, 10]), r([2, 4], [6, 8]), r([0, 2], [4, 6], [8, 10])],
      [r([0, 4], [6, 10]), r([3, 7]), r([0, 3], [7, 10])],
      [r([5, 6]), r([0, 5], [6, 9]), r([5, 6])],
      [r([0, 2], [4, 6], [8, 10]), r([1, 9]), r([0, 1], [9, 10])],
      [r(), r([0, 1]), r()],
    ];
    for (const [a, b, want] of table) expect({ a, b, got: subtract(a, b) }).toEqual({ a, b, got: want });
  });
});
