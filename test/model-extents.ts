// Random batches for the model-based history tests: extents as fast-check draws them, made
// into a valid batch, and the reference model they are checked against.

import { randomBytes } from 'node:crypto';
import { BLOCK_SIZE, type ExtentInput } from '../core/batch-format';

/** An extent as drawn: any block (wrapped into the disk), any count (cut at the disk's end). */
export interface DrawnExtent {
  disk: number;
  block: number;
  count: number;
  zero: boolean;
}

/** The drawn extents as one batch's: within their disks, random data or zeros, a block at most once (later overlapping draws dropped). */
export function batchExtents(drawn: readonly DrawnExtent[], disks: readonly { sizeBytes: number }[]): ExtentInput[] {
  const extents: ExtentInput[] = [];
  const used = new Set<string>();
  for (const e of drawn) {
    const blocks = disks[e.disk].sizeBytes / BLOCK_SIZE;
    const block = e.block % blocks;
    const count = Math.min(e.count, blocks - block);
    if (Array.from({ length: count }, (_, i) => `${e.disk}:${block + i}`).some((b) => used.has(b))) continue;
    for (let i = 0; i < count; i++) used.add(`${e.disk}:${block + i}`);
    extents.push(e.zero ? { disk: e.disk, blockIndex: block, zeroBlocks: count } : { disk: e.disk, blockIndex: block, data: randomBytes(count * BLOCK_SIZE) });
  }
  return extents;
}

/** Writes a batch's extents into the model of its disks (one buffer per disk). */
export function applyExtents(model: Buffer[], extents: readonly ExtentInput[]): void {
  for (const e of extents) {
    if (e.data) e.data.copy(model[e.disk], e.blockIndex * BLOCK_SIZE);
    else model[e.disk].fill(0, e.blockIndex * BLOCK_SIZE, (e.blockIndex + e.zeroBlocks!) * BLOCK_SIZE);
  }
}
