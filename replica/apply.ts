// Applying a journal object: validate, register (idempotently), advance the watermark,
// record RPs. Ordering rules (docs/design.md, "Crash safety"): the batch object is
// already durable when we run; the index is written last; every step is safe to repeat.

import { planAdvance } from '../core/advance';
import { BLOCK_SIZE, EXTENT_FLAGS, checkExtentData, decodeBatch, type DecodedBatch } from '../core/batch-format';
import { BatchError } from '../core/errors';
import { parseJournalKey } from '../core/keys';
import { MAX_SEQ_LEAD, offersRps, seedingState, type BatchRecord, type Pair, type PairError } from '../core/model';
import { checkAfterAdvance, decideRpCheck, type RpCheck, type ScheduledCheck } from '../core/rp-timer';
import { compactionDue } from '../core/compaction-trigger';
import { checkBatchPayloads } from './chunk-verifier';
import { mapLimit, sleep } from './concurrency';
import { ObjectNotFoundError, ObjectTooLargeError, type CompactionLauncher, type ObjectStore, type ReplicaIndex, type RpCheckQueue } from './ports';

export type ApplyOutcome =
  /** Registered, and the watermark now covers it. */
  | 'applied'
  /** Registered, held until the gap before it closes. */
  | 'pending'
  /** The same batch was registered before; nothing changed (beyond finishing its advance). */
  | 'duplicate'
  /** Refused and kept; see the quarantine record. */
  | 'quarantined'
  /** Not a batch of a known pair, or gone: nothing to do, nothing to retry. */
  | 'ignored';

export interface ApplyResult {
  outcome: ApplyOutcome;
  key: string;
  pairId?: string;
  seq?: number;
  detail?: string;
}

/** A batch registerObject registered: its pair's watermark has yet to be advanced over it. */
interface Registered {
  registered: true;
  key: string;
  pairId: string;
  seq: number;
  /** The pair as read before registering. */
  pair: Pair & { rev: number };
}

/** What a received RP check did (core/rp-timer.ts decides). */
export type RpCheckOutcome = 'rp' | 'rearmed' | 'cleared' | 'ignored';

export interface Logger {
  info(msg: string, data?: object): void;
  warn(msg: string, data?: object): void;
}

const quietLogger: Logger = { info: () => {}, warn: () => {} };

/** Batches advanced per index read; bounded by the RPs one transaction can hold. */
const ADVANCE_PAGE = 90;
/**
 * Largest batch object apply reads: writers cut at 8 MiB by default (the agent at 4 MiB), and
 * an invocation reads 10 objects at once, so 10 × 32 MiB stay well under the function's
 * 1,024 MB (its extents are decoded one at a time, each ≤ 1 MiB). A larger one is
 * quarantined unread instead of exhausting the function's memory on every retry.
 */
export const MAX_BATCH_OBJECT_BYTES = 32 * 1024 * 1024;

/**
 * The pause after the n-th lost commit of one advance: half of min(1 s, 10 ms × 2^n) plus up
 * to as much again at random, so that appliers of one pair spread out instead of retrying in
 * step on its item.
 */
export function lostRacePauseMs(n: number): number {
  const cap = Math.min(1000, 10 * 2 ** Math.min(n, 10));
  return cap / 2 + (Math.random() * cap) / 2;
}

export class ApplyService {
  constructor(
    private readonly store: ObjectStore,
    private readonly index: ReplicaIndex,
    private readonly log: Logger = quietLogger,
    private readonly now: () => number = Date.now,
    private readonly maxObjectBytes = MAX_BATCH_OBJECT_BYTES,
    /** Where the RP timer's checks go (the apply queue); without it no watermark is made an RP by time. */
    private readonly rpChecks?: RpCheckQueue,
    /** Starts compaction runs when a pair's L0 backlog crosses the threshold (core/compaction-trigger.ts); without it only the schedule does. */
    private readonly compaction?: CompactionLauncher,
  ) {}

  /** Applies one journal object. Throws only on transient faults, which the caller retries. */
  async applyObject(key: string): Promise<ApplyResult> {
    const r = await this.registerObject(key);
    if (!('registered' in r)) return r;
    // The pair as read before registering: if it moved since, the commit fails on rev and re-reads.
    const watermark = await this.advance(r.pairId, r.pair, r.seq);
    return this.registeredOutcome(r, watermark);
  }

  /**
   * Applies journal objects delivered together (one invocation's messages): each is read,
   * checked and registered as applyObject does, `concurrency` at a time, then each pair is
   * advanced once over all it registered, instead of once per batch: one commit where there
   * were several racing each other on the pair's rev. Same outcomes as applyObject, in the
   * order of `keys`; a transient fault is that key's `error` (its pair's advance failing is
   * every registered key's of the pair): the caller retries those, and a redelivery finds its
   * batch registered and finishes the advance.
   */
  async applyObjects(keys: readonly string[], concurrency = 4): Promise<(ApplyResult | { key: string; error: unknown })[]> {
    const registered = await mapLimit(keys, concurrency, (key) => this.registerObject(key).catch((error: unknown) => ({ key, error })));
    // Per pair, the highest seq this call registered.
    const mine = new Map<string, number>();
    for (const r of registered) if ('registered' in r) mine.set(r.pairId, Math.max(r.seq, mine.get(r.pairId) ?? 0));
    const advanced = new Map<string, { watermark: number } | { error: unknown }>();
    await Promise.all(
      [...mine].map(async ([pairId, seq]) => {
        advanced.set(pairId, await this.advance(pairId, undefined, seq).then((watermark) => ({ watermark }), (error: unknown) => ({ error })));
      }),
    );
    return registered.map((r) => {
      if (!('registered' in r)) return r;
      const a = advanced.get(r.pairId)!;
      return 'error' in a ? { key: r.key, error: a.error } : this.registeredOutcome(r, a.watermark);
    });
  }

  /**
   * Applies a journal object up to its registration: a final result (ignored, duplicate,
   * quarantined), or a batch just registered, whose pair the caller advances.
   */
  private async registerObject(key: string): Promise<ApplyResult | Registered> {
    const parsed = parseJournalKey(key);
    if (!parsed) return this.ignore(key, 'not a journal key');
    const { pair: pairId, seq } = parsed;
    // The object is read while the pair is (each is a round trip; neither needs the other).
    const got = settle(this.store.getVersion ? this.store.getVersion(key, this.maxObjectBytes) : this.store.get(key, undefined, this.maxObjectBytes).then((body) => ({ body, versionId: undefined })));
    const pair = await this.index.getPair(pairId);
    if (!pair) return this.ignore(key, `unknown pair '${pairId}'`, pairId, seq);
    // Folded into the history already: a redelivery after GC collected its BATCH# item.
    // Registering it again would leave an item no VERSION# record lists (docs/design.md, "GC").
    if (pair.compactedThrough !== undefined && seq <= pair.compactedThrough) {
      void got; // settled: never an unhandled rejection
      const detail = `seq ${seq} is at or below compactedThrough ${pair.compactedThrough}: already folded into the history`;
      this.log.info('batch ignored: compacted', { pairId, seq, key, compactedThrough: pair.compactedThrough });
      return { outcome: 'duplicate', key, pairId, seq, detail };
    }
    const read = await got;
    if ('err' in read) {
      const err = read.err;
      if (err instanceof ObjectNotFoundError) return this.ignore(key, 'object no longer exists', pairId, seq);
      if (err instanceof ObjectTooLargeError) return this.quarantine(pair, seq, key, 'MALFORMED', err.message);
      throw err;
    }
    const { body, versionId } = read.value;

    let record: BatchRecord;
    try {
      // The structure and every checksum here; the payloads' decoding and data CRC-32Cs and
      // the body's SHA-256 in a worker thread (the body goes there uncopied when it is ours).
      const sizeBytes = body.length;
      const decoded = decodeBatch(body, key, { payloads: false });
      const stored = decoded.extents.map((e, i) => ({ e, i })).filter(({ e }) => !(e.flags & EXTENT_FLAGS.ZERO));
      const payloads = stored.map(({ e }) => ({ start: e.payloadOffset, end: e.payloadOffset + e.payloadLength, zstd: (e.flags & EXTENT_FLAGS.ZSTD) !== 0, length: e.blockCount * BLOCK_SIZE }));
      const checked = await checkBatchPayloads(body, payloads, this.store.freshReads === true);
      stored.forEach(({ e, i }, n) => checkExtentData(e, checked.outcomes[n], `${key} extent ${i}`));
      record = toRecord(key, sizeBytes, checked.sha256, versionId, validate(decoded, pair, seq, key), this.now());
    } catch (err) {
      if (!(err instanceof BatchError)) throw err;
      // The record names the object; its reason, the part of it at fault (an extent) if any.
      const part = err.where.startsWith(key) ? err.where.slice(key.length).trim() : '';
      return this.quarantine(pair, seq, key, err.code, part ? `${part}: ${err.reason}` : err.reason);
    }

    const reg = await this.index.registerBatch(pairId, record);
    if (!reg.registered) {
      // The same batch again (a duplicate event, a retried upload under another key) has the same bytes.
      if (reg.existing.objectCrc !== record.objectCrc || (reg.existing.sha256 !== undefined && reg.existing.sha256 !== record.sha256)) {
        const applied = seq <= pair.watermark;
        return this.quarantine(
          pair,
          seq,
          key,
          applied ? 'REPLAY' : 'CONFLICT',
          `a different batch (${reg.existing.key}) is already ${applied ? 'applied' : 'registered'} at this seq`,
        );
      }
      // Same bytes: an event redelivery or a re-upload. Finish any advance a crash interrupted.
      await this.advance(pairId, pair);
      return { outcome: 'duplicate', key, pairId, seq };
    }
    return { registered: true, key, pairId, seq, pair };
  }

  private registeredOutcome(r: Registered, watermark: number): ApplyResult {
    const outcome = r.seq <= watermark ? 'applied' : 'pending';
    this.log.info(`batch ${outcome}`, { pairId: r.pairId, seq: r.seq, key: r.key, watermark });
    return { outcome, key: r.key, pairId: r.pairId, seq: r.seq };
  }

  /**
   * Moves the watermark over every contiguous registered batch; returns the new watermark.
   * Stopping after one successful commit is enough: a batch registered after our query is
   * advanced by its own applier, whose commit either sees ours or fails on `rev` and retries.
   */
  async advance(pairId: string, known?: Pair & { rev: number }, mine?: number): Promise<number> {
    let pair = known;
    for (let lost = 0; ; ) {
      const reread = pair === undefined;
      pair ??= await this.index.getPair(pairId);
      if (!pair) throw new Error(`pair '${pairId}' vanished during apply`);
      // Read after this applier registered `mine`: a watermark over it was committed by an
      // applier whose query saw it, and everything registered before it.
      if (reread && mine !== undefined && pair.watermark >= mine) return pair.watermark;
      const pending = await this.index.batchesAfter(pairId, pair.watermark, ADVANCE_PAGE);
      const seeded = offersRps(pair);
      const nowMs = this.now();
      const plan = planAdvance({ pairId, progress: pair, ccrpIntervalMs: pair.ccrpIntervalMs, nowMs, retention: pair.retention, pending, offerRps: seeded });
      if (plan.applied.length === 0) return pair.watermark;
      // A watermark left without an RP gets a check, sent before the commit that records it
      // (a crash between the two leaves a check the pair does not wait for: harmless). A retry
      // sends another: the first may have been delivered meanwhile.
      const check = this.rpChecks && checkAfterAdvance(plan.progress, { nowMs, ccrpIntervalMs: pair.ccrpIntervalMs, offersRps: seeded });
      if (check) plan.progress.rpCheckDueMs = (await this.sendCheck(pairId, check)).dueMs;
      // The error the watermark passed gives way to the next refused seq, if one blocks now.
      const errorUpdate =
        pair.error !== undefined && pair.error.seq <= plan.progress.watermark
          ? { next: await this.blockingError(pairId, plan.progress.watermark) }
          : undefined;
      // A pair in ERROR stays there until its error clears; then it takes the resync state.
      if (errorUpdate) plan.state = errorUpdate.next ? undefined : !seeded ? seedingState(pair) : plan.progress.resyncing ? 'RESYNCING' : 'REPLICATING';
      else if (pair.error) plan.state = undefined;
      const committed = await this.index.commitAdvance(pairId, pair.rev, plan, errorUpdate);
      const backlog = { fromWatermark: pair.watermark, toWatermark: plan.progress.watermark, compactedThrough: pair.compactedThrough ?? 0 };
      pair = undefined; // stale either way: re-read before planning again
      // Not committed: another applier moved the pair first (or held its item: a
      // TransactionConflict); after a jittered pause that grows with each loss, re-read and go
      // on from there.
      if (!committed) {
        await sleep(lostRacePauseMs(++lost));
        continue;
      }
      if (this.compaction && seeded && compactionDue(backlog)) await this.requestCompaction(pairId);
      for (const rp of plan.rps) this.log.info('recovery point', { pairId, seq: rp.seq, type: rp.type, tag: rp.tag });
      const truncated = plan.applied.length < pending.length && pending[plan.applied.length].seq === plan.progress.watermark + 1;
      if (!truncated && pending.length < ADVANCE_PAGE) return plan.progress.watermark;
    }
  }

  /**
   * Asks for a compaction run. A failure is logged, not thrown: the batch is applied, and the
   * schedule starts the run the trigger missed (within its period).
   */
  private async requestCompaction(pairId: string): Promise<void> {
    try {
      await this.compaction!.start(pairId, 'backlog', this.now());
      this.log.info('compaction requested', { pairId });
    } catch (err) {
      this.log.warn('compaction request failed; the schedule will start it', { pairId, error: String(err) });
    }
  }

  /**
   * Handles a check of the RP timer (a delayed message on the apply queue): makes the
   * watermark an RP if it has been without one for ccrpInterval, else sends the next check
   * or clears the pending mark (core/rp-timer.ts). Idempotent: a duplicate finds the work
   * done or a later check pending. Throws only on transient faults.
   */
  async checkRp(check: RpCheck): Promise<RpCheckOutcome> {
    for (;;) {
      const pair = await this.index.getPair(check.pairId);
      if (!pair) {
        this.log.warn('rp-check ignored: unknown pair', { pairId: check.pairId, dueMs: check.dueMs });
        return 'ignored';
      }
      const nowMs = this.now();
      const d = decideRpCheck(pair, check, { nowMs, ccrpIntervalMs: pair.ccrpIntervalMs, offersRps: offersRps(pair), retention: pair.retention });
      let committed: boolean;
      if (d.action === 'ignore') {
        this.log.info('rp-check ignored', { pairId: check.pairId, dueMs: check.dueMs, reason: d.reason });
        return 'ignored';
      } else if (d.action === 'clear') {
        // Written even with no mark set: an advance about to record this very check must fail on rev and decide again.
        committed = await this.index.commitRpCheck(check.pairId, pair.rev, {});
      } else if (d.action === 'rearm') {
        if (!this.rpChecks) throw new Error(`rp-check for pair '${check.pairId}': no check queue to send the next check to`);
        committed = await this.index.commitRpCheck(check.pairId, pair.rev, { rpCheckDueMs: (await this.sendCheck(check.pairId, d.next)).dueMs });
      } else {
        committed = await this.index.commitRpCheck(check.pairId, pair.rev, { made: d });
      }
      // Not committed: an advance (or another copy of this check) moved the pair; decide again.
      if (!committed) continue;
      if (d.action === 'rp') this.log.info('recovery point', { pairId: check.pairId, seq: d.rp.seq, type: d.rp.type, by: 'timer' });
      return d.action === 'rp' ? 'rp' : d.action === 'rearm' ? 'rearmed' : 'cleared';
    }
  }

  private async sendCheck(pairId: string, s: ScheduledCheck): Promise<ScheduledCheck> {
    await this.rpChecks!.schedule({ kind: 'rp-check', pairId, dueMs: s.dueMs }, s.delaySec);
    return s;
  }

  /** The lowest quarantined seq above the watermark that has no good copy registered. */
  private async blockingError(pairId: string, watermark: number): Promise<PairError | undefined> {
    const candidates = (await this.index.listQuarantine(pairId)).filter((r) => blocksAt(r.seq, watermark)).sort((a, b) => a.seq - b.seq);
    for (const q of candidates) {
      if ((await this.index.batchesAfter(pairId, q.seq - 1, 1))[0]?.seq === q.seq) continue;
      return { seq: q.seq, code: q.code, reason: q.reason, key: q.key, atMs: q.atMs };
    }
    return undefined;
  }

  private async quarantine(pair: Pair, seq: number, key: string, code: string, reason: string): Promise<ApplyResult> {
    const blocks = blocksAt(seq, pair.watermark);
    await this.index.quarantine({ pairId: pair.pairId, seq, key, code, reason, atMs: this.now() }, blocks);
    this.log.warn('batch quarantined', { pairId: pair.pairId, seq, key, code, reason });
    return { outcome: 'quarantined', key, pairId: pair.pairId, seq, detail: `${code}: ${reason}` };
  }

  private ignore(key: string, detail: string, pairId?: string, seq?: number): ApplyResult {
    this.log.warn('object ignored', { key, detail });
    return { outcome: 'ignored', key, pairId, seq, detail };
  }
}

/** A promise's outcome as a value: started early, judged later, never an unhandled rejection. */
const settle = <T>(p: Promise<T>): Promise<{ value: T } | { err: unknown }> => p.then((value) => ({ value }), (err: unknown) => ({ err }));

/** Checks a decoded batch against its key and its pair; throws BatchError. */
function validate(b: DecodedBatch, pair: Pair, keySeq: number, where: string): DecodedBatch {
  const h = b.header;
  if (h.pairId !== pair.pairId) throw new BatchError('FOREIGN_PAIR', where, `batch belongs to pair '${h.pairId}', not '${pair.pairId}'`);
  if (h.seq !== keySeq) throw new BatchError('SEQ_MISMATCH', where, `header seq ${h.seq} != key seq ${keySeq}`);
  if (h.prevSeq !== h.seq - 1) throw new BatchError('MALFORMED', where, `previous seq ${h.prevSeq} does not precede seq ${h.seq}`);
  const sizes = h.disks.map((name) => {
    const disk = pair.disks.find((d) => d.name === name);
    if (!disk) throw new BatchError('MALFORMED', where, `disk '${name}' is not a disk of pair '${pair.pairId}'`);
    return disk.sizeBytes;
  });
  for (const e of b.extents) {
    if ((e.blockIndex + e.blockCount) * BLOCK_SIZE > sizes[e.disk]) {
      throw new BatchError('MALFORMED', where, `extent at block ${e.blockIndex} (+${e.blockCount}) ends past disk '${h.disks[e.disk]}' (${sizes[e.disk]} bytes)`);
    }
  }
  return b;
}

/**
 * Whether a refused object at `seq` holds the pair up (ERROR, shown until a good copy
 * arrives): above the watermark, and not so far ahead that it is another writer's or junk
 * (MAX_SEQ_LEAD): such a record is listed with the quarantine, and the pair replicates on.
 */
const blocksAt = (seq: number, watermark: number): boolean => seq > watermark && seq <= watermark + MAX_SEQ_LEAD;

function toRecord(key: string, sizeBytes: number, sha256: string, versionId: string | undefined, b: DecodedBatch, nowMs: number): BatchRecord {
  const h = b.header;
  return {
    seq: h.seq,
    key,
    sizeBytes,
    objectCrc: b.trailer.objectCrc,
    sha256,
    ...(versionId === undefined ? {} : { versionId }),
    firstWriteMs: h.firstWriteMs,
    cutMs: h.cutMs,
    flags: h.flags,
    appTag: h.appTag,
    extentCount: b.extents.length,
    dataBytes: b.dataBytes,
    disks: h.disks,
    registeredMs: nowMs,
  };
}
