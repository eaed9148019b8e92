// Model-based property test of compaction, in memory: random batches (data and zeros, RP or
// not, RPs with random lives or pinned), time passing, and compaction units with random
// settings and crashes at any step. After every unit, every live RP reads bit-exact through
// the manifest in force, the manifest keeps its rules (I1 included), and versions only rise.

import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { encodeBatch } from '../core/batch-format';
import { CHUNK_BYTES, encodeChunk } from '../core/chunk-format';
import { baseChunkKey, journalKey } from '../core/keys';
import { checkManifest, RANGE_BLOCKS } from '../core/manifest';
import type { BaseManifest } from '../core/seed-manifests';
import type { BatchRecord, RecoveryPoint } from '../core/model';
import { readable } from '../core/read-sources';
import { MemoryHistory } from '../adapters/memory-history';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { compactOnce, currentManifest, type CompactStep } from '../replica/compactor';
import type { ReplicaIndex } from '../replica/ports';
import { loadBatches, readDiskAt } from './history-read';
import { applyExtents, batchExtents } from './model-extents';

const PAIR = 'model';
/** Two disks: three whole ranges, and one and a half (its last range is short). */
const DISKS = [{ name: 'd', sizeBytes: 3 * CHUNK_BYTES }, { name: 'e', sizeBytes: 1.5 * CHUNK_BYTES }];
const BASE_KEY = `pairs/${PAIR}/base/seed-1.json`;

/** The three ReplicaIndex reads a unit makes, over the test's own state. */
class FakeIndex {
  batches: BatchRecord[] = [];
  rps: { seq: number; expiresAtSec?: number }[] = [];
  watermark = 0;
  lastRpSeq?: number;
  base?: { key: string; baseSeq: number; firstRpSeq: number };
  async getPair() {
    return { pairId: PAIR, disks: DISKS, watermark: this.watermark, lastRpSeq: this.lastRpSeq, base: this.base, rev: 0 };
  }
  async batchesAfter(_p: string, after: number, limit: number) {
    return this.batches.filter((b) => b.seq > after).slice(0, limit);
  }
  async listRecoveryPoints(_p: string, nowSec: number) {
    return this.rps.filter((r) => r.expiresAtSec === undefined || r.expiresAtSec > nowSec).map((r) => ({ pairId: PAIR, seq: r.seq }) as RecoveryPoint);
  }
}

type Op =
  | { kind: 'batch'; extents: { disk: number; block: number; count: number; zero: boolean }[]; rp: boolean; lifeSec: number }
  | { kind: 'wait'; sec: number }
  | { kind: 'compact'; maxBatches: number; imageKiB: number; maxPieces: number; crash?: CompactStep };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({
    kind: fc.constant('batch' as const),
    // Mostly in the first range (hot), sometimes anywhere.
    extents: fc.array(fc.record({ disk: fc.integer({ min: 0, max: 3 }).map((x) => (x < 3 ? 0 : 1)), block: fc.oneof(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 3 * RANGE_BLOCKS - 1 })), count: fc.integer({ min: 1, max: 24 }), zero: fc.integer({ min: 0, max: 9 }).map((x) => x < 3) }), { minLength: 1, maxLength: 4 }),
    rp: fc.integer({ min: 0, max: 3 }).map((x) => x > 0),
    lifeSec: fc.constantFrom(30, 120, 900, -1),
  }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('wait' as const), sec: fc.integer({ min: 1, max: 600 }) }) },
  { weight: 3, arbitrary: fc.record({
    kind: fc.constant('compact' as const),
    maxBatches: fc.integer({ min: 1, max: 6 }),
    imageKiB: fc.constantFrom(16, 128, 1024),
    // I1 is 4; 2 makes merges frequent in short runs.
    maxPieces: fc.constantFrom(2, 4),
    // One unit in five crashes, at any step.
    crash: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom<CompactStep>('planned', 'written', 'verified', 'manifest') }),
  }) },
);

/** Stores a base (random data in every range but d:1) and puts it into `model`. */
async function writeBase(store: MemoryObjectStore, model: Buffer[]): Promise<BaseManifest> {
  const disks: BaseManifest['disks'] = [];
  for (const [i, d] of DISKS.entries()) {
    const chunks: BaseManifest['disks'][number]['chunks'] = [];
    for (let index = 0; index * CHUNK_BYTES < d.sizeBytes; index++) {
      if (d.name === 'd' && index === 1) continue;
      const data = randomBytes(Math.min(CHUNK_BYTES, d.sizeBytes - index * CHUNK_BYTES));
      data.copy(model[i], index * CHUNK_BYTES);
      const { body, ref } = await encodeChunk(index, data);
      await store.put(baseChunkKey(PAIR, ref.sha256), body);
      chunks.push([index, ref.sha256, ref.crc32c, ref.length]);
    }
    disks.push({ name: d.name, sizeBytes: d.sizeBytes, chunks });
  }
  const base: BaseManifest = { format: 'livesync-base', version: 1, pairId: PAIR, seedId: 'seed-1', baseSeq: 0, firstRpSeq: 0, source: 'test', createdMs: 0, chunkBytes: CHUNK_BYTES, disks };
  await store.put(BASE_KEY, Buffer.from(JSON.stringify(base)));
  return base;
}

describe('compaction, model-based', () => {
  test('every live RP reads bit-exact after any sequence of writes, expiries, units and crashes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 10, maxLength: 70 }), fc.boolean(), async (ops, seeded) => {
        const store = new MemoryObjectStore();
        const history = new MemoryHistory();
        const index = new FakeIndex();
        const model = DISKS.map((d) => Buffer.alloc(d.sizeBytes));
        const snapshots = new Map<number, Buffer[]>();
        // A seeded pair: base chunks for some ranges (range 1 of 'd' is all zeros: no chunk), baseSeq 0.
        const base = seeded ? await writeBase(store, model) : undefined;
        if (base) index.base = { key: BASE_KEY, baseSeq: 0, firstRpSeq: 0 };
        let t = 1_800_000_000_000;
        let lastVersion = 0;
        for (const op of ops) {
          if (op.kind === 'wait') t += op.sec * 1000;
          if (op.kind === 'batch') {
            const seq = index.watermark + 1;
            const extents = batchExtents(op.extents, DISKS);
            applyExtents(model, extents);
            const body = encodeBatch({ pairId: PAIR, seq, prevSeq: seq - 1, firstWriteMs: t, cutMs: t, flags: 0, disks: DISKS.map((d) => d.name) }, extents);
            const key = journalKey(PAIR, seq);
            await store.put(key, body);
            index.batches.push({ seq, key, sizeBytes: body.length, objectCrc: 0, firstWriteMs: t, cutMs: t, flags: 0, extentCount: extents.length, dataBytes: 0, disks: DISKS.map((d) => d.name), registeredMs: t });
            index.watermark = seq;
            snapshots.set(seq, model.map((b) => Buffer.from(b)));
            if (op.rp) {
              index.rps.push({ seq, expiresAtSec: op.lifeSec < 0 ? undefined : Math.floor(t / 1000) + op.lifeSec });
              index.lastRpSeq = seq;
            }
            t += 5000;
          }
          if (op.kind === 'compact') {
            const run = compactOnce({ store, index: index as unknown as ReplicaIndex, history }, PAIR, {
              holder: 'h',
              nowMs: t,
              maxBatches: op.maxBatches,
              imageBytes: op.imageKiB * 1024,
              maxPiecesPerSpan: op.maxPieces,
              onStep: (s) => {
                if (s === op.crash) throw new Error(`crash at ${s}`);
              },
            });
            if (op.crash) await run.catch((err: Error) => expect(err.message).toBe(`crash at ${op.crash}`));
            else await run;
            t += 1000;
          }
          // After every step: the manifest in force is sound and reads every live RP as written.
          const pair = await index.getPair();
          const { manifest: m } = await currentManifest(store, history, pair as never);
          expect(m.version).toBeGreaterThanOrEqual(lastVersion);
          lastVersion = m.version;
          if (op.kind !== 'compact') continue;
          expect(checkManifest(m)).toEqual([]);
          const l0 = await loadBatches(store, index.batches.filter((b) => b.seq > m.frontierSeq));
          for (const r of await index.listRecoveryPoints(PAIR, Math.floor(t / 1000))) {
            expect({ seq: r.seq, readable: readable(m, r.seq) }).toEqual({ seq: r.seq, readable: true });
            for (const [i, d] of DISKS.entries()) {
              const got = await readDiskAt(store, m, l0, d.name, d.sizeBytes, r.seq, undefined, base);
              expect({ seq: r.seq, disk: d.name, same: got.equals(snapshots.get(r.seq)![i]) }).toEqual({ seq: r.seq, disk: d.name, same: true });
            }
          }
          // Above the frontier too: the newest state reads (the RPs to come see it).
          for (const [i, d] of DISKS.entries()) {
            const newest = await readDiskAt(store, m, l0, d.name, d.sizeBytes, Math.max(index.watermark, m.frontierSeq), undefined, base);
            expect(newest.equals(model[i])).toBe(true);
          }
        }
      }),
      // 20 runs, or as many as fit in 90 s on a slow machine (at least one; fast-check fails a
      // run interrupted before any passed). MODEL_RUNS=<n> runs exactly n.
      process.env.MODEL_RUNS ? { numRuns: Number(process.env.MODEL_RUNS) } : { numRuns: 20, interruptAfterTimeLimit: 90_000 },
    );
  });
});
