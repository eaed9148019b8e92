// End to end through the event path: writer → S3 journal → (S3 → SQS → apply handler)
// → RP Store; every live RP is recovered and compared with the source at that seq.

import fc from 'fast-check';
import { MAX_EXTENT_BLOCKS } from '../core/batch-format';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { randomOp, rng, randInt } from '../source/workload';
import { cloud, firstDifference, newPairId, nowSec, recover, SourceModel } from './helpers';

const disks = [
  { name: 'root', sizeBytes: 3 * 1024 * 1024 },
  { name: 'data', sizeBytes: 1024 * 1024 + MAX_EXTENT_BLOCKS * 4096 },
];

describe('replication through the event path', () => {
  test('every RP recovers to the source state at exactly its seq (random workloads)', async () => {
    const c = cloud();
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 - 1 }), async (seed) => {
        const r = rng(seed);
        const pairId = newPairId('prop');
        await createPair(c.index, { pairId, disks, ccrpIntervalMs: 60_000 });
        const model = new SourceModel(disks);
        const writer = new BatchWriter({
          pairId,
          disks,
          store: c.store,
          maxBatchAgeMs: 0,
          // Above the largest operation (96 KiB), so batches end between operations.
          maxBatchBytes: randInt(r, 100, 512) * 1024,
          readBlock: async (disk, block) => Buffer.from(model.disks.get(disk)!.subarray(block * 4096, (block + 1) * 4096)),
          // Cuts happen between operations; the model is updated after each one reaches the
          // writer, so at a cut it holds exactly the state the batch ends at.
          onCut: (seq) => model.snapshot(seq),
        });
        const ops = randInt(r, 20, 120);
        for (let i = 0; i < ops; i++) {
          const disk = disks[randInt(r, 0, 1)];
          const op = randomOp(r, disk.sizeBytes, 96 * 1024);
          if (op.kind === 'write') {
            await writer.write(disk.name, op.offset, op.data!);
            model.write(disk.name, op.offset, op.data!);
          } else {
            await writer.zero(disk.name, op.offset, op.length);
            model.zero(disk.name, op.offset, op.length);
          }
          const roll = r();
          if (roll < 0.08) writer.cut({ appTag: `app=db;i=${i}` });
          else if (roll < 0.16) writer.cut({ rp: true });
        }
        const last = await writer.flush({ rp: true });
        await writer.close();
        await waitForWatermark(c.index, pairId, last, 60_000);

        const rps = await c.index.listRecoveryPoints(pairId, nowSec());
        const apps = await c.index.listRecoveryPoints(pairId, nowSec(), 'APP');
        expect(rps.map((p) => p.seq)).toContain(last);
        expect(apps.every((p) => p.type === 'APP' && p.tag?.startsWith('app=db'))).toBe(true);
        expect(apps.map((p) => p.seq)).toEqual(rps.filter((p) => p.type === 'APP').map((p) => p.seq));
        for (const rp of rps) {
          const want = model.atSeq.get(rp.seq);
          expect(want).toBeDefined();
          const got = await recover(c, pairId, rp.seq, randInt(r, 1, 64) * 4096);
          for (const d of disks) expect({ pairId, seq: rp.seq, disk: d.name, diff: firstDifference(got.get(d.name)!, want!.get(d.name)!) }).toEqual({ pairId, seq: rp.seq, disk: d.name, diff: undefined });
        }
      }),
      { numRuns: 4 },
    );
  });
});
