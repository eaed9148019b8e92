import { foldFloor, freeFloor, mergeCostTable, splitFloor } from '../core/merge-floor';

/** The least merge cost over every schedule: after each arrival, any partition of the objects into adjacent groups (a group of two or more written whole), at most k left. */
function bruteForce(n: number, k: number): number {
  let states = new Map<string, number>([['', 0]]);
  for (let i = 0; i < n; i++) {
    const next = new Map<string, number>();
    for (const [key, cost] of states) {
      const slots = [...(key === '' ? [] : key.split(',').map(Number)), 1];
      const visit = (at: number, out: number[], c: number): void => {
        if (at === slots.length) {
          if (out.length > k) return;
          const s = out.join(',');
          if (!(next.get(s)! <= c)) next.set(s, c);
          return;
        }
        let sum = 0;
        for (let end = at; end < slots.length; end++) {
          sum += slots[end];
          visit(end + 1, [...out, sum], c + (end > at ? sum : 0));
        }
      };
      visit(0, [], cost);
    }
    states = next;
  }
  return Math.min(...states.values());
}

describe('mergeCostTable', () => {
  const table = mergeCostTable(40, 6);

  test.each([
    // [items, slots, least cost in items]
    [5, 1, 14], // every arrival merges everything: 2 + 3 + 4 + 5
    [40, 1, 40 * 41 / 2 - 1],
    [4, 4, 0], // nothing to merge while the items fit
    [5, 4, 2], // one merge of two
    [5, 2, 5],
    [6, 6, 0],
  ])('%i items in %i slots cost %i', (n, k, cost) => {
    expect(table[k][n]).toBe(cost);
  });

  test('agrees with a search over every merge schedule', () => {
    for (let k = 1; k <= 4; k++) for (let n = 0; n <= 9; n++) expect([n, k, table[k][n]]).toEqual([n, k, bruteForce(n, k)]);
  });

  test('more slots never cost more, more items never cost less', () => {
    for (let k = 1; k <= 6; k++)
      for (let n = 1; n <= 40; n++) {
        expect(table[k][n]).toBeLessThanOrEqual(table[k - 1][n]);
        expect(table[k][n]).toBeGreaterThanOrEqual(table[k][n - 1]);
      }
  });

  test('refuses a negative size', () => {
    expect(() => mergeCostTable(-1, 3)).toThrow(/non-negative integers/);
  });
});

describe('floors', () => {
  const KiB = 1024;
  // bench:history's workload: one extent of 11.3 KiB per batch, 4 MiB ranges, the design's bound of 13.
  const bench = { itemBytes: 11.3 * KiB, imageBytes: 4096 * KiB, budget: 13, maxItems: 1500 };

  test('folding every batch costs at least 3.4 bytes per byte on the bench workload', () => {
    const f = foldFloor(bench);
    expect(f.perByte).toBeGreaterThan(3.4);
    expect(f.perByte).toBeLessThan(3.6);
    expect(f.batchesPerFold + f.pieces).toBe(12);
  });

  test('even batches left standing as sources cost more than 2.7', () => {
    const f = freeFloor(bench);
    expect(f.perByte).toBeGreaterThan(2.7);
    expect(f.perByte).toBeLessThan(foldFloor(bench).perByte);
  });

  test("the design's split (8 batches of backlog, 4 pieces) costs more than the best split", () => {
    const table = mergeCostTable(1500, 11);
    const ours = splitFloor({ itemBytes: bench.itemBytes, imageBytes: bench.imageBytes, batchesPerFold: 4, pieces: 4 }, table);
    expect(ours.perByte).toBeGreaterThan(foldFloor(bench, table).perByte + 1);
  });

  test('larger items lower the floor', () => {
    expect(foldFloor({ ...bench, itemBytes: 22 * KiB }).perByte).toBeLessThan(foldFloor(bench).perByte);
  });

  test('smaller ranges lower the floor: an image costs the range', () => {
    const at = (kib: number) => foldFloor({ ...bench, imageBytes: kib * KiB }).perByte;
    expect(at(1024)).toBeLessThan(at(2048));
    expect(at(2048)).toBeLessThan(at(4096));
    expect(at(1024)).toBeLessThan(2.6);
  });

  test('refuses a budget that leaves no room', () => {
    expect(() => foldFloor({ ...bench, budget: 2 })).toThrow(/budget must be an integer of at least 3/);
  });
});
