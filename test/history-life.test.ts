// The whole life of a pair in one model-based test, through the product's own paths:
// batches delivered out of order, twice, or with the applier crashing mid-way (ApplyService
// over MemoryIndex), retention changed and RPs pinned and unpinned (replica/pairs.ts), time
// passing, compaction units and GC runs crashing at any step, and recoveries (materialize,
// with its reader lease) held open in the middle of a window while all of that goes on.
// Checked: every recovery that was started on a live RP ends with exactly the bytes of that
// RP; afterwards every live RP, pinned ones included, recovers bit-exact within the read
// bound; the manifest version and the GC horizon only rise; nothing the manifest in force
// references is ever missing; and once everything has settled GC leaves no history object
// that the manifest does not use.

import fc from 'fast-check';
import { BATCH_FLAGS, encodeBatch, type ExtentInput } from '../core/batch-format';
import { CHUNK_BYTES } from '../core/chunk-format';
import { InvalidArgumentError } from '../core/errors';
import { historyRoot, journalKey } from '../core/keys';
import { manifestRefs } from '../core/gc-plan';
import type { RetentionPolicy } from '../core/retention';
import { MemoryHistory } from '../adapters/memory-history';
import { MemoryIndex } from '../adapters/memory-index';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { ApplyService } from '../replica/apply';
import { compactOnce, currentManifest, type CompactStep } from '../replica/compactor';
import { gcOnce } from '../replica/gc';
import { materialize, type ImageSink } from '../replica/materialize';
import { pinRp, setRetention, unpinRp } from '../replica/pairs';
import type { HistoryIndex, ReplicaIndex } from '../replica/ports';
import { applyExtents, batchExtents, type DrawnExtent } from './model-extents';

const PAIR = 'life';
/**
 * Two disks: one and a half ranges, then three (most writes): a recovery reads the second disk
 * only once it has written the first, so a recovery held in its first write reads the busy
 * disk after whatever compaction and GC did meanwhile.
 */
const DISKS = [{ name: 'e', sizeBytes: 1.5 * CHUNK_BYTES }, { name: 'd', sizeBytes: 3 * CHUNK_BYTES }];
const START_MS = 1_800_000_000_000;
/** Policies the test switches between: every RP for a while, then thinned. */
const POLICIES: Omit<RetentionPolicy, 'rev'>[] = [
  { all: [{ windowSec: 120, spacingSec: 0 }, { windowSec: 1200, spacingSec: 120 }], app: [] },
  { all: [{ windowSec: 60, spacingSec: 0 }, { windowSec: 600, spacingSec: 300 }], app: [] },
  { all: [{ windowSec: 3600, spacingSec: 0 }], app: [] },
];
/** Leases of the recoveries held open: longer than the test's time, so that only GC's respect for them is tested. */
const READ_LEASE_MS = 24 * 3600 * 1000;

type Op =
  | { kind: 'write'; extents: DrawnExtent[]; rp: boolean; deliver: 'now' | 'later' }
  | { kind: 'deliver'; pick: number; crashAt: number | undefined }
  | { kind: 'redeliver'; pick: number }
  | { kind: 'wait'; sec: number }
  | { kind: 'policy'; which: number }
  | { kind: 'pin'; pick: number }
  | { kind: 'unpin'; pick: number }
  | { kind: 'compact'; maxBatches: number; imageKiB: number; crash: CompactStep | undefined }
  | { kind: 'gc'; graceSec: number; crashAt: number | undefined }
  | { kind: 'open-read'; pick: number }
  | { kind: 'finish-read'; pick: number };

const extentArb = fc.record({
  disk: fc.integer({ min: 0, max: 3 }).map((x) => (x < 3 ? 1 : 0)),
  block: fc.oneof(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 3 * 1024 - 1 })),
  count: fc.integer({ min: 1, max: 24 }),
  zero: fc.integer({ min: 0, max: 9 }).map((x) => x < 2),
});
const crashArb = fc.option(fc.integer({ min: 1, max: 4 }), { freq: 3, nil: undefined });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('write' as const), extents: fc.array(extentArb, { minLength: 1, maxLength: 3 }), rp: fc.boolean(), deliver: fc.constantFrom<'now' | 'later'>('now', 'now', 'later') }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('deliver' as const), pick: fc.nat(), crashAt: crashArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('redeliver' as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('wait' as const), sec: fc.constantFrom(3, 10, 30, 90, 400) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('policy' as const), which: fc.nat({ max: POLICIES.length - 1 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('pin' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('unpin' as const), pick: fc.nat() }) },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('compact' as const),
      maxBatches: fc.integer({ min: 1, max: 8 }),
      imageKiB: fc.constantFrom(16, 256, 4096),
      crash: fc.option(fc.constantFrom<CompactStep>('planned', 'written', 'verified', 'manifest'), { freq: 3, nil: undefined }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('gc' as const), graceSec: fc.constantFrom(0, 0, 60), crashAt: fc.option(fc.integer({ min: 1, max: 9 }), { freq: 2, nil: undefined }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('open-read' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('finish-read' as const), pick: fc.nat() }) },
);

/** Crash injection: the `at`-th call (1-based) to one of `methods` throws instead of running. */
function crashing<T extends object>(target: T, methods: readonly string[], at: number | undefined): { it: T; crashed: () => boolean } {
  let calls = 0;
  let crashed = false;
  const it = new Proxy(target, {
    get(obj, prop, receiver) {
      const v = Reflect.get(obj, prop, receiver);
      if (typeof v !== 'function') return v;
      if (at === undefined || !methods.includes(String(prop))) return v.bind(obj);
      return (...args: unknown[]) => {
        if (++calls === at) {
          crashed = true;
          throw new Error(`crash at ${String(prop)}`);
        }
        return v.apply(obj, args);
      };
    },
  });
  return { it, crashed: () => crashed };
}

/** A recovery's sink that holds its first window until released: the read stays open (lease held, manifest chosen) meanwhile. */
function heldSink(sizeBytes: number, gate: Promise<void>): { sink: ImageSink; image: Buffer } {
  const image = Buffer.alloc(sizeBytes);
  return {
    image,
    sink: {
      async write(offset, window) {
        await gate;
        window.copy(image, offset, 0, Math.min(window.length, sizeBytes - offset));
      },
      close: async () => {},
      abort: async () => {},
    },
  };
}

interface OpenRead {
  seq: number;
  release: () => void;
  done: Promise<Buffer[]>;
  /** Objects GC deleted while this recovery was open. */
  deletedMeanwhile: number;
}

/** What the runs did, over all of them: the property must have exercised what it claims to. */
/** Units that published nothing, by why (DBG=1 prints them with `seen`). */
const reasons: Record<string, number> = {};
const DEFAULT_SEED = 20261205;
const seen = { applyCrashes: 0, published: 0, unitCrashes: 0, gcDeleted: 0, gcCrashes: 0, readsAcrossGc: 0, pinned: 0, policyChanges: 0 };

describe('a pair\'s whole life, model-based', () => {
  test('apply crashes and redeliveries, policy changes, pins, compaction, GC and open recoveries: every started recovery and every live RP reads its bytes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 20, maxLength: 80 }), async (ops) => {
        let t = START_MS;
        const clock = (): number => t;
        const store = new MemoryObjectStore();
        const index = new MemoryIndex(clock);
        const history = new MemoryHistory(index.historyHooks());
        await index.createPair({ pairId: PAIR, state: 'REPLICATING', stateChangedMs: t, disks: DISKS, ccrpIntervalMs: 5000, retention: POLICIES[0], createdMs: t, watermark: 0 });
        /** The extents of every batch made, by seq: the reference a recovery at seq k is checked against. */
        const written = new Map<number, ExtentInput[]>();
        const expectedAt = (k: number): Buffer[] => {
          const disks = DISKS.map((d) => Buffer.alloc(d.sizeBytes));
          for (let s = 1; s <= k; s++) applyExtents(disks, written.get(s) ?? []);
          return disks;
        };
        let nextSeq = 1;
        const undelivered: string[] = [];
        const delivered: string[] = [];
        const reads: OpenRead[] = [];
        let lastVersion = 0;
        let lastGcVersion = 0;
        let units = 0;

        const deliver = async (key: string, crashAt?: number): Promise<void> => {
          const { it, crashed } = crashing<ReplicaIndex>(index, ['registerBatch', 'commitAdvance', 'getPair', 'batchesAfter'], crashAt);
          try {
            const r = await new ApplyService(store, it, undefined, clock).applyObject(key);
            expect(['applied', 'pending', 'duplicate']).toContain(r.outcome);
            const i = undelivered.indexOf(key);
            if (i >= 0) delivered.push(...undelivered.splice(i, 1));
          } catch (err) {
            // Only the injected crash: the event stays undelivered, to be delivered again.
            expect({ err: String(err), crashed: crashed() }).toMatchObject({ crashed: true });
            seen.applyCrashes++;
          }
        };
        const liveRps = async () => index.listRecoveryPoints(PAIR, Math.floor(t / 1000));
        let sources = 0;
        const recover = (seq: number, gate: Promise<void>): Promise<Buffer[]> => {
          const images = new Map<string, Buffer>();
          return materialize(store, index, {
            pairId: PAIR,
            seq,
            nowMs: t,
            history,
            leaseTtlMs: READ_LEASE_MS,
            windowBytes: CHUNK_BYTES,
            sinkFor: async (disk, size) => {
              const { sink, image } = heldSink(size, gate);
              images.set(disk, image);
              return sink;
            },
          }).then((r) => {
            sources = r.sources;
            return DISKS.map((d) => images.get(d.name)!);
          });
        };
        const finish = async (r: OpenRead): Promise<void> => {
          r.release();
          const got = await r.done;
          if (r.deletedMeanwhile > 0) seen.readsAcrossGc++;
          const want = expectedAt(r.seq);
          DISKS.forEach((d, i) => expect({ seq: r.seq, disk: d.name, same: got[i].equals(want[i]) }).toEqual({ seq: r.seq, disk: d.name, same: true }));
        };

        for (const op of ops) {
          switch (op.kind) {
            case 'write': {
              const seq = nextSeq++;
              const extents = batchExtents(op.extents, DISKS);
              written.set(seq, extents);
              const flags = op.rp ? BATCH_FLAGS.RP_REQUESTED : 0;
              const key = journalKey(PAIR, seq);
              await store.put(key, encodeBatch({ pairId: PAIR, seq, prevSeq: seq - 1, firstWriteMs: t, cutMs: t, flags, disks: DISKS.map((d) => d.name) }, extents));
              undelivered.push(key);
              if (op.deliver === 'now') await deliver(key);
              t += 1000;
              break;
            }
            case 'deliver':
              if (undelivered.length) await deliver(undelivered[op.pick % undelivered.length], op.crashAt);
              break;
            case 'redeliver':
              // A duplicate event: nothing changes, whatever compaction and GC did since.
              if (delivered.length) await deliver(delivered[op.pick % delivered.length]);
              break;
            case 'wait':
              t += op.sec * 1000;
              break;
            case 'policy':
              if ((await setRetention(index, PAIR, POLICIES[op.which], clock)).changed) seen.policyChanges++;
              break;
            case 'pin':
            case 'unpin': {
              const rps = (await liveRps()).filter((r) => (op.kind === 'pin') === (r.pinned === undefined));
              if (!rps.length) break;
              const seq = rps[op.pick % rps.length].seq;
              const run = op.kind === 'pin' ? pinRp(index, PAIR, seq, { by: 'model', reason: 'test' }, t) : unpinRp(index, PAIR, seq, clock);
              // Refused only for a reason the CLI names (too close to its end to pin).
              if ((await run.catch((err: Error) => expect(err).toBeInstanceOf(InvalidArgumentError))) && op.kind === 'pin') seen.pinned++;
              break;
            }
            case 'compact': {
              const run = compactOnce({ store, index, history }, PAIR, {
                holder: `unit-${units++}`,
                nowMs: t,
                // A crashed unit's lease lapses within the test's waits.
                leaseTtlMs: 20_000,
                maxBatches: op.maxBatches,
                imageBytes: op.imageKiB * 1024,
                onStep: (s) => {
                  if (s === op.crash) throw new Error(`crash at ${s}`);
                },
              });
              // A unit that stops before the crash's step (nothing to do) just returns.
              const outcome = await run.catch((err: Error) => err);
              if (outcome instanceof Error) {
                expect(outcome.message).toBe(`crash at ${op.crash}`);
                seen.unitCrashes++;
              } else if (outcome.published) seen.published++;
              else if (process.env.DBG) reasons[outcome.reason ?? '?'] = (reasons[outcome.reason ?? '?'] ?? 0) + 1;
              t += 1000;
              break;
            }
            case 'gc': {
              const h = crashing<HistoryIndex>(history, ['deleteBatchItems', 'advanceGc', 'deleteVersionRecord'], op.crashAt);
              const d = crashing(store, ['deleteKeys'], op.crashAt === undefined ? undefined : Math.max(1, op.crashAt - 3));
              const before = store.objects.size;
              await gcOnce({ store, deleter: d.it, history: h.it }, PAIR, { nowMs: t, graceMs: op.graceSec * 1000 }).catch((err: Error) => {
                expect(h.crashed() || d.crashed()).toBe(true);
                expect(err.message).toMatch(/^crash at /);
                seen.gcCrashes++;
              });
              const deleted = before - store.objects.size;
              seen.gcDeleted += deleted;
              for (const r of reads) r.deletedMeanwhile += deleted;
              break;
            }
            case 'open-read': {
              const rps = await liveRps();
              if (!rps.length) break;
              const seq = rps[op.pick % rps.length].seq;
              let release!: () => void;
              const gate = new Promise<void>((r) => (release = r));
              const done = recover(seq, gate);
              done.catch(() => {}); // judged when finished
              reads.push({ seq, release, done, deletedMeanwhile: 0 });
              // Let it take its lease and choose its manifest before anything else happens.
              for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
              break;
            }
            case 'finish-read':
              if (reads.length) await finish(reads.splice(op.pick % reads.length, 1)[0]);
              break;
          }
          const pair = (await index.getPair(PAIR))!;
          const { manifest } = await currentManifest(store, history, pair);
          expect(manifest.version).toBeGreaterThanOrEqual(lastVersion);
          lastVersion = manifest.version;
          // The horizon never moves back, and nothing the manifest in force references is missing.
          const { gcVersion } = await history.getHistory(PAIR);
          expect(gcVersion).toBeGreaterThanOrEqual(lastGcVersion);
          lastGcVersion = gcVersion;
          expect([...manifestRefs(manifest)].filter((k) => !store.objects.has(k))).toEqual([]);
        }

        // Every event delivered at last, every open recovery finished: each read its RP's bytes.
        while (undelivered.length) await deliver(undelivered[0]);
        expect((await index.getPair(PAIR))!.watermark).toBe(nextSeq - 1);
        for (const r of reads.splice(0)) await finish(r);
        // Every live RP, pinned ones included, recovers bit-exact.
        for (const rp of await liveRps()) {
          const got = await recover(rp.seq, Promise.resolve());
          // The read bound (docs/design.md): image or base + I1 pieces + the L0 backlog, within 13 while compaction keeps up.
          expect(sources).toBeLessThanOrEqual(13);
          const want = expectedAt(rp.seq);
          DISKS.forEach((d, i) => expect({ seq: rp.seq, disk: d.name, same: got[i].equals(want[i]) }).toEqual({ seq: rp.seq, disk: d.name, same: true }));
        }
        // Settled (leases expired, everything folded, the grace over): GC leaves only what the manifest uses.
        t += READ_LEASE_MS + 3600_000;
        for (let i = 0; i < 50 && (await compactOnce({ store, index, history }, PAIR, { holder: 'final', nowMs: t })).published; i++) t += 1000;
        t += 3600_000;
        await gcOnce({ store, deleter: store, history }, PAIR, { nowMs: t });
        const pair = (await index.getPair(PAIR))!;
        const { manifest, key } = await currentManifest(store, history, pair);
        const used = manifestRefs(manifest, key);
        const left = [...store.objects.keys()].filter((k) => k.startsWith(historyRoot(PAIR)) && !used.has(k));
        expect(left).toEqual([]);
      }),
      // A fixed seed by default, so that the coverage below holds in CI; MODEL_SEED=<n> explores others.
      { numRuns: Number(process.env.MODEL_RUNS ?? 25), seed: Number(process.env.MODEL_SEED ?? DEFAULT_SEED) },
    );
    if (process.env.DBG) console.log(seen, reasons);
    // Each kind of event happened, and recoveries stayed open across GC runs that deleted objects.
    if (process.env.MODEL_SEED === undefined) for (const [what, n] of Object.entries(seen)) expect({ what, happened: n > 0 }).toEqual({ what, happened: true });
  });
});
