// `livesync recover`: which RP (core/rp-choice.ts), into what (a local file, S3 objects, an EBS
// snapshot per disk, incremental from the disk's last one). S3 and EBS go to the recovery
// workflow (cli/recover-cloud.ts); a file, or anything with --in-process, is recovered here,
// with progress on stderr; each EBS snapshot's record is written once the recovery succeeded.

import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ebsClient } from '../adapters/aws-clients';
import { ebsSnapshotSink, latestSnapshotRecord, type EbsSnapshotSink } from '../adapters/ebs-snapshot-sink';
import { makeBootable, type Bootable, type BootableRequest } from '../adapters/ec2-bootable';
import type { RpStore } from '../adapters/from-env';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { recoveryLauncherFromEnv } from '../adapters/sfn-recovery-launcher';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { parseS3Url } from '../core/keys';
import { recoveryProgress } from '../core/recovery-ranges';
import { chooseRp, parseRpTime, type RpChoice } from '../core/rp-choice';
import { encodeSnapshotRecord, snapshotRecordKey } from '../core/snapshot-record';
import { RECOVERY_STATE_MACHINE_ENV } from '../lib/names';
import { fileSink, materialize, objectSink, type ImageSink, type MaterializeResult } from '../replica/materialize';
import type { RecoveryRun } from '../replica/ports';
import { parseIntArg } from './args';
import { recoveryProgress as progressPrinter } from './progress';
import { recoverInCloud } from './recover-cloud';

export interface RecoverFlags {
  /** --to ebs: then make the snapshots bootable (volumes in a zone, and/or an AMI). */
  bootable?: Omit<BootableRequest, 'snapshots'>;
  /** Resume this recovery run (the workflow's) instead of starting one. */
  resume?: string;
  /** Recover into S3 or EBS from this process, not with the recovery workflow. */
  inProcess?: boolean;
  /** Follow a workflow run to its end (default true). */
  wait?: boolean;
}

/**
 * Recovers the RP `choice` names of `pairId` into `target`: into S3 or EBS with the recovery
 * workflow (when the environment names it, unless `inProcess`), into a file (or in-process)
 * here. What the run's item says, or what materialize reports (and for EBS the snapshots).
 */
export async function recoverCommand(rps: RpStore, pairId: string, choice: RpChoice | undefined, target: RecoveryTarget | undefined, flags: RecoverFlags = {}): Promise<unknown> {
  const launcher = target?.kind === 'file' || flags.inProcess ? undefined : recoveryLauncherFromEnv();
  if (flags.resume || (target && target.kind !== 'file' && !flags.inProcess)) {
    if (!launcher) throw new InvalidArgumentError(`recovery into ${target?.kind ?? 'its target'} runs the recovery workflow: set ${RECOVERY_STATE_MACHINE_ENV} (the stack output RecoveryStateMachineArn), or give --in-process`);
    try {
      const out = await recoverInCloud(rps, launcher, { pairId, choice, target: target as Exclude<RecoveryTarget, { kind: 'file' }> | undefined, resume: flags.resume, wait: flags.wait });
      if (!('status' in out)) return out;
      const shown = showRun(out);
      return wantsBootable(flags) && out.target.kind === 'ebs' ? { ...shown, ...(await bootable(flags, out.disks.map((d) => ({ disk: d.name, snapshotId: d.snapshotId! })))) } : shown;
    } finally {
      launcher.destroy();
    }
  }
  const res = await recoverHere(rps, pairId, choice!, target!);
  return wantsBootable(flags) && res.snapshots ? { ...res, ...(await bootable(flags, Object.entries(res.snapshots).map(([disk, s]) => ({ disk, snapshotId: s.id! })))) } : res;
}

const wantsBootable = (f: RecoverFlags): boolean => Boolean(f.bootable?.volumeZone || f.bootable?.imageName);

function bootable(flags: RecoverFlags, snapshots: BootableRequest['snapshots']): Promise<Bootable> {
  return makeBootable({ ...flags.bootable, snapshots });
}

/** What `recovery show` and a finished `recover` print of a run: the item, and its progress. */
export function showRun(run: RecoveryRun, nowMs = Date.now()): Omit<RecoveryRun, 'lease'> & { progress: ReturnType<typeof recoveryProgress>; snapshots?: Record<string, { id?: string; parentId?: string; blocksWritten?: number }> } {
  const { lease: _lease, ...shown } = run;
  const snapshots = run.target.kind === 'ebs' ? Object.fromEntries(run.disks.map((d) => [d.name, { id: d.snapshotId, parentId: d.parentSnapshotId, blocksWritten: d.blocksWritten }])) : undefined;
  return { ...shown, progress: recoveryProgress(run.doneBytes, run.totalBytes, run.startedMs, run.finishedMs ?? nowMs), ...(snapshots ? { snapshots } : {}) };
}

/** Recovers from this process: a file, or S3/EBS with --in-process. */
async function recoverHere(rps: RpStore, pairId: string, choice: RpChoice, target: RecoveryTarget): Promise<MaterializeResult & { snapshots?: Record<string, EbsSnapshotSink['snapshot']> }> {
  const { store, index, history } = rps;
  if (!(await index.getPair(pairId))) throw new UnknownPairError(pairId);
  const seq = chooseRp(await index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000)), choice, pairId);
  if (target.kind === 'file') await mkdir(target.dir, { recursive: true });
  const ebs = target.kind === 'ebs' ? ebsClient() : undefined;
  const sinks = new Map<string, EbsSnapshotSink>();
  const log = (m: string): void => console.error(`livesync: ${m}`);
  const sinkFor = async (disk: string, size: number): Promise<ImageSink> => {
    if (target.kind === 'file') return fileSink(join(target.dir, `${disk}.img`), size);
    if (target.kind === 's3') return objectSink(target.bucket && target.bucket !== rps.bucket ? new S3ObjectStore(target.bucket) : store, `${target.prefix.replace(/\/$/, '')}/${disk}.img`);
    const sink = ebsSnapshotSink(ebs!, {
      sizeBytes: size,
      parent: await latestSnapshotRecord(store, pairId, disk, log),
      description: `livesync pair ${pairId} disk ${disk} RP ${seq}`,
      tags: { 'livesync:pair': pairId, 'livesync:disk': disk, 'livesync:rp': String(seq) },
      log,
    });
    sinks.set(disk, sink);
    return sink;
  };
  const progress = progressPrinter(`recover ${pairId} RP ${seq}`, (line) => console.error(line));
  try {
    const res = await materialize(store, index, { pairId, seq, history, sinkFor: async (disk, size) => progress.wrap(size, await sinkFor(disk, size)) });
    // Each snapshot's record, for the next recovery of the disk to start from it.
    for (const [disk, sink] of sinks) {
      const record = { pairId, disk, seq, snapshotId: sink.snapshot.id!, sizeBytes: res.disks.find((d) => d.name === disk)!.sizeBytes, sums: sink.sums };
      await store.put(snapshotRecordKey(record), encodeSnapshotRecord(record));
    }
    return target.kind === 'ebs' ? { ...res, snapshots: Object.fromEntries([...sinks].map(([disk, sink]) => [disk, sink.snapshot])) } : res;
  } finally {
    progress.stop();
    ebs?.destroy();
  }
}

/** recover's RP: exactly one of --rp SEQ (or --seq), --latest, --at TIME, --acrp TAG. */
export function rpChoiceOf(o: Record<string, unknown>): RpChoice {
  const given = ['rp', 'seq', 'latest', 'at', 'acrp'].filter((k) => o[k] !== undefined && o[k] !== false);
  if (given.length !== 1) throw new InvalidArgumentError(`name the RP with exactly one of --rp SEQ, --latest, --at TIME, --acrp TAG${given.length ? ` (given: ${given.map((k) => `--${k}`).join(', ')})` : ''}`);
  const k = given[0];
  if (k === 'rp' || k === 'seq') return { seq: parseIntArg(k, String(o[k])) };
  if (k === 'latest') return { latest: true };
  if (k === 'at') return { atMs: parseRpTime(String(o.at)) };
  return { acrp: String(o.acrp) };
}

export type RecoveryTarget = { kind: 'file'; dir: string } | { kind: 's3'; bucket?: string; prefix: string } | { kind: 'ebs' };

/** recover's target: --to ebs | s3://BUCKET/PREFIX | file:DIR, or --out DIR, or --to-s3 PREFIX (in the RP Store's bucket). */
export function recoveryTargetOf(o: Record<string, unknown>): RecoveryTarget {
  const given = ['to', 'out', 'to-s3'].filter((k) => o[k] !== undefined);
  if (given.length !== 1) throw new InvalidArgumentError(`give exactly one of --to (ebs | s3://BUCKET/PREFIX | file:DIR), --out DIR or --to-s3 PREFIX${given.length ? ` (given: ${given.map((k) => `--${k}`).join(', ')})` : ''}`);
  if (o.out !== undefined) return { kind: 'file', dir: String(o.out) };
  if (o['to-s3'] !== undefined) return { kind: 's3', prefix: String(o['to-s3']) };
  const to = String(o.to);
  if (to === 'ebs') return { kind: 'ebs' };
  if (to.startsWith('file:') && to.length > 'file:'.length) return { kind: 'file', dir: to.slice('file:'.length) };
  if (to.startsWith('s3://')) {
    const { bucket, key } = parseS3Url(to);
    return { kind: 's3', bucket, prefix: key };
  }
  throw new InvalidArgumentError(`--to ${to}: expected ebs, s3://BUCKET/PREFIX or file:DIR`);
}
