// With a versioned bucket (the Object Lock deploy option), apply records the version of each
// batch it read, and compaction and recovery read that version: a batch object written over
// later (the bucket policy refuses it; an administrator could still) changes nothing. Without
// versions the SHA-256 recorded at apply refuses the replaced object instead.

import { MemoryHistory } from '../adapters/memory-history';
import { MemoryIndex } from '../adapters/memory-index';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { encodeBatch } from '../core/batch-format';
import { CorruptExtentError } from '../core/errors';
import { ApplyService } from '../replica/apply';
import { compactOnce } from '../replica/compactor';
import { createPair } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { firstDifference, recover, SourceModel } from './helpers';

const PAIR = 'pinned';
const DISKS = [{ name: 'd0', sizeBytes: 1024 * 1024 }];

/** Three applied batches (an RP each), then batch 2's object written over with another valid batch of the same seq. */
async function appliedThenOverwritten(store: MemoryObjectStore) {
  const index = new MemoryIndex();
  const history = new MemoryHistory();
  await createPair(index, { pairId: PAIR, disks: DISKS });
  const keys: string[] = [];
  const writer = new BatchWriter({ pairId: PAIR, disks: DISKS, store, maxBatchAgeMs: 0, maxBatchBytes: 1 << 20, onUploaded: (b) => void keys.push(b.key) });
  const model = new SourceModel(DISKS);
  for (let seq = 1; seq <= 3; seq++) {
    const data = Buffer.alloc(8192, seq);
    model.write('d0', seq * 8192, data);
    await writer.write('d0', seq * 8192, data);
    model.snapshot(writer.cut({ rp: true })!);
  }
  await writer.close();
  const apply = new ApplyService(store, index);
  for (const key of keys.sort()) expect((await apply.applyObject(key)).outcome).toBe('applied');
  const forged = encodeBatch({ pairId: PAIR, seq: 2, prevSeq: 1, firstWriteMs: 1, cutMs: 1, flags: 0, disks: ['d0'] }, [{ disk: 0, blockIndex: 4, data: Buffer.alloc(8192, 0xee) }]);
  await store.put(keys.sort()[1], forged); // a plain PUT: it replaces the current object
  return { index, history, model };
}

test('apply records the version it read; recovery and compaction read that version after the key was written over', async () => {
  const store = new MemoryObjectStore({ versioned: true });
  const { index, history, model } = await appliedThenOverwritten(store);
  const records = await index.batchesAfter(PAIR, 0, 10);
  expect(records.map((b) => b.versionId)).toEqual([expect.stringMatching(/^v/), expect.stringMatching(/^v/), expect.stringMatching(/^v/)]);
  const check = async (): Promise<void> => {
    for (const seq of [1, 2, 3]) {
      const got = (await recover({ store, index, history }, PAIR, seq)).get('d0')!;
      expect({ seq, diff: firstDifference(got, model.atSeq.get(seq)!.get('d0')!) }).toEqual({ seq, diff: undefined });
    }
  };
  await check();
  // Compaction folds the batches it reads by their versions too.
  expect(await compactOnce({ store, index, history }, PAIR, { holder: 't' })).toMatchObject({ published: true, frontierSeq: 3 });
  await check();
});

test('without versions, the recorded SHA-256 refuses the replaced batch: recovery stops, naming it, instead of reading other bytes', async () => {
  const store = new MemoryObjectStore();
  const { index, history } = await appliedThenOverwritten(store);
  expect((await index.batchesAfter(PAIR, 0, 10)).map((b) => b.versionId)).toEqual([undefined, undefined, undefined]);
  await expect(recover({ store, index, history }, PAIR, 2)).rejects.toThrow(CorruptExtentError);
});
