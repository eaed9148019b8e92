// Domain records of the RP Store index. Their DynamoDB shape: docs/design.md, "DynamoDB items".

import type { RetentionPolicy } from './retention';

/**
 * How far past what it recorded a source's own batches can be: uploads in flight and batches
 * held in memory after a crash, a few thousand at most; or, its state lost, what its last run
 * uploaded while apply was down (a day at one batch a second). A seq further ahead is another
 * writer's (or junk): the agent will not start past it (agent/agent.ts), and its quarantine
 * does not put the pair in ERROR (replica/apply.ts).
 */
export const MAX_SEQ_LEAD = 100_000;

export type PairState = 'CONFIGURED' | 'SEEDING' | 'SEED_FAILED' | 'REPLICATING' | 'PAUSED' | 'RESYNCING' | 'ERROR';

/** A seeding run of a pair (the seed workflow writes it; `livesync pair status` shows it). */
export interface SeedStatus {
  seedId: string;
  /** s3://bucket/key of the backup or raw image. */
  source: string;
  status: 'RUNNING' | 'FAILED' | 'DONE';
  startedMs: number;
  finishedMs?: number;
  rangesTotal?: number;
  rangesDone?: number;
  bytesTotal?: number;
  bytesDone?: number;
  /** Why it failed (status FAILED). */
  reason?: string;
  /** The last error a range attempt raised (ranges are retried; kept for the reason if the Map gives up). */
  lastRangeError?: string;
  /** Executions started for this run (a re-run after SEED_FAILED is the next attempt). */
  attempts?: number;
  /** The latest execution (Step Functions ARN). */
  executionArn?: string;
}

/** The seeded bottom level of the replica. */
export interface BaseRef {
  /** Key of the base manifest (core/seed-manifests.ts). */
  key: string;
  /** Segments above this seq are applied over the base. */
  baseSeq: number;
  /** The pair's first RP. */
  firstRpSeq: number;
}

export interface DiskSpec {
  name: string;
  sizeBytes: number;
}

/** Where replication of a pair stands: the gap-free watermark and RP bookkeeping. */
export interface PairProgress {
  /** Highest seq such that every batch 1..watermark is applied. 0 = nothing yet. */
  watermark: number;
  /** Source time of the batch at the watermark. */
  watermarkMs?: number;
  lastRpMs?: number;
  lastAppRpMs?: number;
  /** A resync began (BATCH_FLAGS.RESYNC) at or below the watermark and has not ended: no RPs. */
  resyncing?: boolean;
  // The RP timer's bookkeeping (core/rp-timer.ts), on the cloud's clock (ms since epoch):
  /** Seq of the newest RP: the watermark is an RP iff it equals the watermark. */
  lastRpSeq?: number;
  /** When the newest RP was written (cloud clock). */
  rpMadeMs?: number;
  /** Present while a check message is pending: when it is due to be received (cloud clock). */
  rpCheckDueMs?: number;
}

export interface PairError {
  seq: number;
  code: string;
  reason: string;
  key: string;
  atMs: number;
}

export interface Pair extends PairProgress {
  pairId: string;
  state: PairState;
  stateChangedMs: number;
  disks: DiskSpec[];
  ccrpIntervalMs: number;
  retention: RetentionPolicy;
  createdMs: number;
  /** Set while a quarantined batch blocks the watermark; cleared when a good copy is applied. */
  error?: PairError;
  /** Present on a pair created with a backup: until its status is DONE the pair offers no RP. */
  seed?: SeedStatus;
  base?: BaseRef;
  /** Every batch ≤ it is folded into the history (docs/design.md, "History"); a later copy of one is a duplicate. */
  compactedThrough?: number;
}

/** Whether the pair may offer RPs: not while it is being seeded (its replica is not whole yet). */
export const offersRps = (pair: Pick<Pair, 'seed'>): boolean => pair.seed === undefined || pair.seed.status === 'DONE';

/** A validated batch registered in the index (an L0 segment). Applied iff seq <= watermark. */
export interface BatchRecord {
  seq: number;
  key: string;
  sizeBytes: number;
  /** Object checksum from the trailer: tells a duplicate from a conflicting batch. */
  objectCrc: number;
  /**
   * SHA-256 (hex) of the whole object as apply read it: compaction and recovery check the
   * bytes they read against it (replica/applied-batch.ts). Absent on batches applied before
   * it was recorded.
   */
  sha256?: string;
  /**
   * The S3 version apply read, when the bucket is versioned (Object Lock): every later read
   * of the batch (compaction, recovery) asks for that version, so an object written over the
   * key later (which the bucket policy refuses anyway) cannot stand in for it.
   */
  versionId?: string;
  firstWriteMs: number;
  cutMs: number;
  flags: number;
  appTag?: string;
  extentCount: number;
  dataBytes: number;
  /** Disk names in batch order (extents refer to them by position). */
  disks: string[];
  registeredMs: number;
}

export type RpType = 'CRASH' | 'APP';

/** Who pinned an RP, why and when: a pinned RP lives whatever the policy says. */
export interface RpPin {
  by: string;
  reason: string;
  atMs: number;
}

export interface RecoveryPoint {
  pairId: string;
  seq: number;
  type: RpType;
  tag?: string;
  /** Source time of the boundary. */
  atMs: number;
  // The facts applyPolicy judges it by later (core/retention.ts), stored at creation:
  /** Source time of the previous RP of any type, if there was one. */
  prevAtMs?: number;
  /** Source time of the previous ACRP, if there was one (ACRPs only). */
  prevAppAtMs?: number;
  /**
   * Epoch seconds; DynamoDB TTL deletes the item some time after. Absent while pinned (TTL
   * never deletes it then); a live RP has it in the future or is pinned (rpLives).
   */
  expiresAtSec?: number;
  /** The tiers that keep it (what applyPolicy answered). */
  keptBy: string[];
  /** The `retention.rev` of the pair's policy it was judged under; absent on items written before RPs kept their facts. */
  policyRev?: number;
  pinned?: RpPin;
}

export interface QuarantineRecord {
  pairId: string;
  seq: number;
  key: string;
  code: string;
  reason: string;
  atMs: number;
}

/** The state a pair being seeded shows (when no error overrides it). */
export const seedingState = (pair: Pick<Pair, 'seed'>): 'SEEDING' | 'SEED_FAILED' => (pair.seed?.status === 'FAILED' ? 'SEED_FAILED' : 'SEEDING');

/** Whether a pair's seed run has ended (REPLICATING, SEED_FAILED, …) rather than waiting, running or about to re-run. */
export const seedRunEnded = (pair: Pick<Pair, 'state' | 'seed'>): boolean => pair.state !== 'CONFIGURED' && pair.state !== 'SEEDING' && pair.seed?.status !== 'RUNNING';
