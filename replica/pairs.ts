// Operator-facing pair operations: create (validated), seed, status, retention (policy
// changes, pins).

import { BLOCK_SIZE } from '../core/batch-format';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { checkDiskName, checkPairId, parseS3Url } from '../core/keys';
import type { DiskSpec, Pair, RecoveryPoint, RpPin } from '../core/model';
import { DEFAULT_RETENTION, PIN_MARGIN_MS, checkPolicy, judgeStored, rejudge, rpLives, rpUntil, sameTiers, type Rejudgement, type RetentionPolicy } from '../core/retention';
import type { ReplicaIndex, SeedLauncher } from './ports';
import { mapLimit, sleep } from './concurrency';

export const DEFAULT_CCRP_INTERVAL_MS = 5000;
/** 64 TiB: the largest disk EBS offers; beyond it a size is a typo. */
const MAX_DISK_BYTES = 64 * 2 ** 40;

export interface CreatePairInput {
  pairId: string;
  disks: DiskSpec[];
  ccrpIntervalMs?: number;
  retention?: RetentionPolicy;
  /**
   * s3://bucket/key of a backup (a livesync backup manifest, a raw-image manifest, or one
   * raw image object): the pair starts CONFIGURED and the seed workflow (replica/seeding.ts)
   * takes it to SEEDING and then REPLICATING. Without one the replica starts all zeros.
   */
  backup?: string;
}

export async function createPair(index: ReplicaIndex, input: CreatePairInput, nowMs = Date.now()): Promise<Pair> {
  checkPairId(input.pairId);
  if (input.disks.length === 0) throw new InvalidArgumentError(`pair '${input.pairId}' needs at least one disk`);
  const names = new Set<string>();
  for (const d of input.disks) {
    checkDiskName(d.name);
    if (names.has(d.name)) throw new InvalidArgumentError(`disk '${d.name}' given twice`);
    names.add(d.name);
    if (!Number.isSafeInteger(d.sizeBytes) || d.sizeBytes <= 0 || d.sizeBytes % BLOCK_SIZE !== 0 || d.sizeBytes > MAX_DISK_BYTES) {
      throw new InvalidArgumentError(`disk '${d.name}': size ${d.sizeBytes} must be a positive multiple of 4 KiB up to 64 TiB`);
    }
  }
  const ccrpIntervalMs = input.ccrpIntervalMs ?? DEFAULT_CCRP_INTERVAL_MS;
  if (!Number.isInteger(ccrpIntervalMs) || ccrpIntervalMs < 100) throw new InvalidArgumentError(`ccrpInterval ${ccrpIntervalMs} ms must be at least 100 ms`);
  if (input.backup !== undefined) parseS3Url(input.backup);
  const pair: Pair = {
    pairId: input.pairId,
    // A pair without a backup replicates from an all-zero replica straight away.
    state: input.backup ? 'CONFIGURED' : 'REPLICATING',
    ...(input.backup ? { seed: { seedId: `seed-${nowMs.toString(36)}`, source: input.backup, status: 'RUNNING' as const, startedMs: nowMs } } : {}),
    stateChangedMs: nowMs,
    disks: input.disks,
    ccrpIntervalMs,
    retention: checkPolicy(input.retention ?? DEFAULT_RETENTION),
    createdMs: nowMs,
    watermark: 0,
  };
  await index.createPair(pair);
  return pair;
}

/** Polls until the pair's watermark reaches `seq`; the error names where it stopped and why. */
export async function waitForWatermark(index: ReplicaIndex, pairId: string, seq: number, timeoutMs: number): Promise<Pair> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pair = await index.getPair(pairId);
    if (pair && pair.watermark >= seq) return pair;
    if (Date.now() > deadline) {
      throw new Error(`pair '${pairId}' reached watermark ${pair?.watermark} (state ${pair?.state}${pair?.error ? `, error at seq ${pair.error.seq}: ${pair.error.reason}` : ''}), not ${seq}, within ${timeoutMs} ms`);
    }
    await sleep(100);
  }
}

/**
 * Starts the seed workflow for a pair created with a backup, or re-runs it after
 * SEED_FAILED (finished ranges are not redone). A pair SEEDING has a run going: `force`
 * starts another (for when that execution is known to be gone); the steps are idempotent.
 */
export async function startSeed(index: ReplicaIndex, launcher: SeedLauncher, pairId: string, force = false): Promise<{ seedId: string; attempt: number; executionArn: string }> {
  checkPairId(pairId);
  const pair = await index.getPair(pairId);
  if (!pair) throw new UnknownPairError(pairId);
  const seed = pair.seed;
  if (!seed) throw new InvalidArgumentError(`pair '${pairId}' was created without a backup: there is nothing to seed`);
  if (seed.status === 'DONE') throw new InvalidArgumentError(`pair '${pairId}' is seeded already (${seed.seedId}, ${pair.state})`);
  if (pair.state === 'SEEDING' && seed.status === 'RUNNING' && !force) {
    throw new InvalidArgumentError(`pair '${pairId}' is being seeded (${seed.executionArn ?? seed.seedId}); force a new run only if that one is gone`);
  }
  const attempt = (seed.attempts ?? 0) + 1;
  // RUNNING before the start: a run that fails at once must not be overwritten by this.
  await index.updateSeed(pairId, seed.seedId, { seed: { attempts: attempt, status: 'RUNNING' }, clear: ['reason', 'finishedMs', 'lastRangeError'] });
  let executionArn: string;
  try {
    executionArn = await launcher.start({ pairId, seedId: seed.seedId }, attempt);
  } catch (err) {
    await index.updateSeed(pairId, seed.seedId, { seed: { status: 'FAILED', reason: `the seed workflow did not start: ${(err as Error).message}`, finishedMs: Date.now() } });
    throw err;
  }
  await index.updateSeed(pairId, seed.seedId, { seed: { executionArn } });
  return { seedId: seed.seedId, attempt, executionArn };
}

export interface SeedProgress {
  pairId: string;
  state: Pair['state'];
  seedId: string;
  status: string;
  rangesDone: number;
  rangesTotal?: number;
  bytesDone: number;
  bytesTotal?: number;
  /** Bytes of the backup seeded per second since the run started (to now, or to its end). */
  bytesPerSec: number;
  reason?: string;
}

/** What `livesync pair status` shows of a seed run. */
export function seedProgress(pair: Pair, nowMs = Date.now()): SeedProgress | undefined {
  const s = pair.seed;
  if (!s) return undefined;
  const elapsedSec = Math.max(0.001, ((s.finishedMs ?? nowMs) - s.startedMs) / 1000);
  return {
    pairId: pair.pairId,
    state: pair.state,
    seedId: s.seedId,
    status: s.status,
    rangesDone: s.rangesDone ?? 0,
    rangesTotal: s.rangesTotal,
    bytesDone: s.bytesDone ?? 0,
    bytesTotal: s.bytesTotal,
    bytesPerSec: Math.round((s.bytesDone ?? 0) / elapsedSec),
    ...(s.reason ? { reason: s.reason } : {}),
  };
}

/** RPs read and judged per page by setRetention (one Query page; their writes go 8 at a time). */
const REJUDGE_PAGE = 100;
const REJUDGE_CONCURRENCY = 8;
/** Tries of one conditional write that keeps losing to other writers before giving up (re-run then). */
const RETRIES = 5;

export interface RetentionChange {
  pairId: string;
  /** The policy's revision now in force. */
  policyRev: number;
  /** False when the pair had these tiers already (a re-run: only the RPs not judged under them yet are). */
  changed: boolean;
  /** RPs written, by what the change did to them, and RPs left as they were, by why (core/retention.ts Rejudgement). */
  written: Record<'shortened' | 'lengthened' | 'expired' | 'same', number>;
  skipped: Record<'pinned' | 'expired' | 'current' | 'legacy' | 'ending', number>;
}

/**
 * Sets a pair's retention policy and judges its live RPs again under it. First the policy
 * (`retention.rev` + 1, conditional, and the pair's rev, so RPs being made switch to it), then
 * every live RP in pages: each write conditional on the RP as read (its expiry, unpinned,
 * judged under an older policy). An RP already expired is never revived, and one with less
 * than PIN_MARGIN_MS left is not lengthened. Idempotent: after a crash, the same command
 * finds the tiers in place (no new rev) and judges only the RPs not yet judged under them.
 */
export async function setRetention(index: ReplicaIndex, pairId: string, tiers: Omit<RetentionPolicy, 'rev'>, now: () => number = Date.now): Promise<RetentionChange> {
  checkPairId(pairId);
  checkPolicy(tiers);
  let policy: RetentionPolicy | undefined;
  let changed = false;
  for (let attempt = 1; policy === undefined; attempt++) {
    const pair = await index.getPair(pairId);
    if (!pair) throw new UnknownPairError(pairId);
    const rev = pair.retention.rev ?? 0;
    if (sameTiers(pair.retention, tiers)) policy = pair.retention;
    else if (await index.setRetention(pairId, { all: tiers.all, app: tiers.app, rev: rev + 1 })) [policy, changed] = [{ all: tiers.all, app: tiers.app, rev: rev + 1 }, true];
    else if (attempt === RETRIES) throw new Error(`pair '${pairId}': its retention policy kept changing under this one (${RETRIES} tries); run the command again`);
  }
  const out: RetentionChange = {
    pairId,
    policyRev: policy.rev ?? 0,
    changed,
    written: { shortened: 0, lengthened: 0, expired: 0, same: 0 },
    skipped: { pinned: 0, expired: 0, current: 0, legacy: 0, ending: 0 },
  };
  for (let afterSeq: number | undefined; ; ) {
    const page = await index.listRecoveryPoints(pairId, Math.floor(now() / 1000), undefined, { afterSeq, limit: REJUDGE_PAGE });
    if (page.length === 0) return out;
    await mapLimit(page, REJUDGE_CONCURRENCY, async (rp) => {
      const d = await rejudgeOne(index, rp, policy!, now);
      if (d.action === 'write') out.written[d.change]++;
      else out.skipped[d.why]++;
    });
    afterSeq = page[page.length - 1].seq;
  }
}

/** Judges one RP under `policy` and writes it, judging again from a fresh read if it changed meanwhile. */
async function rejudgeOne(index: ReplicaIndex, first: RecoveryPoint, policy: RetentionPolicy, now: () => number): Promise<Rejudgement> {
  let rp: RecoveryPoint | undefined = first;
  for (let attempt = 1; ; attempt++) {
    if (!rp) return { action: 'skip', why: 'expired' }; // TTL deleted it meanwhile
    const nowMs = now();
    const d = rejudge(rp, policy, nowMs);
    if (d.action === 'skip') return d;
    const floorMs = d.expiresAtSec > rp.expiresAtSec! ? nowMs + PIN_MARGIN_MS : nowMs;
    if (await index.rejudgeRecoveryPoint(rp.pairId, rp.seq, { expiresAtSec: rp.expiresAtSec!, aboveSec: Math.floor(floorMs / 1000) }, d)) return d;
    if (attempt === RETRIES) throw new Error(`pair '${rp.pairId}': RP ${rp.seq} kept changing while being judged again (${RETRIES} tries); run the command again`);
    rp = await index.getRecoveryPoint(rp.pairId, rp.seq);
  }
}

/** Longest pin reason and pinner name (they are shown on one line by `rp list`). */
const MAX_PIN_REASON = 500;
const MAX_PIN_BY = 64;

function checkPinText(what: string, value: string, max: number): string {
  if (value.trim() === '') throw new InvalidArgumentError(`--${what} must not be empty`);
  if (value.length > max) throw new InvalidArgumentError(`--${what}: ${value.length} characters, at most ${max}`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new InvalidArgumentError(`--${what}: control characters (tabs, newlines) are not allowed`);
  return value;
}

/** The RP, or an error naming the pair and seq (the pair first: an unknown pair is said so). */
async function storedRp(index: ReplicaIndex, pairId: string, seq: number): Promise<{ pair: Pair & { rev: number }; rp: RecoveryPoint }> {
  checkPairId(pairId);
  const pair = await index.getPair(pairId);
  if (!pair) throw new UnknownPairError(pairId);
  const rp = await index.getRecoveryPoint(pairId, seq);
  if (!rp) throw new InvalidArgumentError(`pair '${pairId}' has no RP at seq ${seq} (never made, or expired and deleted)`);
  return { pair, rp };
}

const expiredText = (rp: RecoveryPoint): string => `RP ${rp.seq} of pair '${rp.pairId}' expired at ${rpUntil(rp)}`;

/**
 * Pins an RP: it lives (no expiry) until unpinned, whatever the policy says. Only a live RP
 * with more than PIN_MARGIN_MS left can be pinned (core/retention.ts says why).
 */
export async function pinRp(index: ReplicaIndex, pairId: string, seq: number, pin: Omit<RpPin, 'atMs'>, nowMs = Date.now()): Promise<RecoveryPoint> {
  const full: RpPin = { by: checkPinText('by', pin.by, MAX_PIN_BY), reason: checkPinText('reason', pin.reason, MAX_PIN_REASON), atMs: nowMs };
  const { rp } = await storedRp(index, pairId, seq);
  if (await index.pinRecoveryPoint(pairId, seq, full, Math.floor((nowMs + PIN_MARGIN_MS) / 1000))) return { ...rp, expiresAtSec: undefined, pinned: full };
  // Why not: read it again (it may have changed since the first read).
  const now = (await index.getRecoveryPoint(pairId, seq)) ?? rp;
  if (now.pinned) throw new InvalidArgumentError(`RP ${seq} of pair '${pairId}' is already pinned (by ${now.pinned.by} at ${new Date(now.pinned.atMs).toISOString()}: ${now.pinned.reason})`);
  if (!rpLives(now, nowMs)) throw new InvalidArgumentError(`${expiredText(now)}: an expired RP cannot be pinned (compaction may have dropped what it needs)`);
  throw new InvalidArgumentError(
    `RP ${seq} of pair '${pairId}' expires at ${rpUntil(now)}, within ${PIN_MARGIN_MS / 1000} s: too close to its end to pin (on a compaction unit's clock it may have expired already)`,
  );
}

/**
 * Unpins an RP: it is judged again from its stored facts under the pair's policy in force
 * (and may expire at once). If the policy changed while it was written, it is judged again
 * under the new one (set-retention's pass may have skipped it as pinned).
 */
export async function unpinRp(index: ReplicaIndex, pairId: string, seq: number, now: () => number = Date.now): Promise<RecoveryPoint> {
  const { pair, rp } = await storedRp(index, pairId, seq);
  if (!rp.pinned) throw new InvalidArgumentError(`RP ${seq} of pair '${pairId}' is not pinned (it lives ${rpLives(rp, now()) ? `until ${rpUntil(rp)}` : 'no more'})`);
  const pin = rp.pinned;
  const d = judgeStored(rp, pair.retention, now());
  const next = { expiresAtSec: d.expiresAtSec!, keptBy: d.keptBy, policyRev: d.policyRev };
  if (!(await index.rejudgeRecoveryPoint(pairId, seq, { pinnedAtMs: pin.atMs }, next))) {
    throw new InvalidArgumentError(`RP ${seq} of pair '${pairId}' changed while being unpinned (unpinned or pinned again meanwhile): look again with rp list`);
  }
  // set-retention writes the policy, then judges the live unpinned RPs: either its pass saw
  // this one unpinned, or this read sees its policy.
  const after = (await index.getPair(pairId)) ?? pair;
  const unpinned: RecoveryPoint = { ...rp, pinned: undefined, ...next };
  if ((after.retention.rev ?? 0) === next.policyRev) return unpinned;
  await rejudgeOne(index, unpinned, after.retention, now);
  return (await index.getRecoveryPoint(pairId, seq)) ?? unpinned;
}
