// `livesync recover` into S3 or EBS: the recovery workflow does it in the cloud (one Lambda
// per range); the CLI starts the run (or resumes one) and follows the run's item, printing its
// progress every 5 s, until it completes or fails.

import { DynamoRecoveries } from '../adapters/dynamo-recoveries';
import type { RpStore } from '../adapters/from-env';
import type { SfnRecoveryLauncher } from '../adapters/sfn-recovery-launcher';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { chooseRp, type RpChoice } from '../core/rp-choice';
import { RECOVERIES_PREFIX } from '../lib/names';
import type { RecoveryRun, RecoveryTargetSpec } from '../replica/ports';
import { newRecoveryId } from '../replica/recovery-run';
import { sleep } from '../replica/concurrency';
import { progressLine } from './progress';

export interface CloudRecoveryRequest {
  pairId: string;
  /** A new run: its RP and target. */
  choice?: RpChoice;
  target?: { kind: 's3'; bucket?: string; prefix: string } | { kind: 'ebs' };
  /** Resume this run instead. */
  resume?: string;
  /** Follow the run to its end (default true); false returns once it started. */
  wait?: boolean;
  by?: string;
  /** How often the run is looked at, and a progress line printed (default 1 s and 5 s). */
  pollMs?: number;
  progressEveryMs?: number;
  log?: (line: string) => void;
}

export async function recoverInCloud(rps: RpStore, launcher: SfnRecoveryLauncher, r: CloudRecoveryRequest): Promise<RecoveryRun | { recoveryId: string; executionArn: string }> {
  const runs = new DynamoRecoveries(rps.table);
  const log = r.log ?? ((line: string) => console.error(line));
  let recoveryId: string;
  let attempt: number;
  let executionArn: string;
  if (r.resume) {
    const run = await runs.getRecovery(r.pairId, r.resume);
    if (!run) throw new InvalidArgumentError(`pair '${r.pairId}' has no recovery run '${r.resume}'`);
    if (run.status === 'COMPLETED') throw new InvalidArgumentError(`recovery run '${r.resume}' of pair '${r.pairId}' is complete: nothing to resume`);
    recoveryId = run.id;
    attempt = run.attempts + 1;
    executionArn = await launcher.start({ pairId: r.pairId, recoveryId }, attempt);
    log(`livesync: resuming recovery ${recoveryId} (attempt ${attempt}; ${run.rangesDone} of ${run.rangesTotal} ranges were done)`);
  } else {
    if (!r.choice || !r.target) throw new InvalidArgumentError('a recovery needs an RP and a target, or --resume ID');
    if (!(await rps.index.getPair(r.pairId))) throw new UnknownPairError(r.pairId);
    const seq = chooseRp(await rps.index.listRecoveryPoints(r.pairId, Math.floor(Date.now() / 1000)), r.choice, r.pairId);
    const target = targetSpec(r.target, rps.bucket);
    recoveryId = newRecoveryId(r.pairId, seq);
    attempt = 1;
    executionArn = await launcher.start({ pairId: r.pairId, recoveryId, seq, target, by: r.by ?? process.env.USER ?? 'cli' }, attempt);
    log(`livesync: recovery ${recoveryId} of pair '${r.pairId}' RP ${seq} started (${target.kind === 'ebs' ? 'EBS snapshots' : `s3://${target.bucket}/${target.prefix}`}); resume it with: livesync recover --pair ${r.pairId} --resume ${recoveryId}`);
  }
  if (r.wait === false) return { recoveryId, executionArn };
  return follow(runs, launcher, r.pairId, recoveryId, attempt, executionArn, r.pollMs ?? 1000, r.progressEveryMs ?? 5000, log);
}

/** A raw image in the RP Store's own bucket goes under `recoveries/` only (the rest is the replica's, and the workflow may not write it). */
function targetSpec(t: NonNullable<CloudRecoveryRequest['target']>, rpBucket: string): RecoveryTargetSpec {
  if (t.kind === 'ebs') return t;
  const bucket = t.bucket || rpBucket;
  const prefix = t.prefix.replace(/^\/+/, '').replace(/\/+$/, '');
  if (!prefix) throw new InvalidArgumentError(`s3://${bucket}/: name a prefix for the images`);
  if (bucket === rpBucket && !prefix.startsWith(RECOVERIES_PREFIX)) {
    throw new InvalidArgumentError(`s3://${bucket}/${prefix}: in the RP Store's bucket a recovered image goes under ${RECOVERIES_PREFIX} (e.g. s3://${bucket}/${RECOVERIES_PREFIX}${prefix})`);
  }
  return { kind: 's3', bucket, prefix };
}

/** Polls the run until this attempt completes or fails; progress on `log` every `everyMs`. */
async function follow(
  runs: DynamoRecoveries,
  launcher: SfnRecoveryLauncher,
  pairId: string,
  id: string,
  attempt: number,
  executionArn: string,
  pollMs: number,
  everyMs: number,
  log: (line: string) => void,
): Promise<RecoveryRun> {
  let lastLine = Date.now();
  for (;;) {
    await sleep(pollMs);
    const run = await runs.getRecovery(pairId, id);
    const current = run && run.attempts >= attempt;
    if (current && run.status === 'COMPLETED') return run;
    if (current && run.status === 'FAILED') throw new Error(`recovery ${id} failed: ${run.error}; resume it with: livesync recover --pair ${pairId} --resume ${id}`);
    const exec = await launcher.status(executionArn);
    if (exec.status !== 'RUNNING') {
      // The execution ended but the run says neither: one more look, then its own word.
      const again = await runs.getRecovery(pairId, id);
      if (again?.status === 'COMPLETED') return again;
      throw new Error(`recovery ${id}: its execution ended ${exec.status}${exec.error ? ` (${exec.error}: ${exec.cause})` : ''}; resume it with: livesync recover --pair ${pairId} --resume ${id}`);
    }
    if (run && current && Date.now() - lastLine >= everyMs) {
      lastLine = Date.now();
      log(`${progressLine(`recover ${pairId} RP ${run.seq}`, run.doneBytes, run.totalBytes, Date.now() - run.startedMs)} (${run.rangesDone} of ${run.rangesTotal} ranges)`);
    }
  }
}
