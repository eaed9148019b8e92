// Trials of the self-pruning history: the compaction Lambda's process SIGKILLed while the
// workflow runs a unit, and units and GC interrupted in this process at random steps, with
// batches arriving between them. After each step every live RP must read as written.

import { DescribeExecutionCommand } from '@aws-sdk/client-sfn';
import { sfnClient } from '../../adapters/aws-clients';
import { compactionLauncherFromEnv } from '../../adapters/sfn-compaction-launcher';
import { compactOnce, type CompactStep } from '../../replica/compactor';
import { gcOnce } from '../../replica/gc';
import { createPair } from '../../replica/pairs';
import type { HistoryIndex, ObjectDeleter } from '../../replica/ports';
import { sleep } from '../../replica/concurrency';
import { randInt } from '../../source/workload';
import { newPairId } from '../helpers';
import { checkExact, count, retried, expectHealthy, MiB, ModelSource, underEdgeFaults, until, untilWatermark, type Trial } from './common';

const DISKS = [{ name: 'd0', sizeBytes: 8 * MiB }];
const STEPS: CompactStep[] = ['planned', 'written', 'verified', 'manifest'];
/** GC judged this far ahead: every version is past its grace period. */
const LATER_MS = 2 * 3600_000;

async function pairWithBatches(t: Trial, prefix: string, n: number): Promise<{ pairId: string; src: ModelSource }> {
  const pairId = newPairId(prefix);
  await createPair(t.c.index, { pairId, disks: DISKS });
  const src = new ModelSource(pairId, DISKS, t.c.store);
  for (let i = 0; i < n; i++) await src.batch(t.r);
  await src.writer.flush();
  await untilWatermark(t, pairId, src.seqs.at(-1)!);
  return { pairId, src };
}

/** The compaction workflow started, its Lambda's process SIGKILLed 1–2 times during the run. */
export async function compactionKill(t: Trial): Promise<string> {
  const { pairId, src } = await pairWithBatches(t, 'fc-compkill', randInt(t.r, 20, 40));
  const launcher = compactionLauncherFromEnv(t.stack.env);
  if (!launcher) throw new Error('the stack has no compaction workflow');
  let kills = 0;
  let midInvocation = 0;
  let status = 'none';
  await underEdgeFaults(t, async () => {
    const arn = await launcher.start(pairId, 'operator');
    for (let k = randInt(t.r, 1, 2); k > 0; k--) {
      // Mostly while a task runs (a unit, a GC): once one is in flight, a random moment of it.
      if (t.r() < 0.8) await until('a compaction task to run', async () => (t.stack.inFlight('compaction') > 0 ? true : undefined), 5000).catch(() => {});
      await sleep(randInt(t.r, 0, k === 1 ? 400 : 1500));
      const inFlight = t.stack.kill('compaction');
      if (inFlight >= 0) kills++;
      if (inFlight > 0) midInvocation++;
    }
    if (arn) {
      const sfn = sfnClient();
      try {
        status = await until('the compaction run to end', async () => {
          const out = await sfn.send(new DescribeExecutionCommand({ executionArn: arn }));
          return out.status === 'RUNNING' ? undefined : out.status;
        }, 300_000);
      } finally {
        sfn.destroy();
      }
    }
  });
  t.tally.realKills += kills;
  count(t, 'compaction_sigkill', kills);
  count(t, 'compaction_sigkill_mid_invocation', midInvocation);
  let rps = await checkExact(t, pairId, src.model, { sample: 8 });
  // More batches, then collection far enough ahead that grace has passed: still every RP.
  for (let i = randInt(t.r, 0, 5); i > 0; i--) await src.batch(t.r);
  await src.writer.flush();
  await untilWatermark(t, pairId, src.seqs.at(-1)!);
  await gcOnce(t.c, pairId, { nowMs: Date.now() + LATER_MS });
  rps = await checkExact(t, pairId, src.model);
  await expectHealthy(t, pairId);
  return `run ${status}, ${kills} kills (${midInvocation} mid-invocation), ${rps} RPs`;
}

/**
 * Batches, compaction units and GC runs in a random order, a unit crashing at a random step
 * and a GC at a random call (in this process, between two of its requests). Every live RP is
 * checked after each unit and each GC.
 */
export async function historyCrash(t: Trial): Promise<string> {
  const { pairId, src } = await pairWithBatches(t, 'fc-history', randInt(t.r, 3, 12));
  let units = 0;
  let checks = 0;
  const steps = randInt(t.r, 2, 6);
  for (let s = 0; s < steps; s++) {
    const roll = t.r();
    if (roll < 0.3) {
      for (let i = randInt(t.r, 1, 8); i > 0; i--) await src.batch(t.r);
      await src.writer.flush();
      await untilWatermark(t, pairId, src.seqs.at(-1)!);
      continue;
    }
    if (roll < 0.75) {
      const crash = t.r() < 0.6 ? STEPS[randInt(t.r, 0, STEPS.length - 1)] : undefined;
      units++;
      const run = compactOnce(t.c, pairId, {
        holder: `campaign-${t.seed}-${s}`,
        maxBatches: randInt(t.r, 2, 16),
        imageBytes: [256, 1024, 4096][randInt(t.r, 0, 2)] * 1024,
        onStep: (step) => {
          if (step === crash) throw new Error(`crash at ${step}`);
        },
      });
      if (crash) {
        const err = await run.then(() => undefined, (e: Error) => e);
        // A unit that stopped earlier (nothing to do) never reached the step.
        if (err && err.message !== `crash at ${crash}`) throw err;
        if (err) count(t, 'compaction_crash');
      } else await run;
    } else {
      const crashAt = t.r() < 0.6 ? randInt(t.r, 1, 6) : undefined;
      const deps = crashAt === undefined ? t.c : crashingGcDeps(t, crashAt);
      const err = await gcOnce(deps, pairId, { nowMs: Date.now() + LATER_MS }).then(() => undefined, (e: Error) => e);
      if (err && !err.message.startsWith('crash at call')) throw err;
      if (err) count(t, 'gc_crash');
    }
    await checkExact(t, pairId, src.model, { sample: 8 });
    checks++;
  }
  // The next clean unit and GC finish what a crash left, and every RP still reads.
  await underEdgeFaults(t, async () => {
    await retried('the last unit', () => compactOnce(t.c, pairId, { holder: `campaign-${t.seed}-last` }));
    await retried('the last GC', () => gcOnce(t.c, pairId, { nowMs: Date.now() + LATER_MS }));
  });
  const rps = await checkExact(t, pairId, src.model);
  await expectHealthy(t, pairId);
  return `${src.seqs.length} batches, ${units} units, ${checks + 1} checks, ${rps} RPs`;
}

/** GC's history index and deleter, failing from their `n`th call on (GC stops there, as a killed Lambda would). */
function crashingGcDeps(t: Trial, n: number): { store: Trial['c']['store']; deleter: ObjectDeleter; history: HistoryIndex } {
  let calls = 0;
  const step = (): void => {
    if (++calls >= n) throw new Error(`crash at call ${calls}`);
  };
  const history = new Proxy(t.c.history, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return async (...args: unknown[]) => {
        step();
        return (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      };
    },
  }) as HistoryIndex;
  const deleter: ObjectDeleter = {
    deleteKeys: async (keys) => {
      step();
      return t.c.deleter.deleteKeys(keys);
    },
  };
  return { store: t.c.store, deleter, history };
}
