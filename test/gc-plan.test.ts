// What GC may delete (core/gc-plan.ts): grace counted from unreference, leases holding old
// versions, the horizon moving one version at a time, DeleteObjects batches, the orphan sweep.

import { batches, DEFAULT_GC_GRACE_MS, GcStateError, manifestRefs, planGc, planOrphans, type GcInputs, type VersionWork } from '../core/gc-plan';
import { historyPrefix } from '../core/keys';
import { initialManifest, type Manifest } from '../core/manifest';

const NOW = 1_795_521_700_000;
const HOUR = DEFAULT_GC_GRACE_MS;
const MIN = 60_000;

const rec = (version: number, publishedMs: number, removedKeys: string[] = [`k${version}`], foldedSeqs: number[] = []): VersionWork => ({
  version,
  manifestKey: `m${version}`,
  publishedMs,
  removedKeys,
  foldedSeqs,
});

const inputs = (over: Partial<GcInputs>): GcInputs => ({ pairId: 'p', version: 0, gcVersion: 0, records: [], leases: [], nowMs: NOW, graceMs: HOUR, ...over });

describe('planGc', () => {
  test.each<[string, Partial<GcInputs>, number[], object | undefined]>([
    ['nothing published', {}, [], undefined],
    ['every version old enough, no lease', { version: 3, records: [rec(1, NOW - 5 * HOUR), rec(2, NOW - 4 * HOUR), rec(3, NOW - 2 * HOUR)] }, [1, 2, 3], undefined],
    ['grace boundary: published exactly grace ago is collectable', { version: 1, records: [rec(1, NOW - HOUR)] }, [1], undefined],
    ['grace boundary: 1 ms younger waits', { version: 1, records: [rec(1, NOW - HOUR + 1)] }, [], { version: 1, reason: 'grace', untilMs: NOW + 1 }],
    // SlateDB #204: the grace counts from when the object stopped being referenced (the
    // publish of version 2, a minute ago), not from its write (hours ago, in version 1).
    [
      'an object written long ago, unreferenced a minute ago, is kept',
      { version: 2, records: [rec(1, NOW - 10 * HOUR, ['journal-a']), rec(2, NOW - MIN, ['run-written-10h-ago'])] },
      [1],
      { version: 2, reason: 'grace', untilMs: NOW - MIN + HOUR },
    ],
    [
      'a lease holding version 1 blocks versions 2 and up (they removed what 1 references)',
      { version: 3, records: [rec(1, NOW - 5 * HOUR), rec(2, NOW - 4 * HOUR), rec(3, NOW - 3 * HOUR)], leases: [{ id: 'rec-1', manifestVersion: 1 }, { id: 'rec-3', manifestVersion: 3 }] },
      [1],
      { version: 2, reason: 'lease', leaseId: 'rec-1', leaseVersion: 1 },
    ],
    ['a lease on version 0 (never compacted) blocks version 1', { version: 1, records: [rec(1, NOW - 5 * HOUR)], leases: [{ id: 'r', manifestVersion: 0 }] }, [], { version: 1, reason: 'lease', leaseId: 'r', leaseVersion: 0 }],
    ['a lease on the current version blocks nothing', { version: 2, records: [rec(1, NOW - 5 * HOUR), rec(2, NOW - 4 * HOUR)], leases: [{ id: 'r', manifestVersion: 2 }] }, [1, 2], undefined],
    [
      'the horizon moves one version at a time: a young version stops older-published later ones',
      { version: 3, records: [rec(1, NOW - 5 * HOUR), rec(2, NOW - MIN), rec(3, NOW - 5 * HOUR)] },
      [1],
      { version: 2, reason: 'grace', untilMs: NOW - MIN + HOUR },
    ],
    ['starts above the horizon', { version: 3, gcVersion: 2, records: [rec(3, NOW - 5 * HOUR)] }, [3], undefined],
  ])('%s', (_what, over, collected, blocked) => {
    const plan = planGc(inputs(over));
    expect(plan.steps.map((s) => s.version)).toEqual(collected);
    expect(plan.blocked).toEqual(blocked);
  });

  test("the SlateDB #204 object is in no batch of this run's steps", () => {
    const plan = planGc(inputs({ version: 2, records: [rec(1, NOW - 10 * HOUR, ['journal-a']), rec(2, NOW - MIN, ['run-written-10h-ago'])] }));
    expect(plan.steps.flatMap((s) => s.keyBatches.flat())).toEqual(['journal-a']);
  });

  test('2,500 removed keys go in batches of 1000, 1000 and 500; the folded seqs with them', () => {
    const keys = Array.from({ length: 2500 }, (_, i) => `k${i}`);
    const [step] = planGc(inputs({ version: 1, records: [rec(1, 0, keys, [4, 5, 6])] })).steps;
    expect(step.keyBatches.map((b) => b.length)).toEqual([1000, 1000, 500]);
    expect(step.keyBatches.flat()).toEqual(keys);
    expect(step.batchSeqs).toEqual([4, 5, 6]);
    expect(batches([], 1000)).toEqual([]);
  });

  test('a removed key the current manifest still references (a compaction fault) is kept and reported, never batched', () => {
    const [step] = planGc(inputs({ version: 1, records: [rec(1, 0, ['a', 'live', 'b'])], referenced: new Set(['live']) })).steps;
    expect(step.keyBatches).toEqual([['a', 'b']]);
    expect(step.kept).toEqual(['live']);
  });

  test('a record left at the horizon (a run stopped after advancing) is a leftover to delete, not a step', () => {
    const plan = planGc(inputs({ version: 3, gcVersion: 2, records: [rec(2, 0), rec(3, 0)] }));
    expect(plan.leftovers).toEqual([2]);
    expect(plan.steps.map((s) => s.version)).toEqual([3]);
  });

  test('a missing VERSION# record between the horizon and the version stops GC with an error naming it', () => {
    expect(() => planGc(inputs({ version: 3, gcVersion: 0, records: [rec(1, 0), rec(3, 0)] }))).toThrow(GcStateError);
    expect(() => planGc(inputs({ version: 3, gcVersion: 0, records: [rec(1, 0), rec(3, 0)] }))).toThrow("pair 'p': GC stopped: VERSION#2 is missing: HISTORY is at version 3 and GC at 0, records found: 1, 3");
  });
});

describe('planOrphans', () => {
  const pair = 'demo';
  const v1 = historyPrefix(pair, 1, '1111111111111111');
  const v1failed = historyPrefix(pair, 1, 'aaaaaaaaaaaaaaaa');
  const v2 = historyPrefix(pair, 2, '2222222222222222');
  const v3failed = historyPrefix(pair, 3, 'bbbbbbbbbbbbbbbb');
  const listed = [
    `${v1}manifest.json`,
    `${v1}run-0000.run`,
    `${v1failed}run-0000.run`,
    `${v1failed}manifest.json`,
    `${v2}run-0000.run`,
    `${v3failed}run-0000.run`,
    `pairs/${pair}/history/not-an-attempt`,
    `pairs/other/history/${v1failed.split('/history/')[1]}run-0000.run`,
  ];

  test('deletes keys of attempts at or below the horizon that nothing held references, and nothing else', () => {
    const held = new Set([`${v1}run-0000.run`, `${v2}run-0000.run`]);
    expect(planOrphans(pair, 2, listed, held)).toEqual([[`${v1}manifest.json`, `${v1failed}run-0000.run`, `${v1failed}manifest.json`]]);
    // Below the horizon only: at gcVersion 0 nothing is an orphan yet.
    expect(planOrphans(pair, 0, listed, new Set())).toEqual([]);
  });

  test('2,500 orphans in batches of 1000', () => {
    const many = Array.from({ length: 2500 }, (_, i) => `${v1failed}run-${String(i).padStart(4, '0')}.run`);
    expect(planOrphans(pair, 1, many, new Set()).map((b) => b.length)).toEqual([1000, 1000, 500]);
  });

  test("manifestRefs: a manifest's images (not zero ones), pieces and its own key", () => {
    const m: Manifest = {
      ...initialManifest(pair),
      version: 2,
      frontierSeq: 20,
      retained: [20],
      ranges: {
        'disk0:0': {
          images: [{ seq: 5, key: `pairs/${pair}/base/chunks/${'a'.repeat(64)}`, sha256: 'a'.repeat(64), crc32c: 1, length: 4096 }, { seq: 10, zero: true }],
          pieces: [{ key: `${v2}run-0000.run`, offset: 0, length: 100, crc32c: 1, seqLo: 11, seqHi: 20, blocks: '', dataBytes: 4096 }],
        },
      },
    };
    expect([...manifestRefs(m, `${v2}manifest.json`)].sort()).toEqual([`${v2}manifest.json`, `${v2}run-0000.run`, `pairs/${pair}/base/chunks/${'a'.repeat(64)}`].sort());
  });
});
