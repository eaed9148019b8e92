// The apply service's round trips when appliers race (issue 13, bench:apply): what it may
// skip, and what it must not. Against the RP Store from the environment, objects in memory.

import { MemoryObjectStore } from '../adapters/memory-object-store';
import { parseJournalKey } from '../core/keys';
import { ApplyService, lostRacePauseMs } from '../replica/apply';
import { createPair } from '../replica/pairs';
import type { ObjectStore, ReplicaIndex } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { cloud, newPairId } from './helpers';

const disks = [{ name: 'disk0', sizeBytes: 1024 * 1024 }];

/** A new pair and the keys of `count` batches of it (each an RP), held in a memory store. */
async function pairWithBatches(prefix: string, count: number): Promise<{ pairId: string; mem: MemoryObjectStore; keys: string[] }> {
  const pairId = newPairId(prefix);
  await createPair(cloud().index, { pairId, disks });
  const mem = new MemoryObjectStore();
  const writer = new BatchWriter({ pairId, disks, store: mem, maxBatchAgeMs: 0, maxBatchBytes: 1 << 30 });
  for (let seq = 1; seq <= count; seq++) {
    await writer.write('disk0', seq * 8192, Buffer.alloc(8192, seq));
    writer.cut({ rp: true });
  }
  await writer.flush();
  await writer.close();
  const keys = [...mem.objects.keys()].sort((a, b) => parseJournalKey(a)!.seq - parseJournalKey(b)!.seq);
  return { pairId, mem, keys };
}

/** The index, counting batchesAfter calls and running `beforeCommit` once before the first commitAdvance. */
function racingIndex(inner: ReplicaIndex, beforeCommit: () => Promise<void>): ReplicaIndex & { queries: number } {
  let raced = false;
  const counts = { queries: 0 };
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'queries') return counts.queries;
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      if (prop === 'batchesAfter') return (...args: Parameters<ReplicaIndex['batchesAfter']>) => (counts.queries++, target.batchesAfter(...args));
      if (prop === 'commitAdvance') {
        return async (...args: Parameters<ReplicaIndex['commitAdvance']>) => {
          if (!raced) {
            raced = true;
            await beforeCommit();
          }
          return target.commitAdvance(...args);
        };
      }
      return v.bind(target);
    },
  }) as ReplicaIndex & { queries: number };
}

/** Registers the batch at `key` without advancing: an applier that stopped before its commit. */
async function registerOnly(store: ObjectStore, key: string): Promise<void> {
  const stopping = new Proxy(cloud().index, {
    get(target, prop, receiver) {
      if (prop === 'commitAdvance') return async () => Promise.reject(new Error('stopped before the commit'));
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  await expect(new ApplyService(store, stopping).applyObject(key)).rejects.toThrow(/stopped before the commit/);
}

describe('apply: racing appliers', () => {
  test('a commit lost to an advance over this batch ends without another query', async () => {
    const c = cloud();
    const { pairId, mem, keys } = await pairWithBatches('race-covered', 2);
    await registerOnly(mem, keys[0]);
    // Applying seq 2: its query sees 1 and 2; before its commit another applier advances over both.
    const index = racingIndex(c.index, async () => void (await new ApplyService(mem, c.index).advance(pairId)));
    await expect(new ApplyService(mem, index).applyObject(keys[1])).resolves.toMatchObject({ outcome: 'applied', seq: 2 });
    expect((await c.index.getPair(pairId))!.watermark).toBe(2);
    expect(index.queries).toBe(1);
  });

  test('a commit lost to a write that did not advance is planned again', async () => {
    const c = cloud();
    const { pairId, mem, keys } = await pairWithBatches('race-moved', 2);
    await registerOnly(mem, keys[0]);
    // The pair moves (rev) without its watermark: this applier must query and commit again.
    const index = racingIndex(c.index, async () => {
      const pair = (await c.index.getPair(pairId))!;
      expect(await c.index.commitRpCheck(pairId, pair.rev, {})).toBe(true);
    });
    await expect(new ApplyService(mem, index).applyObject(keys[1])).resolves.toMatchObject({ outcome: 'applied', seq: 2 });
    expect((await c.index.getPair(pairId))!.watermark).toBe(2);
    expect(index.queries).toBe(2);
  });

  test('commits lost in a row (TransactionConflict: another transaction holds the pair item) are retried after growing, jittered pauses, not thrown', async () => {
    const c = cloud();
    const { mem, keys } = await pairWithBatches('race-held', 1);
    let losses = 5;
    const at: number[] = [];
    const held = new Proxy(c.index, {
      get(target, prop, receiver) {
        if (prop === 'commitAdvance') {
          return async (...args: Parameters<ReplicaIndex['commitAdvance']>) => {
            at.push(Date.now());
            if (losses-- > 0) return false; // what commitAdvance answers to a TransactionConflict
            return target.commitAdvance(...args);
          };
        }
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    await expect(new ApplyService(mem, held).applyObject(keys[0])).resolves.toMatchObject({ outcome: 'applied', seq: 1 });
    expect(at).toHaveLength(6);
    // Pauses of at least half of 20, 40, 80, 160 and 320 ms.
    const gaps = at.slice(1).map((t, i) => t - at[i]);
    gaps.forEach((g, i) => expect(g).toBeGreaterThanOrEqual(5 * 2 ** (i + 1) - 2));
    expect(at[5] - at[0]).toBeGreaterThanOrEqual(305);
    for (let n = 1; n <= 12; n++) {
      const cap = Math.min(1000, 10 * 2 ** n);
      const p = lostRacePauseMs(n);
      expect(p).toBeGreaterThanOrEqual(cap / 2);
      expect(p).toBeLessThanOrEqual(cap);
    }
  });

  test('an object of an unknown pair is ignored whatever its read did', async () => {
    const failing = new MemoryObjectStore();
    failing.get = () => Promise.reject(new Error('read refused'));
    const key = (await pairWithBatches('unknown', 1)).keys[0].replace(/pairs\/[^/]+\//, `pairs/${newPairId('gone')}/`);
    await expect(new ApplyService(failing, cloud().index).applyObject(key)).resolves.toMatchObject({ outcome: 'ignored', detail: expect.stringMatching(/unknown pair/) });
  });
});
