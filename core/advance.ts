// Advancing a pair's watermark over contiguous registered batches, and the RPs that
// creates. Pure: the apply service feeds it index reads and writes its result in one
// conditional transaction. RPs of a watermark the source left behind: core/rp-timer.ts.

import { BATCH_FLAGS } from './batch-format';
import { judgeNew, type RetentionPolicy } from './retention';
import type { BatchRecord, PairProgress, PairState, RecoveryPoint } from './model';

export interface AdvancePlan {
  /** With `lastRpSeq` and `rpMadeMs` (= nowMs) moved to the newest RP made, if any. */
  progress: PairProgress;
  /** Set when the plan enters or leaves a resync (or the apply service restores a seeding state): the pair's new state. */
  state?: Extract<PairState, 'RESYNCING' | 'REPLICATING' | 'SEEDING' | 'SEED_FAILED'>;
  /** Batches the watermark moves over, in seq order. */
  applied: BatchRecord[];
  rps: RecoveryPoint[];
}

export interface AdvanceInput {
  pairId: string;
  progress: PairProgress;
  ccrpIntervalMs: number;
  /** The cloud's clock: becomes `rpMadeMs` when an RP is made (the RP timer counts from it). */
  nowMs?: number;
  retention: RetentionPolicy;
  /** Registered batches above the watermark, sorted by seq (gaps allowed). */
  pending: BatchRecord[];
  /** At most this many RPs per plan (one DynamoDB transaction holds 100 items). */
  maxRps?: number;
  /** False while the pair is being seeded: the watermark moves, no RP is made, the state stays. */
  offerRps?: boolean;
}

/**
 * Moves the watermark over the gap-free run of pending batches. A batch becomes an RP
 * when it carries an application-consistent marker (APP, with its tag), when the source
 * asked for one, or when ccrpInterval has passed since the previous RP (CRASH).
 * From a RESYNC batch until a RESYNC_END batch there are no RPs (whatever the other flags);
 * the RESYNC_END batch always is one.
 */
export function planAdvance(input: AdvanceInput): AdvancePlan {
  const maxRps = input.maxRps ?? 90;
  const p: PairProgress = { ...input.progress };
  const applied: BatchRecord[] = [];
  const rps: RecoveryPoint[] = [];
  for (const b of input.pending) {
    if (b.seq <= p.watermark) continue;
    if (b.seq !== p.watermark + 1 || rps.length >= maxRps) break;
    const ended = p.resyncing === true && (b.flags & BATCH_FLAGS.RESYNC_END) !== 0;
    const resyncing = (p.resyncing === true || (b.flags & BATCH_FLAGS.RESYNC) !== 0) && (b.flags & BATCH_FLAGS.RESYNC_END) === 0;
    const app = !resyncing && (b.flags & BATCH_FLAGS.APP_CONSISTENT) !== 0;
    const due =
      input.offerRps !== false &&
      !resyncing &&
      (app ||
        ended ||
        (b.flags & BATCH_FLAGS.RP_REQUESTED) !== 0 ||
        p.lastRpMs === undefined ||
        b.cutMs - p.lastRpMs >= input.ccrpIntervalMs);
    if (due) {
      const judged = judgeNew({ atMs: b.cutMs, prevAtMs: p.lastRpMs, prevAppAtMs: p.lastAppRpMs, app }, input.retention);
      rps.push({ pairId: input.pairId, seq: b.seq, type: app ? 'APP' : 'CRASH', tag: b.appTag, atMs: b.cutMs, ...judged });
      p.lastRpMs = b.cutMs;
      p.lastRpSeq = b.seq;
      if (input.nowMs !== undefined) p.rpMadeMs = input.nowMs;
      if (app) p.lastAppRpMs = b.cutMs;
    }
    p.watermark = b.seq;
    p.watermarkMs = b.cutMs;
    p.resyncing = resyncing;
    applied.push(b);
  }
  const was = input.progress.resyncing === true;
  if (applied.length === 0 || p.resyncing === was || input.offerRps === false) return { progress: p, applied, rps };
  return { progress: p, applied, rps, state: p.resyncing ? 'RESYNCING' : 'REPLICATING' };
}
