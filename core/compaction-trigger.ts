// When the apply path asks for a compaction run: as a pair's L0 backlog (batches applied
// above the history's frontier) crosses a multiple of the threshold. Once per crossing, not
// once per batch: a run that is slow or failed is not started again at every batch (the
// schedule catches what a crossing missed), and a backlog that keeps growing asks again at
// 2×, 3×… the threshold.

/** Batches above the frontier at which a fold is asked for (docs/design.md, "The read bound"). */
export const L0_TRIGGER = 4;

export interface BacklogChange {
  /** Watermark before and after the advance. */
  fromWatermark: number;
  toWatermark: number;
  /** The pair's compactedThrough (0 when never compacted). */
  compactedThrough: number;
}

export function compactionDue(c: BacklogChange, threshold = L0_TRIGGER): boolean {
  if (!(threshold >= 1)) throw new RangeError(`compaction threshold ${threshold} must be ≥ 1`);
  const step = (w: number): number => Math.floor(Math.max(0, w - c.compactedThrough) / threshold);
  return step(c.toWatermark) > step(c.fromWatermark);
}
