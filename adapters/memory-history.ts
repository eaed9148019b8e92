// In-memory HistoryIndex: for tests of the compactor, readers and GC. Same conditional
// semantics as adapters/dynamo-history.ts (test/history-index.test.ts runs one suite on
// both): a publish whose lease (gen, expiry) or version moved writes nothing and returns
// false; acquire succeeds only on a free or expired lease and bumps gen; renew and release
// only with the gen that holds it. Every read returns a copy.
//
// The pair's `compactedThrough` lives on the PAIR item in DynamoDB, which this class does not
// have: it keeps it per pair (`compactedThrough(pairId)`, raised by publish in the same step),
// and `hooks.compacted` lets a test mirror it onto its own pair model. BATCH# items are the
// ReplicaIndex's too: deleteBatchItems records the seqs (`deletedBatchSeqs`) and calls
// `hooks.batchItemsDeleted`. Unlike DynamoDB it does not know which pairs exist: a publish
// for any pair id succeeds (DynamoDB refuses one without its PAIR item).

import type { CompactionFailure, CompactorLease, HistoryHead, HistoryIndex, ReaderLease, VersionRecord } from '../replica/ports';
import { checkAdvanceGc, checkPublish, checkReaderLease, FrontierBackwardsError } from './history-rules';

export interface MemoryHistoryHooks {
  /** Called inside publish, once it has succeeded, with the pair's new compactedThrough. */
  compacted?(pairId: string, seq: number): void;
  /** Called by deleteBatchItems (the BATCH# items are the ReplicaIndex's). */
  batchItemsDeleted?(pairId: string, seqs: number[]): void;
}

interface PairHistory {
  head: HistoryHead;
  /** Present once acquired; release keeps it (expired) so the next acquire still bumps gen. */
  compactor?: CompactorLease;
  readers: Map<string, ReaderLease>;
  versions: Map<number, VersionRecord>;
  compactedThrough?: number;
  deletedBatchSeqs: Set<number>;
}

const clone = <T>(v: T): T => structuredClone(v);

export class MemoryHistory implements HistoryIndex {
  private readonly pairs = new Map<string, PairHistory>();

  constructor(private readonly hooks: MemoryHistoryHooks = {}) {}

  /** The pair's compactedThrough (on the PAIR item in DynamoDB); undefined before the first publish. */
  compactedThrough(pairId: string): number | undefined {
    return this.pairs.get(pairId)?.compactedThrough;
  }

  /** Seqs whose BATCH# items deleteBatchItems removed. */
  deletedBatchSeqs(pairId: string): Set<number> {
    return new Set(this.pairs.get(pairId)?.deletedBatchSeqs);
  }

  /** The current compactor lease as stored (tests). */
  compactorLease(pairId: string): CompactorLease | undefined {
    return clone(this.pairs.get(pairId)?.compactor);
  }

  private pair(pairId: string): PairHistory {
    let p = this.pairs.get(pairId);
    if (!p) {
      p = { head: { version: 0, frontierSeq: 0, publishedMs: 0, gcVersion: 0 }, readers: new Map(), versions: new Map(), deletedBatchSeqs: new Set() };
      this.pairs.set(pairId, p);
    }
    return p;
  }

  async getHistory(pairId: string): Promise<HistoryHead> {
    return clone(this.pair(pairId).head);
  }

  async recordFailure(pairId: string, failure: CompactionFailure): Promise<void> {
    this.pair(pairId).head.lastFailure = { reason: failure.reason.slice(0, 2000), atMs: failure.atMs };
  }

  async acquireCompactor(pairId: string, holder: string, nowMs: number, ttlMs: number): Promise<CompactorLease | undefined> {
    const p = this.pair(pairId);
    if (p.compactor && p.compactor.expiresMs > nowMs) return undefined;
    p.compactor = { holder, gen: (p.compactor?.gen ?? 0) + 1, expiresMs: nowMs + ttlMs };
    return clone(p.compactor);
  }

  async renewCompactor(pairId: string, lease: CompactorLease, nowMs: number, ttlMs: number): Promise<boolean> {
    const p = this.pair(pairId);
    if (p.compactor?.gen !== lease.gen) return false;
    p.compactor.expiresMs = nowMs + ttlMs;
    return true;
  }

  async releaseCompactor(pairId: string, lease: CompactorLease): Promise<void> {
    const p = this.pair(pairId);
    if (p.compactor?.gen === lease.gen) p.compactor.expiresMs = 0;
  }

  async publish(pairId: string, lease: CompactorLease, fromVersion: number, record: VersionRecord, frontierSeq: number, nowMs: number): Promise<boolean> {
    checkPublish(pairId, fromVersion, record, frontierSeq);
    const p = this.pair(pairId);
    // The transaction's conditions, all checked before anything is written.
    if (!p.compactor || p.compactor.gen !== lease.gen || !(p.compactor.expiresMs > nowMs)) return false;
    if (p.head.version !== fromVersion) return false;
    if (p.versions.has(record.version)) throw new Error(`pair '${pairId}': VERSION#${record.version} exists while HISTORY is at ${fromVersion}`);
    if (p.compactedThrough !== undefined && p.compactedThrough > frontierSeq) throw new FrontierBackwardsError(pairId, frontierSeq, p.compactedThrough);
    const { lastFailure: _cleared, ...head } = p.head;
    p.head = { ...head, version: record.version, manifestKey: record.manifestKey, frontierSeq, publishedMs: record.publishedMs };
    p.versions.set(record.version, clone(record));
    p.compactedThrough = frontierSeq;
    this.hooks.compacted?.(pairId, frontierSeq);
    return true;
  }

  async putReaderLease(pairId: string, lease: ReaderLease): Promise<void> {
    this.pair(pairId).readers.set(lease.id, clone(checkReaderLease(pairId, lease)));
  }

  async renewReaderLease(pairId: string, id: string, expiresMs: number, nowMs: number): Promise<boolean> {
    const lease = this.pair(pairId).readers.get(id);
    if (!lease || lease.expiresMs <= nowMs) return false;
    lease.expiresMs = expiresMs;
    return true;
  }

  async releaseReaderLease(pairId: string, id: string, nowMs: number): Promise<void> {
    await this.renewReaderLease(pairId, id, nowMs, nowMs);
  }

  async listReaderLeases(pairId: string, nowMs: number): Promise<ReaderLease[]> {
    return [...this.pair(pairId).readers.values()]
      .filter((l) => l.expiresMs > nowMs)
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      .map(clone);
  }

  async versionsAfter(pairId: string, afterVersion: number, limit: number): Promise<VersionRecord[]> {
    return [...this.pair(pairId).versions.values()]
      .filter((r) => r.version > afterVersion)
      .sort((a, b) => a.version - b.version)
      .slice(0, limit)
      .map(clone);
  }

  async deleteBatchItems(pairId: string, seqs: number[]): Promise<void> {
    const p = this.pair(pairId);
    for (const s of seqs) p.deletedBatchSeqs.add(s);
    this.hooks.batchItemsDeleted?.(pairId, [...seqs]);
  }

  async advanceGc(pairId: string, fromVersion: number, toVersion: number): Promise<boolean> {
    checkAdvanceGc(pairId, fromVersion, toVersion);
    const p = this.pair(pairId);
    // As the DynamoDB condition: only over published versions.
    if (p.head.gcVersion !== fromVersion || p.head.version < toVersion) return false;
    p.head = { ...p.head, gcVersion: toVersion };
    return true;
  }

  async deleteVersionRecord(pairId: string, version: number): Promise<void> {
    this.pair(pairId).versions.delete(version);
  }
}
