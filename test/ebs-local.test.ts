// The local EBS direct APIs (local/ebs-local.ts) enforce what AWS enforces on the calls a
// recovery into a snapshot makes, so a test against them fails where AWS would refuse: the
// 512 KiB block, its SHA-256, the volume's end, CompleteSnapshot's changed-block count, the
// pending/completed states, block tokens, client tokens, parents and changed blocks.

import { createHash } from 'node:crypto';
import {
  CompleteSnapshotCommand,
  EBSClient,
  GetSnapshotBlockCommand,
  ListChangedBlocksCommand,
  ListSnapshotBlocksCommand,
  PutSnapshotBlockCommand,
  StartSnapshotCommand,
} from '@aws-sdk/client-ebs';
import { EBS_BLOCK_SIZE, startEbsLocal, type RunningEbs } from '../local/ebs-local';

const block = (fill: number): Buffer => Buffer.alloc(EBS_BLOCK_SIZE, fill);
const sum = (b: Buffer): string => createHash('sha256').update(b).digest('base64');

describe('local EBS direct APIs', () => {
  let ebs: RunningEbs;
  let client: EBSClient;
  beforeAll(async () => {
    ebs = await startEbsLocal();
    client = new EBSClient({ endpoint: ebs.endpoint, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' }, maxAttempts: 1 });
  });
  afterAll(async () => {
    client.destroy();
    await ebs.stop();
  });
  const put = (SnapshotId: string, BlockIndex: number, data: Buffer, Checksum = sum(data)) =>
    client.send(new PutSnapshotBlockCommand({ SnapshotId, BlockIndex, BlockData: data, DataLength: data.length, Checksum, ChecksumAlgorithm: 'SHA256' }));

  test('a snapshot takes whole 512 KiB blocks with their SHA-256 inside its volume, completes with the count of blocks written, and then takes no more', async () => {
    const s = await client.send(new StartSnapshotCommand({ VolumeSize: 1 }));
    expect(s).toMatchObject({ Status: 'pending', VolumeSize: 1, BlockSize: EBS_BLOCK_SIZE });
    const id = s.SnapshotId!;
    await expect(put(id, 0, Buffer.alloc(4096, 1))).rejects.toMatchObject({ name: 'ValidationException', Reason: 'INVALID_BLOCK' });
    await expect(put(id, 0, block(1), sum(block(2)))).rejects.toMatchObject({ name: 'ValidationException', message: expect.stringMatching(/checksum/) });
    await expect(put(id, 2048, block(1))).rejects.toMatchObject({ name: 'ValidationException', Reason: 'INVALID_BLOCK' }); // 1 GiB = blocks 0–2047
    expect((await put(id, 3, block(3))).Checksum).toBe(sum(block(3)));
    await put(id, 3, block(4)); // rewritten: still one changed block
    await expect(client.send(new ListSnapshotBlocksCommand({ SnapshotId: id }))).rejects.toMatchObject({ name: 'ValidationException' }); // not completed
    await expect(client.send(new CompleteSnapshotCommand({ SnapshotId: id, ChangedBlocksCount: 2 }))).rejects.toMatchObject({ name: 'ValidationException' });
    expect((await client.send(new CompleteSnapshotCommand({ SnapshotId: id, ChangedBlocksCount: 1 }))).Status).toBe('completed');
    await expect(put(id, 4, block(5))).rejects.toMatchObject({ name: 'ValidationException', Reason: 'INVALID_SNAPSHOT_ID' });
    await expect(put('snap-0000000000000000', 0, block(1))).rejects.toMatchObject({ name: 'ResourceNotFoundException' });

    const list = await client.send(new ListSnapshotBlocksCommand({ SnapshotId: id }));
    expect(list.Blocks!.map((b) => b.BlockIndex)).toEqual([3]);
    const got = await client.send(new GetSnapshotBlockCommand({ SnapshotId: id, BlockIndex: 3, BlockToken: list.Blocks![0].BlockToken }));
    const data = Buffer.from(await got.BlockData!.transformToByteArray());
    expect(data.equals(block(4))).toBe(true);
    expect(got.Checksum).toBe(sum(block(4)));
    await expect(client.send(new GetSnapshotBlockCommand({ SnapshotId: id, BlockIndex: 3, BlockToken: 'bm90IGEgdG9rZW4=' }))).rejects.toMatchObject({ name: 'ValidationException', Reason: 'INVALID_BLOCK_TOKEN' });
  });

  test('a child starts from its completed parent; the changed blocks between them are the child\'s own; a client token names one snapshot', async () => {
    const parent = (await client.send(new StartSnapshotCommand({ VolumeSize: 1 }))).SnapshotId!;
    await put(parent, 1, block(1));
    await put(parent, 2, block(2));
    await expect(client.send(new StartSnapshotCommand({ VolumeSize: 1, ParentSnapshotId: parent }))).rejects.toMatchObject({ name: 'ValidationException', Reason: 'INVALID_DEPENDENCY_REQUEST' });
    await client.send(new CompleteSnapshotCommand({ SnapshotId: parent, ChangedBlocksCount: 2 }));

    const child = (await client.send(new StartSnapshotCommand({ VolumeSize: 2, ParentSnapshotId: parent, ClientToken: 'token-1' }))).SnapshotId!;
    expect((await client.send(new StartSnapshotCommand({ VolumeSize: 2, ParentSnapshotId: parent, ClientToken: 'token-1' }))).SnapshotId).toBe(child);
    await expect(client.send(new StartSnapshotCommand({ VolumeSize: 3, ParentSnapshotId: parent, ClientToken: 'token-1' }))).rejects.toMatchObject({ name: 'ConflictException' });
    await put(child, 2, block(9));
    await put(child, 2047 + 2048, block(7)); // the child's second GiB
    await client.send(new CompleteSnapshotCommand({ SnapshotId: child, ChangedBlocksCount: 2 }));

    expect((await client.send(new ListSnapshotBlocksCommand({ SnapshotId: child }))).Blocks!.map((b) => b.BlockIndex)).toEqual([1, 2, 4095]);
    const changed = await client.send(new ListChangedBlocksCommand({ FirstSnapshotId: parent, SecondSnapshotId: child }));
    expect(changed.ChangedBlocks!.map((b) => b.BlockIndex)).toEqual([2, 4095]);
    await expect(client.send(new StartSnapshotCommand({ VolumeSize: 1, ParentSnapshotId: child }))).rejects.toMatchObject({ name: 'ValidationException', Reason: 'INVALID_VOLUME_SIZE' });
  });
});
