// The RP timer: the newest applied state (the watermark) becomes an RP within ccrpInterval,
// on the cloud's clock, without waiting for another batch, so it holds when the source has
// gone quiet, stopped or died. Pure: the apply service sends the delayed check messages
// (SQS DelaySeconds) and writes what these functions decide, conditional on the pair's rev.
// Rules and costs: docs/design.md, "Recovery points and retention".

import { InvalidArgumentError } from './errors';
import type { PairProgress, RecoveryPoint } from './model';
import { judgeNew, type RetentionPolicy } from './retention';

/** SQS's largest DelaySeconds; a longer wait is cut into several checks. */
export const MAX_DELAY_SEC = 900;
/** DelaySeconds counts whole seconds: a check may act this much before its due time. */
export const DELAY_STEP_MS = 1000;
/**
 * A pending check this long past its due time counts as lost: the next advance schedules
 * another, so a lost message cannot hold a pair's timer for good.
 */
export const STALE_CHECK_MS = 60_000;

/** The check message (an SQS body on the apply queue). */
export interface RpCheck {
  kind: 'rp-check';
  pairId: string;
  /** The pair's `rpCheckDueMs` when the message was sent: which pending check it is. */
  dueMs: number;
}

/** A check to send: received no earlier than `delaySec` from now, due at `dueMs`. */
export interface ScheduledCheck {
  dueMs: number;
  delaySec: number;
}

export interface TimerContext {
  nowMs: number;
  ccrpIntervalMs: number;
  /** False while the pair is being seeded: no RP. */
  offersRps: boolean;
}

export function watermarkIsRp(p: PairProgress): boolean {
  if (p.watermark === 0) return true; // nothing applied: nothing to keep
  // Pair items written before lastRpSeq existed: an RP at the watermark has its time.
  if (p.lastRpSeq === undefined) return p.lastRpMs !== undefined && p.lastRpMs === p.watermarkMs;
  return p.lastRpSeq === p.watermark;
}

/** When the watermark may become an RP: ccrpInterval after the newest RP was written. */
export const rpDueMs = (p: PairProgress, ccrpIntervalMs: number): number => (p.rpMadeMs ?? Number.NEGATIVE_INFINITY) + ccrpIntervalMs;

/** A check is pending if one was sent and it is not long overdue. */
export const checkPending = (p: PairProgress, nowMs: number): boolean => p.rpCheckDueMs !== undefined && nowMs <= p.rpCheckDueMs + STALE_CHECK_MS;

/** The check for `dueMs`, its delay in whole seconds (rounded down), at most MAX_DELAY_SEC. */
export function schedule(dueMs: number, nowMs: number): ScheduledCheck {
  const delaySec = Math.min(MAX_DELAY_SEC, Math.max(0, Math.floor((dueMs - nowMs) / 1000)));
  return { dueMs: nowMs + delaySec * 1000, delaySec };
}

/** Why the timer has nothing to make at the watermark now, or undefined if it may. */
function noRpReason(p: PairProgress, ctx: TimerContext): string | undefined {
  if (!ctx.offersRps) return 'the pair is being seeded';
  if (p.resyncing === true) return 'the pair is resyncing';
  if (watermarkIsRp(p)) return 'the watermark is an RP';
  return undefined;
}

/**
 * After an advance (`p` is the planned progress, with the pair's pending check): the check
 * to send before the commit, if the watermark is left without an RP and none is pending.
 */
export function checkAfterAdvance(p: PairProgress, ctx: TimerContext): ScheduledCheck | undefined {
  if (noRpReason(p, ctx) !== undefined || checkPending(p, ctx.nowMs)) return undefined;
  return schedule(rpDueMs(p, ctx.ccrpIntervalMs), ctx.nowMs);
}

/** An RP the timer makes, and the pair's RP bookkeeping after it. */
export interface TimerRp {
  rp: RecoveryPoint;
  progress: Required<Pick<PairProgress, 'lastRpMs' | 'lastRpSeq' | 'rpMadeMs'>>;
}

export type RpCheckDecision =
  /** A later check is pending (this one is a duplicate or superseded): write nothing. */
  | { action: 'ignore'; reason: string }
  /** Nothing to make: remove the pending mark (and move rev on, also when none is set). */
  | { action: 'clear'; reason: string }
  /** Make the watermark an RP and remove the pending mark, in one write. */
  | ({ action: 'rp' } & TimerRp)
  /** Too early (the newest RP is recent, or the delay was clamped): send another check. */
  | { action: 'rearm'; next: ScheduledCheck };

/**
 * What a received check does. A check gives way only to a *later* pending one (it is a
 * duplicate, or was superseded); otherwise it acts: it is the pending one, or none is pending
 * (its sender crashed before the commit, or the mark went stale), or it was delivered before
 * the commit that records it landed. Whatever it writes is conditional on the pair's rev and
 * moves rev on, so a commit racing with it (the one that would record it) fails, re-reads and
 * decides again: no check is dropped while the pair waits for it, and a duplicate finds the
 * work done. Checks arrive in due order, so superseded ones die out instead of multiplying.
 */
export function decideRpCheck(
  p: PairProgress,
  check: RpCheck,
  ctx: TimerContext & { retention: RetentionPolicy },
): RpCheckDecision {
  if (checkPending(p, ctx.nowMs) && p.rpCheckDueMs! > check.dueMs) return { action: 'ignore', reason: `a later check is pending (due ${p.rpCheckDueMs})` };
  const none = noRpReason(p, ctx);
  if (none !== undefined) return { action: 'clear', reason: none };
  const due = rpDueMs(p, ctx.ccrpIntervalMs);
  if (ctx.nowMs < due - DELAY_STEP_MS) return { action: 'rearm', next: schedule(due, ctx.nowMs) };
  // The RP's time is the source time of its boundary, as for every RP.
  const atMs = p.watermarkMs ?? ctx.nowMs;
  return {
    action: 'rp',
    rp: { pairId: check.pairId, seq: p.watermark, type: 'CRASH', atMs, ...judgeNew({ atMs, prevAtMs: p.lastRpMs, app: false }, ctx.retention) },
    progress: { lastRpMs: atMs, lastRpSeq: p.watermark, rpMadeMs: ctx.nowMs },
  };
}

export function encodeRpCheck(check: RpCheck): string {
  return JSON.stringify({ kind: check.kind, pairId: check.pairId, dueMs: check.dueMs });
}

/**
 * The check in an apply-queue message body, or undefined if the body is not one (an S3
 * notification). A body that says it is a check but is malformed throws, naming the field.
 */
export function parseRpCheck(body: string): RpCheck | undefined {
  let msg: unknown;
  try {
    msg = JSON.parse(body);
  } catch {
    return undefined; // not ours to judge: the S3 path reports unreadable bodies
  }
  if (typeof msg !== 'object' || msg === null || (msg as { kind?: unknown }).kind !== 'rp-check') return undefined;
  const { pairId, dueMs } = msg as { pairId?: unknown; dueMs?: unknown };
  if (typeof pairId !== 'string' || pairId.length === 0) throw new InvalidArgumentError(`rp-check message: pairId ${JSON.stringify(pairId)} is not a pair id`);
  if (typeof dueMs !== 'number' || !Number.isSafeInteger(dueMs) || dueMs < 0) throw new InvalidArgumentError(`rp-check message for pair '${pairId}': dueMs ${JSON.stringify(dueMs)} is not a time in ms`);
  return { kind: 'rp-check', pairId, dueMs };
}
