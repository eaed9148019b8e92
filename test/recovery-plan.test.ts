import fc from 'fast-check';
import { resolvePieces } from '../core/recovery-plan';

describe('resolvePieces', () => {
  test('matches a naive per-block newest-version map for random overlapping versions', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ blockIndex: fc.integer({ min: 0, max: 200 }), blockCount: fc.integer({ min: 1, max: 50 }) }), { maxLength: 40 }),
        (raw) => {
          const versions = raw.map((v, i) => ({ ...v, seq: i + 1, ref: `v${i}` }));
          const naive = new Map<number, string>();
          for (const v of versions) for (let b = v.blockIndex; b < v.blockIndex + v.blockCount; b++) naive.set(b, `${v.ref}@${b - v.blockIndex}`);
          const got = new Map<number, string>();
          let prevEnd = -1;
          for (const p of resolvePieces(versions)) {
            expect(p.blockIndex).toBeGreaterThanOrEqual(prevEnd);
            prevEnd = p.blockIndex + p.blockCount;
            for (let i = 0; i < p.blockCount; i++) got.set(p.blockIndex + i, `${p.ref}@${p.offsetBlocks + i}`);
          }
          expect(got).toEqual(naive);
        },
      ),
      { numRuns: 300 },
    );
  });
});
