// Retention: which RPs live and for how long. A pure function of the RP's own facts (its time,
// its type, the times of the RP and the ACRP before it, whether it is pinned), so the TTL set
// at creation (expiryFor) and any later judgement of the same RP (applyPolicy: after a policy
// change, a pin or unpin) cannot disagree, and need no neighbours that TTL may have deleted.
// RP items store those facts (prevAtMs, prevAppAtMs, policyRev): docs/design.md, "Recovery
// points and retention".

import { InvalidArgumentError } from './errors';
import type { RecoveryPoint } from './model';

export interface RetentionTier {
  /** How long RPs that this tier keeps stay available. */
  windowSec: number;
  /** Keep one RP per `spacingSec` bucket (the first in it); 0 keeps every RP. */
  spacingSec: number;
}

export interface RetentionPolicy {
  /** Tiers applying to every RP, crash- or application-consistent. */
  all: RetentionTier[];
  /** Extra tiers applying to ACRPs only. */
  app: RetentionTier[];
  /**
   * The policy's revision on its pair: absent (0) as created, + 1 at every change
   * (`livesync pair set-retention`). Each RP records the one it was judged under (policyRev).
   */
  rev?: number;
}

const HOUR = 3600;
const DAY = 24 * HOUR;

export const DEFAULT_RETENTION: RetentionPolicy = {
  all: [
    { windowSec: HOUR, spacingSec: 0 },
    { windowSec: DAY, spacingSec: 15 * 60 },
    { windowSec: 7 * DAY, spacingSec: HOUR },
  ],
  app: [{ windowSec: 30 * DAY, spacingSec: DAY }],
};

/**
 * An RP's life may be extended (pinned, or lengthened by a policy change) only while it has
 * more than this left. A compaction unit takes the RPs live at its planning time (on its
 * clock) as retained points and drops versions only they needed; an RP it judged expired
 * must never be pinned or lengthened. Nothing revives an RP, so an RP live now was live at
 * every earlier plan: only the clocks of the two hosts can disagree, and the margin absorbs
 * up to 60 s of skew between them (and the pin's own latency). The lead's sizing: the
 * compactor lease's length, within which a unit plans and publishes.
 */
export const PIN_MARGIN_MS = 60_000;

export interface RpTimes {
  /** The new RP's source time (ms). */
  atMs: number;
  /** Previous RP of any type (ms), if any. */
  prevAtMs?: number;
  /** Previous ACRP (ms), if any; only consulted for ACRPs. */
  prevAppAtMs?: number;
  app: boolean;
}

export interface Expiry {
  /** Epoch seconds: the DynamoDB TTL value. */
  expiresAtSec: number;
  /** Which tiers keep this RP, for showing an operator why. */
  keptBy: string[];
}

/** What applyPolicy judges an RP by: only its own facts. */
export interface RpFacts extends RpTimes {
  seq: number;
  /** Pinned (an investigation, a legal hold): it lives whatever the policy says. */
  pinned?: boolean;
}

export interface PolicyDecision {
  seq: number;
  keep: boolean;
  /** Why: 'pinned'; 'tier' (a tier keeps it until expiresAtSec); 'expired' (its tiers' windows ended). */
  reason: 'pinned' | 'tier' | 'expired';
  /** Epoch seconds its tiers keep it until; none for a pinned RP (no TTL while pinned). */
  expiresAtSec?: number;
  keptBy: string[];
}

/**
 * Judges RPs at `nowMs`: a pinned one lives; any other lives until the end of the longest
 * window of the tiers that keep it (expiryFor), and is expired from that second on. Each RP
 * is judged alone, in the order given.
 */
export function applyPolicy(rps: readonly RpFacts[], policy: RetentionPolicy, nowMs: number): PolicyDecision[] {
  return rps.map((rp) => {
    const { expiresAtSec, keptBy } = expiryFor(rp, policy);
    if (rp.pinned) return { seq: rp.seq, keep: true, reason: 'pinned', keptBy: ['pinned', ...keptBy] };
    const keep = nowMs < expiresAtSec * 1000;
    return { seq: rp.seq, keep, reason: keep ? 'tier' : 'expired', expiresAtSec, keptBy };
  });
}

/**
 * An RP is kept by a spaced tier when it is the first RP in that tier's time bucket;
 * it expires at the end of the longest window of the tiers that keep it.
 */
export function expiryFor(t: RpTimes, policy: RetentionPolicy): Expiry {
  const keptBy: string[] = [];
  let windowSec = 0;
  const consider = (tiers: RetentionTier[], prevMs: number | undefined, label: string): void => {
    for (const tier of tiers) {
      if (!firstInBucket(t.atMs, prevMs, tier.spacingSec)) continue;
      keptBy.push(`${label}:${tier.spacingSec ? `1/${tier.spacingSec}s` : 'every'} for ${tier.windowSec}s`);
      windowSec = Math.max(windowSec, tier.windowSec);
    }
  };
  consider(policy.all, t.prevAtMs, 'all');
  if (t.app) consider(policy.app, t.prevAppAtMs, 'app');
  return { expiresAtSec: Math.ceil(t.atMs / 1000) + windowSec, keptBy };
}

function firstInBucket(atMs: number, prevMs: number | undefined, spacingSec: number): boolean {
  if (spacingSec === 0 || prevMs === undefined) return true;
  const bucket = (ms: number): number => Math.floor(ms / 1000 / spacingSec);
  return bucket(atMs) !== bucket(prevMs);
}

/** What a new RP item holds of its judgement: the facts it was judged on and the answer. */
export interface RpJudgement {
  prevAtMs?: number;
  prevAppAtMs?: number;
  expiresAtSec: number;
  keptBy: string[];
  policyRev: number;
}

/**
 * The judgement a new RP is created with (advance, RP timer, seed activation): expiryFor
 * under `policy`, and the facts a later applyPolicy needs (the previous ACRP's time on ACRPs
 * only: only they are judged by it).
 */
export function judgeNew(t: RpTimes, policy: RetentionPolicy): RpJudgement {
  const { expiresAtSec, keptBy } = expiryFor(t, policy);
  return {
    ...(t.prevAtMs !== undefined ? { prevAtMs: t.prevAtMs } : {}),
    ...(t.app && t.prevAppAtMs !== undefined ? { prevAppAtMs: t.prevAppAtMs } : {}),
    expiresAtSec,
    keptBy,
    policyRev: policy.rev ?? 0,
  };
}

/** The facts applyPolicy judges a stored RP by. */
export const rpFacts = (rp: RecoveryPoint): RpFacts => ({
  seq: rp.seq,
  atMs: rp.atMs,
  prevAtMs: rp.prevAtMs,
  prevAppAtMs: rp.prevAppAtMs,
  app: rp.type === 'APP',
  pinned: rp.pinned !== undefined,
});

/** Whether an RP lives at `nowMs`: pinned, or before its expiry (the second it names is its first dead one). */
export const rpLives = (rp: Pick<RecoveryPoint, 'pinned' | 'expiresAtSec'>, nowMs: number): boolean =>
  rp.pinned !== undefined || (rp.expiresAtSec !== undefined && nowMs < rp.expiresAtSec * 1000);

/** Until when an RP lives, for people: its expiry (ISO 8601, UTC) or 'pinned'. */
export const rpUntil = (rp: Pick<RecoveryPoint, 'pinned' | 'expiresAtSec'>): string =>
  rp.pinned !== undefined || rp.expiresAtSec === undefined ? 'pinned' : new Date(rp.expiresAtSec * 1000).toISOString();

/** An RP's judgement under `policy` from its stored facts, as if unpinned (what `rp unpin` writes). */
export function judgeStored(rp: RecoveryPoint, policy: RetentionPolicy, nowMs: number): PolicyDecision & { policyRev: number } {
  const [d] = applyPolicy([{ ...rpFacts(rp), pinned: false }], policy, nowMs);
  return { ...d, policyRev: policy.rev ?? 0 };
}

/** What a policy change does to one stored RP (`pair set-retention`). */
export type Rejudgement =
  | { action: 'write'; expiresAtSec: number; keptBy: string[]; policyRev: number; change: 'shortened' | 'lengthened' | 'expired' | 'same' }
  | {
      action: 'skip';
      /**
       * pinned: no expiry to change (unpin judges it under the policy then in force); expired:
       * never revived (compaction may have dropped what it needs); current: judged under this
       * policy already (a re-run resuming); legacy: written before RPs stored their facts, left
       * as it is; ending: would be lengthened with PIN_MARGIN_MS or less left, left to expire.
       */
      why: 'pinned' | 'expired' | 'current' | 'legacy' | 'ending';
    };

/** Judges a stored RP again under a changed policy: never revives, never extends one near its end. */
export function rejudge(rp: RecoveryPoint, policy: RetentionPolicy, nowMs: number): Rejudgement {
  if (rp.pinned !== undefined) return { action: 'skip', why: 'pinned' };
  if (!rpLives(rp, nowMs)) return { action: 'skip', why: 'expired' };
  if (rp.policyRev === undefined) return { action: 'skip', why: 'legacy' };
  const rev = policy.rev ?? 0;
  if (rp.policyRev >= rev) return { action: 'skip', why: 'current' };
  const d = judgeStored(rp, policy, nowMs);
  const was = rp.expiresAtSec!;
  const now = d.expiresAtSec!;
  if (now > was && was * 1000 <= nowMs + PIN_MARGIN_MS) return { action: 'skip', why: 'ending' };
  const change = !d.keep ? 'expired' : now < was ? 'shortened' : now > was ? 'lengthened' : 'same';
  return { action: 'write', expiresAtSec: now, keptBy: d.keptBy, policyRev: rev, change };
}

/** Whether two policies have the same tiers (their revisions aside). */
export const sameTiers = (a: RetentionPolicy, b: RetentionPolicy): boolean =>
  JSON.stringify([a.all, a.app].map((ts) => ts.map((t) => [t.windowSec, t.spacingSec]))) ===
  JSON.stringify([b.all, b.app].map((ts) => ts.map((t) => [t.windowSec, t.spacingSec])));

/** Most tiers a list may have: more is a typo, and each one is judged for every RP. */
export const MAX_TIERS = 16;

/** A tier's bounds; `what` names it in the error (a flag and its value, or its place in a policy). */
export function checkTier(tier: RetentionTier, what: string): RetentionTier {
  const { windowSec, spacingSec } = tier;
  if (!Number.isSafeInteger(windowSec) || windowSec <= 0) throw new InvalidArgumentError(`${what}: window ${windowSec} s must be a whole number of seconds > 0`);
  if (!Number.isSafeInteger(spacingSec) || spacingSec < 0 || spacingSec > windowSec) {
    throw new InvalidArgumentError(`${what}: spacing ${spacingSec} s must be a whole number of seconds in 0..window (${windowSec} s)`);
  }
  return tier;
}

/** A policy's tiers checked (InvalidArgumentError naming the tier); returns it. */
export function checkPolicy(p: RetentionPolicy): RetentionPolicy {
  for (const [list, tiers] of [['all', p.all], ['app', p.app]] as const) {
    if (tiers.length > MAX_TIERS) throw new InvalidArgumentError(`retention policy: ${tiers.length} ${list} tiers, at most ${MAX_TIERS}`);
    tiers.forEach((tier, i) => checkTier(tier, `retention tier ${list}[${i}]`));
  }
  if (p.all.length === 0) throw new InvalidArgumentError('retention policy needs at least one tier for all RPs');
  if (p.rev !== undefined && (!Number.isSafeInteger(p.rev) || p.rev < 0)) throw new InvalidArgumentError(`retention policy: rev ${p.rev} is not a revision`);
  return p;
}
