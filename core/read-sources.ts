// What a read of one range at seq k consults: the newest image at or below k (or the base
// below a range's first image), the pieces above that image up to k that newer ones do not
// shadow, and the L0 batches in (frontier, k] that touch the range. docs/design.md,
// "History", "Reading a range at seq k" and "The read bound". Pure: the manifest and the
// L0's range sets in, sources out.

import { countAtOrBelowBy } from './sorted';
import { BITMAP_BYTES, bitmapHas, type ImageEntry, type Manifest, type PieceEntry, type RangeId } from './manifest';

/** One L0 batch above the frontier, as a read sees it: its seq and the ranges its extents touch. */
export interface L0Batch {
  seq: number;
  ranges: ReadonlySet<RangeId>;
}

export interface RangeSources {
  range: RangeId;
  /** The newest image with seq ≤ k (a zero image is no object). */
  image?: ImageEntry;
  /** No image at or below k and the pair has a base: the range reads its base chunk (if the base stored one). */
  base: boolean;
  /** Pieces with seqLo ≤ k and seqHi above the image's seq, ascending, less those a newer one shadows (withoutShadowed). */
  pieces: PieceEntry[];
  /** Seqs of the L0 batches in (frontier, k] that touch the range, ascending. */
  l0: number[];
  /** Objects the read touches: the image unless zero, the base chunk (counted whenever `base`), the pieces, the batches. */
  count: number;
}

/**
 * Whether the manifest can read seq k: a retained point it was planned with, or at or above
 * its frontier (the frontier is the cut, itself retained; version 0's frontier is the base's
 * seq, or 0). Anything else was pruned: the caller throws HistoryPrunedError.
 */
export function readable(m: Manifest, k: number): boolean {
  return k >= m.frontierSeq || bsearchEq(m.retained, k);
}

/** The sources of `range` at k (k must be readable), with the L0 given as batches and the ranges they touch. */
export function sourcesFor(m: Manifest, l0: readonly L0Batch[], range: RangeId, k: number): RangeSources {
  const seqs = l0.filter((b) => b.ranges.has(range)).map((b) => b.seq);
  return rangeSources(m, seqs.sort((a, b) => a - b), range, k);
}

/** Per range, the ascending seqs of the L0 batches that touch it: what rangeSources takes, built once. */
export function l0ByRange(l0: readonly L0Batch[]): Map<RangeId, number[]> {
  const out = new Map<RangeId, number[]>();
  for (const b of [...l0].sort((x, y) => x.seq - y.seq)) {
    for (const r of b.ranges) {
      const list = out.get(r);
      if (list) list.push(b.seq);
      else out.set(r, [b.seq]);
    }
  }
  return out;
}

/**
 * The sources of `range` at k, given the ascending seqs of the L0 batches touching it (any
 * seqs: only those in (frontier, k] count). O(log) in the range's images, pieces and batches.
 */
export function rangeSources(m: Manifest, l0Seqs: readonly number[], range: RangeId, k: number): RangeSources {
  const h = m.ranges[range];
  const images = h?.images ?? [];
  const i = lastAtOrBelow(images.length, (j) => images[j].seq, k);
  const image = i >= 0 ? images[i] : undefined;
  const floor = image ? image.seq : -1;
  const all = h?.pieces ?? [];
  // Pieces ascend by seqLo with disjoint spans, so seqHi ascends too: [first with seqHi > floor, last with seqLo ≤ k].
  const from = lastAtOrBelow(all.length, (j) => all[j].seqHi, floor) + 1;
  const to = lastAtOrBelow(all.length, (j) => all[j].seqLo, k) + 1;
  const pieces = withoutShadowed(all.slice(from, Math.max(from, to)), k);
  const lo = lastAtOrBelow(l0Seqs.length, (j) => l0Seqs[j], m.frontierSeq) + 1;
  const hi = lastAtOrBelow(l0Seqs.length, (j) => l0Seqs[j], k) + 1;
  const l0 = l0Seqs.slice(lo, Math.max(lo, hi));
  const base = !image && m.base !== undefined;
  const count = (image && !image.zero ? 1 : 0) + (base ? 1 : 0) + pieces.length + l0.length;
  return { range, image, base, pieces, l0, count };
}

/**
 * The pieces less those every block of which a newer piece wholly at or below k also holds
 * (its `blocks` bitmap): each such block has a newer version ≤ k above them, so a read at k
 * takes nothing from them. Spans are disjoint and ascend, so a newer piece's versions are all
 * newer; only the newest piece can reach above k, and it shadows nothing.
 */
function withoutShadowed(pieces: PieceEntry[], k: number): PieceEntry[] {
  if (pieces.length < 2) return pieces;
  const cover = Buffer.alloc(BITMAP_BYTES);
  const kept: PieceEntry[] = [];
  for (let i = pieces.length - 1; i >= 0; i--) {
    const bits = Buffer.from(pieces[i].blocks, 'base64');
    let shadowed = i < pieces.length - 1;
    for (let b = 0; b < BITMAP_BYTES && shadowed; b++) if ((bits[b] & ~cover[b]) !== 0) shadowed = false;
    if (shadowed) continue;
    kept.push(pieces[i]);
    if (pieces[i].seqHi <= k) for (let b = 0; b < BITMAP_BYTES; b++) cover[b] |= bits[b];
  }
  return kept.reverse();
}

/**
 * A point read of one block: the image (or base) under it and, newest first, only the
 * pieces whose bitmap holds the block (the first that has a version ≤ k wins). The L0 is
 * read through its batches' indexes, not here.
 */
export function pointSources(m: Manifest, range: RangeId, block: number, k: number): { image?: ImageEntry; base: boolean; pieces: PieceEntry[] } {
  const s = rangeSources(m, [], range, k);
  return { image: s.image, base: s.base, pieces: s.pieces.filter((p) => bitmapHas(p.blocks, block)).reverse() };
}

export interface ReadBound {
  /** Most objects any read of one range at one point touches. */
  max: number;
  /** The median (lower) over every point × range with data. */
  p50: number;
  /** Where `max` is (the first such). */
  worst?: { point: number; range: RangeId; count: number };
  /** Points given that the manifest cannot read (pruned): left out of the figures. */
  unreadable: number[];
}

/**
 * The read bound over `points` × every range with data: a range the manifest names or an L0
 * batch touches, counted where it has a source at the point. A range only the base holds
 * costs 1 and is not listed (the base's chunks are not in the manifest), so p50 errs high.
 */
export function readBound(m: Manifest, l0: readonly L0Batch[], points: readonly number[]): ReadBound {
  const byRange = l0ByRange(l0);
  const ranges = [...new Set([...Object.keys(m.ranges), ...byRange.keys()])].sort();
  const counts: number[] = [];
  let worst: ReadBound['worst'];
  const unreadable: number[] = [];
  for (const point of points) {
    if (!readable(m, point)) {
      unreadable.push(point);
      continue;
    }
    for (const range of ranges) {
      const { count } = rangeSources(m, byRange.get(range) ?? [], range, point);
      if (count === 0) continue;
      counts.push(count);
      if (!worst || count > worst.count) worst = { point, range, count };
    }
  }
  counts.sort((a, b) => a - b);
  return { max: worst?.count ?? 0, p50: counts.length > 0 ? counts[(counts.length - 1) >> 1] : 0, worst, unreadable };
}

/** Index of the last of the first n elements (ascending by at) that is ≤ v; −1 if none. */
const lastAtOrBelow = (n: number, at: (j: number) => number, v: number): number => countAtOrBelowBy(n, at, v) - 1;

const bsearchEq = (a: readonly number[], v: number): boolean => {
  const j = lastAtOrBelow(a.length, (i) => a[i], v);
  return j >= 0 && a[j] === v;
};
