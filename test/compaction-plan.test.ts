import { applyUnit, DEFAULT_PLAN_CONFIG, mergeChoice, pieceId, planUnit, spanLimit, removedKeys, retainedFor, type L0Summary, type PlanConfig, type RangeResult } from '../core/compaction-plan';
import { checkManifest, initialManifest, type ImageEntry, type Manifest, type PieceEntry } from '../core/manifest';

const RUN = (v: number, n = 0): string => `pairs/p/history/${String(v).padStart(20, '0')}-0123456789abcdef/run-${String(n).padStart(4, '0')}.run`;
const IMG = (v: number, sha: string): string => `pairs/p/history/${String(v).padStart(20, '0')}-0123456789abcdef/image-${sha}.chunk`;
const BLOCKS = Buffer.alloc(128).toString('base64');
let offset = 0;
const piece = (seqLo: number, seqHi: number, dataBytes: number, key = RUN(1)): PieceEntry => ({ key, offset: (offset += 1000), length: 1000, crc32c: 1, seqLo, seqHi, blocks: BLOCKS, dataBytes });
const sha = (c: string): string => c.repeat(64);
const image = (seq: number, c: string, key = IMG(1, sha(c))): ImageEntry => ({ seq, key, sha256: sha(c), crc32c: 2, length: 4 * 1024 * 1024 });
const batch = (seq: number, ranges: Record<string, number>): L0Summary => ({ seq, key: `pairs/p/journal/${seq}.batch`, ranges: new Map(Object.entries(ranges)) });
const cfg = (o: Partial<PlanConfig> = {}): PlanConfig => ({ imageBytes: 100, maxPiecesPerSpan: 4, deadRewriteRatio: 0.5, recheckLoss: 0.25, mergeRatio: 0.75, smallSpanBytes: 0, smallSpanSeqs: 0, smallSpanPieces: 2, ...o });
const manifest = (frontierSeq: number, retained: number[], ranges: Manifest['ranges']): Manifest => ({ ...initialManifest('p'), version: 1, generation: 1, frontierSeq, retained, ranges });
const span = (q: { seqLo: number; seqHi: number }): string => `${q.seqLo}-${q.seqHi}`;

describe('planUnit', () => {
  test('fold: one build per range the batches touch, over (frontier, cut]; the cut is retained', () => {
    const plan = planUnit(initialManifest('p'), [batch(1, { 'd:0': 10, 'd:1': 5 }), batch(2, { 'd:0': 10 }), batch(3, { 'd:0': 10 }), batch(4, { 'd:2': 1 })], [1, 3], 3, cfg());
    expect(plan).toMatchObject({ cut: 3, retained: [1, 3], foldedSeqs: [1, 2, 3], foldedKeys: ['pairs/p/journal/1.batch', 'pairs/p/journal/2.batch', 'pairs/p/journal/3.batch'] });
    expect(plan.ranges.map((r) => [r.range, r.builds.map((b) => [span(b), b.l0, b.bytes])])).toEqual([
      ['d:0', [['1-3', true, 30]]],
      ['d:1', [['1-3', true, 5]]],
    ]);
    expect(plan.ranges.every((r) => r.newImages.length === 0)).toBe(true);
  });

  test('image at the first retained point where the data since the newest image reaches imageBytes; builds end at it', () => {
    const m = manifest(10, [10], { 'd:0': { images: [], pieces: [piece(1, 10, 30)] } });
    // 30 (open piece) + 40 at 11 = 70 < 100 at point 12; + 40 at 13 = 110 >= 100 at point 14; 15 adds 10 more.
    const plan = planUnit(m, [batch(11, { 'd:0': 40 }), batch(13, { 'd:0': 40 }), batch(15, { 'd:0': 10 })], [12, 14, 16], 16, cfg());
    const r = plan.ranges[0];
    expect(r.newImages).toEqual([14]);
    expect(r.imageSeqs).toEqual([14]);
    expect(r.builds.map(span)).toEqual(['11-14', '15-16']);
    // The open piece's span is closed by the image: the RPs to come no longer read it.
    expect(r.recheck.map(span)).toEqual(['1-10']);
  });

  test('an image no retained point reads is dropped, and the pieces above it with it; the newest image stays', () => {
    const m = manifest(30, [10, 15, 20, 25, 30], {
      'd:0': { images: [image(10, 'a'), image(20, 'b'), image(30, 'c')], pieces: [piece(11, 20, 5), piece(21, 30, 5)] },
    });
    const plan = planUnit(m, [batch(31, { 'd:1': 1 })], [25, 40], 40, cfg());
    expect(plan.retained).toEqual([25, 40]);
    const r = plan.ranges.find((x) => x.range === 'd:0')!;
    expect(r.keepImages.map((i) => i.seq)).toEqual([20, 30]);
    expect(r.dropImages.map((i) => i.seq)).toEqual([10]);
    expect(r.dropPieces.map(span)).toEqual(['11-20']);
    // 21-30 still serves 25, and lost points 30 (the old cut) only above... 30 reads image 30: its reach was [21, 30), still has 25.
    expect(r.keepPieces.map(span)).toEqual(['21-30']);
    expect(r.recheck).toEqual([]);
  });

  test('a piece that lost a retained point is re-checked; one that lost none is kept', () => {
    const m = manifest(30, [22, 25, 30], { 'd:0': { images: [image(20, 'b'), image(30, 'c')], pieces: [piece(21, 24, 5), piece(25, 30, 5)] } });
    const plan = planUnit(m, [batch(31, { 'd:1': 1 })], [25, 40], 40, cfg());
    const r = plan.ranges.find((x) => x.range === 'd:0')!;
    expect(r.dropPieces.map(span)).toEqual([]); // 21-24 is read by 25 (no image in between)
    expect(r.recheck.map(span)).toEqual(['21-24']); // lost 22
    expect(r.keepPieces.map(span)).toEqual(['25-30']);
  });

  test('re-checks are throttled: a piece is read again when a unit takes a quarter of its points, not one of many', () => {
    const points = Array.from({ length: 12 }, (_, i) => 21 + i); // 21..32, all reaching the piece 21-30 (image at 40)
    const m = manifest(40, [...points, 40], { 'd:0': { images: [image(20, 'b'), image(40, 'c')], pieces: [piece(21, 30, 5)] } });
    const after = (kept: number[]) => planUnit(m, [batch(41, { 'd:1': 1 })], [...kept, 40], 41, cfg()).ranges.find((x) => x.range === 'd:0');
    expect(after(points.slice(1))).toBeUndefined(); // 1 of 12 lost: kept as is
    expect(after(points.slice(2))).toBeUndefined(); // 2 of 12
    expect(after(points.slice(3))!.recheck.map(span)).toEqual(['21-30']); // 3 of 12: a quarter
    expect(planUnit(m, [batch(41, { 'd:1': 1 })], [22, 40], 41, cfg({ recheckLoss: 0 })).ranges.find((x) => x.range === 'd:0')!.recheck.map(span)).toEqual(['21-30']);
  });

  test('pieces left in a run the manifest references less than half of are relocated (rewritten whatever their dead share)', () => {
    const a = piece(1, 10, 5, RUN(1, 0));
    const b = piece(1, 10, 5, RUN(1, 1));
    const m = manifest(10, [10], { 'd:0': { images: [], pieces: [a] }, 'd:1': { images: [], pieces: [b] } });
    // run 0 is 10,000 bytes with 1,000 referenced; run 1 is 1,500 bytes; a run of unknown size is not judged.
    const sizes = new Map([[RUN(1, 0), 10_000], [RUN(1, 1), 1_500]]);
    const plan = planUnit(m, [batch(11, { 'd:2': 1 })], [10, 11], 11, cfg(), sizes);
    expect(plan.ranges.map((r) => [r.range, r.relocate.map(pieceId), r.recheck.map(pieceId)])).toEqual([['d:0', [pieceId(a)], [pieceId(a)]], ['d:2', [], []]]);
    expect(planUnit(m, [batch(11, { 'd:2': 1 })], [10, 11], 11, cfg()).ranges.map((r) => r.range)).toEqual(['d:2']);
  });

  test('I1: the oldest piece whose newer pieces weigh >= mergeRatio of it takes them all in, until at most 4 pieces remain per span', () => {
    // 40, 1, 1, 10 + fold 5: the 40 has 17 behind it, the first 1 has 16: 1..fold become one build.
    const m = manifest(40, [10, 20, 30, 40], { 'd:0': { images: [], pieces: [piece(1, 10, 40), piece(11, 20, 1), piece(21, 30, 1), piece(31, 40, 10)] } });
    const plan = planUnit(m, [batch(41, { 'd:0': 5 })], [10, 20, 30, 40, 41], 41, cfg({ imageBytes: 1000 }));
    const r = plan.ranges[0];
    expect(r.builds.map((b) => [span(b), b.from.map(span), b.l0, b.bytes])).toEqual([['11-41', ['11-20', '21-30', '31-40'], true, 17]]);
    expect(r.keepPieces.map(span)).toEqual(['1-10']);
    // Tiers: 60, 20, 10, 1 + fold 1: the first with 3/4 of its bytes behind it is the 1: it and the fold merge.
    const m3 = manifest(40, [10, 20, 30, 40], { 'd:0': { images: [], pieces: [piece(1, 10, 60), piece(11, 20, 20), piece(21, 30, 10), piece(31, 40, 1)] } });
    const r3 = planUnit(m3, [batch(41, { 'd:0': 1 })], [10, 20, 30, 40, 41], 41, cfg({ imageBytes: 1000 })).ranges[0];
    expect(r3.builds.map((b) => [span(b), b.from.map(span), b.l0])).toEqual([['31-41', ['31-40'], true]]);
    // 100, 40, 10, 8 + fold 8: 66 < 75 behind the 100, 26 < 30 behind the 40, 16 behind the 10: 10, 8 and the fold become one.
    const m4 = manifest(40, [10, 20, 30, 40], { 'd:0': { images: [], pieces: [piece(1, 10, 100), piece(11, 20, 40), piece(21, 30, 10), piece(31, 40, 8)] } });
    const r4 = planUnit(m4, [batch(41, { 'd:0': 8 })], [10, 20, 30, 40, 41], 41, cfg({ imageBytes: 1000 })).ranges[0];
    expect(r4.builds.map((b) => [span(b), b.from.map(span), b.l0, b.bytes])).toEqual([['21-41', ['21-30', '31-40'], true, 26]]);
  });

  test('a cold span (under smallSpanBytes, begun smallSpanSeqs before the cut) keeps at most smallSpanPieces: a cold range reads its base + 2 pieces', () => {
    const m = manifest(40, [10, 20, 40], { 'd:0': { images: [], pieces: [piece(1, 10, 40), piece(11, 20, 8), piece(21, 40, 1)] } });
    const plan = (o: Partial<PlanConfig>) => planUnit(m, [batch(41, { 'd:0': 1 })], [10, 20, 40, 41], 41, cfg({ imageBytes: 1000, ...o })).ranges[0];
    // 50 bytes in all, under 100: 4 pieces become 2 (the 1 and the fold, then the newest two).
    const small = plan({ smallSpanBytes: 100 });
    expect(small.builds.map((b) => [span(b), b.from.map(span), b.l0, b.bytes])).toEqual([['11-41', ['11-20', '21-40'], true, 10]]);
    expect(small.keepPieces.map(span)).toEqual(['1-10']);
    // At or over it, or younger than smallSpanSeqs (the span began at 1, the cut is 41: 40 seqs), I1's 4 stand: the fold is a piece of its own.
    for (const o of [{ smallSpanBytes: 50 }, { smallSpanBytes: 100, smallSpanSeqs: 41 }]) expect(plan(o).builds.map((b) => [span(b), b.from.map(span)])).toEqual([['41-41', []]]);
    expect(plan({ smallSpanBytes: 100, smallSpanSeqs: 40 }).builds.map(span)).toEqual(['11-41']);
    expect(spanLimit(10, 5, { maxPiecesPerSpan: 4, smallSpanBytes: 100, smallSpanSeqs: 5, smallSpanPieces: 2 })).toBe(2);
    expect(spanLimit(10, 5, { maxPiecesPerSpan: 1, smallSpanBytes: 100, smallSpanSeqs: 5, smallSpanPieces: 2 })).toBe(1);
  });

  test('I1 merges cost about 4.4 writes per folded byte over 110 equal folds into 4 slots (the pair most alike: 6.2)', () => {
    // A hot range between two images: ~110 folds of ~37 KiB until 4 MiB of data (bench:history).
    const writesPerByte = (choose: (bytes: number[]) => [number, number], folds = 110, slots = 4): number => {
      let span: { bytes: number; fresh: boolean }[] = [];
      let written = 0;
      for (let i = 0; i < folds; i++) {
        span = [...span.map((x) => ({ ...x, fresh: false })), { bytes: 1, fresh: true }];
        while (span.length > slots) {
          const [a, b] = choose(span.map((x) => x.bytes));
          span.splice(a, b - a + 1, { bytes: span.slice(a, b + 1).reduce((n, x) => n + x.bytes, 0), fresh: true });
        }
        written += span.filter((x) => x.fresh).reduce((n, x) => n + x.bytes, 0);
      }
      return written / folds;
    };
    const ours = writesPerByte((b) => mergeChoice(b, DEFAULT_PLAN_CONFIG.mergeRatio));
    expect(ours).toBeGreaterThan(1);
    expect(ours).toBeLessThan(4.6);
    expect(() => mergeChoice([1], 1)).toThrow(RangeError);
  });

  test('spans are merged apart: pieces below an image never merge with pieces above it', () => {
    const m = manifest(50, [5, 10, 15, 20, 25, 30, 35, 40, 45, 50], {
      'd:0': { images: [image(25, 'a')], pieces: [piece(1, 5, 1), piece(6, 10, 1), piece(11, 15, 1), piece(16, 25, 1), piece(26, 30, 1), piece(31, 40, 1), piece(41, 45, 1), piece(46, 50, 1)] },
    });
    const plan = planUnit(m, [batch(51, { 'd:0': 1 })], [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 51], 51, cfg({ imageBytes: 1000 }));
    const r = plan.ranges[0];
    // Above the image, 4 equal pieces and the fold become one; below it, 4 stay apart.
    expect(r.builds.map((b) => span(b))).toEqual(['26-51']);
    expect(r.keepPieces.map(span)).toEqual(['1-5', '6-10', '11-15', '16-25']);
  });

  test('retainedFor: points the input cannot read (pruned, or above the cut) are left out; the cut is in', () => {
    const m = manifest(30, [10, 30], {});
    expect(retainedFor(m, [5, 10, 20, 31, 35, 50], 40)).toEqual([10, 31, 35, 40]);
    // The frontier is readable (readable() says so): the base's seq before the first unit, the seeded first RP.
    expect(retainedFor(manifest(0, [], {}), [0, 3, 7], 7)).toEqual([0, 3, 7]);
    expect(() => planUnit(m, [], [], 29, cfg())).toThrow(/not above the frontier/);
    expect(() => planUnit(initialManifest('p'), [], [], 0, cfg())).toThrow(/not above the frontier/);
    // At the frontier of a compacted history: prune-only (the cut stays retained).
    expect(planUnit(m, [], [30], 30, cfg())).toMatchObject({ cut: 30, retained: [30], foldedSeqs: [], ranges: [] });
  });

  test('a range with nothing to do is not planned', () => {
    const m = manifest(30, [10, 30], { 'd:0': { images: [image(5, 'a')], pieces: [piece(6, 10, 5)] } });
    expect(planUnit(m, [batch(31, { 'd:1': 1 })], [10, 30, 31], 31, cfg()).ranges.map((r) => r.range)).toEqual(['d:1']);
    // Once the old cut (30) is no longer retained, the open piece may hold versions only it saw: re-checked.
    expect(planUnit(m, [batch(31, { 'd:1': 1 })], [10, 31], 31, cfg()).ranges.map((r) => [r.range, r.recheck.map(span)])).toEqual([['d:0', ['6-10']], ['d:1', []]]);
  });
});

describe('applyUnit and removedKeys', () => {
  test('the new manifest: version + 1, frontier = cut, built pieces in, merged/dropped/rewritten out; removed keys are the unreferenced ones', () => {
    const base = 'pairs/p/base/chunks/' + sha('e');
    const shared = RUN(1, 7);
    const m = manifest(30, [22, 25, 30], {
      'd:0': { images: [image(10, 'a'), image(20, 'b'), image(30, 'c')], pieces: [piece(11, 20, 5, shared), piece(21, 24, 5), piece(25, 30, 5, shared)] },
      'd:1': { images: [image(10, 'e', base)], pieces: [] },
    });
    const plan = planUnit(m, [batch(31, { 'd:0': 1 })], [25, 40], 40, cfg({ imageBytes: 1000 }));
    const r = plan.ranges.find((x) => x.range === 'd:0')!;
    expect(r.dropImages.map((i) => i.seq)).toEqual([10]);
    const rewritten = piece(21, 24, 2, RUN(2, 0));
    const fold = piece(31, 40, 1, RUN(2, 0));
    const results = new Map<string, RangeResult>([['d:0', { images: [], pieces: [rewritten, fold], replaced: [r.recheck[0]] }]]);
    const next = applyUnit(m, plan, results, { generation: 4, publishedMs: 123 });
    expect(next).toMatchObject({ version: 2, generation: 4, publishedMs: 123, frontierSeq: 40, retained: [25, 40] });
    expect(next.ranges['d:0'].images.map((i) => i.seq)).toEqual([20, 30]);
    expect(next.ranges['d:0'].pieces.map((q) => [span(q), q.key])).toEqual([['21-24', RUN(2, 0)], ['25-30', shared], ['31-40', RUN(2, 0)]]);
    expect(next.ranges['d:1']).toEqual(m.ranges['d:1']);
    expect(checkManifest(next)).toEqual([]);
    // run 1/0 held only the rewritten piece; run 1/7 still holds 25-30; the base chunk is never listed.
    expect(removedKeys(m, next)).toEqual([RUN(1, 0), IMG(1, sha('a'))].sort());
    expect(pieceId(fold)).toBe(`${RUN(2, 0)}@${fold.offset}`);
  });

  test('a plan for another version is refused', () => {
    const m = manifest(30, [30], {});
    const plan = planUnit(m, [batch(31, { 'd:0': 1 })], [31], 31, cfg());
    expect(() => applyUnit({ ...m, version: 2 }, plan, new Map(), { generation: 1, publishedMs: 1 })).toThrow(/plan is for version 1/);
  });
});
