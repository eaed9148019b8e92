// The recovery workflow's steps (lib/recovery-workflow.ts; docs/design.md, "The recovery
// workflow"): plan a run (or resume one), recover one range of a disk into its part of the
// target, finish (complete the uploads or snapshots, write the snapshots' records), fail. The
// run's item holds the target's handles, the reader lease and the counters; a finished range
// leaves an item, so a resumed run does only the ranges that are not done.

import { createHash, randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { planRecoveryRanges, rangeOf, type DiskRanges } from '../core/recovery-ranges';
import { rpLives } from '../core/retention';
import { decodeSnapshotRecordHeader, encodeSnapshotRecord, SNAPSHOT_BLOCK_BYTES, snapshotRecordBytes, snapshotRecordKey, snapshotRecordPrefix } from '../core/snapshot-record';
import { mapLimit } from './concurrency';
import { materialize } from './materialize';
import type { HistoryIndex, ImageSink, KeyLister, ObjectStore, PartUploads, ReaderLease, RecoveryDisk, RecoveryRangeDone, RecoveryRun, RecoveryRuns, RecoveryTargetSpec, ReplicaIndex, SnapshotService } from './ports';
import { holdHistory } from './rp-reader';

export interface RecoveryDeps {
  /** The RP Store's bucket. */
  store: ObjectStore & KeyLister;
  index: ReplicaIndex;
  history: HistoryIndex;
  runs: RecoveryRuns;
  /** A raw image target's bucket. */
  targetStore(bucket: string): ObjectStore & PartUploads;
  snapshots?: SnapshotService;
  /** The reader lease's lifetime (default 15 min); each range renews it. */
  leaseTtlMs?: number;
  log?: (msg: string) => void;
}

export interface StartRequest {
  pairId: string;
  /** A new run's id (the execution's name), or the run to resume. */
  recoveryId: string;
  /** A new run's RP and target; a resumed run keeps its own. */
  seq?: number;
  target?: RecoveryTargetSpec;
  by?: string;
}

/** What the plan hands the Map: the run, and the ordinals of the ranges still to do (over all disks, in disk order). */
export interface RunPlan {
  pairId: string;
  recoveryId: string;
  ranges: number[];
}

export interface RangeItem {
  pairId: string;
  recoveryId: string;
  /** The range's ordinal over all disks of the run. */
  range: number;
}

const DEFAULT_LEASE_TTL_MS = 15 * 60_000;
/** A range's windows (so ≤ 3 × this per range in memory, plus the part being streamed). */
const RANGE_WINDOW_BYTES = 8 * 1024 * 1024;
const RANGE_CONCURRENCY = 8;
const RUN_ID = /^[A-Za-z0-9._-]{1,80}$/;

/** A new run's id: the pair, the seq and a nonce (≤ 80 characters: it is the execution's name too). */
export const newRecoveryId = (pairId: string, seq: number): string => `${pairId.slice(0, 50)}-${seq}-${randomBytes(4).toString('hex')}`;

/**
 * Plans a run: the RP must be live; its disks are split into ranges (core/recovery-ranges.ts);
 * the target is opened (a multipart upload per disk, or a snapshot per disk, incremental from
 * the disk's newest recovery record); a reader lease is put on the pair's history. A run that
 * exists is resumed: a new lease, the same target handles, only the ranges not done.
 */
export async function startRecovery(deps: RecoveryDeps, req: StartRequest, nowMs = Date.now()): Promise<RunPlan> {
  if (!RUN_ID.test(req.recoveryId)) throw new InvalidArgumentError(`recovery id '${req.recoveryId}' must be 1-80 of [A-Za-z0-9._-]`);
  let run = await deps.runs.getRecovery(req.pairId, req.recoveryId);
  if (!run) {
    if (req.seq === undefined || !req.target) throw new InvalidArgumentError(`pair '${req.pairId}' has no recovery run '${req.recoveryId}' to resume`);
    run = await newRun(deps, req as Required<StartRequest>, nowMs);
  } else if (run.status === 'COMPLETED') {
    return { pairId: run.pairId, recoveryId: run.id, ranges: [] };
  } else {
    await releaseLease(deps, run);
    run.attempts++;
  }
  const rp = await deps.index.getRecoveryPoint(run.pairId, run.seq);
  if (!rp || !rpLives(rp, nowMs)) throw new InvalidArgumentError(`pair '${run.pairId}' has no live recovery point at seq ${run.seq}`);

  // The lease, then the target's handles (a resumed run keeps those it has).
  const lease: ReaderLease = { id: `recovery-${run.id}-${run.attempts}`.slice(0, 100), kind: 'recovery', seq: run.seq, manifestVersion: 0, expiresMs: 0 };
  const ttl = deps.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
  const head = await holdHistory(deps.history, run.pairId, lease, async () => {
    lease.expiresMs = Date.now() + ttl;
    await deps.history.putReaderLease(run!.pairId, lease);
  });
  try {
    const disks = await openTarget(deps, run);
    await deps.runs.updateRecovery(run.pairId, run.id, { status: 'RUNNING', attempts: run.attempts, disks, lease: { id: lease.id, head }, error: '' });
  } catch (err) {
    await releaseLease(deps, { ...run, lease: { id: lease.id, head } });
    throw err;
  }
  const done = new Set((await deps.runs.rangesDone(run.pairId, run.id)).map((r) => `${r.disk}#${r.index}`));
  const ranges: number[] = [];
  let ordinal = 0;
  for (const d of run.disks) for (let i = 0; i < d.ranges; i++, ordinal++) if (!done.has(`${d.name}#${i}`)) ranges.push(ordinal);
  deps.log?.(`recovery ${run.id}: pair '${run.pairId}' RP ${run.seq}, attempt ${run.attempts}, ${ranges.length} of ${run.rangesTotal} ranges to do`);
  return { pairId: run.pairId, recoveryId: run.id, ranges };
}

async function newRun(deps: RecoveryDeps, req: Required<StartRequest>, nowMs: number): Promise<RecoveryRun> {
  const pair = await deps.index.getPair(req.pairId);
  if (!pair) throw new UnknownPairError(req.pairId);
  if (req.target.kind === 'ebs' && !deps.snapshots) throw new InvalidArgumentError('this deployment has no EBS access for recovery into a snapshot');
  const plan = planRecoveryRanges(pair.disks);
  const run: RecoveryRun = {
    id: req.recoveryId,
    pairId: req.pairId,
    seq: req.seq,
    target: req.target,
    status: 'RUNNING',
    by: req.by || 'unknown',
    startedMs: nowMs,
    updatedMs: nowMs,
    attempts: 1,
    totalBytes: pair.disks.reduce((n, d) => n + d.sizeBytes, 0),
    doneBytes: 0,
    rangesTotal: plan.reduce((n, d) => n + d.ranges, 0),
    rangesDone: 0,
    disks: plan.map((d) => ({ name: d.disk, sizeBytes: d.sizeBytes, rangeBytes: d.rangeBytes, ranges: d.ranges })),
  };
  // A second start with the same id (a retried task) finds the run and resumes it.
  if (!(await deps.runs.createRecovery(run))) return (await deps.runs.getRecovery(req.pairId, req.recoveryId))!;
  return run;
}

/** Each disk's upload or snapshot, started where the run has none yet. */
async function openTarget(deps: RecoveryDeps, run: RecoveryRun): Promise<RecoveryDisk[]> {
  const t = run.target;
  return Promise.all(
    run.disks.map(async (d): Promise<RecoveryDisk> => {
      if (t.kind === 's3') {
        if (d.uploadId) return d;
        const key = `${t.prefix.replace(/\/$/, '')}/${d.name}.img`;
        return { ...d, key, uploadId: await deps.targetStore(t.bucket).startUpload(key) };
      }
      if (d.snapshotId) return d;
      const parent = await newestRecord(deps, run.pairId, d.name);
      const started = await deps.snapshots!.start({
        sizeBytes: d.sizeBytes,
        parentSnapshotId: parent?.snapshotId,
        // One snapshot per run and disk, however often this step is retried.
        clientToken: createHash('sha256').update(`${run.pairId}\0${run.id}\0${d.name}`).digest('hex').slice(0, 48),
        description: `livesync pair ${run.pairId} disk ${d.name} RP ${run.seq}`,
        tags: { 'livesync:pair': run.pairId, 'livesync:disk': d.name, 'livesync:rp': String(run.seq), 'livesync:recovery': run.id },
      });
      return {
        ...d,
        snapshotId: started.snapshotId,
        ...(started.parentId && parent ? { parentSnapshotId: started.parentId, parentRecordKey: parent.key, parentSumsOffset: parent.sumsOffset } : {}),
        ...(started.parentRefused ? { parentRefused: started.parentRefused } : {}),
      };
    }),
  );
}

/**
 * The disk's newest snapshot record whose header decodes (core/snapshot-record.ts, as a whole
 * record is judged) and whose length fits it: its key, snapshot and where its sums start (the
 * ranges read their sums by range). A record that does not is said and skipped.
 */
async function newestRecord(deps: RecoveryDeps, pairId: string, disk: string): Promise<{ key: string; snapshotId: string; sumsOffset: number } | undefined> {
  const keys = (await deps.store.listKeys(snapshotRecordPrefix(pairId, disk))).sort().reverse();
  for (const key of keys) {
    try {
      const size = (await deps.store.size(key)) ?? 0;
      const h = decodeSnapshotRecordHeader(await deps.store.get(key, { start: 0, end: Math.min(size, 4096) }), key);
      if (h.pairId !== pairId || h.disk !== disk) throw new Error(`snapshot record ${key} names pair '${h.pairId}' disk '${h.disk}'`);
      if (size !== snapshotRecordBytes(h)) throw new Error(`snapshot record ${key}: ${size} bytes, its header says ${snapshotRecordBytes(h)}`);
      return { key, snapshotId: h.snapshotId, sumsOffset: h.sumsOffset };
    } catch (err) {
      deps.log?.(`${(err as Error).message}: not used`);
    }
  }
  return undefined;
}

/** The disk and range of ordinal `n` of the run. */
function rangeAt(run: RecoveryRun, n: number): { disk: RecoveryDisk; plan: DiskRanges; index: number } {
  let rest = n;
  for (const disk of run.disks) {
    if (rest < disk.ranges) return { disk, plan: { disk: disk.name, sizeBytes: disk.sizeBytes, rangeBytes: disk.rangeBytes, ranges: disk.ranges }, index: rest };
    rest -= disk.ranges;
  }
  throw new InvalidArgumentError(`recovery run '${run.id}' has ${run.rangesTotal} ranges, not ${n + 1}`);
}

/**
 * Recovers one range under the run's lease into its part of the target: a part of the disk's
 * multipart upload (dense: zeros too), or the range's blocks of the disk's snapshot (with its
 * sums kept for the record). Then records it done, once.
 */
export async function recoverRange(deps: RecoveryDeps, item: RangeItem, nowMs = Date.now()): Promise<{ range: number; bytes: number; dataBytes: number }> {
  const run = await deps.runs.getRecovery(item.pairId, item.recoveryId);
  if (!run) throw new InvalidArgumentError(`pair '${item.pairId}' has no recovery run '${item.recoveryId}'`);
  if (!run.lease) throw new Error(`recovery run '${run.id}' holds no lease: it was not planned`);
  const { disk, plan, index } = rangeAt(run, item.range);
  const r = rangeOf(plan, index);
  const bytes = r.end - r.start;
  const done: RecoveryRangeDone = { disk: disk.name, index, bytes, dataBytes: 0 };
  let sink: ImageSink;
  let after: () => Promise<void>;
  if (run.target.kind === 's3') {
    const part = partSink(deps.targetStore(run.target.bucket), disk.key!, disk.uploadId!, index + 1, bytes);
    sink = part;
    after = async () => void (done.etag = await part.etag);
  } else {
    const firstBlock = r.start / SNAPSHOT_BLOCK_BYTES;
    const blocks = Math.ceil(bytes / SNAPSHOT_BLOCK_BYTES);
    const parentSums = disk.parentRecordKey ? await parentSumsOf(deps.store, disk, firstBlock, blocks) : undefined;
    const b = deps.snapshots!.blocks({ snapshotId: disk.snapshotId!, firstBlock, blocks, parentSums });
    sink = b;
    after = async () => {
      done.blocksWritten = b.blocksWritten;
      done.sumsKey = rangeSumsKey(run, disk.name, index);
      await deps.store.put(done.sumsKey, b.sums);
    };
  }
  const res = await materialize(deps.store, deps.index, {
    pairId: run.pairId,
    seq: run.seq,
    history: deps.history,
    heldLease: run.lease,
    leaseTtlMs: deps.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
    only: { disk: disk.name, start: r.start, end: r.end },
    windowBytes: RANGE_WINDOW_BYTES,
    concurrency: RANGE_CONCURRENCY,
    nowMs,
    sinkFor: async () => sink,
  });
  await after();
  done.dataBytes = res.disks[0].dataBytes;
  await deps.runs.recordRange(run.pairId, run.id, done, Date.now());
  return { range: item.range, bytes, dataBytes: done.dataBytes };
}

/** The parent record's sums of blocks [firstBlock, firstBlock + blocks), as far as the parent has them (one ranged GET). */
async function parentSumsOf(store: ObjectStore, disk: RecoveryDisk, firstBlock: number, blocks: number): Promise<Buffer | undefined> {
  const size = await store.size(disk.parentRecordKey!);
  const start = disk.parentSumsOffset! + firstBlock * 32;
  if (size === undefined) throw new Error(`snapshot record ${disk.parentRecordKey} is gone: the snapshot's parent cannot be compared with`);
  if (start >= size) return Buffer.alloc(0); // the parent was smaller: no block of it here
  return store.get(disk.parentRecordKey!, { start, end: Math.min(size, start + blocks * 32) });
}

/** Where a range of a run into EBS keeps its blocks' sums until finish assembles the snapshot's record. */
const rangeSumsKey = (run: RecoveryRun, disk: string, index: number): string => `pairs/${run.pairId}/recoveries/runs/${run.id}/${disk}/${String(index).padStart(6, '0')}.sums`;

/** A sink streaming a range's windows, in order and dense (zeros too), as one part of a multipart upload. */
function partSink(target: PartUploads, key: string, uploadId: string, partNumber: number, length: number): ImageSink & { etag: Promise<string> } {
  const stream = new PassThrough({ highWaterMark: 8 * 1024 * 1024 });
  const etag = target.uploadPart(key, uploadId, partNumber, stream, length);
  etag.catch(() => {}); // surfaced by close()
  let written = 0;
  return {
    etag,
    async write(_offset, window) {
      written += window.length;
      if (!stream.write(window)) await Promise.race([new Promise((r) => stream.once('drain', r)), etag]);
    },
    async close() {
      stream.end();
      await etag;
      if (written !== length) throw new Error(`part ${partNumber} of ${key}: ${written} bytes written, ${length} expected`);
    },
    async abort(err) {
      stream.destroy(err);
      await etag.catch(() => {});
    },
  };
}

/**
 * Finishes a run whose ranges are all done: completes each disk's upload (and checks the
 * object's size) or snapshot (ChangedBlocksCount: the blocks the ranges put) and writes the
 * snapshot's record from the ranges' sums; then gives up the lease. Done twice, it does nothing more.
 */
export async function finishRecovery(deps: RecoveryDeps, req: { pairId: string; recoveryId: string }, nowMs = Date.now()): Promise<{ recoveryId: string; outputs: Record<string, string> }> {
  const run = await deps.runs.getRecovery(req.pairId, req.recoveryId);
  if (!run) throw new InvalidArgumentError(`pair '${req.pairId}' has no recovery run '${req.recoveryId}'`);
  if (run.status === 'COMPLETED') return { recoveryId: run.id, outputs: run.outputs ?? {} };
  const done = await deps.runs.rangesDone(run.pairId, run.id);
  const missing = run.rangesTotal - done.length;
  if (missing !== 0) throw new Error(`recovery run '${run.id}': ${missing} of ${run.rangesTotal} ranges are not done`);
  const outputs: Record<string, string> = {};
  const disks: RecoveryDisk[] = [];
  for (const d of run.disks) {
    const ranges = done.filter((r) => r.disk === d.name).sort((a, b) => a.index - b.index);
    if (run.target.kind === 's3') {
      const target = deps.targetStore(run.target.bucket);
      try {
        await target.completeUpload(d.key!, d.uploadId!, ranges.map((r) => ({ partNumber: r.index + 1, etag: r.etag! })));
      } catch (err) {
        // A retried finish: the upload was completed by the attempt before (checked by size below).
        if ((err as Error).name !== 'NoSuchUpload') throw err;
      }
      const size = await target.size(d.key!);
      if (size !== d.sizeBytes) throw new Error(`recovered image s3://${run.target.bucket}/${d.key} is ${size} bytes, the disk ${d.sizeBytes}`);
      outputs[d.name] = `s3://${run.target.bucket}/${d.key}`;
      disks.push(d);
    } else {
      const sums = Buffer.concat(await mapLimit(ranges, 16, (r) => deps.store.get(r.sumsKey!)));
      const record = { pairId: run.pairId, disk: d.name, seq: run.seq, snapshotId: d.snapshotId!, sizeBytes: d.sizeBytes, sums };
      const encoded = encodeSnapshotRecord(record); // checks the sums cover the disk
      const blocksWritten = ranges.reduce((n, r) => n + (r.blocksWritten ?? 0), 0);
      await completeOnce(deps.snapshots!, d.snapshotId!, blocksWritten);
      await deps.store.put(snapshotRecordKey(record), encoded);
      outputs[d.name] = d.snapshotId!;
      disks.push({ ...d, blocksWritten });
    }
  }
  await deps.runs.updateRecovery(run.pairId, run.id, { status: 'COMPLETED', finishedMs: nowMs, outputs, disks, error: '' });
  await releaseLease(deps, run);
  deps.log?.(`recovery ${run.id}: done, ${JSON.stringify(outputs)}`);
  return { recoveryId: run.id, outputs };
}

/** CompleteSnapshot; one already completed (a retried finish) is fine. */
async function completeOnce(snapshots: SnapshotService, id: string, changed: number): Promise<void> {
  try {
    await snapshots.complete(id, changed);
  } catch (err) {
    if (!/completed/i.test((err as Error).message)) throw err;
  }
}

/**
 * Gives up the run's lease by letting it lapse now (a put with expiresMs = now; the table's TTL
 * removes the item): the workflow's roles delete nothing, index items included. A range still
 * renewing it then stops with ReaderLeaseLostError.
 */
async function releaseLease(deps: RecoveryDeps, run: Pick<RecoveryRun, 'pairId' | 'seq' | 'lease'>): Promise<void> {
  if (!run.lease) return;
  const now = Date.now();
  await deps.history.putReaderLease(run.pairId, { id: run.lease.id, kind: 'recovery', seq: run.seq, manifestVersion: run.lease.head.version, expiresMs: now }).catch(() => {});
}

/** A run that failed: FAILED with the reason, its lease given up; its uploads and snapshots stay for a resume. */
export async function failRecovery(deps: RecoveryDeps, req: { pairId: string; recoveryId: string; error?: { Error?: string; Cause?: string } }): Promise<{ reason: string }> {
  const reason = recoveryFailure(req.error);
  const run = await deps.runs.getRecovery(req.pairId, req.recoveryId);
  if (run && run.status !== 'COMPLETED') {
    await deps.runs.updateRecovery(run.pairId, run.id, { status: 'FAILED', error: reason, finishedMs: Date.now() });
    await releaseLease(deps, run);
  }
  return { reason };
}

/** The reason a Step Functions Catch carries: the task error's name and message. */
function recoveryFailure(error?: { Error?: string; Cause?: string }): string {
  if (!error) return 'unknown';
  let cause = error.Cause ?? '';
  try {
    const parsed = JSON.parse(cause) as { errorType?: string; errorMessage?: string };
    if (parsed.errorMessage) cause = `${parsed.errorType ?? error.Error}: ${parsed.errorMessage}`;
  } catch {
    // not JSON: the cause as it is
  }
  return (cause || error.Error || 'unknown').slice(0, 2000);
}
