// Retention: which RPs live and for how long, decided once, when the RP is created,
// as a DynamoDB TTL. A pure function of the RP's time and its predecessors' times.

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
