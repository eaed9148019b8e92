// A recovered disk written into an EBS snapshot through the EBS direct APIs, as the windows of
// materialize arrive: StartSnapshot (VolumeSize: the disk rounded up to whole GiB; a client
// token, so a retried start is the same snapshot), one PutSnapshotBlock per 512 KiB block
// that holds data (all-zero blocks are skipped: a snapshot reads zeros where it has no block),
// each with its SHA-256, at most `concurrency` at once; CompleteSnapshot with the number of
// blocks written. The snapshot is then ready for CreateVolume or RegisterImage. A failed
// recovery leaves the snapshot pending; EBS sets it to error when its timeout ends.

import { createHash, randomUUID } from 'node:crypto';
import { CompleteSnapshotCommand, GetSnapshotBlockCommand, ListSnapshotBlocksCommand, PutSnapshotBlockCommand, StartSnapshotCommand, type EBSClient } from '@aws-sdk/client-ebs';
import { limiter } from '../replica/concurrency';
import type { ImageSink } from '../replica/materialize';

export const EBS_BLOCK_BYTES = 512 * 1024;
const GiB = 2 ** 30;

export interface EbsSnapshotSink extends ImageSink {
  /** The snapshot's id (after the first write or close), and the blocks written to it. */
  readonly snapshot: { id?: string; blocksWritten: number };
}

export interface EbsSinkOptions {
  sizeBytes: number;
  description?: string;
  tags?: Record<string, string>;
  /** PutSnapshotBlock requests in flight (default 16). */
  concurrency?: number;
}

export function ebsSnapshotSink(ebs: EBSClient, o: EbsSinkOptions): EbsSnapshotSink {
  const snapshot: { id?: string; blocksWritten: number } = { blocksWritten: 0 };
  const run = limiter(o.concurrency ?? 16);
  const puts = new Set<Promise<void>>();
  let failure: unknown;
  const clientToken = randomUUID();
  let started: Promise<string> | undefined;
  const start = (): Promise<string> =>
    (started ??= ebs
      .send(
        new StartSnapshotCommand({
          VolumeSize: Math.max(1, Math.ceil(o.sizeBytes / GiB)),
          ClientToken: clientToken,
          Description: o.description,
          Tags: o.tags ? Object.entries(o.tags).map(([Key, Value]) => ({ Key, Value })) : undefined,
        }),
      )
      .then((out) => (snapshot.id = out.SnapshotId!)));

  const put = (index: number, data: Buffer): void => {
    const p = run(async () => {
      const id = await start();
      const Checksum = createHash('sha256').update(data).digest('base64');
      await ebs.send(new PutSnapshotBlockCommand({ SnapshotId: id, BlockIndex: index, BlockData: data, DataLength: data.length, Checksum, ChecksumAlgorithm: 'SHA256' }));
      snapshot.blocksWritten++;
    }).catch((err) => void (failure ??= err));
    puts.add(p);
    void p.finally(() => puts.delete(p));
  };

  return {
    snapshot,
    async write(offset, window, ranges) {
      if (failure) throw failure;
      if (offset % EBS_BLOCK_BYTES !== 0) throw new RangeError(`an EBS snapshot is written in ${EBS_BLOCK_BYTES}-byte blocks; a window at byte ${offset} is not aligned to one`);
      const touched = new Set<number>();
      for (const r of ranges) for (let b = Math.floor(r.start / EBS_BLOCK_BYTES); b * EBS_BLOCK_BYTES < r.end; b++) touched.add(b);
      for (const b of touched) {
        const at = b * EBS_BLOCK_BYTES;
        const data = Buffer.alloc(EBS_BLOCK_BYTES); // a copy: the window is reused once written; a short last block is zero-padded
        window.copy(data, 0, at, Math.min(window.length, at + EBS_BLOCK_BYTES));
        if (isZero(data)) continue;
        put((offset + at) / EBS_BLOCK_BYTES, data);
      }
      // Back-pressure: the window is not handed back while too many blocks wait.
      while (puts.size > 4 * (o.concurrency ?? 16)) await Promise.race(puts);
    },
    async close() {
      await Promise.all(puts);
      if (failure) throw failure;
      const id = await start(); // a disk with no data is an empty snapshot
      await ebs.send(new CompleteSnapshotCommand({ SnapshotId: id, ChangedBlocksCount: snapshot.blocksWritten }));
    },
    async abort() {
      await Promise.allSettled(puts);
    },
  };
}

/**
 * Reads a completed snapshot's blocks (ListSnapshotBlocks pages, GetSnapshotBlock each, its
 * SHA-256 checked against the checksum EBS sent) and hands each to `write` at its byte offset;
 * resolves with the number of blocks. Blocks the snapshot lacks read as zeros: not handed on.
 */
export async function readSnapshot(ebs: EBSClient, snapshotId: string, write: (offset: number, data: Buffer) => Promise<void>): Promise<number> {
  let blocks = 0;
  let NextToken: string | undefined;
  do {
    const page = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: snapshotId, NextToken }));
    for (const b of page.Blocks ?? []) {
      const got = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: snapshotId, BlockIndex: b.BlockIndex, BlockToken: b.BlockToken }));
      const data = Buffer.from(await got.BlockData!.transformToByteArray());
      if (createHash('sha256').update(data).digest('base64') !== got.Checksum) throw new Error(`block ${b.BlockIndex} of ${snapshotId} does not match the SHA-256 EBS sent with it`);
      await write(b.BlockIndex! * EBS_BLOCK_BYTES, data);
      blocks++;
    }
    NextToken = page.NextToken;
  } while (NextToken);
  return blocks;
}

const ZERO_BLOCK = Buffer.alloc(EBS_BLOCK_BYTES);
const isZero = (b: Buffer): boolean => b.equals(ZERO_BLOCK);
