// The history's GC run (replica/gc.ts) over MemoryHistory and MemoryObjectStore (and once over
// the test stack's DynamoDB and S3): what it
// deletes, in which order, and that a crash between any two of its steps leaves nothing a
// readable version references missing while a rerun finishes the work.

import { MemoryHistory } from '../adapters/memory-history';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { manifestRefs } from '../core/gc-plan';
import { historyPrefix, journalKey } from '../core/keys';
import { BITMAP_BYTES, encodeManifestV1, MANIFEST_FORMAT, type Manifest } from '../core/manifest';
import { gcOnce, type GcDeps } from '../replica/gc';
import { createPair } from '../replica/pairs';
import type { HistoryIndex, ObjectDeleter } from '../replica/ports';
import { cloud, newPairId } from './helpers';

const PAIR = 'gcp';
const HOUR = 3_600_000;
const NOW = 1_795_521_700_000;
const bitmap = Buffer.alloc(BITMAP_BYTES, 1).toString('base64');

/** A manifest whose range i holds one piece in run `runs[i]` (spans inside the frontier). */
function manifest(version: number, frontierSeq: number, runs: string[]): Manifest {
  const ranges: Manifest['ranges'] = {};
  runs.forEach((key, i) => (ranges[`disk0:${i}`] = { images: [], pieces: [{ key, offset: 0, length: 64, crc32c: 1, seqLo: 1, seqHi: frontierSeq, blocks: bitmap, dataBytes: 4096 }] }));
  return { format: MANIFEST_FORMAT, pairId: PAIR, version, generation: 1, publishedMs: 0, frontierSeq, retained: [frontierSeq], ranges };
}

interface World {
  store: MemoryObjectStore;
  history: MemoryHistory;
  journal: string[];
  manifests: Map<number, { key: string; m: Manifest }>;
  orphans: string[];
}

/**
 * Three published versions: v1 (5 h ago) folds batches 1-10 into run A; v2 (2 h ago) folds
 * 11-20 into run B and drops A; v3 (a minute ago) folds 21-30 into run C. A failed attempt at
 * v1 left a run and a manifest nothing references; one at v3 (in flight, as far as GC knows) too.
 */
async function world(): Promise<World> {
  const store = new MemoryObjectStore();
  const history = new MemoryHistory();
  const journal = Array.from({ length: 31 }, (_, s) => journalKey(PAIR, s, s.toString(16).padStart(16, '0')));
  for (let s = 1; s <= 30; s++) await store.put(journal[s], Buffer.from(`batch ${s}`));
  const lease = (await history.acquireCompactor(PAIR, 'unit', NOW - 6 * HOUR, 10 * HOUR))!;
  const manifests = new Map<number, { key: string; m: Manifest }>();
  const orphans: string[] = [];
  const failed1 = historyPrefix(PAIR, 1, 'f1f1f1f1f1f1f1f1');
  const failed3 = historyPrefix(PAIR, 3, 'f3f3f3f3f3f3f3f3');
  for (const k of [`${failed1}run-0000.run`, `${failed1}manifest.json`]) {
    await store.put(k, Buffer.from('orphan'));
    orphans.push(k);
  }
  await store.put(`${failed3}run-0000.run`, Buffer.from('in flight'));
  const steps: { at: number; folds: [number, number]; runs: (prefix: string, prev: string[]) => string[] }[] = [
    { at: NOW - 5 * HOUR, folds: [1, 10], runs: (p) => [`${p}run-0000.run`] },
    { at: NOW - 2 * HOUR, folds: [11, 20], runs: (p) => [`${p}run-0000.run`] },
    { at: NOW - 60_000, folds: [21, 30], runs: (p, prev) => [...prev, `${p}run-0000.run`] },
  ];
  let prevRuns: string[] = [];
  let prevKey: string | undefined;
  for (const [i, st] of steps.entries()) {
    const version = i + 1;
    const prefix = historyPrefix(PAIR, version, `${version}`.repeat(16));
    const runs = st.runs(prefix, prevRuns);
    for (const r of runs) if (!store.objects.has(r)) await store.put(r, Buffer.from(`run of ${version}`));
    const m = manifest(version, st.folds[1], runs);
    const key = `${prefix}manifest.json`;
    await store.put(key, encodeManifestV1(m));
    manifests.set(version, { key, m });
    const folded = Array.from({ length: st.folds[1] - st.folds[0] + 1 }, (_, j) => st.folds[0] + j);
    const removedKeys = [...(prevKey ? [prevKey] : []), ...prevRuns.filter((r) => !runs.includes(r)), ...folded.map((s) => journal[s])];
    expect(await history.publish(PAIR, lease, version - 1, { version, manifestKey: key, publishedMs: st.at, removedKeys, foldedSeqs: folded }, st.folds[1], st.at)).toBe(true);
    prevRuns = runs;
    prevKey = key;
  }
  return { store, history, journal, manifests, orphans };
}

/** Every object a version at or above `from` references (its manifest and runs; journal batches above its frontier). */
function referencedFrom(w: World, from: number): Set<string> {
  const out = new Set<string>();
  for (const [v, { key, m }] of w.manifests) {
    if (v < from) continue;
    for (const k of manifestRefs(m, key)) out.add(k);
    for (let s = m.frontierSeq + 1; s <= 30; s++) out.add(w.journal[s]);
  }
  return out;
}

const missing = (w: World, keys: Set<string>): string[] => [...keys].filter((k) => !w.store.objects.has(k));

test('collects the versions past their grace, in order, index before objects, then the orphans of attempts at or below the horizon', async () => {
  const w = await world();
  const ops: string[] = [];
  const history = traced(w.history, ops);
  const deleter: ObjectDeleter = { deleteKeys: async (keys) => (ops.push(`deleteKeys ${keys.length}`), w.store.deleteKeys(keys)) };
  const out = await gcOnce({ store: w.store, deleter, history }, PAIR, { nowMs: NOW });
  expect(out).toMatchObject({ gcVersion: 2, collected: [1, 2], batchItemsDeleted: 20, objectsDeleted: 10 + 12, orphansDeleted: 2, blocked: { version: 3, reason: 'grace' } });
  expect(ops).toEqual([
    'deleteBatchItems 1..10', 'deleteKeys 10', 'advanceGc 0->1', 'deleteVersionRecord 1',
    'deleteBatchItems 11..20', 'deleteKeys 12', 'advanceGc 1->2', 'deleteVersionRecord 2',
    'deleteKeys 2',
  ]);
  // v3 is in its grace: what it stopped referencing (v2's manifest, batches 21-30) stays, and so does everything v3 references.
  expect(missing(w, referencedFrom(w, 2))).toEqual([]);
  expect([...w.history.deletedBatchSeqs(PAIR)].sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  expect(w.orphans.filter((k) => w.store.objects.has(k))).toEqual([]);
  // Version 1's run and manifest and batches 1-20 are gone; the v3 attempt's run (above the horizon) stays.
  expect(w.store.objects.has(w.manifests.get(1)!.key)).toBe(false);
  expect(w.store.objects.has(w.journal[20])).toBe(false);
  expect(w.store.objects.has(`${historyPrefix(PAIR, 3, 'f3f3f3f3f3f3f3f3')}run-0000.run`)).toBe(true);
  expect((await w.history.versionsAfter(PAIR, 0, 10)).map((r) => r.version)).toEqual([3]);

  // An hour later v3 goes too, and the v3 attempt's run with it.
  const later = await gcOnce({ store: w.store, deleter: w.store, history: w.history }, PAIR, { nowMs: NOW + HOUR });
  expect(later).toMatchObject({ gcVersion: 3, collected: [3], objectsDeleted: 11, orphansDeleted: 1 });
  expect([...w.store.objects.keys()].sort()).toEqual([...referencedFrom(w, 3)].sort());
});

test('a reader lease on version 1 holds versions 2 and up; its manifest and runs stay', async () => {
  const w = await world();
  await w.history.putReaderLease(PAIR, { id: 'rec-1', kind: 'recovery', seq: 10, manifestVersion: 1, expiresMs: NOW + HOUR });
  const out = await gcOnce({ store: w.store, deleter: w.store, history: w.history }, PAIR, { nowMs: NOW });
  expect(out).toMatchObject({ gcVersion: 1, collected: [1], blocked: { version: 2, reason: 'lease', leaseId: 'rec-1' } });
  expect(missing(w, referencedFrom(w, 1))).toEqual([]);
  // The failed v1 attempt's keys are orphans all the same.
  expect(w.orphans.filter((k) => w.store.objects.has(k))).toEqual([]);
  // An expired lease holds nothing.
  const after = await gcOnce({ store: w.store, deleter: w.store, history: w.history }, PAIR, { nowMs: NOW + HOUR });
  expect(after.collected).toEqual([2, 3]);
});

describe('a crash between any two GC steps, then a rerun', () => {
  /** The mutating calls (index and store); the one numbered `at` throws. */
  interface Faults {
    n: number;
    at: number;
  }
  const MUTATIONS = new Set(['deleteBatchItems', 'advanceGc', 'deleteVersionRecord']);
  const hit = (f: Faults): void => {
    if (++f.n === f.at) throw new Error(`crash at step ${f.n}`);
  };
  const failingDeps = (w: World, f: Faults): GcDeps => ({
    store: w.store,
    deleter: { deleteKeys: async (keys) => (hit(f), w.store.deleteKeys(keys)) },
    history: new Proxy(w.history as HistoryIndex, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver);
        if (typeof v !== 'function') return v;
        return async (...args: unknown[]) => {
          if (MUTATIONS.has(String(prop))) hit(f);
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    }),
  });

  async function finalState(w: World): Promise<string> {
    const head = await w.history.getHistory(PAIR);
    return JSON.stringify({ head, objects: [...w.store.objects.keys()].sort(), batches: [...w.history.deletedBatchSeqs(PAIR)].sort((a, b) => a - b), records: (await w.history.versionsAfter(PAIR, 0, 100)).map((r) => r.version) });
  }

  test('leaves nothing a readable version references missing, and the rerun finishes the work', async () => {
    const clean = await world();
    const count: Faults = { n: 0, at: 0 };
    await gcOnce(failingDeps(clean, count), PAIR, { nowMs: NOW });
    const expected = await finalState(clean);
    expect(count.n).toBe(9);
    for (let k = 1; k <= count.n; k++) {
      const w = await world();
      await expect(gcOnce(failingDeps(w, { n: 0, at: k }), PAIR, { nowMs: NOW })).rejects.toThrow(`crash at step ${k}`);
      // Still readable whatever the crash interrupted: v2 (its successor v3 is in its grace) and v3.
      expect({ k, missing: missing(w, referencedFrom(w, 2)) }).toEqual({ k, missing: [] });
      await gcOnce({ store: w.store, deleter: w.store, history: w.history }, PAIR, { nowMs: NOW });
      expect({ k, state: await finalState(w) }).toEqual({ k, state: expected });
    }
  });
});

/** The history, recording its GC calls in `ops`. */
function traced(h: MemoryHistory, ops: string[]): HistoryIndex {
  return new Proxy(h, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function') return v;
      return async (...args: unknown[]) => {
        if (prop === 'deleteBatchItems') ops.push(`deleteBatchItems ${(args[1] as number[])[0]}..${(args[1] as number[]).at(-1)}`);
        if (prop === 'advanceGc') ops.push(`advanceGc ${args[1]}->${args[2]}`);
        if (prop === 'deleteVersionRecord') ops.push(`deleteVersionRecord ${args[1]}`);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
}

test("a record that lists a key the current manifest still references: GC keeps it and says so", async () => {
  const store = new MemoryObjectStore();
  const history = new MemoryHistory();
  const lease = (await history.acquireCompactor(PAIR, 'unit', 0, NOW))!;
  const prefix = historyPrefix(PAIR, 1, 'a'.repeat(16));
  const run = `${prefix}run-0000.run`;
  const key = `${prefix}manifest.json`;
  await store.put(run, Buffer.from('run'));
  await store.put(key, encodeManifestV1(manifest(1, 5, [run])));
  await store.put(journalKey(PAIR, 5, 'b'.repeat(16)), Buffer.from('batch'));
  // A faulty unit listed its own run as removed.
  expect(await history.publish(PAIR, lease, 0, { version: 1, manifestKey: key, publishedMs: 0, removedKeys: [run, journalKey(PAIR, 5, 'b'.repeat(16))], foldedSeqs: [5] }, 5, 1)).toBe(true);
  const warned: string[] = [];
  const out = await gcOnce({ store, deleter: store, history }, PAIR, { nowMs: NOW, log: { info: () => {}, warn: (msg) => warned.push(msg) } });
  expect(out).toMatchObject({ collected: [1], objectsDeleted: 1, keptReferenced: [run] });
  expect(warned).toEqual(['gc kept keys the current manifest references']);
  expect([...store.objects.keys()].sort()).toEqual([key, run].sort());
});

test('two GC runs at once: one takes each version, the other stops where it lost; together they reach the clean state', async () => {
  const w = await world();
  const [a, b] = await Promise.all([0, 1].map(() => gcOnce({ store: w.store, deleter: w.store, history: w.history }, PAIR, { nowMs: NOW })));
  expect([...a.collected, ...b.collected].sort()).toEqual([1, 2]);
  expect((await w.history.getHistory(PAIR)).gcVersion).toBe(2);
  expect(missing(w, referencedFrom(w, 2))).toEqual([]);
  expect((await w.history.versionsAfter(PAIR, 0, 10)).map((r) => r.version)).toEqual([3]);
});

test('more versions than one page of records (250): one run collects them all, in order', async () => {
  const store = new MemoryObjectStore();
  const history = new MemoryHistory();
  const lease = (await history.acquireCompactor(PAIR, 'unit', 0, NOW))!;
  for (let v = 1; v <= 250; v++) {
    const key = `${historyPrefix(PAIR, v, 'a'.repeat(16))}manifest.json`;
    await store.put(key, encodeManifestV1(manifest(v, v, [])));
    const prev = v > 1 ? [`${historyPrefix(PAIR, v - 1, 'a'.repeat(16))}manifest.json`] : [];
    expect(await history.publish(PAIR, lease, v - 1, { version: v, manifestKey: key, publishedMs: 0, removedKeys: prev, foldedSeqs: [v] }, v, 1)).toBe(true);
  }
  const out = await gcOnce({ store, deleter: store, history }, PAIR, { nowMs: NOW });
  expect(out.collected).toEqual(Array.from({ length: 250 }, (_, i) => i + 1));
  expect([...store.objects.keys()]).toEqual([`${historyPrefix(PAIR, 250, 'a'.repeat(16))}manifest.json`]);
  expect(await history.versionsAfter(PAIR, 0, 10)).toEqual([]);
});

test('on the test stack (DynamoDB, S3): BATCH# items, journal objects, old runs, manifests and orphans go; what the current version needs stays', async () => {
  const c = cloud();
  const pairId = newPairId('gc');
  await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: 1 << 20 }] });
  const journal: string[] = [];
  for (let seq = 1; seq <= 10; seq++) {
    const key = journalKey(pairId, seq);
    journal[seq] = key;
    await c.store.put(key, Buffer.from(`batch ${seq}`));
    await c.index.registerBatch(pairId, { seq, key, sizeBytes: 7, objectCrc: seq, firstWriteMs: 0, cutMs: 0, flags: 0, extentCount: 0, dataBytes: 0, disks: ['disk0'], registeredMs: 0 });
  }
  const t0 = Date.now() - 3 * HOUR;
  const lease = (await c.history.acquireCompactor(pairId, 'unit', t0, 4 * HOUR))!;
  const failed = `${historyPrefix(pairId, 1)}run-0000.run`;
  await c.store.put(failed, Buffer.from('never published'));
  let prevKey: string | undefined;
  let prevRuns: string[] = [];
  const published: { key: string; runs: string[] }[] = [];
  for (const [v, folds] of [[1, [1, 2, 3, 4, 5]], [2, [6, 7, 8]]] as const) {
    const prefix = historyPrefix(pairId, v);
    const runs = [`${prefix}run-0000.run`];
    await c.store.put(runs[0], Buffer.from(`run ${v}`));
    const m = { ...manifest(v, folds[folds.length - 1], runs), pairId };
    const key = `${prefix}manifest.json`;
    await c.store.put(key, encodeManifestV1(m));
    const removedKeys = [...(prevKey ? [prevKey] : []), ...prevRuns, ...folds.map((s) => journal[s])];
    expect(await c.history.publish(pairId, lease, v - 1, { version: v, manifestKey: key, publishedMs: t0 + v, removedKeys, foldedSeqs: [...folds] }, folds[folds.length - 1], t0 + v)).toBe(true);
    published.push({ key, runs });
    prevKey = key;
    prevRuns = runs;
  }
  const out = await gcOnce({ store: c.store, deleter: c.deleter, history: c.history }, pairId, { nowMs: Date.now() });
  expect(out).toMatchObject({ gcVersion: 2, collected: [1, 2], batchItemsDeleted: 8, objectsDeleted: 5 + 5, orphansDeleted: 1 });
  expect(await c.store.listKeys(`pairs/${pairId}/`)).toEqual([journal[9], journal[10], published[1].runs[0], published[1].key].sort());
  expect((await c.index.batchesAfter(pairId, 0, 20)).map((b) => b.seq)).toEqual([9, 10]);
  expect(await c.history.versionsAfter(pairId, 0, 10)).toEqual([]);
  expect(await c.history.getHistory(pairId)).toMatchObject({ version: 2, gcVersion: 2 });
});
