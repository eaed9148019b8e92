// A reference read of a pair's history for the compaction tests: per range the sources
// core/read-sources.ts names (image or zeros, pieces, L0 batches above the frontier), every
// version newest-seq-first above the image, each object verified. Independent of
// replica/compactor.ts and replica/materialize.ts on purpose.

import { BLOCK_SIZE, EXTENT_FLAGS, decodeBatch, decodeExtent, type DecodedBatch } from '../core/batch-format';
import { CHUNK_BYTES, decodeChunk } from '../core/chunk-format';
import { RANGE_BLOCKS, rangeId, type Manifest, type RangeId } from '../core/manifest';
import { baseChunkKey } from '../core/keys';
import { rangeSources } from '../core/read-sources';
import type { BaseManifest } from '../core/seed-manifests';
import { decodePiece, pieceVersionData } from '../core/run-format';
import type { ObjectStore } from '../replica/ports';

export interface L0Entry {
  batch: DecodedBatch;
  body: Buffer;
  ranges: Set<RangeId>;
}

/** Decodes batch objects and notes the ranges each touches. */
export async function loadBatches(store: ObjectStore, batches: { seq: number; key: string }[]): Promise<Map<number, L0Entry>> {
  const out = new Map<number, L0Entry>();
  for (const b of batches) {
    const body = await store.get(b.key);
    const batch = decodeBatch(body, b.key);
    const ranges = new Set<RangeId>();
    for (const e of batch.extents) {
      for (let r = Math.floor(e.blockIndex / RANGE_BLOCKS); r * RANGE_BLOCKS < e.blockIndex + e.blockCount; r++) ranges.add(rangeId(batch.header.disks[e.disk], r));
    }
    out.set(b.seq, { batch, body, ranges });
  }
  return out;
}

/** Disk `disk` (of `sizeBytes`) at seq k through manifest `m` (and the pair's base, if it has one); pushes each range's object count to `counts`. */
export async function readDiskAt(store: ObjectStore, m: Manifest, l0: Map<number, L0Entry>, disk: string, sizeBytes: number, k: number, counts?: number[], base?: BaseManifest): Promise<Buffer> {
  const out = Buffer.alloc(sizeBytes);
  const seqs = [...l0.keys()].sort((a, b) => a - b);
  for (let index = 0; index * CHUNK_BYTES < sizeBytes; index++) {
    const id = rangeId(disk, index);
    const s = rangeSources(m, seqs.filter((q) => l0.get(q)!.ranges.has(id)), id, k);
    if (s.count > 0) counts?.push(s.count);
    const data = out.subarray(index * CHUNK_BYTES, (index + 1) * CHUNK_BYTES);
    if (s.image && !s.image.zero) decodeChunk(await store.get(s.image.key), { index, sha256: s.image.sha256, crc32c: s.image.crc32c, length: s.image.length }, s.image.key).copy(data);
    const chunk = s.base ? base?.disks.find((d) => d.name === disk)?.chunks.find((c) => c[0] === index) : undefined;
    if (s.base && !base) throw new Error(`range ${id} reads the base, and no base manifest was given`);
    if (chunk) decodeChunk(await store.get(baseChunkKey(m.pairId, chunk[1])), { index, sha256: chunk[1], crc32c: chunk[2], length: chunk[3] }, chunk[1]).copy(data);
    const floor = s.image?.seq ?? -1;
    const versions: { seq: number; block: number; data: Buffer }[] = [];
    for (const q of s.pieces) {
      const buf = await store.get(q.key, { start: q.offset, end: q.offset + q.length });
      for (const e of decodePiece(buf, `${q.key}@${q.offset}`, q.crc32c).entries) {
        if (e.seq <= k && e.seq > floor) versions.push({ seq: e.seq, block: e.blockIndex, data: pieceVersionData(buf, e, q.key) });
      }
    }
    for (const seq of s.l0) {
      const { batch, body } = l0.get(seq)!;
      for (const e of batch.extents) {
        if (batch.header.disks[e.disk] !== disk) continue;
        const first = e.blockIndex - index * RANGE_BLOCKS;
        if (first + e.blockCount <= 0 || first >= RANGE_BLOCKS) continue;
        const all = e.flags & EXTENT_FLAGS.ZERO ? Buffer.alloc(e.blockCount * BLOCK_SIZE) : decodeExtent(e, body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), `batch ${seq}`);
        const lo = Math.max(0, first);
        const hi = Math.min(RANGE_BLOCKS, first + e.blockCount);
        versions.push({ seq, block: lo, data: all.subarray((lo - first) * BLOCK_SIZE, (hi - first) * BLOCK_SIZE) });
      }
    }
    for (const v of versions.sort((a, b) => a.seq - b.seq)) v.data.copy(data, v.block * BLOCK_SIZE);
  }
  return out;
}

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[(xs.length - 1) >> 1];
