// Which stored version of each block an RP sees: for every block, the newest version
// with seq <= the RP. Pure, O(n log n) in the number of extents, independent of disk size.

export interface BlockVersion<R> {
  blockIndex: number;
  blockCount: number;
  /** Seq of the batch that wrote these blocks; newer wins. */
  seq: number;
  ref: R;
}

/** A run of blocks read from one version, starting `offsetBlocks` into it. */
export interface Piece<R> {
  blockIndex: number;
  blockCount: number;
  offsetBlocks: number;
  ref: R;
}

/**
 * Resolves overlapping versions of one disk into disjoint pieces sorted by block.
 * Blocks no version covers are absent (they read from the base, or as zeros).
 * Versions of equal seq must not overlap (a batch's extents never do).
 */
export function resolvePieces<R>(versions: BlockVersion<R>[]): Piece<R>[] {
  const byStart = [...versions].sort((a, b) => a.blockIndex - b.blockIndex);
  const points = [...new Set(versions.flatMap((v) => [v.blockIndex, v.blockIndex + v.blockCount]))].sort((a, b) => a - b);
  const heap = new MaxHeap<BlockVersion<R>>((a, b) => a.seq - b.seq);
  const out: Piece<R>[] = [];
  let next = 0;
  for (let i = 0; i + 1 < points.length; i++) {
    const at = points[i];
    while (next < byStart.length && byStart[next].blockIndex === at) heap.push(byStart[next++]);
    while (heap.size > 0 && heap.peek()!.blockIndex + heap.peek()!.blockCount <= at) heap.pop();
    const top = heap.peek();
    if (!top) continue;
    const len = points[i + 1] - at;
    const last = out[out.length - 1];
    if (last && last.ref === top.ref && last.blockIndex + last.blockCount === at) {
      last.blockCount += len;
    } else {
      out.push({ blockIndex: at, blockCount: len, offsetBlocks: at - top.blockIndex, ref: top.ref });
    }
  }
  return out;
}

class MaxHeap<T> {
  private items: T[] = [];
  constructor(private readonly cmp: (a: T, b: T) => number) {}
  get size(): number {
    return this.items.length;
  }
  peek(): T | undefined {
    return this.items[0];
  }
  push(v: T): void {
    const a = this.items;
    a.push(v);
    for (let i = a.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (this.cmp(a[i], a[p]) <= 0) break;
      [a[i], a[p]] = [a[p], a[i]];
      i = p;
    }
  }
  pop(): T | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.cmp(a[l], a[m]) > 0) m = l;
        if (r < a.length && this.cmp(a[r], a[m]) > 0) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}
