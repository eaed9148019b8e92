// Binary search over ascending sequences (seqs, or what an accessor reads at each index).

/** How many of the first n elements, ascending by at(i), are ≤ v (the index of the first one above it). */
export function countAtOrBelowBy(n: number, at: (i: number) => number, v: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (at(mid) <= v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** How many elements of ascending xs are ≤ v. */
export const countAtOrBelow = (xs: readonly number[], v: number): number => countAtOrBelowBy(xs.length, (i) => xs[i], v);
