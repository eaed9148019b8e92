// Bad input and faults on the apply path, through the event path (no direct handler
// calls), except where a crash has to be injected between two index writes.

import fc from 'fast-check';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { BLOCK_SIZE, encodeBatch } from '../core/batch-format';
import { journalKey, parseJournalKey } from '../core/keys';
import type { BatchRecord } from '../core/model';
import { ApplyService } from '../replica/apply';
import { createPair, waitForWatermark } from '../replica/pairs';
import type { ObjectStore, ReplicaIndex } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { rng, randomOp } from '../source/workload';
import { applyQueueDrained, cloud, eventually, firstDifference, newPairId, nowSec, recover, SourceModel } from './helpers';

const disks = [{ name: 'disk0', sizeBytes: 2 * 1024 * 1024 }];

interface Captured {
  /** seq → the batch object as the writer produced it. */
  bodies: Map<number, Buffer>;
  model: SourceModel;
}

/** Produces `count` batches (each an RP) of a random workload without uploading them. */
async function produceBatches(pairId: string, count: number, seed: number): Promise<Captured> {
  const mem = new MemoryObjectStore();
  const model = new SourceModel(disks);
  const writer = new BatchWriter({ pairId, disks, store: mem, maxBatchAgeMs: 0, maxBatchBytes: 1 << 30 });
  const r = rng(seed);
  for (let seq = 1; seq <= count; seq++) {
    for (let i = 0; i < 6; i++) {
      const op = randomOp(r, disks[0].sizeBytes, 64 * 1024);
      const aligned = { ...op, offset: op.offset - (op.offset % BLOCK_SIZE), length: Math.ceil(op.length / BLOCK_SIZE) * BLOCK_SIZE };
      const data = Buffer.alloc(aligned.length, seq);
      model.write('disk0', aligned.offset, data);
      await writer.write('disk0', aligned.offset, data);
    }
    model.snapshot(writer.cut({ rp: true })!);
  }
  await writer.close();
  const bodies = new Map<number, Buffer>();
  for (const [key, body] of mem.objects) bodies.set(parseJournalKey(key)!.seq, body);
  return { bodies, model };
}

/** A new pair and `count` batches for it, not yet uploaded. */
async function pairWithBatches(prefix: string, count: number, seed: number) {
  const c = cloud();
  const pairId = newPairId(prefix);
  await createPair(c.index, { pairId, disks });
  return { c, pairId, ...(await produceBatches(pairId, count, seed)) };
}

async function expectRecovers(pairId: string, seq: number, model: SourceModel, store: ObjectStore = cloud().store): Promise<void> {
  const got = await recover({ store, index: cloud().index }, pairId, seq);
  expect({ seq, diff: firstDifference(got.get('disk0')!, model.atSeq.get(seq)!.get('disk0')!) }).toEqual({ seq, diff: undefined });
}

async function registered(pairId: string): Promise<number[]> {
  return (await cloud().index.batchesAfter(pairId, 0, 1000)).map((b) => b.seq);
}

/** An index that fails once at a chosen operation, as a Lambda killed mid-apply would. */
function crashingIndex(inner: ReplicaIndex, crashAt: 'afterRegister' | 'beforeCommit'): ReplicaIndex {
  let crashed = false;
  const crash = (): void => {
    if (!crashed) {
      crashed = true;
      throw new Error(`injected crash ${crashAt}`);
    }
  };
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      if (prop === 'registerBatch' && crashAt === 'afterRegister') {
        return async (pairId: string, b: BatchRecord) => {
          const res = await target.registerBatch(pairId, b);
          crash();
          return res;
        };
      }
      if (prop === 'commitAdvance' && crashAt === 'beforeCommit') {
        return async (...args: Parameters<ReplicaIndex['commitAdvance']>) => {
          crash();
          return target.commitAdvance(...args);
        };
      }
      return v.bind(target);
    },
  });
}

describe('apply path: ordering, duplicates, bad batches', () => {
  test('out-of-order batches are held until the gap closes (random arrival orders)', async () => {
    const c = cloud();
    await fc.assert(
      fc.asyncProperty(fc.shuffledSubarray([1, 2, 3, 4, 5, 6], { minLength: 6, maxLength: 6 }), fc.boolean(), async (order, concurrent) => {
        const pairId = newPairId('order');
        await createPair(c.index, { pairId, disks });
        const { bodies, model } = await produceBatches(pairId, 6, order[0]);
        if (concurrent) {
          await Promise.all(order.map((seq) => c.store.put(journalKey(pairId, seq), bodies.get(seq)!)));
        } else {
          for (const [i, seq] of order.entries()) {
            await c.store.put(journalKey(pairId, seq), bodies.get(seq)!);
            // Wait until this batch is registered; the watermark must be exactly the gap-free prefix.
            const arrived = new Set(order.slice(0, i + 1));
            await eventually(`seq ${seq} registered`, async () => ((await registered(pairId)).includes(seq) ? true : undefined));
            let prefix = 0;
            while (arrived.has(prefix + 1)) prefix++;
            const pair = await waitForWatermark(c.index, pairId, prefix, 20_000);
            expect(pair.watermark).toBe(prefix);
          }
        }
        await waitForWatermark(c.index, pairId, 6, 30_000);
        expect((await c.index.listRecoveryPoints(pairId, nowSec())).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6]);
        await expectRecovers(pairId, 3, model);
        await expectRecovers(pairId, 6, model);
      }),
      { numRuns: 4 },
    );
  });

  test('the same batch twice (re-PUT of a key, a second key with the same bytes) changes nothing', async () => {
    const { c, pairId, bodies, model } = await pairWithBatches('dup', 5, 7);
    const key1 = journalKey(pairId, 1);
    await c.store.put(key1, bodies.get(1)!);
    await c.store.put(key1, bodies.get(1)!); // the same object again: a second event
    await c.store.put(journalKey(pairId, 1), bodies.get(1)!); // another upload attempt of seq 1
    await c.store.put(journalKey(pairId, 2), bodies.get(2)!);
    await c.store.put(journalKey(pairId, 3), bodies.get(3)!);
    await waitForWatermark(c.index, pairId, 3, 30_000);
    await applyQueueDrained(); // the early duplicates are through too
    // Late duplicates after the watermark passed. Each finishes any advance a crash left
    // undone, and that is how we see it processed: before each, the next seq is registered
    // by an applier that crashes before advancing, so only the late duplicate's own
    // processing moves the watermark over it.
    const late: [seq: number, key: string][] = [
      [1, key1], // the same key again
      [2, journalKey(pairId, 2)], // another key with the same bytes
    ];
    for (const [i, [seq, key]] of late.entries()) {
      const next = 4 + i;
      const crashed = new MemoryObjectStore();
      const nextKey = journalKey(pairId, next);
      crashed.objects.set(nextKey, bodies.get(next)!);
      await expect(new ApplyService(crashed, crashingIndex(c.index, 'afterRegister')).applyObject(nextKey)).rejects.toThrow(/injected crash/);
      expect((await c.index.getPair(pairId))!.watermark).toBe(next - 1);
      await c.store.put(key, bodies.get(seq)!);
      await waitForWatermark(c.index, pairId, next, 30_000);
    }
    const pair = (await c.index.getPair(pairId))!;
    expect(pair.state).toBe('REPLICATING');
    expect(pair.error).toBeUndefined();
    expect(await c.index.listQuarantine(pairId)).toEqual([]);
    expect((await c.index.batchesAfter(pairId, 0, 10)).map((b) => b.key)[0]).toMatch(/journal\/0+1-/);
    expect((await c.index.listRecoveryPoints(pairId, nowSec())).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    // Seqs 4 and 5 live in the crashed appliers' memory stores only: recover at 3.
    await expectRecovers(pairId, 3, model);
  });

  test('corrupt, truncated and foreign copies are quarantined; a good copy resumes without losing later batches', async () => {
    const { c, pairId, bodies, model } = await pairWithBatches('bad', 5, 11);
    await c.store.put(journalKey(pairId, 1), bodies.get(1)!);
    await waitForWatermark(c.index, pairId, 1, 30_000);

    const flipped = Buffer.from(bodies.get(2)!);
    flipped[Math.floor(flipped.length / 2)] ^= 0x10;
    const corruptKey = journalKey(pairId, 2);
    await c.store.put(corruptKey, flipped);
    const truncatedKey = journalKey(pairId, 2);
    await c.store.put(truncatedKey, bodies.get(2)!.subarray(0, bodies.get(2)!.length - 100));
    // A batch of another pair, uploaded under this pair's key for seq 3.
    const other = await produceBatches('some-other-pair', 3, 12);
    const foreignKey = journalKey(pairId, 3);
    await c.store.put(foreignKey, other.bodies.get(3)!);
    // Later good batches arrive meanwhile: they must be held, not lost.
    await c.store.put(journalKey(pairId, 4), bodies.get(4)!);
    await c.store.put(journalKey(pairId, 5), bodies.get(5)!);

    const quarantine = await eventually('three quarantine records', async () => {
      const q = await c.index.listQuarantine(pairId);
      return q.length === 3 ? q : undefined;
    });
    expect(quarantine.map((q) => [q.seq, q.key, q.code]).sort()).toEqual(
      [
        [2, corruptKey, 'CHECKSUM_MISMATCH'],
        [2, truncatedKey, 'TRUNCATED'],
        [3, foreignKey, 'FOREIGN_PAIR'],
      ].sort(),
    );
    expect(quarantine.find((q) => q.code === 'FOREIGN_PAIR')!.reason).toContain("pair 'some-other-pair'");
    const stuck = await eventually('pair in ERROR', async () => {
      const p = (await c.index.getPair(pairId))!;
      return p.state === 'ERROR' && (await registered(pairId)).includes(5) ? p : undefined;
    });
    expect(stuck.watermark).toBe(1);
    expect(stuck.error).toMatchObject({ seq: 2 });
    expect([corruptKey, truncatedKey]).toContain(stuck.error!.key);
    // The corrupt objects are kept (quarantined), not deleted.
    await expect(c.store.get(corruptKey)).resolves.toEqual(flipped);

    await c.store.put(journalKey(pairId, 2), bodies.get(2)!); // the good copy of seq 2
    // Now the foreign copy of seq 3 is what blocks the pair, and it says so.
    const afterTwo = await eventually('seq 2 applied', async () => {
      const p = (await c.index.getPair(pairId))!;
      return p.watermark === 2 ? p : undefined;
    });
    // In the same write that applied seq 2.
    expect(afterTwo).toMatchObject({ state: 'ERROR', error: { seq: 3, code: 'FOREIGN_PAIR', key: foreignKey } });

    await c.store.put(journalKey(pairId, 3), bodies.get(3)!);
    const resumed = await waitForWatermark(c.index, pairId, 5, 30_000);
    expect(resumed.state).toBe('REPLICATING');
    expect(resumed.error).toBeUndefined();
    for (const seq of [1, 2, 3, 4, 5]) await expectRecovers(pairId, seq, model);
  });

  test('when a blocking error clears, the pair shows the next refused seq above the watermark', async () => {
    const { c, pairId, bodies, model } = await pairWithBatches('next', 5, 13);
    const corrupt = (seq: number): Buffer => {
      const b = Buffer.from(bodies.get(seq)!);
      b[70] ^= 1;
      return b;
    };
    await c.store.put(journalKey(pairId, 1), bodies.get(1)!);
    await waitForWatermark(c.index, pairId, 1, 30_000);
    const bad4 = journalKey(pairId, 4);
    await c.store.put(bad4, corrupt(4));
    await eventually('seq 4 shown', async () => ((await c.index.getPair(pairId))!.error?.seq === 4 ? true : undefined));
    await c.store.put(journalKey(pairId, 2), corrupt(2));
    await eventually('seq 2 shown (the lowest)', async () => ((await c.index.getPair(pairId))!.error?.seq === 2 ? true : undefined));
    await c.store.put(journalKey(pairId, 3), bodies.get(3)!);
    await eventually('seq 3 registered', async () => ((await registered(pairId)).includes(3) ? true : undefined));
    await c.store.put(journalKey(pairId, 2), bodies.get(2)!);
    const moved = await eventually('watermark 3', async () => {
      const p = (await c.index.getPair(pairId))!;
      return p.watermark === 3 ? p : undefined;
    });
    expect(moved).toMatchObject({ state: 'ERROR', error: { seq: 4, key: bad4, code: 'CHECKSUM_MISMATCH' } });
    await c.store.put(journalKey(pairId, 4), bodies.get(4)!);
    await c.store.put(journalKey(pairId, 5), bodies.get(5)!);
    expect(await waitForWatermark(c.index, pairId, 5, 30_000)).toMatchObject({ state: 'REPLICATING' });
    await expectRecovers(pairId, 5, model);
  });

  test('a different batch for an applied seq (a replay) is quarantined and changes nothing', async () => {
    const { c, pairId, bodies, model } = await pairWithBatches('replay', 2, 21);
    await c.store.put(journalKey(pairId, 1), bodies.get(1)!);
    await c.store.put(journalKey(pairId, 2), bodies.get(2)!);
    await waitForWatermark(c.index, pairId, 2, 30_000);
    const replay = encodeBatch(
      { pairId, seq: 1, prevSeq: 0, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['disk0'] },
      [{ disk: 0, blockIndex: 0, data: Buffer.alloc(BLOCK_SIZE, 0xee) }],
    );
    const replayKey = journalKey(pairId, 1);
    await c.store.put(replayKey, replay);
    const [q] = await eventually('replay quarantined', async () => {
      const list = await c.index.listQuarantine(pairId);
      return list.length ? list : undefined;
    });
    expect(q).toMatchObject({ seq: 1, key: replayKey, code: 'REPLAY' });
    const pair = (await c.index.getPair(pairId))!;
    expect(pair.state).toBe('REPLICATING');
    await expectRecovers(pairId, 1, model);
    await expectRecovers(pairId, 2, model);
  });

  test('a batch naming a disk the pair lacks, or writing past its end, is refused', async () => {
    const c = cloud();
    const pairId = newPairId('disk');
    await createPair(c.index, { pairId, disks });
    const h = { pairId, seq: 1, prevSeq: 0, firstWriteMs: 1, cutMs: 2, flags: 0 };
    const wrongDisk = encodeBatch({ ...h, disks: ['disk9'] }, [{ disk: 0, blockIndex: 0, zeroBlocks: 1 }]);
    const pastEnd = encodeBatch({ ...h, disks: ['disk0'] }, [{ disk: 0, blockIndex: disks[0].sizeBytes / BLOCK_SIZE, zeroBlocks: 1 }]);
    await c.store.put(journalKey(pairId, 1), wrongDisk);
    await c.store.put(journalKey(pairId, 1), pastEnd);
    const q = await eventually('both refused', async () => {
      const list = await c.index.listQuarantine(pairId);
      return list.length === 2 ? list : undefined;
    });
    expect(q.map((x) => x.reason).sort()).toEqual([expect.stringContaining("disk 'disk9' is not a disk of pair"), expect.stringContaining('ends past disk')].sort());
    expect((await c.index.getPair(pairId))!.watermark).toBe(0);
  });
});

describe('apply service: crashes and unknown input', () => {
  test.each(['afterRegister', 'beforeCommit'] as const)('a crash %s is finished by the retried event', async (crashAt) => {
    const { c, pairId, bodies, model } = await pairWithBatches('crash', 2, 31);
    // The batches live in a memory store: only this service applies them.
    const keys = [journalKey(pairId, 1), journalKey(pairId, 2)];
    const mem = new MemoryObjectStore();
    mem.objects.set(keys[0], bodies.get(1)!);
    mem.objects.set(keys[1], bodies.get(2)!);
    const service = new ApplyService(mem, crashingIndex(c.index, crashAt));
    await expect(service.applyObject(keys[0])).rejects.toThrow(/injected crash/);
    // The redelivered event finds the batch registered and finishes the advance.
    await expect(service.applyObject(keys[0])).resolves.toMatchObject({ outcome: 'duplicate' });
    expect((await c.index.getPair(pairId))!.watermark).toBe(1);
    await expect(service.applyObject(keys[1])).resolves.toMatchObject({ outcome: 'applied' });
    expect((await c.index.getPair(pairId))!.watermark).toBe(2);
    await expectRecovers(pairId, 1, model, mem);
    await expectRecovers(pairId, 2, model, mem);
  });

  test('an object over the size limit is quarantined unread, not retried until the DLQ', async () => {
    const { c, pairId, bodies } = await pairWithBatches('huge', 1, 51);
    const mem = new MemoryObjectStore();
    const key = journalKey(pairId, 1);
    mem.objects.set(key, bodies.get(1)!);
    const service = new ApplyService(mem, c.index, undefined, Date.now, 100);
    await expect(service.applyObject(key)).resolves.toMatchObject({ outcome: 'quarantined', detail: expect.stringContaining('over the limit of 100') });
    expect((await c.index.getPair(pairId))!).toMatchObject({ state: 'ERROR', error: { seq: 1, code: 'MALFORMED' } });
  });

  test('objects of unknown pairs and foreign keys are ignored, never retried forever', async () => {
    const c = cloud();
    const service = new ApplyService(c.store, c.index);
    await expect(service.applyObject(journalKey('no-such-pair', 1))).resolves.toMatchObject({ outcome: 'ignored', detail: "unknown pair 'no-such-pair'" });
    await expect(service.applyObject('pairs/x/other/thing.batch')).resolves.toMatchObject({ outcome: 'ignored', detail: 'not a journal key' });
    // A seq past 2^53 − 1 would parse as another (…993 as …992): not a journal key either.
    for (const seq of ['09007199254740993', '99999999999999999999']) {
      const key = `pairs/x/journal/${seq.padStart(20, '0')}-0123456789abcdef.batch`;
      expect(parseJournalKey(key)).toBeUndefined();
      await expect(service.applyObject(key)).resolves.toMatchObject({ outcome: 'ignored', detail: 'not a journal key' });
    }
    expect(parseJournalKey(`pairs/x/journal/${String(Number.MAX_SAFE_INTEGER).padStart(20, '0')}-0123456789abcdef.batch`)).toEqual({ pair: 'x', seq: Number.MAX_SAFE_INTEGER });
    const pairId = newPairId('gone');
    await createPair(c.index, { pairId, disks });
    await expect(service.applyObject(journalKey(pairId, 1))).resolves.toMatchObject({ outcome: 'ignored', detail: 'object no longer exists' });
  });

  test('expired RPs are not listed and cannot be recovered, although TTL has not deleted them yet', async () => {
    const c = cloud();
    const pairId = newPairId('ttl');
    await createPair(c.index, { pairId, disks, retention: { all: [{ windowSec: 1, spacingSec: 0 }], app: [] } });
    const { bodies } = await produceBatches(pairId, 1, 41);
    await c.store.put(journalKey(pairId, 1), bodies.get(1)!);
    await waitForWatermark(c.index, pairId, 1, 30_000);
    const later = nowSec() + 5;
    expect(await c.index.listRecoveryPoints(pairId, nowSec() - 3)).toHaveLength(1);
    expect(await c.index.listRecoveryPoints(pairId, later)).toEqual([]);
    await new Promise((r) => setTimeout(r, 2500));
    await expect(recover(c, pairId, 1)).rejects.toThrow(`pair '${pairId}' has no live recovery point at seq 1`);
  });
});
