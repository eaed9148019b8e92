// What a read of a range at seq k consults (core/read-sources.ts), on hand-built manifests:
// the image, the pieces above it up to k, the L0 batches in (frontier, k]; which seqs are
// readable; point reads through the pieces' bitmaps; the read bound at 12, 13 and 14 sources.

import fc from 'fast-check';
import { BITMAP_BYTES, checkManifest, initialManifest, type Manifest, type PieceEntry } from '../core/manifest';
import { l0ByRange, pointSources, rangeSources, readable, readBound, sourcesFor, type L0Batch } from '../core/read-sources';

const PREFIX = 'pairs/p/history/00000000000000000003-0123456789abcdef/';
const SHA = 'ab'.repeat(32);
const bitmap = (...blocks: number[]): string => {
  const b = Buffer.alloc(BITMAP_BYTES);
  for (const i of blocks) b[i >> 3] |= 1 << (i & 7);
  return b.toString('base64');
};
let offset = 0;
const piece = (seqLo: number, seqHi: number, ...blocks: number[]): PieceEntry => ({ key: `${PREFIX}run-0000.run`, offset: (offset += 1000), length: 900, crc32c: 1, seqLo, seqHi, blocks: bitmap(...blocks), dataBytes: 4096 });
const image = (seq: number) => ({ seq, key: `${PREFIX}image-${SHA}.chunk`, sha256: SHA, crc32c: 2, length: 4194304 });

/**
 * Range d:0: pieces [1,10] [11,20] below an image at 20, pieces [21,30] [31,40] [41,50]
 * [51,60] above it; frontier 60; retained 5, 20, 25, 45, 60. Range d:1: a zero image at 40.
 */
function manifest(): Manifest {
  offset = 0;
  return {
    format: 1,
    pairId: 'p',
    version: 3,
    generation: 1,
    publishedMs: 1,
    frontierSeq: 60,
    retained: [5, 20, 25, 45, 60],
    ranges: {
      'd:0': { images: [image(20)], pieces: [piece(1, 10, 0), piece(11, 20, 1), piece(21, 30, 2), piece(31, 40, 3, 7), piece(41, 50, 7), piece(51, 60, 9)] },
      'd:1': { images: [{ seq: 40, zero: true }], pieces: [piece(41, 60, 0)] },
    },
  };
}

/**
 * L0 batches 61..(60+n), each touching d:0; odd ones also d:2. And 59, 60: folded (at or
 * below the frontier) but their BATCH# items not yet collected: never a source.
 */
const l0 = (n: number): L0Batch[] => [
  { seq: 59, ranges: new Set(['d:0', 'd:2']) },
  { seq: 60, ranges: new Set(['d:0']) },
  ...Array.from({ length: n }, (_, i) => ({ seq: 61 + i, ranges: new Set(i % 2 === 0 ? ['d:0', 'd:2'] : ['d:0']) })),
];
const spans = (ps: PieceEntry[]) => ps.map((p) => [p.seqLo, p.seqHi]);

describe('read sources', () => {
  test('the manifest is sound', () => {
    expect(checkManifest(manifest())).toEqual([]);
  });

  // [range, k, image seq (or undefined), base, piece spans, l0 seqs, count]
  const rows: [string, number, number | undefined, boolean, number[][], number[], number][] = [
    ['d:0', 5, undefined, false, [[1, 10]], [], 1],
    ['d:0', 20, 20, false, [], [], 1], // the image ends the search: pieces at or below it are not read
    ['d:0', 25, 20, false, [[21, 30]], [], 2], // a piece whose span reaches above k is read (its versions > k are ignored)
    ['d:0', 45, 20, false, [[21, 30], [31, 40], [41, 50]], [], 4],
    ['d:0', 60, 20, false, [[21, 30], [31, 40], [41, 50], [51, 60]], [], 5],
    ['d:0', 63, 20, false, [[21, 30], [31, 40], [41, 50], [51, 60]], [61, 62, 63], 8], // L0 in (60, 63] only
    ['d:1', 45, 40, false, [[41, 60]], [], 1], // a zero image is no object
    ['d:1', 25, undefined, false, [], [], 0],
    ['d:2', 64, undefined, false, [], [61, 63], 2], // a range only the L0 touches
    ['d:9', 60, undefined, false, [], [], 0],
  ];
  test.each(rows)('%s at %i', (range, k, imageSeq, base, pieceSpans, l0Seqs, count) => {
    const s = sourcesFor(manifest(), l0(4), range, k);
    expect({ image: s.image?.seq, base: s.base, pieces: spans(s.pieces), l0: s.l0, count: s.count }).toEqual({ image: imageSeq, base, pieces: pieceSpans, l0: l0Seqs, count });
    // The indexed form agrees.
    expect(rangeSources(manifest(), l0ByRange(l0(4)).get(range) ?? [], range, k)).toEqual(s);
  });

  test('below its first image a range reads the base, counted as one object', () => {
    const m = { ...manifest(), base: { key: 'pairs/p/base/s.json', seq: 0 } };
    expect(sourcesFor(m, [], 'd:0', 5)).toMatchObject({ image: undefined, base: true, count: 2 });
    expect(sourcesFor(m, [], 'd:0', 25)).toMatchObject({ base: false, count: 2 });
    expect(sourcesFor(m, [], 'd:7', 25)).toMatchObject({ base: true, count: 1 });
    // Version 0 of a seeded pair: the base, and every batch above it.
    const v0 = initialManifest('p', { key: 'pairs/p/base/s.json', seq: 60 });
    expect(sourcesFor(v0, l0(3), 'd:0', 62)).toMatchObject({ base: true, l0: [61, 62], count: 3 });
  });

  test('readable: the retained points and anything at or above the frontier; nothing else', () => {
    const m = manifest();
    expect([0, 4, 5, 6, 20, 24, 25, 45, 59, 60, 61, 1000].filter((k) => readable(m, k))).toEqual([5, 20, 25, 45, 60, 61, 1000]);
    // Version 0: from the base's seq (a raw-image seed's first RP is seq 0), or from 0.
    expect(readable(initialManifest('p'), 0)).toBe(true);
    expect([9, 10, 11].map((k) => readable(initialManifest('p', { key: 'pairs/p/base/s.json', seq: 10 }), k))).toEqual([false, true, true]);
  });

  test('a point read goes only to the pieces whose bitmap has the block, newest first', () => {
    const m = manifest();
    expect(spans(pointSources(m, 'd:0', 7, 60).pieces)).toEqual([[41, 50], [31, 40]]);
    expect(spans(pointSources(m, 'd:0', 7, 35).pieces)).toEqual([[31, 40]]);
    expect(spans(pointSources(m, 'd:0', 0, 60).pieces)).toEqual([]); // in the image only
    expect(pointSources(m, 'd:0', 0, 60).image?.seq).toBe(20);
    expect(spans(pointSources(m, 'd:0', 0, 5).pieces)).toEqual([[1, 10]]);
    expect(spans(pointSources(m, 'd:0', 9, 60).pieces)).toEqual([[51, 60]]);
  });

  // The bound: 1 image + 4 pieces + the L0 backlog. 7 batches: 12; 8: 13 (the stated worst
  // while compaction keeps up); 9: 14, over it.
  test.each([
    [7, 12],
    [8, 13],
    [9, 14],
  ])('read bound with %i L0 batches: max %i sources, at the newest point on d:0', (batches, max) => {
    const m = manifest();
    const points = [...m.retained, 60 + batches];
    const b = readBound(m, l0(batches), points);
    expect(b.max).toBe(max);
    expect(b.worst).toEqual({ point: 60 + batches, range: 'd:0', count: max });
    expect(b.unreadable).toEqual([]);
    // Every point × range with data: d:0 at 5,20,25,45,60 → 1,1,2,4,5; d:1 at 45,60 → 1,1; at the newest:
    // d:0 → max, d:1 → 1, d:2 → ceil(batches/2).
    const counts = [1, 1, 2, 4, 5, 1, 1, max, 1, Math.ceil(batches / 2)].sort((a, b) => a - b);
    expect(b.p50).toBe(counts[(counts.length - 1) >> 1]);
  });

  test('a piece whose every block a newer piece at or below k holds is not read', () => {
    const m = manifest();
    // d:0 above the image at 20: [21,30] {2}, [31,40] {3,7}, [41,50] {7}, [51,60] {9}; add [61,70] {2,3} and [71,80] {7}.
    const ranges = { ...m.ranges, 'd:0': { ...m.ranges['d:0'], pieces: [...m.ranges['d:0'].pieces, piece(61, 70, 2, 3), piece(71, 80, 7)] } };
    const m2: Manifest = { ...m, frontierSeq: 80, retained: [...m.retained, 75, 80], ranges };
    // At 80: [21,30] and [31,40] are shadowed by [61,70] and [71,80]; [41,50] by [71,80].
    expect(spans(rangeSources(m2, [], 'd:0', 80).pieces)).toEqual([[51, 60], [61, 70], [71, 80]]);
    expect(rangeSources(m2, [], 'd:0', 80).count).toBe(4);
    // At 75 [71,80] reaches above k (its versions may all be newer than 75) and shadows nothing: [41,50] stays,
    // and with it [31,40] goes ({3} in [61,70], {7} in [41,50]), as [21,30] does.
    expect(spans(rangeSources(m2, [], 'd:0', 75).pieces)).toEqual([[41, 50], [51, 60], [61, 70], [71, 80]]);
    // At 60 none of them is above the others' blocks.
    expect(spans(rangeSources(m2, [], 'd:0', 60).pieces)).toEqual([[21, 30], [31, 40], [41, 50], [51, 60]]);
    // A point read of block 7 at 80 goes to the newest that has it only.
    expect(spans(pointSources(m2, 'd:0', 7, 80).pieces)).toEqual([[71, 80]]);
  });

  test('read bound leaves out (and lists) points the manifest cannot read', () => {
    const b = readBound(manifest(), [], [4, 5, 21]);
    expect(b.unreadable).toEqual([4, 21]);
    expect(b).toMatchObject({ max: 1, p50: 1, worst: { point: 5, range: 'd:0', count: 1 } });
    expect(readBound(manifest(), [], [])).toEqual({ max: 0, p50: 0, worst: undefined, unreadable: [] });
  });

  test('rangeSources (binary searches) agrees with the definition read literally, on random histories', () => {
    // A range's history: seqs 1..60 cut at random into images and pieces between them; L0 seqs at random.
    const history = fc.record({
      cuts: fc.uniqueArray(fc.integer({ min: 1, max: 60 }), { maxLength: 20 }),
      images: fc.uniqueArray(fc.integer({ min: 1, max: 60 }), { maxLength: 4 }),
      l0: fc.uniqueArray(fc.integer({ min: 1, max: 80 }), { maxLength: 12 }),
      frontier: fc.integer({ min: 0, max: 60 }),
      k: fc.integer({ min: 0, max: 90 }),
      base: fc.boolean(),
      blocks: fc.array(fc.uniqueArray(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 4 }), { minLength: 21, maxLength: 21 }),
    });
    fc.assert(
      fc.property(history, ({ cuts, images, l0, frontier, k, base, blocks }) => {
        const imgs = images.filter((s) => s <= frontier).sort((a, b) => a - b);
        // Piece spans: consecutive cuts, split at every image so that none straddles one.
        const bounds = [...new Set([...cuts, ...imgs].filter((s) => s <= frontier))].sort((a, b) => a - b);
        const pieces: PieceEntry[] = [];
        let lo = 1;
        for (const b of bounds) {
          if (b >= lo) pieces.push(piece(lo, b, ...blocks[pieces.length]));
          lo = b + 1;
        }
        const m: Manifest = { ...manifest(), frontierSeq: frontier, retained: [], base: base ? { key: 'pairs/p/base/s.json', seq: 0 } : undefined, ranges: { 'd:0': { images: imgs.map(image), pieces } } };
        expect(checkManifest(m).filter((v) => !v.includes('I1') && !v.includes('retained'))).toEqual([]);
        const seqs = [...l0].sort((a, b) => a - b);
        const got = rangeSources(m, seqs, 'd:0', k);
        // The definition: newest image ≤ k; pieces with seqLo ≤ k and seqHi > its seq, less those each of whose blocks a newer such piece wholly ≤ k holds; L0 in (frontier, k].
        const img = imgs.filter((s) => s <= k).pop();
        const above = pieces.filter((p) => p.seqLo <= k && p.seqHi > (img ?? -1));
        const holds = (p: PieceEntry, b: number): boolean => blocks[pieces.indexOf(p)].includes(b);
        const shadowed = (p: PieceEntry): boolean => blocks[pieces.indexOf(p)].every((b) => above.some((q) => q.seqLo > p.seqHi && q.seqHi <= k && holds(q, b)));
        const want = {
          image: img,
          base: img === undefined && base,
          pieces: above.filter((p) => !shadowed(p)).map((p) => [p.seqLo, p.seqHi]),
          l0: seqs.filter((s) => s > frontier && s <= k),
        };
        expect({ image: got.image?.seq, base: got.base, pieces: spans(got.pieces), l0: got.l0 }).toEqual(want);
        expect(got.count).toBe((img !== undefined ? 1 : 0) + (want.base ? 1 : 0) + want.pieces.length + want.l0.length);
      }),
      { numRuns: 500 },
    );
  });
});
