// The apply path's guard against redeliveries of folded batches (docs/design.md, "GC"): a
// batch with seq ≤ the pair's compactedThrough is a duplicate, logged and never registered,
// even after GC removed its BATCH# item. Through the real apply path, on the test stack's index.

import { DynamoHistory } from '../adapters/dynamo-history';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { ApplyService, type Logger } from '../replica/apply';
import { createPair } from '../replica/pairs';
import { cloud, journalBatches, newPairId } from './helpers';

const disks = [{ name: 'disk0', sizeBytes: 1024 * 1024 }];

test('a redelivered batch at or below compactedThrough is ignored and logged, never registered again', async () => {
  const { table, index } = cloud();
  const history = new DynamoHistory(table);
  const pairId = newPairId('guard');
  await createPair(index, { pairId, disks });
  const mem = new MemoryObjectStore();
  const keys = await journalBatches(mem, pairId, disks, 3);
  const logged: string[] = [];
  const log: Logger = { info: (msg) => logged.push(msg), warn: (msg) => logged.push(msg) };
  const apply = new ApplyService(mem, index, log);
  for (const k of keys) expect((await apply.applyObject(k)).outcome).toBe('applied');

  // A unit folds 1-2 (compactedThrough 2) and GC collects their BATCH# items.
  const lease = (await history.acquireCompactor(pairId, 'unit', Date.now(), 60_000))!;
  expect(await history.publish(pairId, lease, 0, { version: 1, manifestKey: `pairs/${pairId}/history/m`, publishedMs: Date.now(), removedKeys: keys.slice(0, 2), foldedSeqs: [1, 2] }, 2, Date.now())).toBe(true);
  await history.deleteBatchItems(pairId, [1, 2]);
  const revBefore = (await index.getPair(pairId))!.rev;

  // The event for seq 2 arrives again, its object still there.
  logged.length = 0;
  expect(await apply.applyObject(keys[1])).toEqual({ outcome: 'duplicate', key: keys[1], pairId, seq: 2, detail: 'seq 2 is at or below compactedThrough 2: already folded into the history' });
  expect(logged).toEqual(['batch ignored: compacted']);
  expect((await index.batchesAfter(pairId, 0, 10)).map((b) => b.seq)).toEqual([3]);
  expect((await index.getPair(pairId))!.rev).toBe(revBefore);
  // Even with its object gone (GC deleted it), the answer is the same.
  mem.objects.delete(keys[0]);
  expect((await apply.applyObject(keys[0])).outcome).toBe('duplicate');
  expect((await index.batchesAfter(pairId, 0, 10)).map((b) => b.seq)).toEqual([3]);
  // Above compactedThrough, a redelivery is the ordinary duplicate (its item is still there).
  expect(await apply.applyObject(keys[2])).toEqual({ outcome: 'duplicate', key: keys[2], pairId, seq: 3 });
});
