import fc from 'fast-check';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { BATCH_FLAGS, BLOCK_SIZE, EXTENT_FLAGS, batchBodyBound, decodeBatch, decodeExtent, encodeBatch, encodeBatchAsync } from '../core/batch-format';
import { InvalidArgumentError } from '../core/errors';
import { parseJournalKey } from '../core/keys';
import type { ObjectStore } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { BodyPool } from '../source/body-pool';

const disks = [{ name: 'd0', sizeBytes: 1024 * 1024 }];
const decoded = (mem: MemoryObjectStore) =>
  [...mem.objects].map(([key, body]) => ({ key, ...decodeBatch(body, key) })).sort((a, b) => a.header.seq - b.header.seq);

describe('BatchWriter', () => {
  test('coalesces overwrites within a batch into one sorted extent per run', async () => {
    const mem = new MemoryObjectStore();
    const w = new BatchWriter({ pairId: 'p', disks, store: mem, maxBatchAgeMs: 0 });
    await w.write('d0', 8 * BLOCK_SIZE, Buffer.alloc(2 * BLOCK_SIZE, 1));
    await w.write('d0', 0, Buffer.alloc(BLOCK_SIZE, 2));
    await w.write('d0', 8 * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE, 3)); // overwrite within the batch
    await w.zero('d0', 9 * BLOCK_SIZE, BLOCK_SIZE);
    expect(await w.flush()).toBe(1);
    const [b] = decoded(mem);
    expect(b.header).toMatchObject({ pairId: 'p', seq: 1, prevSeq: 0, flags: 0 });
    expect(b.extents.map((e) => [e.blockIndex, e.blockCount, e.payloadLength === 0])).toEqual([[0, 1, false], [8, 1, false], [9, 1, true]]);
    expect(b.dataBytes).toBe(3 * BLOCK_SIZE); // three distinct blocks, not four writes
  });

  test('cuts by size at write boundaries, and marks ACRPs and RP requests', async () => {
    const mem = new MemoryObjectStore();
    const w = new BatchWriter({ pairId: 'p', disks, store: mem, maxBatchAgeMs: 0, maxBatchBytes: 4 * BLOCK_SIZE, firstSeq: 10 });
    for (let i = 0; i < 10; i++) await w.write('d0', i * 2 * BLOCK_SIZE, Buffer.alloc(2 * BLOCK_SIZE, i + 1));
    w.cut({ appTag: 'app=db' });
    await w.flush({ rp: true }); // nothing pending: still cuts, an empty batch carrying the marker
    const bs = decoded(mem);
    // A full batch is cut when the next write does not fit; the last one by the ACRP marker.
    expect(bs.map((b) => b.header.seq)).toEqual([10, 11, 12, 13, 14, 15]);
    expect(bs.slice(0, 5).every((b) => b.dataBytes === 4 * BLOCK_SIZE)).toBe(true);
    expect(bs.slice(0, 4).every((b) => b.header.flags === 0)).toBe(true);
    expect(bs[4].header).toMatchObject({ flags: BATCH_FLAGS.APP_CONSISTENT, appTag: 'app=db' });
    expect(bs[5].header.flags).toBe(BATCH_FLAGS.RP_REQUESTED);
    expect(bs[5].extents).toEqual([]);
    expect(bs.every((b) => parseJournalKey(b.key)!.seq === b.header.seq)).toBe(true);
  });

  test('cuts by age', async () => {
    const mem = new MemoryObjectStore();
    const w = new BatchWriter({ pairId: 'p', disks, store: mem, maxBatchAgeMs: 50 });
    await w.write('d0', 0, Buffer.alloc(BLOCK_SIZE, 1));
    await new Promise((r) => setTimeout(r, 200));
    expect(mem.objects.size).toBe(1);
    await w.close();
  });

  test('partial-block writes merge with the block from readBlock', async () => {
    const mem = new MemoryObjectStore();
    const base = Buffer.alloc(BLOCK_SIZE, 0xaa);
    const w = new BatchWriter({ pairId: 'p', disks, store: mem, maxBatchAgeMs: 0, readBlock: async () => base });
    await w.write('d0', BLOCK_SIZE + 512, Buffer.alloc(1024, 0x55));
    await w.flush();
    const [b] = decoded(mem);
    const body = mem.objects.get(b.key)!;
    const e = b.extents[0];
    const { decodeExtent } = await import('../core/batch-format');
    const block = decodeExtent(e, body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), 'x');
    expect(e.blockIndex).toBe(1);
    expect([block[511], block[512], block[1535], block[1536]]).toEqual([0xaa, 0x55, 0x55, 0xaa]);
  });

  test('retries failed uploads with backoff, and reports exhaustion with the seq and key', async () => {
    let failures = 2;
    const mem = new MemoryObjectStore();
    const flaky: ObjectStore = { ...mem, get: mem.get.bind(mem), upload: mem.upload.bind(mem), size: mem.size.bind(mem), put: async (k, b) => (failures-- > 0 ? Promise.reject(new Error('SlowDown')) : mem.put(k, b)) };
    const w = new BatchWriter({ pairId: 'p', disks, store: flaky, maxBatchAgeMs: 0, retry: { baseDelayMs: 1 } });
    await w.write('d0', 0, Buffer.alloc(BLOCK_SIZE, 1));
    await w.flush();
    expect(mem.objects.size).toBe(1);

    const dead: ObjectStore = { ...flaky, put: async () => Promise.reject(new Error('network down')) };
    const w2 = new BatchWriter({ pairId: 'p', disks, store: dead, maxBatchAgeMs: 0, retry: { attempts: 3, baseDelayMs: 1 } });
    await w2.write('d0', 0, Buffer.alloc(BLOCK_SIZE, 1));
    await expect(w2.flush()).rejects.toThrow(/batch 1 of pair 'p' was not stored: upload to pairs\/p\/journal\/0+1-[0-9a-f]+\.batch failed after 3 attempts: network down/);
    await expect(w2.write('d0', 0, Buffer.alloc(BLOCK_SIZE))).rejects.toThrow(/failed after 3 attempts/);
  });

  test('a TRIM of a whole large disk is one zero extent, not one entry per block', async () => {
    const mem = new MemoryObjectStore();
    const big = [{ name: 'd0', sizeBytes: 2 ** 40 }];
    const w = new BatchWriter({ pairId: 'p', disks: big, store: mem, maxBatchAgeMs: 0 });
    await w.write('d0', 0, Buffer.alloc(BLOCK_SIZE, 1));
    await w.zero('d0', 0, 2 ** 40); // overlaps the pending write: cut first, then one run
    await w.write('d0', 8 * BLOCK_SIZE, Buffer.alloc(BLOCK_SIZE, 2)); // inside the run: cut again
    await w.flush();
    const bs = decoded(mem);
    expect(bs.map((b) => b.extents.map((e) => [e.blockIndex, e.blockCount, e.payloadLength]))).toEqual([[[0, 1, expect.any(Number)]], [[0, 2 ** 28, 0]], [[8, 1, expect.any(Number)]]]);
    expect(bs.map((b) => b.header.seq)).toEqual([1, 2, 3]);
  });

  test('all-zero data is stored as a zero extent, and one large write is cut into bounded batches', async () => {
    const mem = new MemoryObjectStore();
    const w = new BatchWriter({ pairId: 'p', disks, store: mem, maxBatchAgeMs: 0, maxBatchBytes: 64 * BLOCK_SIZE });
    await w.write('d0', 0, Buffer.alloc(4 * BLOCK_SIZE)); // zeros
    await w.write('d0', 4 * BLOCK_SIZE, Buffer.alloc(200 * BLOCK_SIZE, 3)); // one write, several batches
    await w.flush();
    const bs = decoded(mem);
    expect(bs[0].extents[0]).toMatchObject({ blockIndex: 0, blockCount: 4, payloadLength: 0 });
    // The zeros alone (the big write did not fit), then the write in bounded pieces.
    expect(bs.map((b) => b.dataBytes / BLOCK_SIZE)).toEqual([4, 64, 64, 64, 8]);
    expect(bs.every((b) => b.dataBytes <= 64 * BLOCK_SIZE)).toBe(true);
  });

  // Random writes (whole and partial blocks, all-zero data), zeroings small and large, and
  // cuts, with batches small enough to be cut mid-workload: replaying every batch in seq order
  // gives exactly the disk. Overwrites, zeroed-then-rewritten blocks and split operations
  // all go through the writer's slab slots. With a body pool, each body is replayed, spoiled
  // and given back as soon as the sink has it: a byte the encoder did not write shows.
  test('replaying its batches in seq order gives exactly the disk written (property)', async () => {
    const size = 16 * BLOCK_SIZE; // small: writes overlap often, within a batch and across cuts
    const region = fc.record({ at: fc.nat(size - 1), len: fc.integer({ min: 1, max: 5 * BLOCK_SIZE }) }).map(({ at, len }) => ({ at, len: Math.min(len, size - at) }));
    const blockRegion = fc.record({ block: fc.nat(15), blocks: fc.integer({ min: 1, max: 5 }) }).map(({ block, blocks }) => ({ at: block * BLOCK_SIZE, len: Math.min(blocks, 16 - block) * BLOCK_SIZE }));
    const op = fc.oneof(
      fc.record({ kind: fc.constant('write' as const), r: fc.oneof(region, blockRegion), fill: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('zero' as const), r: fc.oneof(region, blockRegion, fc.constant({ at: 0, len: size })) }),
      fc.record({ kind: fc.constant('cut' as const) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 60 }), fc.integer({ min: 1, max: 12 }), fc.boolean(), async (ops, batchBlocks, pooled) => {
        const disk = Buffer.alloc(size);
        const replayed = Buffer.alloc(size);
        const pool = pooled ? new BodyPool(batchBodyBound(batchBlocks * BLOCK_SIZE), 1) : undefined;
        let seqs = 0;
        const w = new BatchWriter({
          pairId: 'p',
          disks: [{ name: 'd0', sizeBytes: size }],
          sink: async (c) => {
            const b = decodeBatch(c.body, `batch ${c.seq}`);
            expect(b.header.seq).toBe(++seqs);
            for (const e of b.extents) {
              if (e.flags & EXTENT_FLAGS.ZERO) replayed.fill(0, e.blockIndex * BLOCK_SIZE, (e.blockIndex + e.blockCount) * BLOCK_SIZE);
              else decodeExtent(e, c.body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), `batch ${c.seq}`).copy(replayed, e.blockIndex * BLOCK_SIZE);
            }
            if (pool) pool.give(Buffer.from(c.body.buffer).fill(0xee));
          },
          bodies: pool,
          maxBatchBytes: batchBlocks * BLOCK_SIZE,
          maxBatchAgeMs: 0,
          readBlock: async (_, block) => Buffer.from(disk.subarray(block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE)),
        });
        for (const [i, o] of ops.entries()) {
          if (o.kind === 'cut') w.cut();
          else if (o.kind === 'zero') {
            disk.fill(0, o.r.at, o.r.at + o.r.len);
            await w.zero('d0', o.r.at, o.r.len);
          } else {
            // fill 0 makes all-zero data; otherwise each byte differs, so a misplaced block shows
            const data = Buffer.from(Array.from({ length: o.r.len }, (_, j) => (o.fill === 0 ? 0 : (o.fill + i + j) % 255 || 1)));
            data.copy(disk, o.r.at);
            await w.write('d0', o.r.at, data);
          }
        }
        await w.flush();
        expect(replayed.equals(disk)).toBe(true);
      }),
      { numRuns: 150 },
    );
  });

  test('bad arguments name what and where', async () => {
    const w = new BatchWriter({ pairId: 'p', disks, store: new MemoryObjectStore(), maxBatchAgeMs: 0 });
    await expect(w.write('nope', 0, Buffer.alloc(BLOCK_SIZE))).rejects.toThrow(new InvalidArgumentError("unknown disk 'nope' (pair 'p' has d0)"));
    await expect(w.write('d0', disks[0].sizeBytes, Buffer.alloc(BLOCK_SIZE))).rejects.toThrow(/outside disk 'd0'/);
    await expect(w.write('d0', 100, Buffer.alloc(10))).rejects.toThrow(/needs readBlock/);
    expect(() => w.cut({ appTag: '' })).toThrow(/application tag/);
    expect(() => new BatchWriter({ pairId: 'Bad_Pair', disks, store: new MemoryObjectStore() })).toThrow(/pair id 'Bad_Pair'/);
    expect(() => new BatchWriter({ pairId: 'p', disks: [...disks, ...disks], store: new MemoryObjectStore() })).toThrow(/distinct names/);
    expect(() => new BatchWriter({ pairId: 'p', disks: [{ name: 'd0', sizeBytes: 1000 }], store: new MemoryObjectStore() })).toThrow(/multiple of 4 KiB/);
  });
});

describe('BodyPool', () => {
  test('a body given back is the next one taken; a foreign, oversized or surplus one is not kept', () => {
    const pool = new BodyPool(1000, 1);
    const a = pool.take(600);
    expect(a.length).toBe(600);
    pool.give(a);
    const b = pool.take(900);
    expect(b.buffer).toBe(a.buffer); // reused
    expect(b.length).toBe(900);
    const big = pool.take(1001); // larger than the capacity: a body of its own
    expect(big.length).toBe(1001);
    pool.give(big);
    pool.give(Buffer.alloc(1000)); // not the pool's
    expect(pool.spareCount).toBe(0);
    const c = pool.take(10);
    pool.give(b);
    pool.give(b); // twice: still one spare
    pool.give(c); // over maxSpare: left to the GC
    expect(pool.spareCount).toBe(1);
  });

  test('a body encoded into a reused, spoiled buffer equals a fresh encode', async () => {
    const header = { pairId: 'p', seq: 3, prevSeq: 2, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['d'] };
    const extents = [
      { disk: 0, blockIndex: 7, data: Buffer.alloc(3 * BLOCK_SIZE, 9) },
      { disk: 0, blockIndex: 1, zeroBlocks: 2 },
      { disk: 0, blockIndex: 20, data: Buffer.from(Array.from({ length: 5 * BLOCK_SIZE }, (_, i) => (i * 7) % 251)) },
    ];
    const pool = new BodyPool(batchBodyBound(8 * BLOCK_SIZE));
    pool.give(Buffer.from(pool.take(1).buffer).fill(0xee));
    const pooled = await encodeBatchAsync(header, extents, { concurrency: 1, alloc: (n) => pool.take(n) });
    expect(pooled.equals(await encodeBatchAsync(header, extents, { concurrency: 1 }))).toBe(true);
    expect(decodeBatch(pooled, 'pooled').extents).toEqual(decodeBatch(encodeBatch(header, extents), 'fresh').extents.map((e) => expect.objectContaining({ blockIndex: e.blockIndex, blockCount: e.blockCount, dataCrc: e.dataCrc })));
    expect(pool.spareCount).toBe(0); // it came from the pool
  });
});
