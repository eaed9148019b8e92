// The compaction workflow as deployed: the synthesized state machine, run by the local Step
// Functions with the real handlers (lambdas/compact.ts) over the embedded stack, started the
// way the apply path and the schedule start it. Every live RP reads back bit for bit after it.

import { DescribeExecutionCommand } from '@aws-sdk/client-sfn';
import { sfnClient } from '../adapters/aws-clients';
import { compactionLauncherFromEnv } from '../adapters/sfn-compaction-launcher';
import { compactHandlers, pairLister } from '../lambdas/compact';
import { sleep } from '../replica/concurrency';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, newPairId, pattern, recover, SourceModel } from './helpers';

const KiB = 1024;
const MiB = 1024 * KiB;
const disks = [{ name: 'd0', sizeBytes: 16 * MiB }];

async function untilDone(executionArn: string, timeoutMs = 120_000): Promise<{ status?: string; output?: string; cause?: string }> {
  const sfn = sfnClient();
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const out = await sfn.send(new DescribeExecutionCommand({ executionArn }));
    if (out.status !== 'RUNNING') return { status: out.status, output: out.output, cause: out.cause };
    if (Date.now() > deadline) throw new Error(`execution ${executionArn} still running after ${timeoutMs} ms`);
    await sleep(200);
  }
}

describe('compaction workflow (lib/compaction-workflow.ts) on the local Step Functions', () => {
  test('a run folds the L0 into the history and every live RP still reads bit for bit', async () => {
    const c = cloud();
    const pairId = newPairId('cwf');
    await createPair(c.index, { pairId, disks, ccrpIntervalMs: 3600_000 });
    const model = new SourceModel(disks);
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 4 * MiB });
    const seqs: number[] = [];
    for (let i = 0; i < 12; i++) {
      const at = ((i * 37) % 200) * 16 * KiB;
      const data = pattern(48 * KiB, i + 1);
      model.write('d0', at, data);
      await w.write('d0', at, data);
      const seq = await w.flush({ rp: true });
      model.snapshot(seq);
      seqs.push(seq);
    }
    await waitForWatermark(c.index, pairId, seqs[seqs.length - 1], 60_000);

    const launcher = compactionLauncherFromEnv();
    expect(launcher).toBeDefined();
    const startedMs = Date.now();
    const arn = await launcher!.start(pairId, 'backlog', startedMs);
    expect(arn).toBeDefined();
    // The same pair, reason and minute: the same run, not a second one. StartExecution answers
    // the running execution's ARN for its name and input, and ExecutionAlreadyExists (undefined
    // here) once it has closed: a backlog run, with no GC pass, can be done already.
    expect([arn, undefined]).toContain(await launcher!.start(pairId, 'backlog', startedMs));
    const done = await untilDone(arn!);
    expect(done).toEqual(expect.objectContaining({ status: 'SUCCEEDED' }));
    // The apply path's run ends after its units: no GC pass (the schedule's runs collect).
    expect(JSON.parse(done.output!)).toEqual(expect.objectContaining({ pairId, gc: false, more: false, published: true }));
    // The schedule's run ends with one.
    const scheduled = await untilDone((await launcher!.start(pairId, 'schedule'))!);
    expect(scheduled.status).toBe('SUCCEEDED');
    expect(JSON.parse(scheduled.output!)).toEqual(expect.objectContaining({ pairId, gc: expect.objectContaining({ pairId, collected: expect.any(Array) }) }));

    const head = await c.history.getHistory(pairId);
    expect(head.version).toBeGreaterThanOrEqual(1);
    expect(head.frontierSeq).toBe(seqs[seqs.length - 1]);
    expect((await c.index.getPair(pairId))!.compactedThrough).toBe(head.frontierSeq);
    for (const seq of [seqs[0], seqs[5], seqs[seqs.length - 1]]) {
      const got = await recover(c, pairId, seq);
      expect(firstDifference(got.get('d0')!, model.atSeq.get(seq)!.get('d0')!)).toBeUndefined();
    }
  });

  test('the schedule lists pairs through the sparse index and starts a run for each', async () => {
    const c = cloud();
    const pairId = newPairId('cws');
    await createPair(c.index, { pairId, disks });
    const ids = await pairLister(c.table)();
    expect(ids).toContain(pairId);
    const started: string[] = [];
    const handlers = compactHandlers({ store: c.store, index: c.index, history: c.history, listPairs: async () => [pairId], launcher: { start: async (p) => (started.push(p), 'arn') } });
    expect(await handlers.sweep()).toEqual({ started: 1 });
    expect(started).toEqual([pairId]);
  });

  test('a unit that fails says why on the pair (HISTORY.lastFailure), leaves the manifest as it was, and the next good unit clears it', async () => {
    const c = cloud();
    const pairId = newPairId('cwfail');
    await createPair(c.index, { pairId, disks, ccrpIntervalMs: 3600_000 });
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 4 * MiB });
    for (let i = 0; i < 3; i++) {
      await w.write('d0', i * 64 * KiB, pattern(64 * KiB, i + 7));
      await w.flush({ rp: true });
    }
    await waitForWatermark(c.index, pairId, 3, 60_000);
    let broken = true;
    const store = Object.assign(Object.create(c.store) as typeof c.store, {
      get: async (...a: Parameters<typeof c.store.get>) => {
        if (broken && a[0].includes('/journal/')) throw new Error('SlowDown: please reduce your request rate');
        return c.store.get(...a);
      },
    });
    const handlers = compactHandlers({ store, index: c.index, history: c.history, listPairs: async () => [] });
    await expect(handlers.unit({ pairId })).rejects.toThrow(/SlowDown/);
    expect(await c.history.getHistory(pairId)).toEqual(expect.objectContaining({ version: 0, lastFailure: { reason: 'Error: SlowDown: please reduce your request rate', atMs: expect.any(Number) } }));
    broken = false;
    expect(await handlers.unit({ pairId })).toEqual(expect.objectContaining({ published: true, frontierSeq: 3 }));
    expect((await c.history.getHistory(pairId)).lastFailure).toBeUndefined();
  });
});
