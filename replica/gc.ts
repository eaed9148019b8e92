// The history's garbage collection for one pair (docs/design.md, "History", "GC"):
// core/gc-plan.ts decides, this does the steps in their order. Every step is safe to repeat:
// a run that stops anywhere leaves nothing referenced missing, and the next run finishes the work.
//   per collectable version u: BATCH# items (index first, rule 4) → objects (DeleteObjects,
//   ≤ 1000 a call) → gcVersion u−1 → u (conditional) → the VERSION#u item;
//   then the orphan sweep under history/: keys of attempts ≤ gcVersion that nothing held references.

import { DEFAULT_GC_GRACE_MS, manifestRefs, planGc, planOrphans, type GcBlock } from '../core/gc-plan';
import { historyRoot } from '../core/keys';
import type { HistoryIndex, KeyLister, ObjectDeleter, ObjectStore, VersionRecord } from './ports';
import { readManifest } from './history-manifest';

export interface GcDeps {
  /** Reads manifests and lists the history (the orphan sweep). */
  store: ObjectStore & KeyLister;
  deleter: ObjectDeleter;
  history: HistoryIndex;
}

export interface GcOptions {
  nowMs: number;
  /** Counted from the publish that stopped referencing an object (default 1 h). */
  graceMs?: number;
  /** Whether to run the orphan sweep after the versions (default true). */
  sweep?: boolean;
  log?: { info(msg: string, data?: object): void; warn?(msg: string, data?: object): void };
}

export interface GcResult {
  pairId: string;
  /** The horizon when the run ended. */
  gcVersion: number;
  /** Versions collected by this run, ascending. */
  collected: number[];
  batchItemsDeleted: number;
  objectsDeleted: number;
  orphansDeleted: number;
  /** Keys a record listed as removed that the current manifest still references: kept (a compaction fault to look into). */
  keptReferenced: string[];
  /** Why the next version waits (grace or a lease), if one does. */
  blocked?: GcBlock;
  /** Another GC moved the horizon first: this run stopped its version steps there. */
  lostRace?: boolean;
}

/** VERSION# records read per query. */
const RECORDS_PAGE = 100;

export async function gcOnce(deps: GcDeps, pairId: string, opts: GcOptions): Promise<GcResult> {
  const { history, deleter } = deps;
  const graceMs = opts.graceMs ?? DEFAULT_GC_GRACE_MS;
  const head = await history.getHistory(pairId);
  const leases = await history.listReaderLeases(pairId, opts.nowMs);
  const out: GcResult = { pairId, gcVersion: head.gcVersion, collected: [], batchItemsDeleted: 0, objectsDeleted: 0, orphansDeleted: 0, keptReferenced: [] };

  // The records from the horizon's own (a leftover, if a run stopped after advancing) upwards, a page at a time.
  let gcVersion = head.gcVersion;
  let referenced: Set<string> | undefined;
  for (;;) {
    const records = await history.versionsAfter(pairId, Math.max(0, gcVersion - 1), RECORDS_PAGE);
    const upTo = records.length === RECORDS_PAGE ? records[records.length - 1].version : head.version;
    let plan = planGc({ pairId, version: upTo, gcVersion, records, leases, nowMs: opts.nowMs, graceMs });
    // Something to delete: check it against the current manifest first (read once a run).
    if (plan.steps.length > 0 && referenced === undefined) {
      referenced = head.version > 0 && head.manifestKey ? await refsOf(deps.store, head.manifestKey) : new Set<string>();
      plan = planGc({ pairId, version: upTo, gcVersion, records, leases, nowMs: opts.nowMs, graceMs, referenced });
    }
    for (const v of plan.leftovers) await history.deleteVersionRecord(pairId, v);
    let stopped = false;
    for (const step of plan.steps) {
      if (step.kept.length > 0) {
        out.keptReferenced.push(...step.kept);
        opts.log?.warn?.('gc kept keys the current manifest references', { pairId, version: step.version, keys: step.kept.slice(0, 10), count: step.kept.length });
      }
      if (step.batchSeqs.length > 0) await history.deleteBatchItems(pairId, step.batchSeqs);
      out.batchItemsDeleted += step.batchSeqs.length;
      for (const keys of step.keyBatches) {
        await deleter.deleteKeys(keys);
        out.objectsDeleted += keys.length;
      }
      if (!(await history.advanceGc(pairId, step.version - 1, step.version))) {
        out.lostRace = true;
        stopped = true;
        break;
      }
      gcVersion = step.version;
      out.collected.push(step.version);
      await history.deleteVersionRecord(pairId, step.version);
    }
    out.gcVersion = gcVersion;
    if (stopped || plan.blocked || upTo === head.version) {
      out.blocked = plan.blocked;
      break;
    }
  }
  if (out.collected.length > 0) opts.log?.info('gc collected', { pairId, versions: out.collected, batchItems: out.batchItemsDeleted, objects: out.objectsDeleted });
  if (opts.sweep !== false) out.orphansDeleted = await sweepOrphans(deps, pairId, opts);
  if (out.orphansDeleted > 0) opts.log?.info('gc orphans deleted', { pairId, keys: out.orphansDeleted });
  return out;
}

/**
 * Deletes history keys no published version will ever reference: those of attempts ≤ the
 * horizon that neither the current manifest, nor a version not yet collected (its record's
 * removed keys: what the versions above the horizon still reference), nor a leased manifest
 * references. Reads HISTORY afresh: a publish after that read writes under a prefix above the
 * horizon, or reuses keys of the manifest read here, so nothing it references is a candidate.
 */
export async function sweepOrphans(deps: GcDeps, pairId: string, opts: Pick<GcOptions, 'nowMs'>): Promise<number> {
  const { store, history, deleter } = deps;
  const head = await history.getHistory(pairId);
  if (head.gcVersion === 0) return 0; // no attempt prefix is ≤ 0: version 1 is the first a unit writes
  const held = new Set<string>();
  const pending: VersionRecord[] = [];
  for (let after = head.gcVersion; ; ) {
    const page = await history.versionsAfter(pairId, after, RECORDS_PAGE);
    pending.push(...page);
    if (page.length < RECORDS_PAGE) break;
    after = page[page.length - 1].version;
  }
  for (const r of pending) {
    held.add(r.manifestKey);
    for (const k of r.removedKeys) held.add(k);
  }
  const manifests = new Map<number, string>(pending.map((r) => [r.version, r.manifestKey]));
  if (head.version > 0 && head.manifestKey) manifests.set(head.version, head.manifestKey);
  // The current manifest, and (belt and braces: pending records already hold what they
  // reference) every leased version still above the horizon. A lease below the horizon came
  // too late: its reader's re-check of HISTORY sends it to the current version.
  const wanted = new Set([head.version, ...(await history.listReaderLeases(pairId, opts.nowMs)).map((l) => l.manifestVersion).filter((v) => v > head.gcVersion)]);
  for (const v of wanted) {
    const key = manifests.get(v);
    if (!key) continue;
    for (const k of await refsOf(store, key)) held.add(k);
  }
  const doomed = planOrphans(pairId, head.gcVersion, await store.listKeys(historyRoot(pairId)), held);
  let n = 0;
  for (const keys of doomed) {
    await deleter.deleteKeys(keys);
    n += keys.length;
  }
  return n;
}

/** The keys a stored manifest references, its own included. */
async function refsOf(store: ObjectStore, key: string): Promise<Set<string>> {
  return manifestRefs((await readManifest(store, key)).manifest, key);
}
