// A recovered disk written into an EBS snapshot through the EBS direct APIs, as the windows of
// materialize arrive: StartSnapshot (VolumeSize: the disk rounded up to whole GiB; a client
// token, so a retried start is the same snapshot; from `parent`, an earlier recovery's
// snapshot of the disk, if it can be), one PutSnapshotBlock per 512 KiB block that
// core/snapshot-record.ts blockAction says to write — without a parent the blocks holding data
// (a snapshot reads zeros where it has no block), with one the blocks whose SHA-256 differs
// from the parent's, zeros included — each with its SHA-256, at most `concurrency` at once;
// CompleteSnapshot with the number of blocks written. `sums` then holds every block's SHA-256
// for the snapshot's record. The snapshot is ready for CreateVolume or RegisterImage. A failed
// recovery leaves the snapshot pending; EBS sets it to error when its timeout ends.

import { createHash, randomUUID } from 'node:crypto';
import { CompleteSnapshotCommand, GetSnapshotBlockCommand, ListSnapshotBlocksCommand, PutSnapshotBlockCommand, StartSnapshotCommand, type EBSClient } from '@aws-sdk/client-ebs';
import { isAllZero } from '../core/chunk-format';
import { blockAction, blocksOf, decodeSnapshotRecord, NO_BLOCK, SNAPSHOT_BLOCK_BYTES, snapshotRecordPrefix, type SnapshotRecord } from '../core/snapshot-record';
import { limiter } from '../replica/concurrency';
import type { ImageSink } from '../replica/materialize';
import type { KeyLister, ObjectStore, SnapshotService } from '../replica/ports';

export const EBS_BLOCK_BYTES = SNAPSHOT_BLOCK_BYTES;
const GiB = 2 ** 30;

export interface EbsSnapshotSink extends ImageSink {
  /** The snapshot (its id once started), the parent it was started from, and the blocks written to it. */
  readonly snapshot: { id?: string; parentId?: string; blocksWritten: number };
  /** Every block's SHA-256 (NO_BLOCK for zeros), for the snapshot's record: complete after close. */
  readonly sums: Buffer;
}

export interface EbsSinkOptions {
  sizeBytes: number;
  description?: string;
  tags?: Record<string, string>;
  /** PutSnapshotBlock requests in flight (default 16). */
  concurrency?: number;
  /** An earlier recovery's snapshot of this disk: the new one starts from it and gets only the blocks that differ. */
  parent?: Pick<SnapshotRecord, 'snapshotId' | 'sums'>;
  /** StartSnapshot's idempotency token (default: a new one): the same token is the same snapshot. */
  clientToken?: string;
  log?: (msg: string) => void;
}

/** A whole disk into a new snapshot: started at the first window, completed at close (the CLI's recovery). */
export function ebsSnapshotSink(ebs: EBSClient, o: EbsSinkOptions): EbsSnapshotSink {
  const snapshot: EbsSnapshotSink['snapshot'] = { blocksWritten: 0 };
  let blocks: EbsBlockSink | undefined;
  let started: Promise<EbsBlockSink> | undefined;
  const start = (): Promise<EbsBlockSink> =>
    (started ??= startEbsSnapshot(ebs, o).then((s) => {
      Object.assign(snapshot, { id: s.snapshotId, parentId: s.parentId });
      return (blocks = ebsBlockSink(ebs, { snapshotId: s.snapshotId, firstBlock: 0, blocks: blocksOf(o.sizeBytes), parentSums: s.parentId ? o.parent!.sums : undefined, concurrency: o.concurrency }));
    }));
  return {
    snapshot,
    get sums() {
      return blocks?.sums ?? Buffer.alloc(blocksOf(o.sizeBytes) * 32);
    },
    async write(offset, window, ranges) {
      const b = await start(); // whether it has a parent decides what is written
      await b.write(offset, window, ranges);
      snapshot.blocksWritten = b.blocksWritten;
    },
    async close() {
      const b = await start(); // a disk with no data is an empty snapshot
      await b.close();
      snapshot.blocksWritten = b.blocksWritten;
      await completeEbsSnapshot(ebs, snapshot.id!, b.blocksWritten);
    },
    async abort(err) {
      await blocks?.abort(err);
    },
  };
}

/**
 * StartSnapshot for a disk of `sizeBytes` (VolumeSize: whole GiB), from `parent` if EBS takes
 * it: one it refuses (deleted, not completed, smaller than allowed) gives a full snapshot, said
 * through `log`. The same `clientToken` gives the same snapshot (a retried start).
 */
export async function startEbsSnapshot(ebs: EBSClient, o: Omit<EbsSinkOptions, 'concurrency' | 'parent'> & { parent?: Pick<SnapshotRecord, 'snapshotId'> }): Promise<{ snapshotId: string; parentId?: string; parentRefused?: string }> {
  const tags = o.tags ? Object.entries(o.tags).map(([Key, Value]) => ({ Key, Value })) : undefined;
  const token = o.clientToken ?? randomUUID();
  const startOnce = async (parentId?: string): Promise<string> => {
    const out = await ebs.send(
      new StartSnapshotCommand({ VolumeSize: Math.max(1, Math.ceil(o.sizeBytes / GiB)), ParentSnapshotId: parentId, ClientToken: parentId ? token : `${token}-full`, Description: o.description, Tags: tags }),
    );
    return out.SnapshotId!;
  };
  if (o.parent) {
    try {
      return { snapshotId: await startOnce(o.parent.snapshotId), parentId: o.parent.snapshotId };
    } catch (err) {
      const name = (err as Error).name;
      if (name !== 'ResourceNotFoundException' && name !== 'ValidationException') throw err;
      const parentRefused = `snapshot ${o.parent.snapshotId} cannot be the parent (${name}: ${(err as Error).message}); writing a full snapshot`;
      o.log?.(parentRefused);
      return { snapshotId: await startOnce(), parentRefused };
    }
  }
  return { snapshotId: await startOnce() };
}

export async function completeEbsSnapshot(ebs: EBSClient, snapshotId: string, changedBlocks: number): Promise<void> {
  await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snapshotId, ChangedBlocksCount: changedBlocks }));
}

export interface EbsBlockSink extends ImageSink {
  /** Blocks put so far. */
  readonly blocksWritten: number;
  /** The SHA-256 of blocks firstBlock.. (NO_BLOCK for zeros): complete after close. */
  readonly sums: Buffer;
}

/**
 * Writes blocks [firstBlock, firstBlock + blocks) of a started snapshot from the windows
 * handed to it (at their byte offsets in the disk): one PutSnapshotBlock per 512 KiB block
 * that blockAction says to write — without a parent the blocks holding data (a snapshot reads
 * zeros where it has no block), with one the blocks whose SHA-256 differs from the parent's,
 * zeros included — each with its SHA-256, at most `concurrency` at once. `parentSums` holds
 * the parent's sums of the same blocks (from firstBlock). Completing the snapshot is the
 * caller's: the recovery workflow's ranges each write their part of it.
 */
export function ebsBlockSink(ebs: EBSClient, o: { snapshotId: string; firstBlock: number; blocks: number; parentSums?: Buffer; concurrency?: number }): EbsBlockSink {
  const sums = Buffer.alloc(o.blocks * 32);
  const concurrency = o.concurrency ?? 16;
  const run = limiter(concurrency);
  const puts = new Set<Promise<void>>();
  let failure: unknown;
  let blocksWritten = 0;
  const put = (index: number, data: Buffer, Checksum: string): void => {
    const p = run(async () => {
      await ebs.send(new PutSnapshotBlockCommand({ SnapshotId: o.snapshotId, BlockIndex: index, BlockData: data, DataLength: data.length, Checksum, ChecksumAlgorithm: 'SHA256' }));
      blocksWritten++;
    }).catch((err) => void (failure ??= err));
    puts.add(p);
    void p.finally(() => puts.delete(p));
  };
  return {
    get blocksWritten() {
      return blocksWritten;
    },
    sums,
    async write(offset, window) {
      if (failure) throw failure;
      if (offset % EBS_BLOCK_BYTES !== 0) throw new RangeError(`an EBS snapshot is written in ${EBS_BLOCK_BYTES}-byte blocks; a window at byte ${offset} is not aligned to one`);
      // Every block of the window, data or not: a block that is zeros now may not be in the parent.
      for (let at = 0; at < window.length; at += EBS_BLOCK_BYTES) {
        const index = (offset + at) / EBS_BLOCK_BYTES;
        const i = index - o.firstBlock;
        if (i < 0 || i >= o.blocks) throw new RangeError(`block ${index} is outside blocks [${o.firstBlock}, ${o.firstBlock + o.blocks}) of this writer`);
        const slice = window.subarray(at, at + EBS_BLOCK_BYTES);
        // A zero block is neither copied nor hashed (the padding of a short last block is zeros too).
        let data: Buffer | undefined;
        if (!isAllZero(slice)) {
          data = Buffer.alloc(EBS_BLOCK_BYTES); // a copy: the window is not ours once written; a short last block is zero-padded
          slice.copy(data);
        }
        const digest = data ? createHash('sha256').update(data).digest() : NO_BLOCK;
        digest.copy(sums, i * 32);
        const action = blockAction(digest, o.parentSums, i);
        if (action === 'put') put(index, data!, digest.toString('base64'));
        else if (action === 'put-zeros') put(index, ZERO_BLOCK, ZERO_BLOCK_SHA256);
      }
      // Back-pressure: the window is not handed back while too many blocks wait.
      while (puts.size > 4 * concurrency) await Promise.race(puts);
    },
    async close() {
      await Promise.all(puts);
      if (failure) throw failure;
    },
    async abort() {
      await Promise.allSettled(puts);
    },
  };
}

/** The SnapshotService port over the EBS direct APIs (the recovery workflow's). */
export function ebsSnapshots(ebs: EBSClient, log: (msg: string) => void = () => {}): SnapshotService {
  return {
    start: (o) => startEbsSnapshot(ebs, { ...o, parent: o.parentSnapshotId ? { snapshotId: o.parentSnapshotId } : undefined, log }),
    blocks: (o) => ebsBlockSink(ebs, o),
    complete: (id, changed) => completeEbsSnapshot(ebs, id, changed),
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

/**
 * The record of the newest earlier recovery of the disk into EBS (highest seq; of one seq, the
 * last key), if one decodes; one that does not is reported and the next is tried.
 */
export async function latestSnapshotRecord(store: ObjectStore & KeyLister, pairId: string, disk: string, log: (msg: string) => void = () => {}): Promise<SnapshotRecord | undefined> {
  const keys = (await store.listKeys(snapshotRecordPrefix(pairId, disk))).sort().reverse();
  for (const key of keys) {
    try {
      const r = decodeSnapshotRecord(await store.get(key), key);
      if (r.pairId === pairId && r.disk === disk) return r;
      log(`snapshot record ${key} names pair '${r.pairId}' disk '${r.disk}': not used`);
    } catch (err) {
      log(`${(err as Error).message}: not used`);
    }
  }
  return undefined;
}

const ZERO_BLOCK = Buffer.alloc(EBS_BLOCK_BYTES);
const ZERO_BLOCK_SHA256 = createHash('sha256').update(ZERO_BLOCK).digest('base64');
