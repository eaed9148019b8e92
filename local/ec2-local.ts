// The two EC2 actions that turn a recovered EBS snapshot into something that boots, on
// 127.0.0.1 (EC2's Query API: form-encoded requests, XML answers), checked against the local
// EBS direct APIs' snapshots: CreateVolume (from a completed snapshot, in an Availability
// Zone, at least the snapshot's size) and RegisterImage (an AMI whose root and other block
// devices map completed snapshots), with DescribeVolumes and DescribeImages to read them back.
// Errors take EC2's codes and shape (`<Response><Errors><Error><Code>`). Nothing boots here: an
// instance would need EC2 itself; the recovered disk boots locally through an export.

import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RunningEc2 {
  endpoint: string;
  stop(): Promise<void>;
}

type SnapshotInfo = (id: string) => { status: 'pending' | 'completed'; volumeSize: number } | undefined;

interface Volume {
  id: string;
  snapshotId: string;
  size: number;
  zone: string;
  type: string;
  createTime: string;
}

interface Image {
  id: string;
  name: string;
  architecture: string;
  rootDeviceName: string;
  bootMode?: string;
  enaSupport: boolean;
  mappings: { deviceName: string; snapshotId: string; size: number }[];
}

class Ec2Error extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const XMLNS = 'http://ec2.amazonaws.com/doc/2016-11-15/';
const esc = (v: string | number | boolean): string => String(v).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const id = (prefix: string): string => `${prefix}-${randomBytes(8).toString('hex').slice(0, 17)}`;
const VOLUME_TYPES = new Set(['gp2', 'gp3', 'io1', 'io2', 'st1', 'sc1', 'standard']);

export async function startEc2Local(snapshotInfo: SnapshotInfo, region = 'us-east-1'): Promise<RunningEc2> {
  const volumes = new Map<string, Volume>();
  const images = new Map<string, Image>();

  const completed = (snapshotId: string | undefined, where: string): { volumeSize: number } => {
    if (!snapshotId) throw new Ec2Error('MissingParameter', `The request must contain the parameter ${where}`);
    const s = snapshotInfo(snapshotId);
    if (!s) throw new Ec2Error('InvalidSnapshot.NotFound', `The snapshot '${snapshotId}' does not exist.`);
    if (s.status !== 'completed') throw new Ec2Error('IncorrectState', `Snapshot '${snapshotId}' is not in a completed state (${s.status}).`);
    return s;
  };

  const actions: Record<string, (p: URLSearchParams) => string> = {
    CreateVolume(p) {
      const snapshotId = p.get('SnapshotId') ?? undefined;
      const zone = p.get('AvailabilityZone');
      if (!zone) throw new Ec2Error('MissingParameter', 'The request must contain the parameter AvailabilityZone');
      if (!zone.startsWith(region)) throw new Ec2Error('InvalidParameterValue', `Invalid availability zone: [${zone}]`);
      const snap = completed(snapshotId, 'SnapshotId');
      const size = p.has('Size') ? Number(p.get('Size')) : snap.volumeSize;
      if (!Number.isInteger(size) || size < snap.volumeSize) throw new Ec2Error('InvalidParameterValue', `Volume of ${p.get('Size')}GiB is smaller than snapshot '${snapshotId}', expect size >= ${snap.volumeSize}GiB`);
      const type = p.get('VolumeType') ?? 'gp2';
      if (!VOLUME_TYPES.has(type)) throw new Ec2Error('InvalidParameterValue', `Value (${type}) for parameter volumeType is invalid.`);
      const v: Volume = { id: id('vol'), snapshotId: snapshotId!, size, zone, type, createTime: new Date().toISOString() };
      volumes.set(v.id, v);
      return `<volumeId>${v.id}</volumeId><size>${v.size}</size><snapshotId>${v.snapshotId}</snapshotId><availabilityZone>${esc(v.zone)}</availabilityZone><status>creating</status><createTime>${v.createTime}</createTime><volumeType>${v.type}</volumeType><encrypted>false</encrypted>`;
    },
    RegisterImage(p) {
      const name = p.get('Name');
      if (!name) throw new Ec2Error('MissingParameter', 'The request must contain the parameter Name');
      if (!/^[A-Za-z0-9()[\] ./'@_-]{3,128}$/.test(name)) throw new Ec2Error('InvalidAMIName.Malformed', `AMI names must be between 3 and 128 characters long, and may contain letters, numbers, '(', ')', '.', '-', '/' and '_'`);
      if ([...images.values()].some((i) => i.name === name)) throw new Ec2Error('InvalidAMIName.Duplicate', `AMI name ${name} is already in use by AMI ${[...images.values()].find((i) => i.name === name)!.id}`);
      const rootDeviceName = p.get('RootDeviceName');
      if (!rootDeviceName) throw new Ec2Error('MissingParameter', 'The request must contain the parameter RootDeviceName');
      const architecture = p.get('Architecture') ?? 'x86_64';
      if (!['x86_64', 'arm64', 'i386'].includes(architecture)) throw new Ec2Error('InvalidParameterValue', `Value (${architecture}) for parameter architecture is invalid.`);
      const mappings: Image['mappings'] = [];
      for (let n = 1; p.has(`BlockDeviceMapping.${n}.DeviceName`); n++) {
        const deviceName = p.get(`BlockDeviceMapping.${n}.DeviceName`)!;
        const snapshotId = p.get(`BlockDeviceMapping.${n}.Ebs.SnapshotId`) ?? undefined;
        mappings.push({ deviceName, snapshotId: snapshotId!, size: completed(snapshotId, `BlockDeviceMapping.${n}.Ebs.SnapshotId`).volumeSize });
      }
      if (!mappings.some((m) => m.deviceName === rootDeviceName)) throw new Ec2Error('InvalidBlockDeviceMapping', `The device '${rootDeviceName}' is not a block device of the image (root device must be mapped to a snapshot)`);
      const image: Image = { id: id('ami'), name, architecture, rootDeviceName, bootMode: p.get('BootMode') ?? undefined, enaSupport: p.get('EnaSupport') === 'true', mappings };
      images.set(image.id, image);
      return `<imageId>${image.id}</imageId>`;
    },
    DescribeVolumes(p) {
      const ids = [...p.entries()].filter(([k]) => k.startsWith('VolumeId.')).map(([, v]) => v);
      const list = ids.length ? ids.map((v) => volumes.get(v) ?? notFound('InvalidVolume.NotFound', `The volume '${v}' does not exist.`)) : [...volumes.values()];
      return `<volumeSet>${list.map((v) => `<item><volumeId>${v.id}</volumeId><size>${v.size}</size><snapshotId>${v.snapshotId}</snapshotId><availabilityZone>${esc(v.zone)}</availabilityZone><status>available</status><createTime>${v.createTime}</createTime><volumeType>${v.type}</volumeType></item>`).join('')}</volumeSet>`;
    },
    DescribeImages(p) {
      const ids = [...p.entries()].filter(([k]) => k.startsWith('ImageId.')).map(([, v]) => v);
      const list = ids.length ? ids.map((v) => images.get(v) ?? notFound('InvalidAMIID.NotFound', `The image id '[${v}]' does not exist`)) : [...images.values()];
      return `<imagesSet>${list
        .map(
          (i) =>
            `<item><imageId>${i.id}</imageId><name>${esc(i.name)}</name><imageState>available</imageState><architecture>${i.architecture}</architecture><rootDeviceType>ebs</rootDeviceType><rootDeviceName>${esc(i.rootDeviceName)}</rootDeviceName><virtualizationType>hvm</virtualizationType><enaSupport>${i.enaSupport}</enaSupport>${i.bootMode ? `<bootMode>${i.bootMode}</bootMode>` : ''}<blockDeviceMapping>${i.mappings.map((m) => `<item><deviceName>${esc(m.deviceName)}</deviceName><ebs><snapshotId>${m.snapshotId}</snapshotId><volumeSize>${m.size}</volumeSize><deleteOnTermination>true</deleteOnTermination></ebs></item>`).join('')}</blockDeviceMapping></item>`,
        )
        .join('')}</imagesSet>`;
    },
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const requestId = randomBytes(16).toString('hex');
      const params = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      const action = params.get('Action') ?? '';
      try {
        const handler = actions[action];
        if (!handler) throw new Ec2Error('InvalidAction', `The action ${action} is not valid for this web service.`);
        const body = handler(params);
        res.writeHead(200, { 'content-type': 'text/xml;charset=UTF-8' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<${action}Response xmlns="${XMLNS}"><requestId>${requestId}</requestId>${body}</${action}Response>`);
      } catch (err) {
        const e = err instanceof Ec2Error ? err : new Ec2Error('InternalError', String(err));
        res.writeHead(e.code === 'InternalError' ? 500 : 400, { 'content-type': 'text/xml;charset=UTF-8' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${e.code}</Code><Message>${esc(e.message)}</Message></Error></Errors><RequestID>${requestId}</RequestID></Response>`);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

function notFound(code: string, message: string): never {
  throw new Ec2Error(code, message);
}
