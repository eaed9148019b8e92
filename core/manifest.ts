// The manifest: which objects make up a pair's history (images and pieces per range, the
// frontier above which batches are read as they were uploaded) and which retained points it
// was planned for. Versioned; published by one conditional transaction (docs/design.md,
// "History"). Types and constants here; the codec and checks join them in this module.

import { BLOCK_SIZE } from './batch-format';
import { CHUNK_BYTES } from './chunk-format';

export const MANIFEST_FORMAT = 1;
/** Blocks of one range: a range is CHUNK_BYTES of one disk, aligned. */
export const RANGE_BLOCKS = CHUNK_BYTES / BLOCK_SIZE;
/** I1: pieces of one range between two consecutive images. */
export const MAX_PIECES_PER_SPAN = 4;

/** `{disk}:{index}`: the range covering blocks [index·RANGE_BLOCKS, +RANGE_BLOCKS) of the disk. */
export type RangeId = string;
export const rangeId = (disk: string, index: number): RangeId => `${disk}:${index}`;
export function parseRangeId(id: RangeId): { disk: string; index: number } {
  const at = id.lastIndexOf(':');
  return { disk: id.slice(0, at), index: Number(id.slice(at + 1)) };
}

/** The full state of a range at `seq`: a stored chunk (LSCK), or all zeros (no object). */
export type ImageEntry =
  | { seq: number; zero?: false; key: string; sha256: string; crc32c: number; length: number }
  | { seq: number; zero: true };

/** Where a piece is (one ranged GET reads and verifies it) and what it holds. */
export interface PieceEntry {
  key: string;
  offset: number;
  length: number;
  /** CRC-32C of the whole piece (its last 4 bytes hold the same over the bytes before them). */
  crc32c: number;
  seqLo: number;
  seqHi: number;
  /** Base64 of a RANGE_BLOCKS-bit bitmap: bit i set iff the piece holds a version of block i of the range. */
  blocks: string;
  /** Uncompressed bytes of its data versions (zero versions count 0). */
  dataBytes: number;
}

export interface RangeHistory {
  /** Ascending by seq. Below the first, the range reads from the base (if the pair has one) or as zeros. */
  images: ImageEntry[];
  /** Ascending by seqLo; spans disjoint; none straddles an image's seq. */
  pieces: PieceEntry[];
}

export interface Manifest {
  format: typeof MANIFEST_FORMAT;
  pairId: string;
  /** 0 is the implicit manifest of a pair that was never compacted. */
  version: number;
  /** The compactor lease generation that published it. */
  generation: number;
  publishedMs: number;
  /** Every batch ≤ it is in pieces or images; batches above it are read as uploaded. */
  frontierSeq: number;
  /** The seeded base: read below a range's first image (key of the base manifest, its seq). */
  base?: { key: string; seq: number };
  /** The retained points (ascending) it was planned with: the seqs ≤ frontierSeq it guarantees to read. */
  retained: number[];
  ranges: Record<RangeId, RangeHistory>;
}

/** The implicit version 0: nothing folded; the base (if any) below every range. */
export function initialManifest(pairId: string, base?: { key: string; seq: number }): Manifest {
  return { format: MANIFEST_FORMAT, pairId, version: 0, generation: 0, publishedMs: 0, frontierSeq: base?.seq ?? 0, base, retained: [], ranges: {} };
}
