// `livesync failover test | cleanup | planned | unplanned`: the operations an operator runs,
// each recorded on the pair (replica/failover.ts) with its time, who asked and why, around a
// recovery of the RP it chose (the recovery workflow for S3 and EBS, this process for a file).

import { callAgent } from '../agent/control';
import type { RpStore } from '../adapters/from-env';
import { InvalidArgumentError } from '../core/errors';
import { chooseRp, type RpChoice } from '../core/rp-choice';
import { rpLives } from '../core/retention';
import { sleep } from '../replica/concurrency';
import { transitionPair } from '../replica/failover';
import { waitForWatermark } from '../replica/pairs';
import type { PairOperation, PairOperations } from '../replica/ports';
import { startExport, type ExportCommandOptions, type RunningExport } from './export';
import { recoverCommand, type RecoveryTarget } from './recover';

export interface FailoverContext {
  rps: RpStore;
  ops: PairOperations;
  by: string;
  log: (line: string) => void;
}

/** What a recovery made: its run (cloud) and per disk the image, object or snapshot. */
async function recoverRp(c: FailoverContext, pairId: string, seq: number, target: RecoveryTarget): Promise<{ recoveryId?: string; outputs: Record<string, string> }> {
  const out = (await recoverCommand(c.rps, pairId, { seq }, target)) as { id?: string; outputs?: Record<string, string>; disks: { name: string }[] };
  if (out.outputs) return { recoveryId: out.id, outputs: out.outputs };
  // A file recovery: DIR/DISK.img per disk.
  const dir = target.kind === 'file' ? target.dir : '';
  return { outputs: Object.fromEntries(out.disks.map((d) => [d.name, `${dir}/${d.name}.img`])) };
}

const latestSeq = async (c: FailoverContext, pairId: string, choice: RpChoice): Promise<number> => chooseRp(await c.rps.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000)), choice, pairId);

/**
 * Test or unplanned failover onto an export (instant access): the RP served over NBD straight
 * from the RP Store (read-only, or writable into a local overlay) as soon as it is opened, no
 * copy made first; the outputs are the disks' NBD URIs. The export runs until the caller stops
 * it: a test then ends (test-cleanup), a failover stays FAILED_OVER.
 */
export async function failoverToExport(c: FailoverContext, pairId: string, kind: 'test' | 'unplanned', choice: RpChoice, o: ExportCommandOptions): Promise<{ operation?: PairOperation; running: RunningExport }> {
  const seq = await latestSeq(c, pairId, choice);
  const [start, ready, undo] = kind === 'test' ? (['test-start', 'test-ready', 'test-cleanup'] as const) : (['failover-start', 'failover-done', 'failover-failed'] as const);
  await transitionPair(c.rps.index, c.ops, pairId, start, { by: c.by, reason: `${kind === 'test' ? 'test failover' : 'unplanned failover'} of RP ${seq} onto an export`, kind, seq });
  let running: RunningExport;
  try {
    running = await startExport(c.rps, pairId, { seq }, o);
  } catch (err) {
    await transitionPair(c.rps.index, c.ops, pairId, undo, { by: c.by, reason: `the export failed: ${(err as Error).message}` }).catch(() => {});
    throw err;
  }
  const outputs = Object.fromEntries(running.disks.map((d) => [d.name, d.uri]));
  const operation = await transitionPair(c.rps.index, c.ops, pairId, ready, { by: c.by, reason: `RP ${seq} served over NBD${running.writable ? ' (writable overlay)' : ''}`, seq, outputs });
  return { operation, running };
}

/** Test failover: the RP recovered as a sandboxed copy while replication goes on; the pair shows TEST and its age until cleanup. */
export async function failoverTest(c: FailoverContext, pairId: string, choice: RpChoice, target: RecoveryTarget): Promise<PairOperation | undefined> {
  const seq = await latestSeq(c, pairId, choice);
  await transitionPair(c.rps.index, c.ops, pairId, 'test-start', { by: c.by, reason: `test failover of RP ${seq}`, kind: 'test', seq });
  try {
    const made = await recoverRp(c, pairId, seq, target);
    return await transitionPair(c.rps.index, c.ops, pairId, 'test-ready', { by: c.by, reason: `RP ${seq} recovered for the test`, ...made });
  } catch (err) {
    await transitionPair(c.rps.index, c.ops, pairId, 'test-cleanup', { by: c.by, reason: `the test's recovery failed: ${(err as Error).message}` }).catch(() => {});
    throw err;
  }
}

/** Ends a test failover; what it made is named for the operator (who may keep or delete it). */
export async function failoverCleanup(c: FailoverContext, pairId: string, reason: string): Promise<{ ended: PairOperation }> {
  const { operation } = await c.ops.getOperation(pairId);
  await transitionPair(c.rps.index, c.ops, pairId, 'test-cleanup', { by: c.by, reason });
  return { ended: operation! };
}

/**
 * Planned failover, with no write lost: the source's agent takes the final ACRP through the
 * pre-freeze hook and refuses writes from then on (every acknowledged write is below it); the
 * cloud side applies it; that exact RP is recovered. FAILING_OVER → FAILED_OVER; on a
 * failure the operation ends (FAILING_OVER → none) with the reason, the source stays fenced.
 */
export async function failoverPlanned(c: FailoverContext, pairId: string, target: RecoveryTarget, agentSocket: string, o: { tag?: string; timeoutMs?: number } = {}): Promise<PairOperation | undefined> {
  const tag = o.tag ?? `failover-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}`;
  await transitionPair(c.rps.index, c.ops, pairId, 'failover-start', { by: c.by, reason: `planned failover (final ACRP '${tag}')`, kind: 'planned' });
  try {
    const answer = await callAgent(agentSocket, { op: 'fence', tag });
    if (!answer.ok) throw new Error(`the agent took no final ACRP: ${answer.error}`);
    const seq = (answer as { seq: number }).seq;
    c.log(`livesync: source fenced at ACRP ${seq} ('${tag}'); waiting for the cloud side to apply it`);
    const timeoutMs = o.timeoutMs ?? 10 * 60_000;
    await waitForWatermark(c.rps.index, pairId, seq, timeoutMs);
    await waitForRp(c, pairId, seq, timeoutMs);
    const made = await recoverRp(c, pairId, seq, target);
    return await transitionPair(c.rps.index, c.ops, pairId, 'failover-done', { by: c.by, reason: `failed over to ACRP ${seq} ('${tag}')`, seq, ...made });
  } catch (err) {
    await transitionPair(c.rps.index, c.ops, pairId, 'failover-failed', { by: c.by, reason: `planned failover failed: ${(err as Error).message}` }).catch(() => {});
    throw err;
  }
}

/** Unplanned failover: the source is gone; the chosen RP (latest, a time, an ACRP) is recovered. */
export async function failoverUnplanned(c: FailoverContext, pairId: string, choice: RpChoice, target: RecoveryTarget): Promise<PairOperation | undefined> {
  const seq = await latestSeq(c, pairId, choice);
  await transitionPair(c.rps.index, c.ops, pairId, 'failover-start', { by: c.by, reason: `unplanned failover to RP ${seq}`, kind: 'unplanned', seq });
  try {
    const made = await recoverRp(c, pairId, seq, target);
    return await transitionPair(c.rps.index, c.ops, pairId, 'failover-done', { by: c.by, reason: `failed over to RP ${seq}`, seq, ...made });
  } catch (err) {
    await transitionPair(c.rps.index, c.ops, pairId, 'failover-failed', { by: c.by, reason: `unplanned failover failed: ${(err as Error).message}` }).catch(() => {});
    throw err;
  }
}

/** The RP at `seq` (an ACRP the apply path makes with the watermark) exists and lives. */
async function waitForRp(c: FailoverContext, pairId: string, seq: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const rp = await c.rps.index.getRecoveryPoint(pairId, seq);
    if (rp && rpLives(rp, Date.now())) return;
    if (Date.now() > until) throw new InvalidArgumentError(`pair '${pairId}' has no RP at seq ${seq} after ${timeoutMs / 1000} s`);
    await sleep(200);
  }
}
