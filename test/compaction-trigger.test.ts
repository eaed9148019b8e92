import { compactionDue, L0_TRIGGER } from '../core/compaction-trigger';

describe('compactionDue: the apply path asks for a run once per crossing of the L0 threshold', () => {
  test.each([
    // from, to, compactedThrough, due
    [0, 1, 0, false],
    [2, 3, 0, false],
    [3, 4, 0, true], // the backlog reaches 4
    [4, 5, 0, false], // still above: no new request at every batch
    [7, 8, 0, true], // 2 × the threshold: asks again
    [0, 9, 0, true], // one advance over several batches
    [100, 103, 100, false],
    [103, 104, 100, true],
    [96, 104, 100, true], // crossing from below the frontier (a late advance)
    [104, 104, 100, false], // no advance
  ])('watermark %d → %d, compactedThrough %d: %s', (fromWatermark, toWatermark, compactedThrough, due) => {
    expect(compactionDue({ fromWatermark, toWatermark, compactedThrough })).toBe(due);
  });

  test('a threshold below 1 is refused', () => {
    expect(() => compactionDue({ fromWatermark: 0, toWatermark: 1, compactedThrough: 0 }, 0)).toThrow(/threshold 0 must be ≥ 1/);
  });

  test('the default threshold is the bound design.md counts on', () => {
    expect(L0_TRIGGER).toBe(4);
  });
});
