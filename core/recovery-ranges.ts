// How the recovery workflow splits an RP's disks into ranges (one Lambda each), and what its
// progress says: pure, so the bounds are tested by table.
//
// A range is a whole number of 4 MiB history ranges (so each piece and image is read by one
// range only), at least MIN_RANGE_BYTES, and big enough that a run has at most MAX_RANGES
// ranges over all disks (the Map's items travel in the state, ≤ 256 KiB: ~30 bytes each) and a disk at most
// MAX_PARTS (an S3 multipart upload has ≤ 10,000 parts: one part per range). Every part but a
// disk's last is ≥ 5 MiB, as S3 requires, because a range is ≥ 64 MiB.

export const RANGE_ALIGN_BYTES = 4 * 1024 * 1024;
export const MIN_RANGE_BYTES = 64 * 1024 * 1024;
export const MAX_RANGES = 4000;
export const MAX_PARTS = 10_000;
/** S3's largest part: a range must fit in one. */
export const MAX_PART_BYTES = 5 * 1024 ** 3;

export interface RecoveryRange {
  disk: string;
  /** 0-based within the disk; the S3 part number is index + 1. */
  index: number;
  start: number;
  end: number;
}

export interface DiskRanges {
  disk: string;
  sizeBytes: number;
  rangeBytes: number;
  ranges: number;
}

/** One range size for the run (the same for every disk), and each disk's count. */
export function planRecoveryRanges(disks: { name: string; sizeBytes: number }[], minRangeBytes = MIN_RANGE_BYTES): DiskRanges[] {
  if (disks.length === 0) throw new RangeError('a recovery needs at least one disk');
  if (minRangeBytes % RANGE_ALIGN_BYTES !== 0 || minRangeBytes <= 0) throw new RangeError(`a range of ${minRangeBytes} bytes is not a positive multiple of ${RANGE_ALIGN_BYTES}`);
  const total = disks.reduce((n, d) => n + d.sizeBytes, 0);
  const largest = Math.max(...disks.map((d) => d.sizeBytes));
  // Enough that the whole run has ≤ MAX_RANGES ranges (each disk rounds up: + one per disk) and no disk more than MAX_PARTS.
  const need = Math.max(minRangeBytes, Math.ceil(total / Math.max(1, MAX_RANGES - disks.length)), Math.ceil(largest / MAX_PARTS));
  const rangeBytes = Math.ceil(need / RANGE_ALIGN_BYTES) * RANGE_ALIGN_BYTES;
  if (rangeBytes > MAX_PART_BYTES) throw new RangeError(`disks of ${total} bytes need ranges of ${rangeBytes} bytes, more than an S3 part holds`);
  return disks.map((d) => ({ disk: d.name, sizeBytes: d.sizeBytes, rangeBytes, ranges: Math.max(1, Math.ceil(d.sizeBytes / rangeBytes)) }));
}

/** Range `index` of a disk: [start, end), the last one ending at the disk's end. */
export function rangeOf(d: DiskRanges, index: number): RecoveryRange {
  if (!Number.isInteger(index) || index < 0 || index >= d.ranges) throw new RangeError(`disk '${d.disk}' has ranges 0..${d.ranges - 1}, not ${index}`);
  const start = index * d.rangeBytes;
  return { disk: d.disk, index, start, end: Math.min(d.sizeBytes, start + d.rangeBytes) };
}

export interface RecoveryProgress {
  doneBytes: number;
  totalBytes: number;
  /** Bytes per second since the run started (undefined before any byte). */
  rateBps?: number;
  /** Time left at that rate (undefined before any byte; 0 when done). */
  etaMs?: number;
}

/** Progress of a run from its counters: the rate since `startedMs`, the time left at it. */
export function recoveryProgress(doneBytes: number, totalBytes: number, startedMs: number, nowMs: number): RecoveryProgress {
  if (doneBytes >= totalBytes) return { doneBytes, totalBytes, etaMs: 0, ...(nowMs > startedMs ? { rateBps: (doneBytes * 1000) / (nowMs - startedMs) } : {}) };
  if (doneBytes <= 0 || nowMs <= startedMs) return { doneBytes, totalBytes };
  const rateBps = (doneBytes * 1000) / (nowMs - startedMs);
  return { doneBytes, totalBytes, rateBps, etaMs: Math.round(((totalBytes - doneBytes) * 1000) / rateBps) };
}
