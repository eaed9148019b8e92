// Writes of several whole blocks (the agent's sequential writes) take consecutive slab slots
// in one copy (source/batch-writer.ts putBlocks): what they record must be what the
// block-by-block path records, zero detection and takeTouched included.
import { BLOCK_SIZE, EXTENT_FLAGS, decodeBatch, decodeExtent } from '../core/batch-format';
import { BatchWriter, type CutBatch } from '../source/batch-writer';

const SIZE = 1024 * BLOCK_SIZE;

/** A writer over one disk whose batches are kept, and the disk its batches replay to. */
function writer(maxBatchBlocks = 32) {
  const batches: CutBatch[] = [];
  const w = new BatchWriter({
    pairId: 'p',
    disks: [{ name: 'd0', sizeBytes: SIZE }],
    sink: async (c) => void batches.push({ ...c, body: Buffer.from(c.body) }),
    maxBatchBytes: maxBatchBlocks * BLOCK_SIZE,
    maxBatchAgeMs: 0,
  });
  const replay = (): Buffer => {
    const disk = Buffer.alloc(SIZE, 0xaa); // not zeros: a zero extent must be there to clear a block
    for (const c of batches) {
      for (const e of decodeBatch(c.body, `batch ${c.seq}`).extents) {
        if (e.flags & EXTENT_FLAGS.ZERO) disk.fill(0, e.blockIndex * BLOCK_SIZE, (e.blockIndex + e.blockCount) * BLOCK_SIZE);
        else decodeExtent(e, c.body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), `batch ${c.seq}`).copy(disk, e.blockIndex * BLOCK_SIZE);
      }
    }
    return disk;
  };
  return { w, batches, replay };
}

/** Blocks of distinct bytes, with the listed blocks all zeros but for `nonZeroAt` bytes. */
function blocks(n: number, seed: number, zeroBlocks: number[] = [], nonZeroAt: Record<number, number> = {}): Buffer {
  const b = Buffer.alloc(n * BLOCK_SIZE);
  for (let i = 0; i < b.length; i++) b[i] = ((seed + i) % 251) + 1;
  for (const z of zeroBlocks) b.fill(0, z * BLOCK_SIZE, (z + 1) * BLOCK_SIZE);
  for (const [block, at] of Object.entries(nonZeroAt)) b[Number(block) * BLOCK_SIZE + at] = 7;
  return b;
}

describe('BatchWriter, writes of several whole blocks', () => {
  test('consecutive writes of several blocks are one data extent with their blocks in order', async () => {
    const { w, batches, replay } = writer();
    const a = blocks(8, 1);
    const b = blocks(8, 2);
    w.writeNow('d0', 0, a);
    w.writeNow('d0', 8 * BLOCK_SIZE, b);
    a.fill(0xee); // the writer holds copies, not the caller's buffers
    await w.flush();
    const [batch] = batches.map((c) => decodeBatch(c.body, 'b'));
    expect(batch.extents.map((e) => [e.blockIndex, e.blockCount, e.flags & EXTENT_FLAGS.ZERO])).toEqual([[0, 16, 0]]);
    expect(replay().subarray(0, 16 * BLOCK_SIZE).equals(Buffer.concat([blocks(8, 1), b]))).toBe(true);
  });

  test('all-zero blocks inside a write are zero extents; a block zero but for its first, last or a middle byte is data', async () => {
    const { w, batches, replay } = writer();
    // blocks 1 and 2 all zeros; 3, 4, 5 zeros but for one byte at the start, the end, the middle
    const data = blocks(8, 3, [1, 2, 3, 4, 5], { 3: 0, 4: BLOCK_SIZE - 1, 5: 2048 });
    await w.write('d0', 4 * BLOCK_SIZE, data);
    await w.flush();
    const [batch] = batches.map((c) => decodeBatch(c.body, 'b'));
    expect(batch.extents.map((e) => [e.blockIndex, e.blockCount, e.flags & EXTENT_FLAGS.ZERO ? 'zero' : 'data'])).toEqual([
      [4, 1, 'data'],
      [5, 2, 'zero'],
      [7, 5, 'data'],
    ]);
    expect(batch.header.seq).toBe(1);
    expect(replay().subarray(4 * BLOCK_SIZE, 12 * BLOCK_SIZE).equals(data)).toBe(true);
  });

  test('a zero block that keeps its slot takes data again there; overwrites of such a write coalesce', async () => {
    const { w, batches, replay } = writer();
    const expected = Buffer.alloc(SIZE, 0xaa);
    const put = (offset: number, data: Buffer): void => {
      w.writeNow('d0', offset, data);
      data.copy(expected, offset);
    };
    put(0, blocks(6, 4, [2])); // block 2 zero: its slot unused
    put(2 * BLOCK_SIZE, blocks(1, 5)); // data into block 2's slot
    put(BLOCK_SIZE, blocks(3, 6, [1])); // blocks 1-3 rewritten (pending: block by block), block 2 zero again
    put(4 * BLOCK_SIZE, blocks(4, 7)); // blocks 4, 5 pending, 6, 7 new: block by block
    await w.zero('d0', 5 * BLOCK_SIZE, BLOCK_SIZE);
    expected.fill(0, 5 * BLOCK_SIZE, 6 * BLOCK_SIZE);
    put(8 * BLOCK_SIZE, blocks(4, 8)); // fresh again: consecutive slots
    await w.flush();
    expect(batches).toHaveLength(1);
    expect(batches[0].dataBytes).toBe(12 * BLOCK_SIZE); // distinct blocks 0-11
    expect(replay().subarray(0, 12 * BLOCK_SIZE).equals(expected.subarray(0, 12 * BLOCK_SIZE))).toBe(true);
  });

  test('rewriting the same blocks does not fill the batch: one batch, the last data', async () => {
    const { w, batches, replay } = writer(16);
    for (let round = 0; round < 5; round++) w.writeNow('d0', 0, blocks(8, round));
    await w.flush();
    expect(batches.map((c) => c.dataBytes / BLOCK_SIZE)).toEqual([8]);
    expect(replay().subarray(0, 8 * BLOCK_SIZE).equals(blocks(8, 4))).toBe(true);
  });

  test('takeTouched copies what such a write left, zeros as zero extents', () => {
    const { w } = writer();
    const data = blocks(4, 9, [2]);
    w.writeNow('d0', 10 * BLOCK_SIZE, data);
    const t = w.takeTouched()!;
    data.fill(0xee);
    w.writeNow('d0', 10 * BLOCK_SIZE, data); // later writes do not change what was taken
    expect(t.seq).toBe(1);
    const shown = t.extents.map((e) => [e.blockIndex, e.zeroBlocks ?? 0, e.data ? e.data.equals(blocks(4, 9, [2]).subarray((e.blockIndex - 10) * BLOCK_SIZE, (e.blockIndex - 10 + e.data.length / BLOCK_SIZE) * BLOCK_SIZE)) : null]);
    expect(shown).toEqual([
      [10, 0, true],
      [12, 1, null],
      [13, 0, true],
    ]);
    expect(w.takeTouched()!.extents.map((e) => [e.blockIndex, e.data?.equals(Buffer.alloc(4 * BLOCK_SIZE, 0xee))])).toEqual([[10, true]]); // the rewrite: blocks 10-13, all data now
  });

  test('a write over a pending zero run, or one larger than a batch, goes block by block: cut first, split at the batch size', async () => {
    const { w, batches, replay } = writer(32);
    await w.zero('d0', 0, 512 * BLOCK_SIZE); // one zero run
    w.writeNow('d0', 100 * BLOCK_SIZE, blocks(8, 10)); // inside the run: the run's batch is cut first
    w.writeNow('d0', 600 * BLOCK_SIZE, blocks(40, 11)); // larger than a batch: cut before, split after 32 blocks
    await w.flush();
    expect(batches.map((c) => c.dataBytes / BLOCK_SIZE)).toEqual([512, 8, 32, 8]);
    const expected = Buffer.alloc(SIZE, 0xaa);
    expected.fill(0, 0, 512 * BLOCK_SIZE);
    blocks(8, 10).copy(expected, 100 * BLOCK_SIZE);
    blocks(40, 11).copy(expected, 600 * BLOCK_SIZE);
    expect(replay().equals(expected)).toBe(true);
  });

  test('slabs are reused across batches without one batch seeing another', async () => {
    const { w, batches, replay } = writer(16);
    const expected = Buffer.alloc(SIZE, 0xaa);
    for (let round = 0; round < 12; round++) {
      const at = (round * 16) % 64;
      const data = blocks(16, round * 17, round % 3 === 0 ? [round % 16] : []);
      w.writeNow('d0', at * BLOCK_SIZE, data);
      data.copy(expected, at * BLOCK_SIZE);
      w.cut();
      await w.settled(w.nextSeq - 1);
    }
    await w.flush();
    expect(batches).toHaveLength(12);
    expect(replay().equals(expected)).toBe(true);
  });
});
