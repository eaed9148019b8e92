// The two ports the replication core speaks through, in domain words. Adapters:
// adapters/s3-object-store.ts, adapters/memory-object-store.ts, adapters/dynamo-index.ts.

import type { Readable } from 'node:stream';
import type { AdvancePlan } from '../core/advance';
import type { BaseRef, BatchRecord, Pair, PairError, PairState, QuarantineRecord, RecoveryPoint, RpPin, RpType, SeedStatus } from '../core/model';
import type { RetentionPolicy } from '../core/retention';
import type { RpCheck, TimerRp } from '../core/rp-timer';
import type { OperationAction, OperationPhase } from '../core/failover';

export interface PutOptions {
  /**
   * The body's CRC-32C, when the caller already has it (a batch's trailer holds it): the
   * store must have the service verify it on receipt, and may then skip hashing the body
   * for the request signature.
   */
  crc32c?: number;
  /**
   * Create the object, never replace one (S3: `If-None-Match: *`). A key that exists already
   * throws ObjectExistsError and the stored object stays as it was. Journal batches and
   * backups are written this way (replica/put-once.ts); the bucket policy requires it of the
   * agent's role.
   */
  createOnly?: boolean;
}

/** Byte range, end exclusive. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * Immutable objects. Contract: read-after-write for new keys; an object is either
 * wholly visible or absent (never partial); `get` of a missing key throws ObjectNotFoundError.
 */
export interface ObjectStore {
  /**
   * true: every get() resolves with memory of its own that nothing else holds (S3's bodies), so
   * a reader may hand it to a worker thread without a copy. A store that hands out its own
   * memory (the memory store) leaves it unset.
   */
  readonly freshReads?: boolean;
  put(key: string, body: Buffer, opts?: PutOptions): Promise<void>;
  /**
   * Reads an object or a range of it; with `maxBytes`, a larger object throws
   * ObjectTooLargeError unread. With `versionId`, that version of it (a versioned bucket
   * keeps every version: what apply read stays readable whatever is written over the key).
   */
  get(key: string, range?: ByteRange, maxBytes?: number, versionId?: string): Promise<Buffer>;
  /**
   * Reads the current object and says which version it read: the id S3 gives when the bucket
   * is versioned (Object Lock), else undefined. Stores without versions may leave it out.
   */
  getVersion?(key: string, maxBytes?: number): Promise<{ body: Buffer; versionId?: string }>;
  /** Streams a large object (multipart where the backend has it). */
  upload(key: string, body: Readable): Promise<void>;
  /** The object's size, or undefined when there is no such object. */
  size(key: string): Promise<number | undefined>;
}

/** Lists keys, as S3's ListObjectsV2 does: those under `prefix` after `startAfter`, ascending. */
export interface KeyLister {
  listKeys(prefix: string, startAfter?: string): Promise<string[]>;
}

export class ObjectNotFoundError extends Error {
  constructor(readonly key: string) {
    super(`object '${key}' not found`);
    this.name = 'ObjectNotFoundError';
  }
}

/** A create-only put found its key taken (S3: 412 PreconditionFailed); nothing was written. */
export class ObjectExistsError extends Error {
  constructor(readonly key: string) {
    super(`object '${key}' exists already: a create-only write does not replace it`);
    this.name = 'ObjectExistsError';
  }
}

export class ObjectTooLargeError extends Error {
  constructor(readonly key: string, readonly size: number, readonly limit: number) {
    super(`object '${key}' is ${size} bytes, over the limit of ${limit}`);
    this.name = 'ObjectTooLargeError';
  }
}

export type RegisterResult = { registered: true } | { registered: false; existing: BatchRecord };

/** The RP Store index: pairs, registered batches (L0 segments), RPs, quarantine. */
export interface ReplicaIndex {
  createPair(pair: Pair): Promise<void>;
  /** Strongly consistent read, with `rev` for optimistic concurrency. */
  getPair(pairId: string): Promise<(Pair & { rev: number }) | undefined>;
  /** Registers a validated batch once; a second registration of the seq returns the first. */
  registerBatch(pairId: string, batch: BatchRecord): Promise<RegisterResult>;
  /** Registered batches with seq > afterSeq, ascending. */
  batchesAfter(pairId: string, afterSeq: number, limit: number): Promise<BatchRecord[]>;
  /** Applied batches with seq <= uptoSeq, ascending: the segments an RP at uptoSeq reads. */
  segmentsUpTo(pairId: string, uptoSeq: number): Promise<BatchRecord[]>;
  /**
   * Writes an advance plan atomically if the pair is still at `rev`; false if it moved
   * (another applier won; re-read and retry). With `error`, the pair's error (which the
   * watermark passed) is replaced by `error.next`, or cleared and the pair REPLICATING.
   */
  commitAdvance(pairId: string, rev: number, plan: AdvancePlan, error?: { next?: PairError }): Promise<boolean>;
  /**
   * Writes what an RP check decided, atomically if the pair is still at `rev` (false if it
   * moved), and moves `rev` on: the RP with the pair's RP bookkeeping, if any, and the
   * pending check's due time (undefined removes it).
   */
  commitRpCheck(pairId: string, rev: number, change: RpCheckChange): Promise<boolean>;
  /** Keeps a record of a refused batch; marks the pair ERROR if the batch blocks its watermark. */
  quarantine(record: QuarantineRecord, blocksWatermark: boolean): Promise<void>;
  listQuarantine(pairId: string): Promise<QuarantineRecord[]>;
  /**
   * Live RPs (pinned, or unexpired at nowSec), ascending by seq; only ACRPs when type is APP;
   * with `page`, those above `afterSeq`, at most `limit`. Compaction takes its retained points from it.
   */
  listRecoveryPoints(pairId: string, nowSec: number, type?: RpType, page?: RpPage): Promise<RecoveryPoint[]>;
  /** The RP item at `seq` (strongly consistent), expired or not until TTL deletes it: judge it with rpLives. */
  getRecoveryPoint(pairId: string, seq: number): Promise<RecoveryPoint | undefined>;
  /**
   * Pins RP `seq` (sets `pinned`, removes its expiry) if it exists, is not pinned and expires
   * after `aboveSec`; false otherwise (nothing written).
   */
  pinRecoveryPoint(pairId: string, seq: number, pin: RpPin, aboveSec: number): Promise<boolean>;
  /**
   * Replaces an RP's expiry, keptBy and policyRev if it is as `expect` says (false otherwise,
   * nothing written): pinned at `pinnedAtMs` (the pin is removed: an unpin), or unpinned with
   * expiry `expiresAtSec` > `aboveSec` and judged under a policy older than `next.policyRev`.
   */
  rejudgeRecoveryPoint(pairId: string, seq: number, expect: RpExpect, next: RpRejudged): Promise<boolean>;
  /**
   * Writes the pair's retention policy (`policy.rev` ≥ 1) if its current one is at `policy.rev`
   * − 1, and moves the pair's `rev` on (so advances and RP checks planned under the old one
   * plan again); false if the pair is missing or its policy moved.
   */
  setRetention(pairId: string, policy: RetentionPolicy): Promise<boolean>;
  /**
   * Updates the pair's seed run `seedId` (false if the pair's run is another one or its
   * state is not in `fromStates`): fields of `seed`, counters added to it, the state, the base.
   */
  updateSeed(pairId: string, seedId: string, u: SeedUpdate): Promise<boolean>;
  /**
   * Ends seed run `seedId` in one transaction: the pair takes `state`, the run is DONE and
   * `rps` (the first RP, then any over batches applied while seeding; ascending, ≤ 98) are
   * written, provided the watermark is still `watermark` (the one the RPs were planned at: a
   * batch applied meanwhile, while no RP timer ran for the pair, makes it plan again).
   */
  activateSeed(pairId: string, seedId: string, state: PairState, rps: RecoveryPoint[], watermark: number): Promise<boolean>;
}

/** A page of RPs: those with seq > afterSeq (default: all, seq 0 included), at most `limit` (default all). */
export interface RpPage {
  afterSeq?: number;
  limit?: number;
}

/** What rejudgeRecoveryPoint expects the stored RP to be. */
export type RpExpect = { pinnedAtMs: number } | { expiresAtSec: number; aboveSec: number };

/** An RP's new judgement. */
export interface RpRejudged {
  expiresAtSec: number;
  keptBy: string[];
  policyRev: number;
}

export interface RpCheckChange {
  made?: TimerRp;
  rpCheckDueMs?: number;
}

/** Messages to the apply path itself, delivered later: the RP timer's checks (SQS DelaySeconds). */
export interface RpCheckQueue {
  /** Delivers `check` to the apply handler, at least once, no sooner than `delaySec` (0..900) from now. */
  schedule(check: RpCheck, delaySec: number): Promise<void>;
}

export interface SeedUpdate {
  seed?: Partial<SeedStatus>;
  add?: { rangesDone?: number; bytesDone?: number; attempts?: number };
  /** Fields of `seed` removed (a re-run clears the previous failure). */
  clear?: (keyof SeedStatus)[];
  state?: PairState;
  /** The update applies only while the pair is in one of these states. */
  fromStates?: PairState[];
  base?: BaseRef;
}

/** Who asks for a compaction run: the apply path (L0 backlog), the schedule, or an operator (`livesync pair compact`, the demo). */
export type CompactionReason = 'backlog' | 'schedule' | 'operator';

/**
 * Starts a pair's compaction run (the compaction workflow's StartExecution) and returns its
 * id. For the backlog and the schedule, a run already started for the pair in the same
 * minute and reason is that run (or, ended meanwhile, undefined): concurrent appliers and
 * retried events start one run. An operator's every request is a run of its own.
 */
export interface CompactionLauncher {
  start(pairId: string, reason: CompactionReason, nowMs?: number): Promise<string | undefined>;
}

/** Starts runs of the seed workflow (Step Functions StartExecution, or the local runner behind the same API). */
export interface SeedLauncher {
  /** Starts `attempt` of run `seedId`; returns the execution's id (its ARN). */
  start(run: { pairId: string; seedId: string }, attempt: number): Promise<string>;
}

/** Deletes objects (S3 DeleteObjects, ≤ 1000 keys a call): only the history's GC calls it. Missing keys are not an error. */
export interface ObjectDeleter {
  deleteKeys(keys: string[]): Promise<void>;
}

/** The pair's history pointer (`sk = HISTORY`): the published manifest version and GC's progress. */
export interface HistoryHead {
  /** 0: never compacted (the implicit manifest, core/manifest.ts initialManifest). */
  version: number;
  /** The manifest object of `version` (absent at 0). */
  manifestKey?: string;
  frontierSeq: number;
  publishedMs: number;
  /** Every version ≤ it has been collected by GC. */
  gcVersion: number;
  /** Why the last compaction unit failed, until a publish succeeds (the old manifest stays in force meanwhile). */
  lastFailure?: CompactionFailure;
}

export interface CompactionFailure {
  /** The error, as `Name: message`. */
  reason: string;
  atMs: number;
}

/** What one publish changed (`sk = VERSION#{version:20}`): GC's work list for that version. */
export interface VersionRecord {
  version: number;
  manifestKey: string;
  publishedMs: number;
  /** Objects the previous version referenced and this one does not (its manifest object included). */
  removedKeys: string[];
  /** Batches folded by this version: their BATCH# items go before their objects (which are in removedKeys). */
  foldedSeqs: number[];
}

/** The compactor's lease (`sk = LEASE#compactor`): one unit per pair at a time, fenced by `gen`. */
export interface CompactorLease {
  holder: string;
  gen: number;
  expiresMs: number;
}

/** A reader's hold (`sk = LEASE#{id}`): its seq stays a retained point and GC keeps what `manifestVersion` references. */
export interface ReaderLease {
  id: string;
  kind: 'recovery' | 'digests' | 'export';
  seq: number;
  manifestVersion: number;
  expiresMs: number;
}

/** The history's index: manifest pointer, publishes, leases, GC bookkeeping (docs/design.md, "History"). */
export interface HistoryIndex {
  /** Strongly consistent; version 0 when nothing was ever published. */
  getHistory(pairId: string): Promise<HistoryHead>;
  /** Takes the lease if it is free or expired (gen + 1); undefined if another holds it. */
  acquireCompactor(pairId: string, holder: string, nowMs: number, ttlMs: number): Promise<CompactorLease | undefined>;
  /** Extends the lease if `gen` still holds it; false otherwise (stop: another unit took over). */
  renewCompactor(pairId: string, lease: CompactorLease, nowMs: number, ttlMs: number): Promise<boolean>;
  releaseCompactor(pairId: string, lease: CompactorLease): Promise<void>;
  /** Records why a unit failed on HISTORY (shown on the pair); the next successful publish clears it. */
  recordFailure(pairId: string, failure: CompactionFailure): Promise<void>;
  /**
   * One transaction: the lease still held (gen, unexpired at nowMs), HISTORY at `fromVersion`
   * moves to `record.version` (= fromVersion + 1) with `frontierSeq`, the VERSION# record is
   * put, and the pair's `compactedThrough` rises to `frontierSeq`. False if the lease or the
   * version moved (nothing written).
   */
  publish(pairId: string, lease: CompactorLease, fromVersion: number, record: VersionRecord, frontierSeq: number, nowMs: number): Promise<boolean>;
  putReaderLease(pairId: string, lease: ReaderLease): Promise<void>;
  /**
   * Moves a live lease's expiry to `expiresMs`; false if it is gone or expired at `nowMs` (GC
   * may then have collected what it held: the reader must start over, never revive it).
   */
  renewReaderLease(pairId: string, id: string, expiresMs: number, nowMs: number): Promise<boolean>;
  /**
   * Ends a live lease now (its expiry moved to `nowMs`; the table's TTL removes the item later):
   * a reader that is done gives up what it held without deleting anything (only GC deletes).
   * A lease that is gone or expired already is left as it is.
   */
  releaseReaderLease(pairId: string, id: string, nowMs: number): Promise<void>;
  /** Leases unexpired at nowMs. */
  listReaderLeases(pairId: string, nowMs: number): Promise<ReaderLease[]>;
  /** VERSION# records with version > afterVersion, ascending. */
  versionsAfter(pairId: string, afterVersion: number, limit: number): Promise<VersionRecord[]>;
  /** Removes BATCH# items (idempotent). */
  deleteBatchItems(pairId: string, seqs: number[]): Promise<void>;
  /** gcVersion: fromVersion → toVersion; false if it was not at fromVersion. */
  advanceGc(pairId: string, fromVersion: number, toVersion: number): Promise<boolean>;
  deleteVersionRecord(pairId: string, version: number): Promise<void>;
}

/** Where a recovery run writes: one raw image object per disk (`{prefix}/{disk}.img`), or one EBS snapshot per disk. */
export type RecoveryTargetSpec = { kind: 's3'; bucket: string; prefix: string } | { kind: 'ebs' };

/** A disk of a recovery run: its ranges, and what the target holds for it while the run goes on. */
export interface RecoveryDisk {
  name: string;
  sizeBytes: number;
  rangeBytes: number;
  ranges: number;
  /** S3: the image's key and its multipart upload. */
  key?: string;
  uploadId?: string;
  /** EBS: the snapshot being written, and the earlier recovery's it starts from (its record: key, where the sums start). */
  snapshotId?: string;
  parentSnapshotId?: string;
  parentRecordKey?: string;
  parentSumsOffset?: number;
  /** Why the newest earlier snapshot could not be the parent (a full snapshot was started instead). */
  parentRefused?: string;
  /** EBS, once finished: the blocks the run put (CompleteSnapshot's ChangedBlocksCount). */
  blocksWritten?: number;
}

export type RecoveryStatus = 'RUNNING' | 'COMPLETED' | 'FAILED';

/** A recovery run (`sk = RECOVERY#{id}`): what it recovers, into what, under which lease, and how far it is. */
export interface RecoveryRun {
  id: string;
  pairId: string;
  seq: number;
  target: RecoveryTargetSpec;
  status: RecoveryStatus;
  /** Who asked (the CLI's user, or the caller's identity). */
  by: string;
  startedMs: number;
  updatedMs: number;
  finishedMs?: number;
  /** Runs of the workflow for this recovery (a resumed one adds one). */
  attempts: number;
  totalBytes: number;
  doneBytes: number;
  rangesTotal: number;
  rangesDone: number;
  disks: RecoveryDisk[];
  /** The reader lease of the current attempt, on the manifest `head` names. */
  lease?: { id: string; head: HistoryHead };
  /** Why the last attempt failed. */
  error?: string;
  /** Per disk, what was made: `s3://bucket/key` or the snapshot id. */
  outputs?: Record<string, string>;
}

/** A finished range (`sk = RECOVERY#{id}#RANGE#{disk}#{index:6}`): the run's proof that it need not be done again. */
export interface RecoveryRangeDone {
  disk: string;
  index: number;
  bytes: number;
  dataBytes: number;
  /** S3: the part's ETag. */
  etag?: string;
  /** EBS: blocks put, and the object holding the range's block sums. */
  blocksWritten?: number;
  sumsKey?: string;
}

/** Recovery runs on the pair's partition. */
export interface RecoveryRuns {
  /** Creates the run; false if one with its id exists. */
  createRecovery(run: RecoveryRun): Promise<boolean>;
  getRecovery(pairId: string, id: string): Promise<RecoveryRun | undefined>;
  /** Sets the given fields (and updatedMs). */
  updateRecovery(pairId: string, id: string, fields: Partial<Omit<RecoveryRun, 'id' | 'pairId'>>): Promise<void>;
  /** Records a range done and adds it to the run's counters, once: false if it was recorded already. */
  recordRange(pairId: string, id: string, range: RecoveryRangeDone, nowMs: number): Promise<boolean>;
  rangesDone(pairId: string, id: string): Promise<RecoveryRangeDone[]>;
  /** The pair's runs, newest first. */
  listRecoveries(pairId: string): Promise<RecoveryRun[]>;
}

/** Multipart uploads, whose parts separate writers send in parallel (the recovery workflow's ranges). */
export interface PartUploads {
  /** Starts an upload of `key`; its id. */
  startUpload(key: string): Promise<string>;
  /** Sends part `partNumber` (1-based) of `length` bytes; its ETag. */
  uploadPart(key: string, uploadId: string, partNumber: number, body: Readable, length: number): Promise<string>;
  completeUpload(key: string, uploadId: string, parts: { partNumber: number; etag: string }[]): Promise<void>;
  abortUpload(key: string, uploadId: string): Promise<void>;
}

/** Snapshots written block by block from several writers (the EBS direct APIs). */
export interface SnapshotService {
  /** Starts a snapshot of a disk of `sizeBytes`, from `parentSnapshotId` if it can be; the same token is the same snapshot. */
  start(o: { sizeBytes: number; parentSnapshotId?: string; clientToken: string; description: string; tags: Record<string, string> }): Promise<{ snapshotId: string; parentId?: string; parentRefused?: string }>;
  /** A sink for blocks [firstBlock, firstBlock + blocks) of a started snapshot; `parentSums` the parent's sums of those blocks. */
  blocks(o: { snapshotId: string; firstBlock: number; blocks: number; parentSums?: Buffer }): ImageSink & { readonly blocksWritten: number; readonly sums: Buffer };
  complete(snapshotId: string, changedBlocks: number): Promise<void>;
}

/** Receives one disk image (or a range of it) as consecutive windows at their offsets in the disk; `dataRanges` say which bytes of a window hold data. */
export interface ImageSink {
  write(offset: number, window: Buffer, dataRanges: { start: number; end: number }[]): Promise<void>;
  /**
   * Once write() resolves, the sink holds no reference to the window: the caller fills it
   * again for a later window (a recovery then allocates its few windows once, not one per
   * 32 MiB, whose allocation each brought the process's full GC closer).
   */
  readonly doneWithWindow?: boolean;
  /**
   * write() reads only the window's data ranges (a sparse file): the other bytes of a window
   * filled again are left as they were, not zeroed first.
   */
  readonly writesDataOnly?: boolean;
  /**
   * The sink is an image file (sized sparse up front: zeros) that the reader writes into
   * itself: each window's verified data goes from the bytes read straight into the file at
   * its offset, with no window in between (one copy of every byte fewer), and `wrote` is told
   * each window's span and data ranges, in order, instead of write(). A wrapper that does not
   * pass this on gets the windows through write(), as any sink.
   */
  readonly direct?: { fd: number; wrote(offset: number, length: number, dataRanges: { start: number; end: number }[]): Promise<void> };
  close(): Promise<void>;
  /** Recovery failed: release resources and leave no partial image behind. */
  abort(err: Error): Promise<void>;
}

/** A failover operation in progress on a pair (`sk = OPERATION`): what, since when, who asked and why. */
export interface PairOperation {
  phase: OperationPhase;
  kind: 'test' | 'planned' | 'unplanned' | 'failback';
  sinceMs: number;
  by: string;
  reason: string;
  /** The RP it recovers, its recovery run, and what the run made (per disk). */
  seq?: number;
  recoveryId?: string;
  outputs?: Record<string, string>;
  /** Failback: the pair that protects the recovered disks in reverse. */
  reversePair?: string;
}

/** One transition of a pair (`sk = EVENT#{atMs:15}#{nonce}`), kept as its history. */
export interface PairEvent {
  atMs: number;
  action: OperationAction;
  from: string;
  to: string;
  by: string;
  reason: string;
  seq?: number;
  recoveryId?: string;
}

/** Failover operations and the pair's transitions. */
export interface PairOperations {
  /** The operation in progress (none: undefined) and the revision a transition must name. */
  getOperation(pairId: string): Promise<{ operation?: PairOperation; rev: number }>;
  /** One transaction: the operation becomes `next` (or none) IF still at `rev`, and `event` is recorded; false if it moved. */
  transition(pairId: string, rev: number, next: PairOperation | undefined, event: PairEvent): Promise<boolean>;
  /** The pair's transitions, oldest first. */
  listEvents(pairId: string): Promise<PairEvent[]>;
}
