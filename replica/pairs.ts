// Operator-facing pair operations: create (validated), seed, status.

import { BLOCK_SIZE } from '../core/batch-format';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { checkDiskName, checkPairId, parseS3Url } from '../core/keys';
import type { DiskSpec, Pair } from '../core/model';
import { DEFAULT_RETENTION, checkPolicy, type RetentionPolicy } from '../core/retention';
import type { ReplicaIndex, SeedLauncher } from './ports';
import { sleep } from './concurrency';

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
