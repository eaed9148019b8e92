import fc from 'fast-check';
import { keepVisible, seesVersion, type KeepOptions, type VersionExtent } from '../core/keep';

type V = VersionExtent & { name: string };
const v = (seq: number, blockIndex: number, blockCount = 1): V => ({ seq, blockIndex, blockCount, name: `${seq}@${blockIndex}+${blockCount}` });
/** Kept parts as `seq@block+count` strings. */
const kept = (versions: V[], o: KeepOptions): string[] => keepVisible(versions, o).map((p) => `${p.of.seq}@${p.blockIndex}+${p.blockCount}`);

describe('keepVisible', () => {
  test('RFC-043-like: one block written at 10..60, retained 20 and 40: keeps 20, 40 and the newest', () => {
    const versions = [10, 20, 30, 40, 50, 60].map((s) => v(s, 0));
    expect(kept(versions, { retained: [20, 40], future: true })).toEqual(['20@0+1', '40@0+1', '60@0+1']);
    // Without the future point the newest goes too (nothing sees it).
    expect(kept(versions, { retained: [20, 40], future: false })).toEqual(['20@0+1', '40@0+1']);
    // A point between writes sees the older one: 35 sees 30.
    expect(kept(versions, { retained: [35], future: false })).toEqual(['30@0+1']);
    // Nothing retained and no future: nothing kept.
    expect(kept(versions, { retained: [], future: false })).toEqual([]);
    // A point below every version sees none of them (it reads what is under them).
    expect(kept(versions, { retained: [5], future: false })).toEqual([]);
  });

  test('extents are split where only part is visible', () => {
    // 30 writes blocks 0..7; 35 overwrites 2..3; 50 overwrites 0..7. Retained 40.
    const versions = [v(30, 0, 8), v(35, 2, 2), v(50, 0, 8)];
    expect(kept(versions, { retained: [40], future: true })).toEqual(['30@0+2', '50@0+8', '35@2+2', '30@4+4']);
    expect(kept(versions, { retained: [32], future: false })).toEqual(['30@0+8']);
    expect(kept(versions, { retained: [36, 60], future: false })).toEqual(['30@0+2', '50@0+8', '35@2+2', '30@4+4']);
  });

  test('a version every seeing point reads from an image instead is not kept', () => {
    const versions = [10, 20, 30].map((s) => v(s, 0));
    // Image at 25: point 27 reads the image, not 20; point 22 still needs 20.
    expect(kept(versions, { retained: [27], future: false, images: [25] })).toEqual([]);
    expect(kept(versions, { retained: [22, 27], future: false, images: [25] })).toEqual(['20@0+1']);
    // The future reads the newest image: 30 is above it (kept), an image at 30 covers it.
    expect(kept(versions, { retained: [], future: true, images: [25] })).toEqual(['30@0+1']);
    expect(kept(versions, { retained: [], future: true, images: [30] })).toEqual([]);
  });

  test('two versions of one seq over one block are refused', () => {
    expect(() => keepVisible([v(5, 0, 4), v(5, 3, 2)], { retained: [], future: true })).toThrow(/two versions of seq 5 cover block 3/);
  });

  test('seesVersion: the oldest point at or above the version decides', () => {
    const o = { retained: [10, 20], future: false, images: [15] };
    expect(seesVersion(12, 25, o)).toBe(false); // 20 reads image 15 (12 < 15); 10 is below
    expect(seesVersion(16, 25, o)).toBe(true);
    expect(seesVersion(5, 10, o)).toBe(false); // superseded at 10 exactly: 10 sees the next
    expect(seesVersion(5, 11, o)).toBe(true);
  });

  /** The newest version at or below p per block, above p's image, as `seq` per block. */
  function view(parts: { seq: number; blockIndex: number; blockCount: number }[], p: number, images: number[]): Map<number, number> {
    const floor = Math.max(-1, ...images.filter((i) => i <= p));
    const m = new Map<number, number>();
    for (const x of parts) {
      if (x.seq > p || x.seq <= floor) continue;
      for (let b = x.blockIndex; b < x.blockIndex + x.blockCount; b++) if ((m.get(b) ?? -1) < x.seq) m.set(b, x.seq);
    }
    return m;
  }

  test('property: every retained point (and the future) sees the same newest versions in the kept set as in the full one', () => {
    const arb = fc.record({
      writes: fc.array(fc.record({ seq: fc.integer({ min: 1, max: 60 }), blockIndex: fc.integer({ min: 0, max: 30 }), blockCount: fc.integer({ min: 1, max: 12 }) }), { maxLength: 25 }),
      retained: fc.uniqueArray(fc.integer({ min: 0, max: 70 }), { maxLength: 6 }).map((a) => a.sort((x, y) => x - y)),
      images: fc.uniqueArray(fc.integer({ min: 0, max: 70 }), { maxLength: 2 }).map((a) => a.sort((x, y) => x - y)),
      future: fc.boolean(),
    });
    fc.assert(
      fc.property(arb, ({ writes, retained, images, future }) => {
        // One extent per seq (a batch's extents do not overlap; one each is enough here).
        const bySeq = new Map(writes.map((w) => [w.seq, v(w.seq, w.blockIndex, w.blockCount)]));
        const versions = [...bySeq.values()];
        const parts = keepVisible(versions, { retained, future, images }).map((p) => ({ seq: p.of.seq, blockIndex: p.blockIndex, blockCount: p.blockCount }));
        const points = future ? [...retained, Number.MAX_SAFE_INTEGER] : retained;
        for (const p of points) expect(view(parts, p, images)).toEqual(view(versions, p, images));
        // Nothing kept that no point needs: each kept block is some point's newest.
        for (const part of parts) {
          for (let b = part.blockIndex; b < part.blockIndex + part.blockCount; b++) {
            expect(points.some((p) => view(versions, p, images).get(b) === part.seq)).toBe(true);
          }
        }
        // Parts lie inside their version.
        for (const p of keepVisible(versions, { retained, future, images })) {
          expect(p.blockIndex >= p.of.blockIndex && p.blockIndex + p.blockCount <= p.of.blockIndex + p.of.blockCount).toBe(true);
        }
      }),
      { numRuns: 400 },
    );
  });
});
