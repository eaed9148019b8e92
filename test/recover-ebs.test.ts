// `livesync recover`'s targets and RP choices. --to ebs: an RP becomes one EBS snapshot per
// disk through the EBS direct APIs (the local emulator on the embedded stack,
// AWS_ENDPOINT_URL_EBS or AWS itself elsewhere), holding exactly the disk's bytes at that RP:
// every 512 KiB block with data, none that is all zeros, a short last block zero-padded, the
// volume rounded up to a GiB; the next one incremental from it. file:DIR and s3://, and
// --latest, --at, --acrp.

import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListChangedBlocksCommand, ListSnapshotBlocksCommand } from '@aws-sdk/client-ebs';
import { ebsClient } from '../adapters/aws-clients';
import { readSnapshot } from '../adapters/ebs-snapshot-sink';
import { encodeSnapshotRecord, snapshotRecordKey } from '../core/snapshot-record';
import { sleep } from '../replica/concurrency';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, newPairId, runCli } from './helpers';

const KiB = 1024;
const BLOCK = 512 * KiB;
// LocalStack community has no EBS direct APIs: against it (AWS_ENDPOINT_URL without an EBS
// endpoint of its own) the snapshot test is skipped; the embedded stack and AWS run it.
const ebsReachable = Boolean(process.env.AWS_ENDPOINT_URL_EBS) || !process.env.AWS_ENDPOINT_URL;

/** A new pair with one disk of `size` bytes, a writer into the RP Store, and the disk's model. */
async function newDisk(prefix: string, size: number) {
  const c = cloud();
  const pairId = newPairId(prefix);
  const disks = [{ name: 'disk0', sizeBytes: size }];
  await createPair(c.index, { pairId, disks });
  const model = Buffer.alloc(size);
  const writer = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 1 << 30 });
  const write = async (offset: number, data: Buffer): Promise<void> => {
    await writer.write('disk0', offset, data);
    data.copy(model, offset);
  };
  return { c, pairId, model, writer, write };
}

(ebsReachable ? test : test.skip)('recover --to ebs writes the RP into a snapshot that reads back bit for bit, zero blocks skipped', async () => {
  const size = 6 * BLOCK + 12 * KiB; // a short last block
  const { c, pairId, model, writer, write } = await newDisk('toebs', size);
  await write(0, randomBytes(8 * KiB)); // block 0
  await write(3 * BLOCK - 4 * KiB, randomBytes(8 * KiB)); // straddles blocks 2 and 3
  await write(4 * BLOCK, Buffer.alloc(BLOCK)); // block 4: written, but zeros
  await write(6 * BLOCK + 4 * KiB, randomBytes(8 * KiB)); // the short last block
  const seq = writer.cut({ rp: true })!;
  await writer.close();
  await waitForWatermark(c.index, pairId, seq, 30_000);

  const out = await runCli('recover', '--pair', pairId, '--seq', String(seq), '--to', 'ebs');
  expect(out.stderr).toMatch(/recovery \S+ of pair '.*' RP \d+ started \(EBS snapshots\)/); // the recovery workflow did it
  expect(out.code).toBe(0);
  const { snapshots } = JSON.parse(out.stdout) as { snapshots: Record<string, { id: string; blocksWritten: number }> };
  expect(snapshots.disk0.blocksWritten).toBe(4); // 0, 2, 3 and 6: not the zero block 4, nor the untouched 1 and 5

  const ebs = ebsClient();
  try {
    const list = await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: snapshots.disk0.id }));
    expect(list.VolumeSize).toBe(1);
    expect(list.Blocks!.map((b) => b.BlockIndex)).toEqual([0, 2, 3, 6]);
    const image = Buffer.alloc(7 * BLOCK);
    expect(await readSnapshot(ebs, snapshots.disk0.id, async (offset, data) => void data.copy(image, offset))).toBe(4);
    expect(firstDifference(image.subarray(0, size), model)).toBeUndefined();
    expect(image.subarray(size).equals(Buffer.alloc(7 * BLOCK - size))).toBe(true);
  } finally {
    ebs.destroy();
  }
});

test('recover refuses an unknown --to target and a second target, naming them', async () => {
  const bad = await runCli('recover', '--pair', 'p', '--seq', '1', '--to', 'tape');
  expect(bad.code).not.toBe(0);
  expect(bad.stderr).toMatch(/--to tape/);
  const two = await runCli('recover', '--pair', 'p', '--seq', '1', '--to', 'ebs', '--out', '/tmp/x');
  expect(two.code).not.toBe(0);
  expect(two.stderr).toMatch(/exactly one of/);
});

(ebsReachable ? test : test.skip)('the next recovery of the disk into EBS starts from the last one\'s snapshot and writes only the blocks that differ, zeros included; a parent that is gone means a full snapshot', async () => {
  const size = 4 * BLOCK;
  const { c, pairId, model, writer, write } = await newDisk('ebsinc', size);
  const rp = async (): Promise<number> => {
    const seq = writer.cut({ rp: true })!;
    await waitForWatermark(c.index, pairId, seq, 30_000);
    return seq;
  };
  const toEbs = async (seq: number): Promise<{ id: string; parentId?: string; blocksWritten: number; refused?: string }> => {
    const out = await runCli('recover', '--pair', pairId, '--seq', String(seq), '--to', 'ebs');
    expect(out.code).toBe(0);
    const run = JSON.parse(out.stdout) as { snapshots: Record<string, { id: string; parentId?: string; blocksWritten: number }>; disks: { parentRefused?: string }[] };
    return { ...run.snapshots.disk0, refused: run.disks[0].parentRefused };
  };
  const ebs = ebsClient();
  const readBack = async (id: string): Promise<Buffer> => {
    const image = Buffer.alloc(size);
    await readSnapshot(ebs, id, async (offset, data) => void data.copy(image, offset));
    return image;
  };
  try {
    await write(0, randomBytes(BLOCK));
    await write(2 * BLOCK, randomBytes(BLOCK));
    await write(3 * BLOCK, randomBytes(4 * KiB));
    const first = await toEbs(await rp());
    expect(first).toMatchObject({ blocksWritten: 3, refused: undefined });
    expect(first.parentId).toBeUndefined();

    await write(0, Buffer.alloc(BLOCK)); // data → zeros: the child must say so, or it reads its parent's block
    await write(2 * BLOCK + 8 * KiB, randomBytes(4 * KiB));
    const seq2 = await rp();
    await writer.close();
    const second = await toEbs(seq2);
    expect(second).toMatchObject({ parentId: first.id, blocksWritten: 2, refused: undefined });
    expect(firstDifference(await readBack(second.id), model)).toBeUndefined();
    const changed = await ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: first.id, SecondSnapshotId: second.id }));
    expect(changed.ChangedBlocks!.map((b) => b.BlockIndex)).toEqual([0, 2]);

    // The newest record names a snapshot that no longer exists (an operator deleted it).
    const gone = { pairId, disk: 'disk0', seq: seq2 + 1, snapshotId: 'snap-0123456789abcdef', sizeBytes: size, sums: Buffer.alloc(4 * 32, 7) };
    await c.store.put(snapshotRecordKey(gone), encodeSnapshotRecord(gone));
    const third = await toEbs(seq2);
    expect(third.parentId).toBeUndefined();
    expect(third.blocksWritten).toBe(2); // blocks 2 and 3 hold data; 0 and 1 are zeros
    expect(third.refused).toMatch(/snap-0123456789abcdef cannot be the parent \(ResourceNotFoundException/);
    expect(firstDifference(await readBack(third.id), model)).toBeUndefined();
  } finally {
    ebs.destroy();
  }
});

test('recover --latest / --at / --acrp --to file:DIR and s3://BUCKET/PREFIX give the RP asked for', async () => {
  const size = 2 * BLOCK;
  const { c, pairId, model, writer, write } = await newDisk('totargets', size);
  await write(0, randomBytes(16 * KiB));
  const acrp = writer.cut({ appTag: 'before' })!;
  await waitForWatermark(c.index, pairId, acrp, 30_000);
  const atAcrp = Buffer.from(model);
  await sleep(20); // RPs at distinct times
  const between = Date.now();
  await sleep(20);
  await write(BLOCK, randomBytes(16 * KiB));
  const last = writer.cut({ rp: true })!;
  await writer.close();
  await waitForWatermark(c.index, pairId, last, 30_000);

  const dir = await mkdtemp(join(tmpdir(), 'recover-to-'));
  try {
    for (const [args, want] of [
      [['--latest'], model],
      [['--at', new Date(between).toISOString()], atAcrp],
      [['--acrp', 'before'], atAcrp],
    ] as const) {
      const out = await runCli('recover', '--pair', pairId, ...args, '--to', `file:${dir}`);
      expect(out.stderr).toBe('');
      expect(firstDifference(await readFile(join(dir, 'disk0.img')), want)).toBeUndefined();
    }
    const prefix = `recoveries/${pairId}`;
    expect((await runCli('recover', '--pair', pairId, '--latest', '--to', `s3://${c.bucket}/${prefix}`)).code).toBe(0);
    expect(firstDifference(await c.store.get(`${prefix}/disk0.img`), model)).toBeUndefined();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
