// What a compaction unit keeps (docs/design.md, "History", "What a unit keeps"): of the
// versions of some blocks, those a retained point can see. For one block with versions at
// seqs s1 < s2 < … (the next of the last is +∞), version si is visible iff some retained
// point p (or +∞, standing for the RPs to come, when `future`) has si ≤ p < si+1 and does
// not read it from an image instead (the newest image of the range at or below p has a seq
// below si). Extents visible over part of their blocks are split.

import { countAtOrBelow } from './sorted';

/** A version of `blockCount` blocks from `blockIndex`, written by `seq`. Versions of one seq must not overlap. */
export interface VersionExtent {
  seq: number;
  blockIndex: number;
  blockCount: number;
}

/** The part of `of` that is kept: blocks [blockIndex, +blockCount), a sub-run of `of`'s (skip blockIndex − of.blockIndex of them). */
export interface KeptPart<T extends VersionExtent> {
  of: T;
  blockIndex: number;
  blockCount: number;
}

export interface KeepOptions {
  /** Retained points, ascending. */
  retained: readonly number[];
  /** +∞ counts as a point (RPs yet to come): the newest version of each block is kept. */
  future: boolean;
  /** Seqs of the range's images, ascending: a point at or above one reads it, not the versions at or below its seq. */
  images?: readonly number[];
}

/** The newest seq of ascending `xs` that is ≤ x, or undefined. */
export const newestAtOrBelow = (xs: readonly number[], x: number): number | undefined => {
  const n = countAtOrBelow(xs, x);
  return n === 0 ? undefined : xs[n - 1];
};

/** The oldest seq of ascending `xs` (integers) that is ≥ x, or undefined. */
export const oldestAtOrAbove = (xs: readonly number[], x: number): number | undefined => xs[countAtOrBelow(xs, x - 1)];

/**
 * Whether a version at `seq`, superseded at `next` (undefined: never), is read by some point.
 * Images only grow newer with p, so the oldest point that sees the version decides.
 */
export function seesVersion(seq: number, next: number | undefined, o: KeepOptions): boolean {
  const images = o.images ?? [];
  const p = oldestAtOrAbove(o.retained, seq);
  if (p !== undefined && (next === undefined || p < next)) return (newestAtOrBelow(images, p) ?? -1) < seq;
  if (next !== undefined || !o.future) return false;
  return (images.length === 0 ? -1 : images[images.length - 1]) < seq;
}

/** The visible parts of `versions`, ordered by (blockIndex, seq); adjacent blocks of one version stay one part. */
export function keepVisible<T extends VersionExtent>(versions: readonly T[], o: KeepOptions): KeptPart<T>[] {
  // Sweep the block axis: between two consecutive extent boundaries the covering versions do not change.
  const bounds = [...new Set(versions.flatMap((v) => [v.blockIndex, v.blockIndex + v.blockCount]))].sort((a, b) => a - b);
  const starting = new Map<number, T[]>();
  for (const v of versions) {
    if (!Number.isInteger(v.blockCount) || v.blockCount < 1) throw new RangeError(`version seq ${v.seq} at block ${v.blockIndex}: ${v.blockCount} blocks`);
    const list = starting.get(v.blockIndex) ?? [];
    list.push(v);
    starting.set(v.blockIndex, list);
  }
  const open = new Map<T, KeptPart<T>>(); // parts still growing, by version
  const out: KeptPart<T>[] = [];
  let active: T[] = [];
  for (let i = 0; i + 1 < bounds.length; i++) {
    const lo = bounds[i];
    const hi = bounds[i + 1];
    active = active.filter((v) => v.blockIndex + v.blockCount > lo).concat(starting.get(lo) ?? []);
    active.sort((a, b) => a.seq - b.seq);
    const visible = new Set<T>();
    for (let k = 0; k < active.length; k++) {
      if (k > 0 && active[k].seq === active[k - 1].seq) throw new RangeError(`two versions of seq ${active[k].seq} cover block ${lo}`);
      if (seesVersion(active[k].seq, active[k + 1]?.seq, o)) visible.add(active[k]);
    }
    for (const [v, part] of open) {
      if (!visible.has(v)) {
        out.push(part);
        open.delete(v);
      }
    }
    for (const v of visible) {
      const part = open.get(v);
      if (part) part.blockCount += hi - lo;
      else open.set(v, { of: v, blockIndex: lo, blockCount: hi - lo });
    }
  }
  out.push(...open.values());
  return out.sort((a, b) => a.blockIndex - b.blockIndex || a.of.seq - b.of.seq);
}
