// Domain records of the RP Store index. Their DynamoDB shape: docs/design.md, "DynamoDB items".

import type { RetentionPolicy } from './retention';

export type PairState = 'CONFIGURED' | 'SEEDING' | 'REPLICATING' | 'PAUSED' | 'RESYNCING' | 'ERROR';

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
}

/** A validated batch registered in the index (an L0 segment). Applied iff seq <= watermark. */
export interface BatchRecord {
  seq: number;
  key: string;
  sizeBytes: number;
  /** Object checksum from the trailer: tells a duplicate from a conflicting batch. */
  objectCrc: number;
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

export interface RecoveryPoint {
  pairId: string;
  seq: number;
  type: RpType;
  tag?: string;
  /** Source time of the boundary. */
  atMs: number;
  /** Epoch seconds; DynamoDB TTL deletes the item some time after. */
  expiresAtSec: number;
  keptBy: string[];
}

export interface QuarantineRecord {
  pairId: string;
  seq: number;
  key: string;
  code: string;
  reason: string;
  atMs: number;
}
