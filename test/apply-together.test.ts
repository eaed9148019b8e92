// Applying one invocation's journal objects together (ApplyService.applyObjects): every
// object gets the outcome applyObject would give it, each pair is advanced once for all it
// registered, and a fault leaves nothing that a redelivery does not finish. Over the test
// stack's DynamoDB index (the conditional writes and transactions of AWS) and an in-memory store.

import { MemoryObjectStore } from '../adapters/memory-object-store';
import { journalKey } from '../core/keys';
import { ApplyService } from '../replica/apply';
import { createPair } from '../replica/pairs';
import type { ObjectStore, ReplicaIndex } from '../replica/ports';
import { cloud, journalBatches, newPairId } from './helpers';

const disks = [{ name: 'disk0', sizeBytes: 1024 * 1024 }];

/** A pair with `n` batches in `store` (an RP asked at each), their keys in seq order. */
async function pairWithBatches(index: ReplicaIndex, store: MemoryObjectStore, n: number): Promise<{ pairId: string; keys: string[] }> {
  const pairId = newPairId('together');
  await createPair(index, { pairId, disks });
  return { pairId, keys: await journalBatches(store, pairId, disks, n) };
}

/** The index, counting commitAdvance calls by pair, and failing them while `failing` says so. */
function countingIndex(index: ReplicaIndex, failing: () => boolean = () => false): { index: ReplicaIndex; commits: Map<string, number> } {
  const commits = new Map<string, number>();
  const wrapped = new Proxy(index, {
    get(obj, prop) {
      const v = Reflect.get(obj, prop) as unknown;
      if (prop !== 'commitAdvance' || typeof v !== 'function') return typeof v === 'function' ? v.bind(obj) : v;
      return async (pairId: string, ...rest: unknown[]) => {
        if (failing()) throw new Error('injected fault: commitAdvance');
        commits.set(pairId, (commits.get(pairId) ?? 0) + 1);
        return (v as (...a: unknown[]) => unknown).apply(obj, [pairId, ...rest]);
      };
    },
  });
  return { index: wrapped, commits };
}

const shuffled = <T>(xs: T[]): T[] => xs.map((x) => [Math.random(), x] as const).sort((a, b) => a[0] - b[0]).map(([, x]) => x);

test('the objects of one invocation, in any order, are applied with one commit per pair; each gets the outcome applyObject gives', async () => {
  const store = new MemoryObjectStore();
  const a = await pairWithBatches(cloud().index, store, 8);
  const b = await pairWithBatches(cloud().index, store, 3);
  // Pair b's seq 2 comes later: its 3 waits for it.
  const { index, commits } = countingIndex(cloud().index);
  const apply = new ApplyService(store, index);
  const unknownPair = journalKey('no-such-pair', 1);
  const now = [...a.keys, b.keys[0], b.keys[2], unknownPair, 'pairs/x/other/thing'];
  const out = await apply.applyObjects(shuffled(now));
  const byKey = new Map(out.map((r) => [r.key, r]));
  for (const k of a.keys) expect(byKey.get(k)).toMatchObject({ outcome: 'applied', pairId: a.pairId });
  expect(byKey.get(b.keys[0])).toMatchObject({ outcome: 'applied' });
  expect(byKey.get(b.keys[2])).toMatchObject({ outcome: 'pending' });
  expect(byKey.get(unknownPair)).toMatchObject({ outcome: 'ignored' });
  expect(byKey.get('pairs/x/other/thing')).toMatchObject({ outcome: 'ignored' });
  expect(Object.fromEntries(commits)).toEqual({ [a.pairId]: 1, [b.pairId]: 1 });
  expect((await cloud().index.getPair(a.pairId))!.watermark).toBe(8);
  expect((await cloud().index.listRecoveryPoints(a.pairId, Math.floor(Date.now() / 1000))).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);

  // The late one with a duplicate of an applied one: the gap closes, the duplicate changes nothing.
  const later = await apply.applyObjects([b.keys[1], a.keys[3]]);
  expect(later).toEqual([
    expect.objectContaining({ key: b.keys[1], outcome: 'applied' }),
    expect.objectContaining({ key: a.keys[3], outcome: 'duplicate' }),
  ]);
  expect((await cloud().index.getPair(b.pairId))!.watermark).toBe(3);
});

test('a batch the pair refuses is quarantined among the others, which apply', async () => {
  const store = new MemoryObjectStore();
  const p = await pairWithBatches(cloud().index, store, 4);
  // Seq 3 replaced by a foreign pair's bytes under its key.
  const other = await pairWithBatches(cloud().index, store, 3);
  store.objects.set(p.keys[2], store.objects.get(other.keys[2])!);
  const out = await new ApplyService(store, cloud().index).applyObjects(p.keys);
  expect(out.map((r) => ('outcome' in r ? r.outcome : 'error'))).toEqual(['applied', 'applied', 'quarantined', 'pending']);
  expect((await cloud().index.getPair(p.pairId))!.watermark).toBe(2);
});

test('a fault in the advance fails every key of that pair; delivering them again finishes the advance', async () => {
  const store = new MemoryObjectStore();
  const p = await pairWithBatches(cloud().index, store, 5);
  let failing = true;
  const { index } = countingIndex(cloud().index, () => failing);
  const apply = new ApplyService(store, index);
  const out = await apply.applyObjects(p.keys);
  expect(out.every((r) => 'error' in r && /injected fault/.test(String(r.error)))).toBe(true);
  // Registered, not advanced: what a crash between the two leaves.
  expect((await cloud().index.getPair(p.pairId))!.watermark).toBe(0);
  failing = false;
  const again = await apply.applyObjects(p.keys);
  expect(again.map((r) => ('outcome' in r ? r.outcome : 'error'))).toEqual(['duplicate', 'duplicate', 'duplicate', 'duplicate', 'duplicate']);
  expect((await cloud().index.getPair(p.pairId))!.watermark).toBe(5);
});

test('a transient fault reading one object fails that key only', async () => {
  const store = new MemoryObjectStore();
  const p = await pairWithBatches(cloud().index, store, 3);
  const flaky: ObjectStore = new Proxy(store, {
    get(obj, prop) {
      const v = Reflect.get(obj, prop) as unknown;
      // Apply reads through getVersion where the store has it (the version it read is recorded), else get.
      if (prop !== 'get' && prop !== 'getVersion') return typeof v === 'function' ? v.bind(obj) : v;
      return (key: string, ...rest: unknown[]) => (key === p.keys[1] ? Promise.reject(new Error('503 Slow Down')) : (v as (...a: unknown[]) => Promise<unknown>).call(obj, key, ...rest));
    },
  });
  const out = await new ApplyService(flaky, cloud().index).applyObjects(p.keys);
  expect(out.map((r) => ('outcome' in r ? r.outcome : String(r.error)))).toEqual(['applied', 'Error: 503 Slow Down', 'pending']);
  expect((await new ApplyService(store, cloud().index).applyObjects([p.keys[1]]))[0]).toMatchObject({ outcome: 'applied' });
  expect((await cloud().index.getPair(p.pairId))!.watermark).toBe(3);
});
