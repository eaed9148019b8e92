// The local EC2 actions (local/ec2-local.ts) that make a recovered snapshot bootable take only
// completed snapshots, as EC2 does, and answer with its error codes; adapters/ec2-bootable.ts
// maps a pair's disks to devices (root /dev/xvda).

import { createHash } from 'node:crypto';
import { CompleteSnapshotCommand, EBSClient, PutSnapshotBlockCommand, StartSnapshotCommand } from '@aws-sdk/client-ebs';
import { CreateVolumeCommand, DescribeImagesCommand, DescribeVolumesCommand, EC2Client, RegisterImageCommand } from '@aws-sdk/client-ec2';
import { deviceOf, makeBootable } from '../adapters/ec2-bootable';
import { EBS_BLOCK_SIZE, startEbsLocal, type RunningEbs } from '../local/ebs-local';
import { startEc2Local, type RunningEc2 } from '../local/ec2-local';

const credentials = { accessKeyId: 'local', secretAccessKey: 'local' };
let ebs: RunningEbs;
let ec2: RunningEc2;
let ebsClient: EBSClient;
const ec2Client = (): EC2Client => new EC2Client({ endpoint: ec2.endpoint, region: 'us-east-1', credentials, maxAttempts: 1 });

beforeAll(async () => {
  ebs = await startEbsLocal();
  ec2 = await startEc2Local(ebs.snapshotInfo);
  ebsClient = new EBSClient({ endpoint: ebs.endpoint, region: 'us-east-1', credentials, maxAttempts: 1 });
});
afterAll(async () => {
  ebsClient.destroy();
  await ec2.stop();
  await ebs.stop();
});

async function snapshot(complete = true): Promise<string> {
  const id = (await ebsClient.send(new StartSnapshotCommand({ VolumeSize: 2 }))).SnapshotId!;
  const data = Buffer.alloc(EBS_BLOCK_SIZE, 7);
  await ebsClient.send(new PutSnapshotBlockCommand({ SnapshotId: id, BlockIndex: 0, BlockData: data, DataLength: data.length, Checksum: createHash('sha256').update(data).digest('base64'), ChecksumAlgorithm: 'SHA256' }));
  if (complete) await ebsClient.send(new CompleteSnapshotCommand({ SnapshotId: id, ChangedBlocksCount: 1 }));
  return id;
}

test('CreateVolume: a completed snapshot becomes a volume of at least its size in a zone; pending, missing, too small, bad zone refused with EC2 codes', async () => {
  const c = ec2Client();
  try {
    const done = await snapshot();
    const v = await c.send(new CreateVolumeCommand({ SnapshotId: done, AvailabilityZone: 'us-east-1a', VolumeType: 'gp3' }));
    expect(v).toMatchObject({ SnapshotId: done, Size: 2, AvailabilityZone: 'us-east-1a', VolumeType: 'gp3', State: 'creating' });
    expect((await c.send(new DescribeVolumesCommand({ VolumeIds: [v.VolumeId!] }))).Volumes).toEqual([expect.objectContaining({ VolumeId: v.VolumeId, State: 'available' })]);
    await expect(c.send(new CreateVolumeCommand({ SnapshotId: await snapshot(false), AvailabilityZone: 'us-east-1a' }))).rejects.toMatchObject({ name: 'IncorrectState' });
    await expect(c.send(new CreateVolumeCommand({ SnapshotId: 'snap-0000000000000000', AvailabilityZone: 'us-east-1a' }))).rejects.toMatchObject({ name: 'InvalidSnapshot.NotFound' });
    await expect(c.send(new CreateVolumeCommand({ SnapshotId: done, AvailabilityZone: 'us-east-1a', Size: 1 }))).rejects.toMatchObject({ name: 'InvalidParameterValue', message: expect.stringMatching(/smaller than snapshot/) });
    await expect(c.send(new CreateVolumeCommand({ SnapshotId: done, AvailabilityZone: 'eu-west-1a' }))).rejects.toMatchObject({ name: 'InvalidParameterValue' });
  } finally {
    c.destroy();
  }
});

test('RegisterImage: completed snapshots mapped to devices, the root among them; a duplicate name, an unmapped root, a pending snapshot refused', async () => {
  const c = ec2Client();
  try {
    const [a, b] = [await snapshot(), await snapshot()];
    const made = await makeBootable({ snapshots: [{ disk: 'os', snapshotId: a }, { disk: 'data', snapshotId: b }], volumeZone: 'us-east-1b', imageName: 'web01 at RP 42' }, ec2Client());
    expect(Object.keys(made.volumes!)).toEqual(['os', 'data']);
    const images = (await c.send(new DescribeImagesCommand({ ImageIds: [made.imageId!] }))).Images!;
    expect(images[0]).toMatchObject({ Name: 'web01 at RP 42', RootDeviceName: '/dev/xvda', VirtualizationType: 'hvm', EnaSupport: true, Architecture: 'x86_64' });
    expect(images[0].BlockDeviceMappings!.map((m) => [m.DeviceName, m.Ebs!.SnapshotId])).toEqual([
      [deviceOf(0), a],
      [deviceOf(1), b],
    ]);
    await expect(makeBootable({ snapshots: [{ disk: 'os', snapshotId: a }], imageName: 'web01 at RP 42' }, ec2Client())).rejects.toMatchObject({ name: 'InvalidAMIName.Duplicate' });
    await expect(c.send(new RegisterImageCommand({ Name: 'no-root', RootDeviceName: '/dev/xvda', BlockDeviceMappings: [{ DeviceName: '/dev/xvdb', Ebs: { SnapshotId: a } }] }))).rejects.toMatchObject({ name: 'InvalidBlockDeviceMapping' });
    await expect(makeBootable({ snapshots: [{ disk: 'os', snapshotId: await snapshot(false) }], imageName: 'pending' }, ec2Client())).rejects.toMatchObject({ name: 'IncorrectState' });
  } finally {
    c.destroy();
  }
});
