// The pure decisions of one compaction unit (docs/design.md, "History", "A compaction
// unit"): given the current manifest, what the L0 batches in (frontier, cut] touch, the
// retained points and the cut, which ranges get fold pieces, new images, merges (I1), and
// which images and pieces are dropped or re-checked for dead bytes; then the new manifest
// from what the unit wrote (applyUnit) and the keys it no longer references (removedKeys).
// replica/compactor.ts reads, builds, writes and publishes.

import { oldestAtOrAbove } from './keep';
import { countAtOrBelow } from './sorted';
import { MAX_PIECES_PER_SPAN, MANIFEST_FORMAT, type ImageEntry, type Manifest, type PieceEntry, type RangeHistory, type RangeId } from './manifest';

export interface PlanConfig {
  /** A range whose pieces since its newest image hold this much data gets an image (default 4 MiB). */
  imageBytes: number;
  /** I1: pieces of a range between two consecutive images (default 4). */
  maxPiecesPerSpan: number;
  /** A piece whose dead bytes (versions no retained point sees) reach this share is rewritten (default 0.5). */
  deadRewriteRatio: number;
  /**
   * A piece is re-checked (read, and rewritten if deadRewriteRatio of it is dead) when a unit
   * takes this share of the points that reached it (default 0.25), or a new image closes its
   * span. Steady expiry of 5-s RPs takes a small share of a piece's hundreds of points per
   * unit: it is re-checked a few times in its life, not at every unit.
   */
  recheckLoss: number;
  /**
   * I1 merges (mergeChoice): the oldest piece of a span whose newer neighbours together hold
   * at least this share of its bytes takes them all in (default 0.75).
   */
  mergeRatio: number;
  /**
   * A cold span — its pieces hold less than smallSpanBytes in all, and it began at least
   * smallSpanSeqs seqs before the cut — keeps at most smallSpanPieces pieces (default
   * 512 KiB, 1000 seqs, 2): merging it costs little, and a cold range then reads its image
   * or base chunk + ≤ 2 pieces (p50 sources ≤ 3). A hot range's span is small only in its
   * first minutes, and an image closes it within ~450 seqs: left to I1.
   */
  smallSpanBytes: number;
  smallSpanSeqs: number;
  smallSpanPieces: number;
}

export const DEFAULT_PLAN_CONFIG: PlanConfig = { imageBytes: 4 * 1024 * 1024, maxPiecesPerSpan: MAX_PIECES_PER_SPAN, deadRewriteRatio: 0.5, recheckLoss: 0.25, mergeRatio: 0.75, smallSpanBytes: 512 * 1024, smallSpanSeqs: 1000, smallSpanPieces: 2 };

/** One L0 batch above the frontier as the planner sees it: which ranges it writes, and how many data bytes in each. */
export interface L0Summary {
  seq: number;
  key: string;
  ranges: ReadonlyMap<RangeId, number>;
}

/** A piece the unit builds: the visible versions of its inputs over [seqLo, seqHi]. */
export interface PieceBuild {
  seqLo: number;
  seqHi: number;
  /** Existing pieces merged into it (each is read and decoded; the build replaces them). */
  from: PieceEntry[];
  /** Whether the L0 versions of the range with seq in [seqLo, seqHi] are folded in. */
  l0: boolean;
  /** Data bytes of its inputs (an upper bound of what it holds): what merges are chosen by. */
  bytes: number;
}

export interface RangePlan {
  range: RangeId;
  /** Images of the input manifest that stay. */
  keepImages: ImageEntry[];
  /** Images no retained point reads any more. */
  dropImages: ImageEntry[];
  /** Seqs (retained points in (frontier, cut]) at which the range gets an image: its state there. */
  newImages: number[];
  /** Seqs of every image of the range in the new manifest, ascending: visibility is judged against them. */
  imageSeqs: number[];
  /** Pieces that stay as they are. */
  keepPieces: PieceEntry[];
  /** Pieces that lost recheckLoss of their points this unit, or whose span a new image closed: read, and rewritten with their visible versions when at least deadRewriteRatio of their bytes is dead (else kept). */
  recheck: PieceEntry[];
  /** Of `recheck`, those rewritten whatever their dead share: their run object is mostly unreferenced (a piece keeps its whole run alive). */
  relocate: PieceEntry[];
  /** Pieces no retained point reads. */
  dropPieces: PieceEntry[];
  builds: PieceBuild[];
}

export interface UnitPlan {
  pairId: string;
  fromVersion: number;
  /** The input manifest's frontier: L0 batches above it, up to the cut, are folded. */
  frontierSeq: number;
  cut: number;
  /** The new manifest's retained points: the given points readable by the input (above its frontier, or retained by it), ≤ the cut, and the cut. */
  retained: number[];
  foldedSeqs: number[];
  foldedKeys: string[];
  /** Ranges with anything to do, by id. */
  ranges: RangePlan[];
}

const asc = (a: number, b: number): number => a - b;

/** Whether some point of ascending `xs` lies in [lo, hi). */
/** How many points of ascending integer `xs` lie in [lo, hi) (hi undefined: unbounded). */
const countIn = (xs: readonly number[], lo: number, hi: number | undefined): number => (hi === undefined ? xs.length : countAtOrBelow(xs, hi - 1)) - countAtOrBelow(xs, lo - 1);

/** Whether some point of ascending `xs` lies in [lo, hi) (hi undefined: unbounded). O(log n). */
const anyIn = (xs: readonly number[], lo: number, hi: number | undefined): boolean => {
  const p = oldestAtOrAbove(xs, lo);
  return p !== undefined && (hi === undefined || p < hi);
};

/**
 * The new manifest's retained points: of `points` (live and pinned RPs, reader leases), those
 * ≤ the cut that the input manifest can still read (at or above its frontier, or among its
 * retained points: anything else was pruned before; core/read-sources.ts readable), and the
 * cut. The frontier itself is readable: it is the previous cut, or, before the first unit,
 * the base's seq (a seeded pair's first RP).
 */
export function retainedFor(m: Manifest, points: readonly number[], cut: number): number[] {
  const old = new Set(m.retained);
  const keep = points.filter((p) => p <= cut && (p >= m.frontierSeq || old.has(p)));
  return [...new Set([...keep, cut])].sort(asc);
}

/** Plans one unit. `l0` are the batches in (frontier, cut] (others are ignored); a cut equal to the frontier plans drops and re-checks only. */
export function planUnit(m: Manifest, l0: readonly L0Summary[], points: readonly number[], cut: number, cfg: PlanConfig = DEFAULT_PLAN_CONFIG, runSizes?: ReadonlyMap<string, number>): UnitPlan {
  // A cut at the frontier folds nothing: a prune-only unit (RPs expired since the last one), never on version 0.
  if (cut < m.frontierSeq || (cut === m.frontierSeq && m.version === 0)) throw new RangeError(`cut ${cut} is not above the frontier ${m.frontierSeq}`);
  const retained = retainedFor(m, points, cut);
  const folded = l0.filter((b) => b.seq > m.frontierSeq && b.seq <= cut).sort((a, b) => a.seq - b.seq);
  const touched = new Map<RangeId, { seq: number; bytes: number }[]>();
  for (const b of folded) {
    for (const [r, bytes] of b.ranges) {
      const list = touched.get(r) ?? [];
      list.push({ seq: b.seq, bytes });
      touched.set(r, list);
    }
  }
  const ids = [...new Set([...Object.keys(m.ranges), ...touched.keys()])].sort();
  const kept = new Set(retained);
  const sparse = sparseRuns(m, runSizes);
  const pts: Points = { retained, above: retained.filter((p) => p > m.frontierSeq), lost: m.retained.filter((p) => !kept.has(p)) };
  const ranges: RangePlan[] = [];
  for (const id of ids) {
    const r = planRange(id, m.ranges[id] ?? { images: [], pieces: [] }, touched.get(id) ?? [], m, pts, cut, cfg, sparse);
    if (r) ranges.push(r);
  }
  return { pairId: m.pairId, fromVersion: m.version, frontierSeq: m.frontierSeq, cut, retained, foldedSeqs: folded.map((b) => b.seq), foldedKeys: folded.map((b) => b.key), ranges };
}

/** The unit's retained points, those above the input's frontier, and the input's that are not retained any more (all ascending). */
interface Points {
  retained: number[];
  above: number[];
  lost: number[];
}

/** The plan of one range, or undefined when it stays as it is. */
function planRange(id: RangeId, old: RangeHistory, batches: { seq: number; bytes: number }[], m: Manifest, points: Points, cut: number, cfg: PlanConfig, sparse: ReadonlySet<string>): RangePlan | undefined {
  const f = m.frontierSeq;
  const { retained } = points;
  // 1. New images: walking the retained points above the frontier, one where the data since the newest image reaches imageBytes.
  const lastOld = old.images.length > 0 ? old.images[old.images.length - 1].seq : -1;
  let acc = old.pieces.filter((p) => p.seqLo > lastOld).reduce((n, p) => n + p.dataBytes, 0);
  const newImages: number[] = [];
  let b = 0;
  for (const p of points.above) {
    let wrote = false;
    for (; b < batches.length && batches[b].seq <= p; b++) {
      acc += batches[b].bytes;
      wrote = true;
    }
    if (wrote && acc >= cfg.imageBytes) {
      newImages.push(p);
      acc = 0;
    }
  }
  // 2. Images no point reads: newest first (the newest is read by the RPs to come), each up to the next one kept.
  const keepImages: ImageEntry[] = [];
  const dropImages: ImageEntry[] = [];
  let next = newImages.length > 0 ? newImages[0] : undefined;
  for (let i = old.images.length - 1; i >= 0; i--) {
    const img = old.images[i];
    if (next === undefined || anyIn(retained, img.seq, next)) {
      keepImages.unshift(img);
      next = img.seq;
    } else {
      dropImages.push(img);
    }
  }
  const imageSeqs = [...keepImages.map((i) => i.seq), ...newImages];
  // 3. Old pieces: dropped when no point reads them, re-checked when they lost points.
  const oldImageSeqs = old.images.map((i) => i.seq);
  const keepPieces: PieceEntry[] = [];
  const recheck: PieceEntry[] = [];
  const dropPieces: PieceEntry[] = [];
  for (const q of old.pieces) {
    const end = oldestAtOrAbove(imageSeqs, q.seqHi);
    if (end !== undefined && !anyIn(retained, q.seqLo, end)) {
      dropPieces.push(q);
      continue;
    }
    const oldEnd = oldestAtOrAbove(oldImageSeqs, q.seqHi);
    // The points that reached it in the input (+∞ for an open span) and how many of them this unit takes.
    const had = countIn(m.retained, q.seqLo, oldEnd) + (oldEnd === undefined ? 1 : 0);
    const closed = oldEnd === undefined && end !== undefined;
    const lost = closed || countIn(points.lost, q.seqLo, oldEnd) >= Math.max(1, cfg.recheckLoss * had);
    (lost || sparse.has(q.key) ? recheck : keepPieces).push(q);
  }
  // 4. Fold: one build per stretch of seqs between the new images that some batch wrote in.
  const builds: PieceBuild[] = [];
  let lo = f + 1;
  for (const hi of [...newImages, cut]) {
    const inSeg = batches.filter((x) => x.seq >= lo && x.seq <= hi);
    if (inSeg.length > 0) builds.push({ seqLo: lo, seqHi: hi, from: [], l0: true, bytes: inSeg.reduce((n, x) => n + x.bytes, 0) });
    lo = hi + 1;
    if (hi === cut) break;
  }
  // 5. I1: in each span between consecutive images, merge the adjacent pair most alike in size until at most maxPiecesPerSpan remain.
  type Item = { build?: PieceBuild; piece?: PieceEntry; seqLo: number; seqHi: number; bytes: number };
  const items: Item[] = [
    ...[...keepPieces, ...recheck].map((q) => ({ piece: q, seqLo: q.seqLo, seqHi: q.seqHi, bytes: q.dataBytes })),
    ...builds.map((x) => ({ build: x, seqLo: x.seqLo, seqHi: x.seqHi, bytes: x.bytes })),
  ].sort((x, y) => x.seqLo - y.seqLo);
  const spanOf = (it: Item): number => oldestAtOrAbove(imageSeqs, it.seqHi) ?? Infinity;
  const merged: Item[] = [];
  for (let i = 0; i < items.length; ) {
    let j = i;
    while (j < items.length && spanOf(items[j]) === spanOf(items[i])) j++;
    const span = items.slice(i, j);
    const limit = spanLimit(span.reduce((n, it) => n + it.bytes, 0), cut - span[0].seqLo, cfg);
    while (span.length > limit) {
      const [a, b] = mergeChoice(span.map((it) => it.bytes), cfg.mergeRatio);
      const group = span.slice(a, b + 1);
      const from = group.flatMap((it) => (it.piece ? [it.piece] : it.build!.from));
      const bytes = group.reduce((n, it) => n + it.bytes, 0);
      const build: PieceBuild = { seqLo: group[0].seqLo, seqHi: group[group.length - 1].seqHi, from, l0: group.some((it) => it.build?.l0 === true), bytes };
      span.splice(a, group.length, { build, seqLo: build.seqLo, seqHi: build.seqHi, bytes });
    }
    merged.push(...span);
    i = j;
  }
  const finalBuilds = merged.flatMap((it) => (it.build ? [it.build] : []));
  const mergedAway = new Set(finalBuilds.flatMap((x) => x.from));
  const plan: RangePlan = {
    range: id,
    keepImages,
    dropImages,
    newImages,
    imageSeqs,
    keepPieces: keepPieces.filter((q) => !mergedAway.has(q)),
    recheck: recheck.filter((q) => !mergedAway.has(q)),
    relocate: recheck.filter((q) => !mergedAway.has(q) && sparse.has(q.key)),
    dropPieces,
    builds: finalBuilds,
  };
  const idle = newImages.length === 0 && dropImages.length === 0 && dropPieces.length === 0 && plan.recheck.length === 0 && finalBuilds.length === 0;
  return idle ? undefined : plan;
}

/** Pieces a span of `bytes` that began `age` seqs before the cut may keep: I1, or fewer when it is cold (small and old: merging it is cheap, and its reads touch fewer objects). */
export const spanLimit = (bytes: number, age: number, cfg: Pick<PlanConfig, 'maxPiecesPerSpan' | 'smallSpanBytes' | 'smallSpanSeqs' | 'smallSpanPieces'>): number =>
  bytes < cfg.smallSpanBytes && age >= cfg.smallSpanSeqs ? Math.max(1, Math.min(cfg.smallSpanPieces, cfg.maxPiecesPerSpan)) : cfg.maxPiecesPerSpan;

/**
 * Which pieces of a span over I1 become one (`bytes`: their data bytes, oldest first, at
 * least 2): `[a, last]` for the oldest a whose newer pieces hold ≥ `ratio` × its bytes
 * together (the newest two if none does). New data arrives at the newest end, so the young
 * small pieces are folded into an older one only once they weigh about as much, all at once:
 * a multiway tiering in which each byte is rewritten ~4.4 times over 110 equal folds into 4
 * slots, where merging the adjacent pair most alike in size (a binary counter) rewrote it
 * ~6.2 times (the model in test/compaction-plan.test.ts).
 */
export function mergeChoice(bytes: readonly number[], ratio: number): [number, number] {
  if (bytes.length < 2) throw new RangeError(`a merge needs 2 pieces, not ${bytes.length}`);
  let rest = 0;
  const newer: number[] = new Array<number>(bytes.length).fill(0);
  for (let i = bytes.length - 1; i >= 0; i--) {
    newer[i] = rest;
    rest += bytes[i];
  }
  for (let a = 0; a < bytes.length - 1; a++) if (newer[a] >= ratio * bytes[a]) return [a, bytes.length - 1];
  return [bytes.length - 2, bytes.length - 1];
}

/**
 * Run objects less than half of whose bytes the manifest still references: a run stays
 * whole while any piece in it is referenced, so the pieces left in such a run are rewritten
 * into the unit's own (`runSizes`: each run's object size; runs it lacks are not judged).
 */
export function sparseRuns(m: Manifest, runSizes?: ReadonlyMap<string, number>): Set<string> {
  const live = new Map<string, number>();
  for (const r of Object.values(m.ranges)) for (const q of r.pieces) live.set(q.key, (live.get(q.key) ?? 0) + q.length);
  return new Set([...live].filter(([key, bytes]) => {
    const size = runSizes?.get(key);
    return size !== undefined && bytes * 2 < size;
  }).map(([key]) => key));
}

/** A piece's identity in a manifest: its object and offset. */
export const pieceId = (q: Pick<PieceEntry, 'key' | 'offset'>): string => `${q.key}@${q.offset}`;

/** What the unit wrote for one range: its new images (keyed, or zero), the pieces it wrote, and the old pieces they replace (merged or rewritten). */
export interface RangeResult {
  images: ImageEntry[];
  pieces: PieceEntry[];
  replaced: PieceEntry[];
}

/** The new manifest: version + 1, frontier = the cut, the plan's retained points, each planned range as the unit left it. */
export function applyUnit(m: Manifest, plan: UnitPlan, results: ReadonlyMap<RangeId, RangeResult>, stamp: { generation: number; publishedMs: number }): Manifest {
  if (plan.fromVersion !== m.version) throw new RangeError(`plan is for version ${plan.fromVersion}, the manifest is version ${m.version}`);
  const ranges: Record<RangeId, RangeHistory> = { ...m.ranges };
  for (const r of plan.ranges) {
    const res = results.get(r.range) ?? { images: [], pieces: [], replaced: [] };
    const gone = new Set([...r.dropPieces, ...res.replaced, ...r.builds.flatMap((x) => x.from)].map(pieceId));
    const images = [...r.keepImages, ...res.images].sort((a, b) => a.seq - b.seq);
    const pieces = [...[...r.keepPieces, ...r.recheck].filter((q) => !gone.has(pieceId(q))), ...res.pieces].sort((a, b) => a.seqLo - b.seqLo);
    if (images.length === 0 && pieces.length === 0) delete ranges[r.range];
    else ranges[r.range] = { images, pieces };
  }
  return { format: MANIFEST_FORMAT, pairId: m.pairId, version: m.version + 1, generation: stamp.generation, publishedMs: stamp.publishedMs, frontierSeq: plan.cut, base: m.base, retained: plan.retained, ranges };
}

/** Object keys a manifest references: its parts (format 2), its images' (base chunks aside: the base stays referenced by `base`) and its pieces' run objects. */
export function referencedKeys(m: Manifest): Set<string> {
  const out = new Set<string>((m.parts ?? []).map((p) => p.key));
  const base = `pairs/${m.pairId}/base/`;
  for (const r of Object.values(m.ranges)) {
    for (const img of r.images) if (!img.zero && !img.key.startsWith(base)) out.add(img.key);
    for (const q of r.pieces) out.add(q.key);
  }
  return out;
}

/** Keys `old` references and `next` does not (the old manifest object itself is the caller's to add). */
export function removedKeys(old: Manifest, next: Manifest): string[] {
  const kept = referencedKeys(next);
  return [...referencedKeys(old)].filter((k) => !kept.has(k)).sort();
}
