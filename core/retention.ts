// Retention: which RPs live and for how long. A pure function of the RP's own facts (its time,
// its type, the times of the RP and the ACRP before it, whether it is pinned), so the TTL set
// at creation (expiryFor) and any later judgement of the same RP (applyPolicy: after a policy
// change, a pin or unpin) cannot disagree, and need no neighbours that TTL may have deleted.

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

export interface RpTimes {
  /** The new RP's source time (ms). */
  atMs: number;
  /** Previous RP of any type (ms), if any. */
  prevRpMs?: number;
  /** Previous ACRP (ms), if any; only consulted for ACRPs. */
  prevAppMs?: number;
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
  consider(policy.all, t.prevRpMs, 'all');
  if (t.app) consider(policy.app, t.prevAppMs, 'app');
  return { expiresAtSec: Math.ceil(t.atMs / 1000) + windowSec, keptBy };
}

function firstInBucket(atMs: number, prevMs: number | undefined, spacingSec: number): boolean {
  if (spacingSec === 0 || prevMs === undefined) return true;
  const bucket = (ms: number): number => Math.floor(ms / 1000 / spacingSec);
  return bucket(atMs) !== bucket(prevMs);
}

export function checkPolicy(p: RetentionPolicy): RetentionPolicy {
  for (const tier of [...p.all, ...p.app]) {
    if (!(tier.windowSec > 0) || !(tier.spacingSec >= 0) || tier.spacingSec > tier.windowSec) {
      throw new RangeError(`retention tier ${JSON.stringify(tier)}: window must be > 0 and spacing in 0..window`);
    }
  }
  if (p.all.length === 0) throw new RangeError('retention policy needs at least one tier for all RPs');
  return p;
}
