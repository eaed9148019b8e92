// Model-based property test of compaction, in memory: random batches (data and zeros, RP or
// not, RPs with random lives or pinned), time passing, and compaction units with random
// settings and crashes at any step. After every unit, every live RP reads bit-exact through
// the manifest in force, the manifest keeps its rules (I1 included), and versions only rise.

import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { BLOCK_SIZE, encodeBatch, type ExtentInput } from '../core/batch-format';
import { CHUNK_BYTES } from '../core/chunk-format';
import { journalKey } from '../core/keys';
import { checkManifest } from '../core/manifest';
import type { BatchRecord, RecoveryPoint } from '../core/model';
import { readable } from '../core/read-sources';
import { MemoryHistory } from '../adapters/memory-history';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { compactOnce, currentManifest, type CompactStep } from '../replica/compactor';
import type { ReplicaIndex } from '../replica/ports';
import { loadBatches, readDiskAt } from './history-read';

const PAIR = 'model';
const DISK = 'd';
const SIZE = 3 * CHUNK_BYTES;
const BLOCKS = SIZE / BLOCK_SIZE;

/** The three ReplicaIndex reads a unit makes, over the test's own state. */
class FakeIndex {
  batches: BatchRecord[] = [];
  rps: { seq: number; expiresAtSec?: number }[] = [];
  watermark = 0;
  lastRpSeq?: number;
  async getPair() {
    return { pairId: PAIR, disks: [{ name: DISK, sizeBytes: SIZE }], watermark: this.watermark, lastRpSeq: this.lastRpSeq, rev: 0 };
  }
  async batchesAfter(_p: string, after: number, limit: number) {
    return this.batches.filter((b) => b.seq > after).slice(0, limit);
  }
  async listRecoveryPoints(_p: string, nowSec: number) {
    return this.rps.filter((r) => r.expiresAtSec === undefined || r.expiresAtSec > nowSec).map((r) => ({ pairId: PAIR, seq: r.seq }) as RecoveryPoint);
  }
}

type Op =
  | { kind: 'batch'; extents: { block: number; count: number; zero: boolean }[]; rp: boolean; lifeSec: number }
  | { kind: 'wait'; sec: number }
  | { kind: 'compact'; maxBatches: number; imageKiB: number; maxPieces: number; crash?: CompactStep };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({
    kind: fc.constant('batch' as const),
    // Mostly in the first range (hot), sometimes anywhere.
    extents: fc.array(fc.record({ block: fc.oneof(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: BLOCKS - 1 })), count: fc.integer({ min: 1, max: 24 }), zero: fc.integer({ min: 0, max: 9 }).map((x) => x < 3) }), { minLength: 1, maxLength: 4 }),
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

describe('compaction, model-based', () => {
  test('every live RP reads bit-exact after any sequence of writes, expiries, units and crashes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 10, maxLength: 70 }), async (ops) => {
        const store = new MemoryObjectStore();
        const history = new MemoryHistory();
        const index = new FakeIndex();
        const model = Buffer.alloc(SIZE);
        const snapshots = new Map<number, Buffer>();
        let t = 1_800_000_000_000;
        let lastVersion = 0;
        for (const op of ops) {
          if (op.kind === 'wait') t += op.sec * 1000;
          if (op.kind === 'batch') {
            const seq = index.watermark + 1;
            const extents: ExtentInput[] = [];
            const used = new Set<number>();
            for (const e of op.extents) {
              const count = Math.min(e.count, BLOCKS - e.block);
              if (Array.from({ length: count }, (_, i) => e.block + i).some((b) => used.has(b))) continue;
              for (let i = 0; i < count; i++) used.add(e.block + i);
              if (e.zero) {
                extents.push({ disk: 0, blockIndex: e.block, zeroBlocks: count });
                model.fill(0, e.block * BLOCK_SIZE, (e.block + count) * BLOCK_SIZE);
              } else {
                const data = randomBytes(count * BLOCK_SIZE);
                extents.push({ disk: 0, blockIndex: e.block, data });
                data.copy(model, e.block * BLOCK_SIZE);
              }
            }
            const body = encodeBatch({ pairId: PAIR, seq, prevSeq: seq - 1, firstWriteMs: t, cutMs: t, flags: 0, disks: [DISK] }, extents);
            const key = journalKey(PAIR, seq);
            await store.put(key, body);
            index.batches.push({ seq, key, sizeBytes: body.length, objectCrc: 0, firstWriteMs: t, cutMs: t, flags: 0, extentCount: extents.length, dataBytes: 0, disks: [DISK], registeredMs: t });
            index.watermark = seq;
            snapshots.set(seq, Buffer.from(model));
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
            const got = await readDiskAt(store, m, l0, DISK, SIZE, r.seq);
            expect({ seq: r.seq, same: got.equals(snapshots.get(r.seq)!) }).toEqual({ seq: r.seq, same: true });
          }
          // Above the frontier too: the newest state reads (the RPs to come see it).
          const newest = await readDiskAt(store, m, l0, DISK, SIZE, Math.max(index.watermark, m.frontierSeq));
          expect(newest.equals(model)).toBe(true);
        }
      }),
      { numRuns: Number(process.env.MODEL_RUNS ?? 30) },
    );
  });
});
