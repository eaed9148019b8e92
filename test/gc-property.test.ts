// GC over random histories (fast-check): random publishes (runs kept, dropped and written,
// failed attempts), publish times, reader leases and clock, a crash at a random GC step and
// a rerun. Whatever happens: every object a version GC must keep references is there, the
// horizon is exactly where the first uncollectable version allows, it never moves back, and
// after a finished run nothing at or below the horizon is left that no kept version references,
// nor a VERSION# record of a collected version.

import fc from 'fast-check';
import { MemoryHistory } from '../adapters/memory-history';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { manifestRefs } from '../core/gc-plan';
import { historyPrefix, journalKey, parseHistoryKey } from '../core/keys';
import { BITMAP_BYTES, encodeManifestV1, MANIFEST_FORMAT, type Manifest } from '../core/manifest';
import { gcOnce, type GcDeps } from '../replica/gc';
import type { HistoryIndex } from '../replica/ports';

const PAIR = 'prop';
const GRACE = 1000;
const FOLD = 3;
const bitmap = Buffer.alloc(BITMAP_BYTES, 1).toString('base64');

interface Publish {
  /** Which of the previous version's runs stay referenced. */
  keep: boolean[];
  newRuns: number;
  failedAttempt: boolean;
  /** Ms after the previous publish. */
  gap: number;
}

const scenario = fc.record({
  publishes: fc.array(fc.record({ keep: fc.array(fc.boolean(), { maxLength: 4 }), newRuns: fc.integer({ min: 0, max: 2 }), failedAttempt: fc.boolean(), gap: fc.integer({ min: 0, max: 800 }) }), { minLength: 1, maxLength: 7 }),
  leases: fc.array(fc.record({ version: fc.nat(7), live: fc.boolean() }), { maxLength: 2 }),
  /** Ms after the last publish. */
  nowAfter: fc.integer({ min: 0, max: 3 * GRACE }),
  crashAt: fc.nat(40),
});

interface Built {
  store: MemoryObjectStore;
  history: MemoryHistory;
  /** Per version (index = version; 0 the implicit one): the keys it references. */
  refs: Set<string>[];
  published: number[];
  current: number;
}

async function build(publishes: Publish[]): Promise<Built> {
  const store = new MemoryObjectStore();
  const history = new MemoryHistory();
  const lease = (await history.acquireCompactor(PAIR, 'unit', 0, 1e12))!;
  const journal = (s: number): string => journalKey(PAIR, s, s.toString(16).padStart(16, '0'));
  const refs: Set<string>[] = [new Set()];
  const published = [0];
  let runs: string[] = [];
  let range = 0;
  let t = 0;
  for (const [i, p] of publishes.entries()) {
    const v = i + 1;
    const prefix = historyPrefix(PAIR, v, 'c'.repeat(16));
    for (let s = (v - 1) * FOLD + 1; s <= v * FOLD; s++) await store.put(journal(s), Buffer.from('b'));
    if (p.failedAttempt) await store.put(`${historyPrefix(PAIR, v, 'f'.repeat(16))}run-0000.run`, Buffer.from('failed'));
    const next = [...runs.filter((_, j) => p.keep[j]), ...Array.from({ length: p.newRuns }, (_, j) => `${prefix}run-${String(j).padStart(4, '0')}.run`)];
    for (const r of next) if (!store.objects.has(r)) await store.put(r, Buffer.from('run'));
    const frontier = v * FOLD;
    const m: Manifest = { format: MANIFEST_FORMAT, pairId: PAIR, version: v, generation: 1, publishedMs: 0, frontierSeq: frontier, retained: [frontier], ranges: {} };
    for (const r of next) m.ranges[`disk0:${range++}`] = { images: [], pieces: [{ key: r, offset: 0, length: 8, crc32c: 0, seqLo: 1, seqHi: frontier, blocks: bitmap, dataBytes: 0 }] };
    const key = `${prefix}manifest.json`;
    await store.put(key, encodeManifestV1(m));
    const mine = manifestRefs(m, key);
    // A version also needs the batches above its frontier that are still in the journal: those are later versions' folds, never removed before them.
    const removed = [...refs[v - 1]].filter((k) => !mine.has(k));
    for (let s = (v - 1) * FOLD + 1; s <= frontier; s++) removed.push(journal(s));
    t += p.gap;
    if (!(await history.publish(PAIR, lease, v - 1, { version: v, manifestKey: key, publishedMs: t, removedKeys: removed, foldedSeqs: Array.from({ length: FOLD }, (_, j) => (v - 1) * FOLD + 1 + j) }, frontier, 0))) throw new Error('publish refused');
    // Version v's references, the journal batches it reads as L0 included (none: the next fold is not written yet).
    refs.push(mine);
    published.push(t);
    runs = next;
  }
  // Journal batches of the folds above each version's frontier are referenced by it as L0.
  for (let v = 0; v < refs.length; v++) for (let s = v * FOLD + 1; s <= publishes.length * FOLD; s++) refs[v].add(journal(s));
  return { store, history, refs, published, current: publishes.length };
}

test('GC keeps what kept versions reference, stops where it must, and leaves no orphan at or below its horizon', async () => {
  await fc.assert(
    fc.asyncProperty(scenario, async (sc) => {
      const w = await build(sc.publishes);
      const now = w.published[w.current] + sc.nowAfter;
      const leases = sc.leases.filter((l) => l.version <= w.current);
      for (const [i, l] of leases.entries()) await w.history.putReaderLease(PAIR, { id: `r${i}`, kind: 'recovery', seq: 1, manifestVersion: l.version, expiresMs: l.live ? now + 1 : now });
      const live = leases.filter((l) => l.live).map((l) => l.version);
      // The first version GC must not collect: still in its grace, or above a live lease's version.
      let blocked = w.current + 1;
      for (let u = 1; u <= w.current; u++) {
        if (w.published[u] + GRACE > now || live.some((l) => l < u)) {
          blocked = u;
          break;
        }
      }
      const kept = (): Set<string> => {
        const out = new Set<string>();
        for (let v = blocked - 1; v <= w.current; v++) for (const k of w.refs[v]) out.add(k);
        return out;
      };
      let n = 0;
      const crashing: GcDeps = {
        store: w.store,
        deleter: { deleteKeys: async (keys) => (++n === sc.crashAt ? Promise.reject(new Error('crash')) : w.store.deleteKeys(keys)) },
        history: new Proxy(w.history as HistoryIndex, {
          get(target, prop, receiver) {
            const v = Reflect.get(target, prop, receiver);
            if (typeof v !== 'function') return v;
            return async (...args: unknown[]) => {
              if (['deleteBatchItems', 'advanceGc', 'deleteVersionRecord'].includes(String(prop)) && ++n === sc.crashAt) throw new Error('crash');
              return (v as (...a: unknown[]) => unknown).apply(target, args);
            };
          },
        }),
      };
      const gc0 = (await w.history.getHistory(PAIR)).gcVersion;
      await gcOnce(crashing, PAIR, { nowMs: now, graceMs: GRACE }).catch((e: Error) => {
        if (e.message !== 'crash') throw e;
      });
      const gone = (): string[] => [...kept()].filter((k) => !w.store.objects.has(k));
      expect(gone()).toEqual([]);
      const gc1 = (await w.history.getHistory(PAIR)).gcVersion;
      expect(gc1).toBeGreaterThanOrEqual(gc0);
      await gcOnce({ store: w.store, deleter: w.store, history: w.history }, PAIR, { nowMs: now, graceMs: GRACE });
      expect(gone()).toEqual([]);
      const head = await w.history.getHistory(PAIR);
      expect(head.gcVersion).toBe(blocked - 1);
      expect(head.gcVersion).toBeGreaterThanOrEqual(gc1);
      // The records left are exactly those of the versions not collected.
      expect((await w.history.versionsAfter(PAIR, 0, 100)).map((r) => r.version)).toEqual(Array.from({ length: w.current - head.gcVersion }, (_, i) => head.gcVersion + 1 + i));
      // No orphan at or below the horizon: every history key left there is referenced by a kept version.
      const k = kept();
      const stale = [...w.store.objects.keys()].filter((key) => {
        const h = parseHistoryKey(key);
        return h !== undefined && h.version <= head.gcVersion && !k.has(key);
      });
      expect(stale).toEqual([]);
      // Journal batches folded by collected versions are gone, with their BATCH# items.
      const folded = Array.from({ length: head.gcVersion * FOLD }, (_, i) => i + 1);
      expect(folded.filter((s) => !w.history.deletedBatchSeqs(PAIR).has(s))).toEqual([]);
      expect(folded.map((s) => journalKey(PAIR, s, s.toString(16).padStart(16, '0'))).filter((key) => w.store.objects.has(key))).toEqual([]);
    }),
    { numRuns: 300 },
  );
});
