// core/recovery-ranges.ts: how the recovery workflow splits disks into ranges, and its progress.

import { MAX_PARTS, MAX_RANGES, MIN_RANGE_BYTES, planRecoveryRanges, rangeOf, recoveryProgress } from '../core/recovery-ranges';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const TiB = 2 ** 40;

test.each([
  // disks → range bytes, ranges per disk
  [[{ name: 'a', sizeBytes: 12 * MiB }], 64 * MiB, [1]],
  [[{ name: 'a', sizeBytes: 64 * MiB }], 64 * MiB, [1]],
  [[{ name: 'a', sizeBytes: 64 * MiB + 4096 }], 64 * MiB, [2]],
  [[{ name: 'a', sizeBytes: 8 * GiB }, { name: 'b', sizeBytes: GiB }], 64 * MiB, [128, 16]],
  // 1 TiB: ≤ 4000 ranges → ranges of 264 MiB (4000 − 1 disk, rounded up to 4 MiB)
  [[{ name: 'a', sizeBytes: TiB }], 264 * MiB, [3972]],
  // 16 TiB (EBS's largest gp3): ≤ 4000 ranges, each a part of ≤ 5 GiB
  [[{ name: 'a', sizeBytes: 16 * TiB }], 4196 * MiB, [3999]],
])('%j → ranges of %i bytes', (disks, rangeBytes, counts) => {
  const plan = planRecoveryRanges(disks as { name: string; sizeBytes: number }[], MIN_RANGE_BYTES);
  expect(plan.map((d) => d.rangeBytes)).toEqual(disks.map(() => rangeBytes));
  expect(plan.map((d) => d.ranges)).toEqual(counts);
});

test('the bounds hold for any sizes: ≤ MAX_RANGES over all disks, ≤ MAX_PARTS per disk, every range 4 MiB-aligned and covering its disk exactly', () => {
  for (const sizes of [[1], [4096, 3 * GiB], [TiB, TiB, 12 * MiB], Array.from({ length: 40 }, (_, i) => (i + 1) * 9 * GiB + 4096)]) {
    const plan = planRecoveryRanges(sizes.map((s, i) => ({ name: `d${i}`, sizeBytes: s })));
    expect(plan.reduce((n, d) => n + d.ranges, 0)).toBeLessThanOrEqual(MAX_RANGES);
    for (const d of plan) {
      expect(d.ranges).toBeLessThanOrEqual(MAX_PARTS);
      expect(d.rangeBytes % (4 * MiB)).toBe(0);
      const last = rangeOf(d, d.ranges - 1);
      expect(last.end).toBe(d.sizeBytes);
      expect(last.start).toBeLessThan(d.sizeBytes);
      expect(rangeOf(d, 0)).toEqual({ disk: d.disk, index: 0, start: 0, end: Math.min(d.sizeBytes, d.rangeBytes) });
    }
  }
});

test('bad input is refused, naming it', () => {
  expect(() => planRecoveryRanges([])).toThrow('a recovery needs at least one disk');
  expect(() => planRecoveryRanges([{ name: 'a', sizeBytes: GiB }], 3 * MiB)).toThrow('a range of 3145728 bytes is not a positive multiple of 4194304');
  expect(() => planRecoveryRanges([{ name: 'a', sizeBytes: 24 * TiB }])).toThrow(`disks of ${24 * TiB} bytes need ranges of 6601834496 bytes, more than an S3 part holds`);
  const [d] = planRecoveryRanges([{ name: 'a', sizeBytes: 100 * MiB }]);
  expect(() => rangeOf(d, 2)).toThrow("disk 'a' has ranges 0..1, not 2");
});

test.each([
  [0, 100, 0, 10_000, { doneBytes: 0, totalBytes: 100 }],
  [25, 100, 0, 10_000, { doneBytes: 25, totalBytes: 100, rateBps: 2.5, etaMs: 30_000 }],
  [100, 100, 0, 20_000, { doneBytes: 100, totalBytes: 100, rateBps: 5, etaMs: 0 }],
])('progress %i of %i over %i..%i ms', (done, total, start, now, want) => {
  expect(recoveryProgress(done, total, start, now)).toEqual(want);
});
