// The fault campaign (`npm run test:faults [-- --trials N --seed S --kinds a,b]`): randomized
// trials over real processes and the embedded local stack, each injecting faults and then
// checking every acknowledged write in every live RP that should hold it. Prints one JSON line
// (docs/design.md, "Fault campaign"); exits non-zero if any trial failed or lost a write.
//
// Trial i runs kind ROTATION[i mod 12] (or the --kinds in turn) with seed S + i: `--seed S --trials 1` from a failed
// trial's seed replays it (the workload and fault plan; the kernel's timing is not replayable).

// First: the handlers this process and the Lambdas' processes run log only warnings (stdout is for the JSON line).
import '../../bench/quiet-handlers';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { rpStoreFromEnv, usesExternalStack } from '../../adapters/from-env';
import { startLocalStack } from '../../local/stack';
import { rng } from '../../source/workload';
import { agentKill } from './agent-trials';
import { applyKill, badBatches, events } from './apply-trials';
import type { Tally, Trial } from './common';
import { compactionKill, historyCrash } from './history-trials';

const KINDS = {
  agent_kill: agentKill,
  apply_kill: applyKill,
  compaction_kill: compactionKill,
  events,
  bad_batches: badBatches,
  history_crash: historyCrash,
} as const;
type Kind = keyof typeof KINDS;

/** One in four trials kills a real process. */
const ROTATION: Kind[] = ['events', 'bad_batches', 'history_crash', 'agent_kill', 'events', 'bad_batches', 'history_crash', 'apply_kill', 'events', 'bad_batches', 'history_crash', 'compaction_kill'];

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { trials: { type: 'string', default: '1000' }, seed: { type: 'string', default: '1' }, kinds: { type: 'string' } } });
  const trials = Number(values.trials);
  const seed = Number(values.seed);
  if (!Number.isSafeInteger(trials) || trials < 1) throw new Error(`--trials must be a positive integer, not '${values.trials}'`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`--seed must be a non-negative integer, not '${values.seed}'`);
  const only = values.kinds?.split(',').map((k) => k.trim());
  for (const k of only ?? []) if (!(k in KINDS)) throw new Error(`--kinds: unknown kind '${k}' (kinds: ${Object.keys(KINDS).join(', ')})`);
  // --kinds: those kinds in turn, in the order given.
  const rotation = only ? [...new Set(only as Kind[])] : ROTATION;
  if (usesExternalStack()) {
    throw new Error('the fault campaign kills the local stack\'s processes and injects faults at its servers: it runs on the embedded stack only (unset AWS_ENDPOINT_URL*)');
  }

  const started = Date.now();
  const dir = await mkdtemp(join(tmpdir(), 'livesync-faults-'));
  const log = (msg: string): void => void process.stderr.write(`[faults] ${msg}\n`);
  const stack = await startLocalStack({ dir: join(dir, 'stack'), applyProcess: true, log });
  // Ctrl-C (or a kill) stops the stack and its processes, not only this one.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      log(`${signal}: stopping the stack`);
      void stack.stop().finally(() => rm(dir, { recursive: true, force: true }).finally(() => process.exit(130)));
    });
  }
  const c = rpStoreFromEnv();
  const tally: Tally = { faults: {}, realKills: 0, rpsChecked: 0, rpsBitExact: 0, writesLost: 0 };
  const byKind: Record<string, number> = {};
  let withKills = 0;
  const failures: { trial: number; kind: Kind; seed: number; error: string }[] = [];
  try {
    for (let i = 0; i < trials; i++) {
      const kind = rotation[i % rotation.length];
      const trialSeed = seed + i;
      const trialDir = await mkdtemp(join(dir, `t${i}-`));
      const t: Trial = { stack, c, r: rng(trialSeed), seed: trialSeed, dir: trialDir, tally, log };
      const kills = tally.realKills;
      const t0 = Date.now();
      try {
        const what = await KINDS[kind](t);
        log(`trial ${i + 1}/${trials} ${kind} (seed ${trialSeed}): ok in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
      } catch (err) {
        failures.push({ trial: i + 1, kind, seed: trialSeed, error: (err as Error).message });
        log(`trial ${i + 1}/${trials} ${kind} (seed ${trialSeed}): FAILED: ${(err as Error).stack}`);
      } finally {
        stack.faults.set({ s3: 0, dynamodb: 0 });
        await rm(trialDir, { recursive: true, force: true });
      }
      byKind[kind] = (byKind[kind] ?? 0) + 1;
      if (tally.realKills > kills) withKills++;
    }
  } finally {
    await stack.stop();
    await rm(dir, { recursive: true, force: true });
  }
  const line = {
    campaign: 'faults',
    trials,
    seed,
    trials_by_kind: byKind,
    trials_with_real_kills: withKills,
    real_process_kills: tally.realKills,
    faults: Object.fromEntries(Object.entries(tally.faults).sort()),
    acknowledged_writes_lost: tally.writesLost,
    rps_checked: tally.rpsChecked,
    rps_bit_exact: tally.rpsBitExact,
    failed_trials: failures.length,
    failures: failures.slice(0, 20),
    wall_s: Math.round((Date.now() - started) / 100) / 10,
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
  return failures.length === 0 && tally.writesLost === 0 && tally.rpsBitExact === tally.rpsChecked ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`test:faults: ${err.message}\n`);
    process.exit(2);
  },
);
