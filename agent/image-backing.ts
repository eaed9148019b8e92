// Held batches the disk images can give back. Every write reaches the image before the batch
// writer, so at its cut a batch holds exactly what the images hold at its data extents'
// ranges, until a later write reaches one of them. While uploads are behind, the spool lets go
// of such a batch's body instead of writing it to a file, and rebuilds it from the images when
// the uploader or a FLUSH needs it; a write about to change one of those ranges waits for the
// rebuild (docs/design.md, "Agent": "Image-backed batches").

import { BLOCK_SIZE, decodeHeader, decodeIndex, decodeTrailer, EXTENT_FLAGS, TRAILER_SIZE } from '../core/batch-format';

/** A byte range of one disk's image. */
export interface ImageRange {
  disk: number;
  offset: number;
  length: number;
}

/** Whether two image ranges share a byte. */
export const overlaps = (a: ImageRange, b: ImageRange): boolean => a.disk === b.disk && a.offset < b.offset + b.length && b.offset < a.offset + a.length;

/** Batches with more data extents than this are never image-backed: random writes (thousands of 4 KiB extents) cost nothing to track. */
export const MAX_BACKED_EXTENTS = 64;
/** Granularity of the per-disk counts that let a write skip the scan of tracked batches. */
const REGION_BYTES = 1024 * 1024;

/**
 * The image ranges of the batches being tracked, by seq. A write outside every tracked range
 * costs one map lookup per 1 MiB region it touches.
 */
export class ImageRanges {
  private readonly bySeq = new Map<number, readonly ImageRange[]>();
  /** Per disk: region → how many tracked ranges touch it. */
  private readonly regions = new Map<number, Map<number, number>>();

  get size(): number {
    return this.bySeq.size;
  }

  has(seq: number): boolean {
    return this.bySeq.has(seq);
  }

  track(seq: number, ranges: readonly ImageRange[]): void {
    this.untrack(seq);
    this.bySeq.set(seq, ranges);
    for (const r of ranges) this.count(r, 1);
  }

  untrack(seq: number): void {
    const ranges = this.bySeq.get(seq);
    if (!ranges) return;
    this.bySeq.delete(seq);
    for (const r of ranges) this.count(r, -1);
  }

  /** Tracked seqs with a range overlapping [offset, offset + length) of `disk`. */
  overlapping(disk: number, offset: number, length: number): number[] {
    const counts = this.regions.get(disk);
    if (!counts) return [];
    const end = offset + length;
    const [first, last] = [Math.floor(offset / REGION_BYTES), Math.ceil(end / REGION_BYTES)];
    // A write's few regions, or (a TRIM of a whole disk) the few regions counted.
    let touched = false;
    if (last - first <= counts.size) for (let r = first; r < last && !touched; r++) touched = counts.has(r);
    else for (const r of counts.keys()) if (r >= first && r < last) touched = true;
    if (!touched) return [];
    const write = { disk, offset, length };
    const out: number[] = [];
    for (const [seq, ranges] of this.bySeq) if (ranges.some((x) => overlaps(x, write))) out.push(seq);
    return out;
  }

  private count(r: ImageRange, by: number): void {
    let counts = this.regions.get(r.disk);
    if (!counts) this.regions.set(r.disk, (counts = new Map()));
    for (let i = Math.floor(r.offset / REGION_BYTES); i * REGION_BYTES < r.offset + r.length; i++) {
      const n = (counts.get(i) ?? 0) + by;
      if (n > 0) counts.set(i, n);
      else counts.delete(i);
    }
  }
}

/** How to lay a batch body out again from the images: its bytes that are not image data, and where the rest comes from. */
export interface RebuildPlan {
  length: number;
  /** The body up to its first payload (the header), and from its index on (index and trailer). */
  head: Buffer;
  tail: Buffer;
  payloads: { disk: number; imageOffset: number; bodyOffset: number; length: number }[];
}

/**
 * The plan for a body whose payloads are all raw image data (no zstd), or undefined if it has
 * a compressed payload or more than MAX_BACKED_EXTENTS data extents. `body` is one this agent
 * encoded (its checksums are not checked again here; the rebuilt body's are, in full).
 */
export function rebuildPlan(body: Buffer, where: string): RebuildPlan | undefined {
  const trailer = decodeTrailer(body, body.length, where);
  if (trailer.extentCount > 4 * MAX_BACKED_EXTENTS) return undefined;
  const header = decodeHeader(body, where);
  const indexEnd = body.length - TRAILER_SIZE;
  const extents = decodeIndex(body.subarray(trailer.indexOffset, indexEnd), trailer, header.disks.length, where);
  const payloads: RebuildPlan['payloads'] = [];
  for (const e of extents) {
    if (e.flags & EXTENT_FLAGS.ZERO) continue;
    if (e.flags & EXTENT_FLAGS.ZSTD || payloads.length === MAX_BACKED_EXTENTS) return undefined;
    payloads.push({ disk: e.disk, imageOffset: e.blockIndex * BLOCK_SIZE, bodyOffset: e.payloadOffset, length: e.payloadLength });
  }
  const headLength = body.readUInt32LE(40);
  return { length: body.length, head: Buffer.from(body.subarray(0, headLength)), tail: Buffer.from(body.subarray(trailer.indexOffset)), payloads };
}

/** Lays the body out again into `into` (plan.length bytes): header, image data, index and trailer. The caller checks it. */
export async function rebuildBody(plan: RebuildPlan, into: Buffer, read: (disk: number, offset: number, into: Buffer) => Promise<void>): Promise<void> {
  plan.head.copy(into, 0);
  for (const p of plan.payloads) await read(p.disk, p.imageOffset, into.subarray(p.bodyOffset, p.bodyOffset + p.length));
  plan.tail.copy(into, plan.length - plan.tail.length);
}
