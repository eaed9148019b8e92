// A batch is bounded by its expected STORED size (source/batch-writer.ts limit): while recent
// batches compressed well, more distinct blocks are pending before a size cut (up to
// maxRawBatchBytes), so a source of compressible writes makes fewer objects of about
// maxBatchBytes each; incompressible data is still cut at maxBatchBytes raw. The pending data
// then spans several slab chunks: what is replayed must still be exactly what was written.
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { BLOCK_SIZE, EXTENT_FLAGS, batchBodyBound, decodeBatch, decodeExtent } from '../core/batch-format';
import { BatchWriter, type BatchWriterOptions, type CutBatch } from '../source/batch-writer';
import { BodyPool } from '../source/body-pool';

const MAX_BLOCKS = 16; // maxBatchBytes: 64 KiB, one slab chunk

/** A writer over one disk of `sizeBlocks` whose batches are kept (copied), and the disk they replay to. */
function writer(sizeBlocks: number, o: Partial<BatchWriterOptions> = {}) {
  const size = sizeBlocks * BLOCK_SIZE;
  const batches: CutBatch[] = [];
  const w = new BatchWriter({
    pairId: 'p',
    disks: [{ name: 'd0', sizeBytes: size }],
    sink: async (c) => {
      batches.push({ ...c, body: Buffer.from(c.body) });
      o.bodies?.give(c.body.fill(0xee)); // spoiled: a later body must not show these bytes
    },
    maxBatchBytes: MAX_BLOCKS * BLOCK_SIZE,
    maxBatchAgeMs: 0,
    ...o,
  });
  const replay = (): Buffer => {
    const disk = Buffer.alloc(size);
    for (const c of batches) {
      for (const e of decodeBatch(c.body, `batch ${c.seq}`).extents) {
        if (e.flags & EXTENT_FLAGS.ZERO) disk.fill(0, e.blockIndex * BLOCK_SIZE, (e.blockIndex + e.blockCount) * BLOCK_SIZE);
        else decodeExtent(e, c.body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), `batch ${c.seq}`).copy(disk, e.blockIndex * BLOCK_SIZE);
      }
    }
    return disk;
  };
  return { w, batches, replay, rawBlocks: () => batches.map((c) => c.dataBytes / BLOCK_SIZE) };
}

/** Blocks that zstd takes to a few percent (text-like, each block distinct). */
function compressible(n: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length: n }, (_, i) => `block ${seed + i} of a journal; `.repeat(BLOCK_SIZE).slice(0, BLOCK_SIZE)).join(''), 'latin1');
}

/** Writes `data` at block `first` on, `per` blocks a write (sequential writes); mirrors it into `disk`. */
async function writeRun(w: BatchWriter, disk: Buffer, first: number, data: Buffer, per = 4): Promise<void> {
  data.copy(disk, first * BLOCK_SIZE);
  for (let at = 0; at < data.length; at += per * BLOCK_SIZE) await w.write('d0', first * BLOCK_SIZE + at, data.subarray(at, at + per * BLOCK_SIZE));
}

/**
 * A writer over 1024 blocks given `runs` of sequential writes ([first block, data, blocks a
 * write]), each followed by a flush (its batches encoded: their ratios known before the next
 * run); checks the replay and returns the batches' raw sizes in blocks and the batches.
 */
async function runs(o: Partial<BatchWriterOptions>, ...rs: [number, Buffer, number?][]) {
  const { w, batches, replay, rawBlocks } = writer(1024, o);
  const disk = Buffer.alloc(1024 * BLOCK_SIZE);
  for (const [first, data, per] of rs) {
    await writeRun(w, disk, first, data, per);
    await w.flush();
  }
  expect(replay().equals(disk)).toBe(true);
  return { blocks: rawBlocks(), batches, w };
}

const KiB4 = (n: number): Buffer => randomBytes(n * BLOCK_SIZE);

describe('BatchWriter, batches bounded by their stored size', () => {
  test('compressible writes make fewer batches of up to 4 × maxBatchBytes raw, each stored within maxBatchBytes', async () => {
    const { blocks, batches, w } = await runs({}, [0, compressible(MAX_BLOCKS, 0)], [100, compressible(256, 1000)]);
    expect(blocks).toEqual([16, 64, 64, 64, 64]);
    expect(batches.every((c) => c.body.length <= MAX_BLOCKS * BLOCK_SIZE)).toBe(true);
    expect(w.maxRawBatchBytes).toBe(4 * MAX_BLOCKS * BLOCK_SIZE);
  });

  test('the growth is bounded by maxRawBatchBytes, and by how well batches compressed (⌊1 / ratio⌋)', async () => {
    // Capped at 2 × maxBatchBytes by the option.
    expect((await runs({ maxRawBatchBytes: 2 * MAX_BLOCKS * BLOCK_SIZE }, [0, compressible(MAX_BLOCKS, 0)], [100, compressible(128, 1000)])).blocks).toEqual([16, 32, 32, 32, 32]);
    // Half random, half compressible blocks: stored at a little over 1/2, so k = 1.
    const mixed = (n: number, seed: number): Buffer => Buffer.concat(Array.from({ length: n / 2 }, (_, i) => Buffer.concat([KiB4(1), compressible(1, seed + i)])));
    expect((await runs({}, [0, mixed(MAX_BLOCKS, 0)], [100, mixed(64, 1000)])).blocks).toEqual([16, 16, 16, 16, 16]);
    // A small batch of raw 4 KiB blocks (an age cut between bursts) counts by its bytes: the
    // next batches still grow (the agent's files job: seq 3 of 24 KiB at 1.01 cost two 4 MiB cuts).
    expect((await runs({}, [0, compressible(2 * MAX_BLOCKS, 0)], [50, KiB4(2), 1], [100, compressible(128, 1000)])).blocks).toEqual([16, 16, 2, 64, 64]);
    expect(() => writer(8, { maxRawBatchBytes: MAX_BLOCKS * BLOCK_SIZE - 1 })).toThrow(/maxRawBatchBytes 65535 is not an integer of at least maxBatchBytes \(65536\)/);
  });

  test('incompressible writes are still cut at maxBatchBytes raw; after compressible ones, one batch may be larger (within maxRawBatchBytes), then they are cut at maxBatchBytes again', async () => {
    expect((await runs({}, [0, KiB4(MAX_BLOCKS)], [100, KiB4(64)])).blocks).toEqual([16, 16, 16, 16, 16]);

    // The first batch fixes the next one's limit at 64 blocks; that one, random, is measured
    // at ~1. Its body is bigger than the pool's bodies: it gets one of its own, whole (pooled
    // bodies are given back spoiled).
    const pool = new BodyPool(batchBodyBound(MAX_BLOCKS * BLOCK_SIZE), 2);
    const turn = await runs({ bodies: pool }, [0, compressible(MAX_BLOCKS, 0)], [100, KiB4(64)], [200, KiB4(32)]);
    expect(turn.blocks).toEqual([16, 64, 16, 16]);
    const big = turn.batches[1].body.length;
    expect(big).toBeGreaterThan(pool.capacity);
    expect(big).toBeLessThanOrEqual(batchBodyBound(4 * MAX_BLOCKS * BLOCK_SIZE));

    // After four well-compressed 64-block batches, a 16-block batch that did not compress
    // barely moves their joint ratio, but being at least a quarter of maxBatchBytes it ends
    // the growth by itself.
    expect((await runs({}, [0, compressible(MAX_BLOCKS, 0)], [100, compressible(256, 1000)], [400, KiB4(MAX_BLOCKS)], [500, KiB4(2 * MAX_BLOCKS)])).blocks).toEqual([16, 64, 64, 64, 64, 16, 16, 16]);
  });

  // Writes of 1-12 whole blocks (sequential runs across slab chunks, overwrites, all-zero
  // blocks), partial writes, zeroings, cuts, and waits for the batches to be encoded (which
  // lets the next batch grow), with chunks of 4-8 blocks and raw factors 1-4: replaying the
  // batches gives exactly the disk, and no batch holds more than maxRawBatchBytes.
  test('replay equals what was written across slab chunks, and every batch is within maxRawBatchBytes (property)', async () => {
    const sizeBlocks = 64;
    const size = sizeBlocks * BLOCK_SIZE;
    let grown = 0;
    const content = fc.constantFrom('text' as const, 'random' as const, 'zero' as const);
    const op = fc.oneof(
      { weight: 6, arbitrary: fc.record({ kind: fc.constant('blocks' as const), block: fc.nat(sizeBlocks - 1), blocks: fc.integer({ min: 1, max: 12 }), content }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('partial' as const), at: fc.nat(size - 1), len: fc.integer({ min: 1, max: 2 * BLOCK_SIZE }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('zero' as const), block: fc.nat(sizeBlocks - 1), blocks: fc.integer({ min: 1, max: 6 }) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('cut' as const) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('settle' as const) }) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 80 }), fc.integer({ min: 4, max: 8 }), fc.integer({ min: 1, max: 4 }), async (ops, batchBlocks, factor) => {
        const disk = Buffer.alloc(size);
        const maxBatchBytes = batchBlocks * BLOCK_SIZE;
        const { w, batches, replay } = writer(sizeBlocks, {
          maxBatchBytes,
          maxRawBatchBytes: factor * maxBatchBytes,
          readBlock: async (_, block) => Buffer.from(disk.subarray(block * BLOCK_SIZE, (block + 1) * BLOCK_SIZE)),
        });
        let seed = 0;
        for (const o of ops) {
          if (o.kind === 'cut') w.cut();
          else if (o.kind === 'settle') await w.flush();
          else if (o.kind === 'zero') {
            const len = Math.min(o.blocks, sizeBlocks - o.block) * BLOCK_SIZE;
            disk.fill(0, o.block * BLOCK_SIZE, o.block * BLOCK_SIZE + len);
            await w.zero('d0', o.block * BLOCK_SIZE, len);
          } else {
            const [at, len] = o.kind === 'partial' ? [o.at, Math.min(o.len, size - o.at)] : [o.block * BLOCK_SIZE, Math.min(o.blocks, sizeBlocks - o.block) * BLOCK_SIZE];
            const kind = o.kind === 'partial' ? 'random' : o.content;
            const data = kind === 'zero' ? Buffer.alloc(len) : kind === 'random' ? randomBytes(len) : compressible(Math.ceil(len / BLOCK_SIZE), (seed += 100)).subarray(0, len);
            data.copy(disk, at);
            await w.write('d0', at, data);
          }
        }
        await w.flush();
        expect(replay().equals(disk)).toBe(true);
        expect(batches.every((c) => c.dataBytes <= factor * maxBatchBytes)).toBe(true);
        grown += batches.filter((c) => c.dataBytes > maxBatchBytes).length;
      }),
      { numRuns: 150 },
    );
    expect(grown).toBeGreaterThan(10); // batches larger than one chunk were made, and replayed
  });
});
