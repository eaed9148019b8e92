// The last step an operator may ask of `recover --to ebs`: the recovered snapshots as EBS
// volumes (CreateVolume, one per disk, in an Availability Zone) and/or as an AMI
// (RegisterImage: the first disk the root device /dev/xvda, the next /dev/xvdb, …; HVM, ENA),
// ready to attach or launch. Only the CLI builds an EC2 client (the Lambda bundles do not
// carry it).

import { CreateVolumeCommand, EC2Client, RegisterImageCommand, type ArchitectureValues, type BootModeValues, type VolumeType } from '@aws-sdk/client-ec2';

export interface BootableRequest {
  /** Disk → its recovered snapshot, in the pair's disk order. */
  snapshots: { disk: string; snapshotId: string }[];
  /** CreateVolume in this Availability Zone. */
  volumeZone?: string;
  volumeType?: string;
  /** RegisterImage with this name. */
  imageName?: string;
  architecture?: string;
  bootMode?: string;
  description?: string;
}

export interface Bootable {
  volumes?: Record<string, string>;
  imageId?: string;
}

/** `/dev/xvda`, `/dev/xvdb`, …: the device of the pair's i-th disk. */
export const deviceOf = (i: number): string => `/dev/xvd${String.fromCharCode(97 + i)}`;

export async function makeBootable(r: BootableRequest, ec2 = new EC2Client({})): Promise<Bootable> {
  const out: Bootable = {};
  try {
    if (r.volumeZone) {
      out.volumes = {};
      for (const s of r.snapshots) {
        const v = await ec2.send(
          new CreateVolumeCommand({
            SnapshotId: s.snapshotId,
            AvailabilityZone: r.volumeZone,
            VolumeType: (r.volumeType ?? 'gp3') as VolumeType,
            TagSpecifications: [{ ResourceType: 'volume', Tags: [{ Key: 'livesync:disk', Value: s.disk }] }],
          }),
        );
        out.volumes[s.disk] = v.VolumeId!;
      }
    }
    if (r.imageName) {
      const img = await ec2.send(
        new RegisterImageCommand({
          Name: r.imageName,
          Description: r.description,
          Architecture: (r.architecture ?? 'x86_64') as ArchitectureValues,
          BootMode: r.bootMode as BootModeValues | undefined,
          RootDeviceName: deviceOf(0),
          VirtualizationType: 'hvm',
          EnaSupport: true,
          BlockDeviceMappings: r.snapshots.map((s, i) => ({ DeviceName: deviceOf(i), Ebs: { SnapshotId: s.snapshotId, DeleteOnTermination: true, VolumeType: (r.volumeType ?? 'gp3') as VolumeType } })),
        }),
      );
      out.imageId = img.ImageId!;
    }
    return out;
  } finally {
    ec2.destroy();
  }
}
