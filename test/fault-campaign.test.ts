// The fault campaign's machinery, kept working: one trial of each kind (`npm run test:faults`
// runs 1,000; README, "Fault campaign"). It runs on an embedded stack of its own, so only when
// the suite does too (its trials kill that stack's processes).

import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

const embedded = process.env.LIVESYNC_EMBEDDED_STACK === '1';
const KINDS = ['agent_kill', 'apply_kill', 'compaction_kill', 'events', 'bad_batches', 'history_crash'];

(embedded ? test : test.skip)('test:faults runs a trial of each kind: real kills, every live RP checked, nothing lost', async () => {
  // The campaign's own stack: none of this run's endpoints or names.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWS_ENDPOINT_URL') && !k.startsWith('LIVESYNC_')));
  const root = join(__dirname, '..');
  const run = await promisify(execFile)(join(root, 'node_modules/.bin/tsx'), ['test/campaign/main.ts', '--trials', String(KINDS.length), '--seed', '7', '--kinds', KINDS.join(',')], {
    cwd: root,
    env,
    maxBuffer: 64 * 1024 * 1024,
  }).catch((err: { stdout?: string; stderr?: string; message: string }) => {
    throw new Error(`the campaign failed: ${err.message}\n${err.stdout ?? ''}\n${(err.stderr ?? '').slice(-4000)}`);
  });
  const line = JSON.parse(run.stdout.trim().split('\n').pop()!);
  expect(line).toMatchObject({ campaign: 'faults', trials: KINDS.length, failed_trials: 0, acknowledged_writes_lost: 0 });
  expect(line.trials_by_kind).toEqual(Object.fromEntries(KINDS.map((k) => [k, 1])));
  expect(line.trials_with_real_kills).toBe(3);
  expect(line.rps_checked).toBeGreaterThan(0);
  expect(line.rps_bit_exact).toBe(line.rps_checked);
  for (const f of ['agent_sigkill', 'apply_sigkill', 'compaction_sigkill']) expect(line.faults[f]).toBeGreaterThan(0);
});
