// In-memory ReplicaIndex: for benches and tests of code above the port (bench/history.ts runs a
// simulated week through it). Same conditional semantics as adapters/dynamo-index.ts
// (test/replica-index.test.ts runs one suite on both): a batch registers once per seq (a second
// registration returns the first); commitAdvance, commitRpCheck, setRetention, the seed updates
// and the RP judgements write nothing and return false when their condition fails; reads list
// what DynamoDB would (expired RPs filtered at nowSec, pinned ones kept). Every read returns a
// copy, without undefined fields (as the document client's removeUndefinedValues stores them).
//
// What lives beside the port: the pair's compactedThrough and the BATCH# deletes are written by
// the history index in DynamoDB (same table); historyHooks() wires a MemoryHistory to them.
// DynamoDB's TTL deletes expired RP items some time after expiry: expireRps(nowSec) does it
// when the caller says (until then getRecoveryPoint still returns them, as in AWS).

import { countAtOrBelow } from '../core/sorted';
import type { AdvancePlan } from '../core/advance';
import { seqKey } from '../core/keys';
import type { BatchRecord, Pair, PairError, PairState, QuarantineRecord, RecoveryPoint, RpPin, RpType } from '../core/model';
import type { RetentionPolicy } from '../core/retention';
import type { MemoryHistoryHooks } from './memory-history';
import type { RegisterResult, ReplicaIndex, RpCheckChange, RpExpect, RpPage, RpRejudged, SeedUpdate } from '../replica/ports';

/** DynamoDB's per-transaction item limit (commitAdvance and activateSeed write one transaction). */
const MAX_TRANSACTION_ITEMS = 100;

type StoredPair = Pair & { rev: number; updatedMs?: number };

interface PairItems {
  /** The PAIR item; absent while only other items of the partition exist (DynamoDB writes them regardless). */
  pair?: StoredPair;
  batches: Map<number, BatchRecord>;
  /** Seqs of `batches`, ascending. */
  batchSeqs: number[];
  rps: Map<number, RecoveryPoint>;
  /** Seqs of `rps`, ascending. */
  rpSeqs: number[];
  /** By sort key (QUAR#{seq}#{object name}): a redelivery rewrites the same record. */
  quarantine: Map<string, QuarantineRecord>;
}

/** A copy without undefined fields, at any depth (what DynamoDB stores of a document). */
function stored<T>(v: T): T {
  if (Array.isArray(v)) return v.map(stored) as T;
  if (v === null || typeof v !== 'object') return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) if (x !== undefined) out[k] = stored(x);
  return out as T;
}


function insertSorted(a: number[], v: number): void {
  if (a.length === 0 || a[a.length - 1] < v) a.push(v); // the usual case: seqs arrive ascending
  else a.splice(countAtOrBelow(a, v), 0, v);
}

function removeSorted(a: number[], v: number): void {
  const i = countAtOrBelow(a, v) - 1;
  if (i >= 0 && a[i] === v) a.splice(i, 1);
}

/** An RP lives in a listing: pinned, or its expiry after nowSec (DynamoDB's `expiresAt > :now OR attribute_exists(pinned)`). */
const listedLive = (rp: RecoveryPoint, nowSec: number): boolean => rp.pinned !== undefined || (rp.expiresAtSec !== undefined && rp.expiresAtSec > nowSec);

export class MemoryIndex implements ReplicaIndex {
  private readonly pairs = new Map<string, PairItems>();

  /** `now` stamps updatedMs and the state changes the adapter times itself (DynamoDB's uses Date.now). */
  constructor(private readonly now: () => number = Date.now) {}

  /** The partition of a pair whose PAIR item exists. */
  private items(pairId: string): (PairItems & { pair: StoredPair }) | undefined {
    const p = this.pairs.get(pairId);
    return p?.pair ? (p as PairItems & { pair: StoredPair }) : undefined;
  }

  /** The pair's partition, created empty if need be. */
  private partition(pairId: string): PairItems {
    let p = this.pairs.get(pairId);
    if (!p) {
      p = { batches: new Map(), batchSeqs: [], rps: new Map(), rpSeqs: [], quarantine: new Map() };
      this.pairs.set(pairId, p);
    }
    return p;
  }

  async createPair(pair: Pair): Promise<void> {
    const p = this.partition(pair.pairId);
    if (p.pair) throw new Error(`pair '${pair.pairId}' already exists`);
    p.pair = stored({ rev: 0, ...pair });
  }

  async getPair(pairId: string): Promise<(Pair & { rev: number }) | undefined> {
    const p = this.items(pairId);
    return p ? structuredClone(p.pair) : undefined;
  }

  async registerBatch(pairId: string, batch: BatchRecord): Promise<RegisterResult> {
    // DynamoDB puts the item under the pair's partition whether or not the PAIR item exists.
    const p = this.partition(pairId);
    const existing = p.batches.get(batch.seq);
    if (existing) return { registered: false, existing: structuredClone(existing) };
    p.batches.set(batch.seq, stored(batch));
    insertSorted(p.batchSeqs, batch.seq);
    return { registered: true };
  }

  async batchesAfter(pairId: string, afterSeq: number, limit: number): Promise<BatchRecord[]> {
    const p = this.pairs.get(pairId);
    if (!p) return [];
    const from = countAtOrBelow(p.batchSeqs, afterSeq);
    return p.batchSeqs.slice(from, from + Math.max(0, limit)).map((s) => structuredClone(p.batches.get(s)!));
  }

  async segmentsUpTo(pairId: string, uptoSeq: number): Promise<BatchRecord[]> {
    const p = this.pairs.get(pairId);
    if (!p) return [];
    return p.batchSeqs.slice(0, countAtOrBelow(p.batchSeqs, uptoSeq)).map((s) => structuredClone(p.batches.get(s)!));
  }

  async commitAdvance(pairId: string, rev: number, plan: AdvancePlan, error?: { next?: PairError }): Promise<boolean> {
    const count = 1 + plan.rps.length;
    if (count > MAX_TRANSACTION_ITEMS) throw new RangeError(`advance plan of ${count} items exceeds one transaction`);
    const p = this.items(pairId);
    if (!p || p.pair.rev !== rev) return false;
    const now = this.now();
    const pr = plan.progress;
    const next: StoredPair = { ...p.pair, watermark: pr.watermark, rev: rev + 1, updatedMs: now };
    for (const f of ['watermarkMs', 'lastRpMs', 'lastAppRpMs', 'resyncing', 'lastRpSeq', 'rpMadeMs', 'rpCheckDueMs'] as const) {
      if (pr[f] !== undefined) (next as unknown as Record<string, unknown>)[f] = pr[f];
    }
    if (error?.next) {
      next.error = stored(error.next);
      next.stateChangedMs = now;
    } else if (error) {
      next.state = plan.state ?? 'REPLICATING';
      next.stateChangedMs = now;
      delete next.error;
    } else if (plan.state) {
      next.state = plan.state;
      next.stateChangedMs = now;
    }
    p.pair = next;
    for (const rp of plan.rps) this.putRp(p, rp);
    return true;
  }

  async commitRpCheck(pairId: string, rev: number, change: RpCheckChange): Promise<boolean> {
    const p = this.items(pairId);
    if (!p || p.pair.rev !== rev) return false;
    const next: StoredPair = { ...p.pair, rev: rev + 1, updatedMs: this.now() };
    if (change.made) {
      const pr = change.made.progress;
      Object.assign(next, stored({ lastRpMs: pr.lastRpMs, lastRpSeq: pr.lastRpSeq, rpMadeMs: pr.rpMadeMs }));
    }
    if (change.rpCheckDueMs !== undefined) next.rpCheckDueMs = change.rpCheckDueMs;
    else delete next.rpCheckDueMs;
    p.pair = next;
    if (change.made) this.putRp(p, change.made.rp);
    return true;
  }

  private putRp(p: PairItems, rp: RecoveryPoint): void {
    if (!p.rps.has(rp.seq)) insertSorted(p.rpSeqs, rp.seq);
    p.rps.set(rp.seq, stored(rp));
  }

  async quarantine(r: QuarantineRecord, blocksWatermark: boolean): Promise<void> {
    this.partition(r.pairId).quarantine.set(`QUAR#${seqKey(r.seq)}#${r.key.slice(r.key.lastIndexOf('/') + 1)}`, stored(r));
    // A missing PAIR item fails both conditions (watermark < seq on an absent attribute).
    const p = this.items(r.pairId);
    if (!blocksWatermark || !p || !(p.pair.watermark < r.seq)) return;
    const shown = p.pair.error;
    if (shown === undefined || shown.seq >= r.seq) {
      p.pair = { ...p.pair, error: { seq: r.seq, code: r.code, reason: r.reason, key: r.key, atMs: r.atMs }, state: 'ERROR', stateChangedMs: r.atMs, rev: p.pair.rev + 1 };
    } else {
      // A lower error stays shown; rev moves so an advance planned before this record re-reads.
      p.pair = { ...p.pair, rev: p.pair.rev + 1 };
    }
  }

  async listQuarantine(pairId: string): Promise<QuarantineRecord[]> {
    const p = this.pairs.get(pairId);
    if (!p) return [];
    return [...p.quarantine.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, r]) => structuredClone(r));
  }

  async listRecoveryPoints(pairId: string, nowSec: number, type?: RpType, page: RpPage = {}): Promise<RecoveryPoint[]> {
    const p = this.pairs.get(pairId);
    if (!p) return [];
    const limit = page.limit ?? Infinity;
    const out: RecoveryPoint[] = [];
    for (let i = page.afterSeq === undefined ? 0 : countAtOrBelow(p.rpSeqs, page.afterSeq); i < p.rpSeqs.length && out.length < limit; i++) {
      const rp = p.rps.get(p.rpSeqs[i])!;
      if ((type === 'APP' && rp.type !== 'APP') || !listedLive(rp, nowSec)) continue;
      out.push(structuredClone(rp));
    }
    return out;
  }

  async getRecoveryPoint(pairId: string, seq: number): Promise<RecoveryPoint | undefined> {
    const rp = this.pairs.get(pairId)?.rps.get(seq);
    return rp ? structuredClone(rp) : undefined;
  }

  async pinRecoveryPoint(pairId: string, seq: number, pin: RpPin, aboveSec: number): Promise<boolean> {
    const p = this.pairs.get(pairId);
    const rp = p?.rps.get(seq);
    if (!p || !rp || rp.pinned !== undefined || !(rp.expiresAtSec !== undefined && rp.expiresAtSec > aboveSec)) return false;
    const { expiresAtSec: _gone, ...rest } = rp;
    p.rps.set(seq, stored({ ...rest, pinned: pin }));
    return true;
  }

  async rejudgeRecoveryPoint(pairId: string, seq: number, expect: RpExpect, next: RpRejudged): Promise<boolean> {
    const p = this.pairs.get(pairId);
    const rp = p?.rps.get(seq);
    if (!p || !rp) return false;
    if ('pinnedAtMs' in expect) {
      if (rp.pinned?.atMs !== expect.pinnedAtMs) return false;
    } else {
      // As read, still live, not pinned meanwhile, judged under an older policy (an absent policyRev compares false in DynamoDB).
      const was = rp.expiresAtSec;
      if (was === undefined || was !== expect.expiresAtSec || !(was > expect.aboveSec) || rp.pinned !== undefined) return false;
      if (!(rp.policyRev !== undefined && rp.policyRev < next.policyRev)) return false;
    }
    const { pinned: _unpinned, ...rest } = rp;
    p.rps.set(seq, stored({ ...('pinnedAtMs' in expect ? rest : rp), expiresAtSec: next.expiresAtSec, keptBy: [...next.keptBy], policyRev: next.policyRev }));
    return true;
  }

  async setRetention(pairId: string, policy: RetentionPolicy): Promise<boolean> {
    const rev = policy.rev ?? 0;
    if (rev < 1) throw new RangeError(`setRetention of pair '${pairId}': the new policy's rev ${rev} must be ≥ 1`);
    const p = this.items(pairId);
    if (!p || (p.pair.retention?.rev ?? 0) !== rev - 1) return false;
    p.pair = { ...p.pair, retention: stored(policy), rev: p.pair.rev + 1, updatedMs: this.now() };
    return true;
  }

  async updateSeed(pairId: string, seedId: string, u: SeedUpdate): Promise<boolean> {
    const p = this.items(pairId);
    if (!p || p.pair.seed?.seedId !== seedId) return false;
    if (u.fromStates && !u.fromStates.includes(p.pair.state)) return false;
    const now = this.now();
    const seed: Record<string, unknown> = { ...p.pair.seed };
    for (const [k, v] of Object.entries(u.seed ?? {})) if (v !== undefined) seed[k] = structuredClone(v);
    for (const [k, v] of Object.entries(u.add ?? {})) seed[k] = ((seed[k] as number | undefined) ?? 0) + (v as number);
    for (const k of u.clear ?? []) delete seed[k];
    const next: StoredPair = { ...p.pair, seed: seed as unknown as Pair['seed'], rev: p.pair.rev + 1, updatedMs: now };
    if (u.state) {
      next.state = u.state;
      next.stateChangedMs = now;
    }
    if (u.base) next.base = stored(u.base);
    p.pair = next;
    return true;
  }

  async activateSeed(pairId: string, seedId: string, state: PairState, rps: RecoveryPoint[], watermark: number): Promise<boolean> {
    if (1 + rps.length > MAX_TRANSACTION_ITEMS) throw new RangeError(`seed activation of ${1 + rps.length} items exceeds one transaction`);
    const p = this.items(pairId);
    const seed = p?.pair.seed;
    if (!p || seed?.seedId !== seedId || seed.status !== 'RUNNING' || p.pair.watermark !== watermark) return false;
    // And the policy its RPs were judged under is still the pair's (set-retention moves it).
    if ((p.pair.retention?.rev ?? 0) !== (rps[0].policyRev ?? 0)) return false;
    const now = this.now();
    const last = rps[rps.length - 1];
    const lastApp = rps.filter((r) => r.type === 'APP').pop();
    p.pair = {
      ...p.pair,
      state,
      stateChangedMs: now,
      updatedMs: now,
      rev: p.pair.rev + 1,
      seed: { ...seed, status: 'DONE', finishedMs: now },
      lastRpMs: last.atMs,
      lastRpSeq: last.seq,
      rpMadeMs: now,
      ...(lastApp ? { lastAppRpMs: lastApp.atMs } : {}),
    };
    for (const rp of rps) this.putRp(p, rp);
    return true;
  }

  // What the history index writes in DynamoDB's table (not part of this port):

  /** The pair's compactedThrough, as a history publish sets it on the PAIR item (it never moves rev). */
  setCompactedThrough(pairId: string, seq: number): void {
    const p = this.items(pairId);
    if (p) p.pair = { ...p.pair, compactedThrough: seq };
  }

  /** Removes BATCH# items (idempotent), as GC does through the history index. */
  deleteBatches(pairId: string, seqs: readonly number[]): void {
    const p = this.pairs.get(pairId);
    if (!p) return;
    for (const s of seqs) if (p.batches.delete(s)) removeSorted(p.batchSeqs, s);
  }

  /** Hooks for a MemoryHistory over the same pairs: its publish and BATCH# deletes land here. */
  historyHooks(): MemoryHistoryHooks {
    return { compacted: (pairId, seq) => this.setCompactedThrough(pairId, seq), batchItemsDeleted: (pairId, seqs) => this.deleteBatches(pairId, seqs) };
  }

  /** DynamoDB's TTL: deletes RP items whose expiry is at or before nowSec (pinned ones have none). Returns how many. */
  expireRps(pairId: string, nowSec: number): number {
    const p = this.pairs.get(pairId);
    if (!p) return 0;
    const keep: number[] = [];
    for (const s of p.rpSeqs) {
      const rp = p.rps.get(s)!;
      if (rp.pinned === undefined && rp.expiresAtSec !== undefined && rp.expiresAtSec <= nowSec) p.rps.delete(s);
      else keep.push(s);
    }
    const n = p.rpSeqs.length - keep.length;
    p.rpSeqs = keep;
    return n;
  }

  /** Counts of the pair's items (benches report them). */
  counts(pairId: string): { batches: number; rps: number; quarantine: number } {
    const p = this.pairs.get(pairId);
    return { batches: p?.batches.size ?? 0, rps: p?.rps.size ?? 0, quarantine: p?.quarantine.size ?? 0 };
  }
}
