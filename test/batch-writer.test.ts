import { MemoryObjectStore } from '../adapters/memory-object-store';
import { BATCH_FLAGS, BLOCK_SIZE, decodeBatch } from '../core/batch-format';
import { InvalidArgumentError } from '../core/errors';
import { parseJournalKey } from '../core/keys';
import type { ObjectStore } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';

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
    expect(bs.map((b) => b.header.seq)).toEqual([10, 11, 12, 13, 14, 15, 16]);
    expect(bs.slice(0, 5).every((b) => b.dataBytes === 4 * BLOCK_SIZE)).toBe(true);
    expect(bs[5].header).toMatchObject({ flags: BATCH_FLAGS.APP_CONSISTENT, appTag: 'app=db' });
    expect(bs[6].header.flags).toBe(BATCH_FLAGS.RP_REQUESTED);
    expect(bs[6].extents).toEqual([]);
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
    const flaky: ObjectStore = { ...mem, get: mem.get.bind(mem), upload: mem.upload.bind(mem), put: async (k, b) => (failures-- > 0 ? Promise.reject(new Error('SlowDown')) : mem.put(k, b)) };
    const w = new BatchWriter({ pairId: 'p', disks, store: flaky, maxBatchAgeMs: 0, retry: { baseDelayMs: 1 } });
    await w.write('d0', 0, Buffer.alloc(BLOCK_SIZE, 1));
    await w.flush();
    expect(mem.objects.size).toBe(1);

    const dead: ObjectStore = { ...flaky, put: async () => Promise.reject(new Error('network down')) };
    const w2 = new BatchWriter({ pairId: 'p', disks, store: dead, maxBatchAgeMs: 0, retry: { attempts: 3, baseDelayMs: 1 } });
    await w2.write('d0', 0, Buffer.alloc(BLOCK_SIZE, 1));
    await expect(w2.flush()).rejects.toThrow(/upload of batch 1 \(pairs\/p\/journal\/0+1-[0-9a-f]+\.batch\) failed after 3 attempts: network down/);
    await expect(w2.write('d0', 0, Buffer.alloc(BLOCK_SIZE))).rejects.toThrow(/failed after 3 attempts/);
  });

  test('bad arguments name what and where', async () => {
    const w = new BatchWriter({ pairId: 'p', disks, store: new MemoryObjectStore(), maxBatchAgeMs: 0 });
    await expect(w.write('nope', 0, Buffer.alloc(BLOCK_SIZE))).rejects.toThrow(new InvalidArgumentError("unknown disk 'nope' (pair 'p' has d0)"));
    await expect(w.write('d0', disks[0].sizeBytes, Buffer.alloc(BLOCK_SIZE))).rejects.toThrow(/outside disk 'd0'/);
    await expect(w.write('d0', 100, Buffer.alloc(10))).rejects.toThrow(/needs readBlock/);
    expect(() => w.cut({ appTag: '' })).toThrow(/application tag/);
    expect(() => new BatchWriter({ pairId: 'Bad_Pair', disks, store: new MemoryObjectStore() })).toThrow(/pair id 'Bad_Pair'/);
  });
});
