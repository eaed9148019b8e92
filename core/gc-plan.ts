// What the history's GC may delete (docs/design.md, "History", "GC"): pure judgements over
// the HISTORY pointer, the VERSION# records, the live reader leases and the clock.
// replica/gc.ts reads those, asks here, and does the steps in the order given.

import { parseHistoryKey } from './keys';
import type { Manifest } from './manifest';

/** S3 DeleteObjects takes at most this many keys a request: GC deletes in batches of it. */
export const DELETE_BATCH = 1000;
/** Grace counted from the publish that stopped referencing an object (not from its write). */
export const DEFAULT_GC_GRACE_MS = 60 * 60 * 1000;

/** What GC needs of a VERSION# record (replica/ports.ts VersionRecord). */
export interface VersionWork {
  version: number;
  manifestKey: string;
  publishedMs: number;
  removedKeys: string[];
  foldedSeqs: number[];
}

/** One version's collection, in this order: BATCH# items, objects (batches of ≤ 1000), gcVersion u−1 → u, the VERSION# item. */
export interface GcStep {
  version: number;
  batchSeqs: number[];
  keyBatches: string[][];
  /** Removed keys the current manifest still references (a compaction fault): never deleted, reported. */
  kept: string[];
}

export type GcBlock =
  | { version: number; reason: 'grace'; untilMs: number }
  | { version: number; reason: 'lease'; leaseId: string; leaseVersion: number };

export interface GcPlan {
  /** VERSION# records at or below gcVersion (a run stopped between its advance and the record's delete): delete them. */
  leftovers: number[];
  steps: GcStep[];
  /** The first version not collectable now, and why (undefined: everything published is collected). */
  blocked?: GcBlock;
}

export interface GcInputs {
  pairId: string;
  /** HISTORY: the published version and the horizon. */
  version: number;
  gcVersion: number;
  /** VERSION# records with version ≥ gcVersion (the leftover at gcVersion, if any, and every one above), ascending. */
  records: VersionWork[];
  /** Live reader leases (the manifest version each holds). */
  leases: { id: string; manifestVersion: number }[];
  nowMs: number;
  graceMs: number;
  /**
   * What the current manifest references. A removed key in it is kept: a record can only be
   * wrong through a compaction fault, and GC never deletes what the current version reads.
   */
  referenced?: ReadonlySet<string>;
}

/** Chunks of at most `size` (the DeleteObjects limit). */
export function batches<T>(items: readonly T[], size = DELETE_BATCH): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/**
 * The versions GC may collect now, in order. Version u > gcVersion is collectable when
 * `publishedMs(u) + grace ≤ now` (the grace counts from u's publish: that is when what u
 * removed stopped being referenced, SlateDB #204) and no live lease holds a version < u (a
 * reader of version w needs what w references; u's removed keys were referenced by u − 1 ≥ w).
 * The horizon moves one version at a time: the first version that is not collectable stops
 * the plan, whatever the later ones are.
 */
export function planGc(i: GcInputs): GcPlan {
  const leftovers = i.records.filter((r) => r.version <= i.gcVersion).map((r) => r.version);
  const pending = i.records.filter((r) => r.version > i.gcVersion);
  const steps: GcStep[] = [];
  const oldestLease = i.leases.reduce<{ id: string; manifestVersion: number } | undefined>((a, l) => (a === undefined || l.manifestVersion < a.manifestVersion ? l : a), undefined);
  for (let u = i.gcVersion + 1, at = 0; u <= i.version; u++, at++) {
    const r = pending[at];
    if (r?.version !== u) throw new GcStateError(i.pairId, `VERSION#${u} is missing: HISTORY is at version ${i.version} and GC at ${i.gcVersion}, records found: ${pending.map((p) => p.version).join(', ') || 'none'}`);
    if (r.publishedMs + i.graceMs > i.nowMs) return { leftovers, steps, blocked: { version: u, reason: 'grace', untilMs: r.publishedMs + i.graceMs } };
    if (oldestLease && oldestLease.manifestVersion < u) return { leftovers, steps, blocked: { version: u, reason: 'lease', leaseId: oldestLease.id, leaseVersion: oldestLease.manifestVersion } };
    const kept = i.referenced ? r.removedKeys.filter((k) => i.referenced!.has(k)) : [];
    const doomed = kept.length > 0 ? r.removedKeys.filter((k) => !i.referenced!.has(k)) : r.removedKeys;
    steps.push({ version: u, batchSeqs: [...r.foldedSeqs], keyBatches: batches(doomed), kept });
  }
  return { leftovers, steps };
}

/** The object keys a manifest references, its own key included (its parts, images that are objects, pieces' runs). */
export function manifestRefs(m: Manifest, manifestKey?: string): Set<string> {
  const out = new Set<string>([...(manifestKey ? [manifestKey] : []), ...(m.parts ?? []).map((p) => p.key)]);
  for (const r of Object.values(m.ranges)) {
    for (const img of r.images) if (!img.zero) out.add(img.key);
    for (const p of r.pieces) out.add(p.key);
  }
  return out;
}

/**
 * The orphan sweep: history keys of the pair whose attempt's version is ≤ gcVersion and that
 * nothing held references. Such a key is the output of an attempt that never published (a
 * failed or fenced unit): a published version's objects are referenced by it until a later
 * version removes them, and then GC deletes them through that version's record. `held` must
 * hold what the current manifest references, every key of the VERSION# records not yet
 * collected (what versions above gcVersion still reference) and what leased manifests
 * reference. Keys that are not history keys of this pair are left alone.
 */
export function planOrphans(pairId: string, gcVersion: number, listed: readonly string[], held: ReadonlySet<string>): string[][] {
  const doomed = listed.filter((k) => {
    const h = parseHistoryKey(k);
    return h !== undefined && h.pair === pairId && h.version <= gcVersion && !held.has(k);
  });
  return batches(doomed);
}

/** The history's bookkeeping contradicts itself (a VERSION# record missing between the horizon and the published version). */
export class GcStateError extends Error {
  constructor(readonly pairId: string, readonly reason: string) {
    super(`pair '${pairId}': GC stopped: ${reason}`);
    this.name = 'GcStateError';
  }
}
