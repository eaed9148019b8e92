// The main job, end to end on the embedded local stack: a disk with data on it is backed up
// into S3 and seeds its pair through the seed workflow (the synthesized state machine),
// while a random write workload with application-consistent markers goes on and the event
// path applies it; the apply path starts compaction runs (the compaction state machine) as
// the L0 grows. Under a compressed retention policy the early RPs then expire; a last run
// compacts and GC deletes what only they needed (storage shown before and after). The first
// (seeded) RP, a mid-way ACRP (pinned, as for an investigation) and the latest RP, whose
// batches were folded and deleted, are recovered and verified bit for bit; the latest also
// in the cloud (the recovery workflow) into an EBS snapshot (the local EBS direct APIs), read
// back block by block and verified.

import { copyFile, mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { rpStoreFromEnv } from '../adapters/from-env';
import { BLOCK_SIZE } from '../core/batch-format';
import { startLocalStack } from '../local/stack';
import { fileSink, materialize } from '../replica/materialize';
import { seedLauncherFromEnv } from '../adapters/sfn-seed-launcher';
import { seedBackupKey } from '../core/keys';
import { rpUntil } from '../core/retention';
import { seedRunEnded, type Pair } from '../core/model';
import { createPair, pinRp, seedProgress, startSeed, waitForWatermark } from '../replica/pairs';
import type { CompactionLauncher, KeyLister, ObjectStore, RecoveryRun, ReplicaIndex } from '../replica/ports';
import { DescribeExecutionCommand } from '@aws-sdk/client-sfn';
import { ebsClient, sfnClient } from '../adapters/aws-clients';
import { readSnapshot } from '../adapters/ebs-snapshot-sink';
import { recoveryLauncherFromEnv } from '../adapters/sfn-recovery-launcher';
import { recoverInCloud } from './recover-cloud';
import { compactionLauncherFromEnv } from '../adapters/sfn-compaction-launcher';
import type { RetentionPolicy } from '../core/retention';
import { GC_GRACE_ENV } from '../lib/names';
import { writeBackup } from '../source/backup';
import { sleep } from '../replica/concurrency';
import { BatchWriter } from '../source/batch-writer';
import { randomOp, rng } from '../source/workload';
import { compareFiles } from './compare';
import { seedProgressText } from './status';

export interface DemoOptions {
  diskBytes: number;
  seconds: number;
  seed: number;
  ccrpIntervalMs: number;
  /** Target write rate (bytes/s) of the workload. */
  rate: number;
  keep: boolean;
  log: (line: string) => void;
}

export async function runDemo(o: DemoOptions): Promise<boolean> {
  const t0 = Date.now();
  o.log('starting the local AWS stack (DynamoDB Local, S3, SQS, Step Functions, EBS direct APIs) ...');
  process.env.LOG_LEVEL ??= 'warn'; // the apply handler's per-batch lines would drown the summary
  process.env[GC_GRACE_ENV] ??= String(DEMO_GC_GRACE_MS);
  const stack = await startLocalStack({ log: o.log });
  try {
    o.log(`  S3 ${stack.env.AWS_ENDPOINT_URL_S3}  DynamoDB ${stack.env.AWS_ENDPOINT_URL_DYNAMODB}  SQS ${stack.env.AWS_ENDPOINT_URL_SQS}`);
    const { store, index, history, bucket } = rpStoreFromEnv();
    const pairId = `demo-${Date.now().toString(36)}`;
    const disks = [{ name: 'disk0', sizeBytes: o.diskBytes }];
    const backupKey = seedBackupKey(pairId);
    await createPair(index, { pairId, disks, ccrpIntervalMs: o.ccrpIntervalMs, backup: `s3://${bucket}/${backupKey}`, retention: DEMO_RETENTION });
    const dir = join(process.cwd(), '.livesync', 'demo', pairId);
    await mkdir(dir, { recursive: true });
    const sourcePath = join(dir, 'source-disk0.img');
    const source = await open(sourcePath, 'w+');
    await source.truncate(o.diskBytes);
    // The disk as it was before replication began: its first quarter holds data.
    const initial = rng(o.seed ^ 0x5eed);
    for (let at = 0; at < o.diskBytes / 4; at += MiB) {
      const data = Buffer.alloc(MiB, Math.floor(initial() * 255) + 1); // half compressible,
      for (let i = 0; i < MiB / 2; i += 4) data.writeUInt32LE((initial() * 4294967296) >>> 0, i); // half not
      await source.write(data, 0, MiB, at);
    }
    o.log(`pair ${pairId}: disk0 ${mib(o.diskBytes)} MiB (${mib(o.diskBytes / 4)} MiB of data on it), crash RP every ${o.ccrpIntervalMs} ms, state CONFIGURED`);
    o.log(`retention (compressed for the demo): every RP for ${DEMO_EVERY_SEC} s, then one per ${DEMO_SPACING_SEC} s for ${DEMO_WINDOW_SEC} s; ACRPs ${DEMO_WINDOW_SEC} s; GC grace ${DEMO_GC_GRACE_MS / 1000} s`);

    let batches = 0;
    let uploaded = 0;
    const writer = new BatchWriter({
      pairId,
      disks,
      store,
      maxBatchBytes: 4 * 1024 * 1024,
      maxBatchAgeMs: 500,
      readBlock: async (_disk, block) => (await source.read(Buffer.alloc(BLOCK_SIZE), 0, BLOCK_SIZE, block * BLOCK_SIZE)).buffer,
      onUploaded: (b) => {
        batches++;
        uploaded += b.bytes;
      },
    });

    // A full backup into S3 (what `livesync backup` does beside a live disk), then the seed
    // workflow, started with StartExecution; the workload below runs while it seeds.
    const backup = await writeBackup({
      store,
      manifestKey: backupKey,
      pairId,
      backupId: 'seed',
      disks: [{ name: 'disk0', sizeBytes: o.diskBytes, read: async (offset, length) => (await source.read(Buffer.alloc(length), 0, length, offset)).buffer }],
      startSeq: async () => (await writer.flush()) + 1,
      endSeq: () => writer.flush(),
    });
    const firstSeq = backup.manifest.endSeq;
    await copyFile(sourcePath, join(dir, `source-disk0-at-${firstSeq}.img`));
    o.log(`backup: ${mib(backup.bytesRead)} MiB read, ${backup.chunksStored} chunks stored (${mib(backup.bytesStored)} MiB), ${backup.zeroChunks} zero chunks skipped`);
    const seedRun = await startSeed(index, seedLauncherFromEnv(), pairId);
    o.log(`seed workflow started: ${seedRun.executionArn}`);
    const seeding = waitSeeded(index, pairId, o.log);

    const r = rng(o.seed);
    let written = 0;
    let midSeq = 0;
    let acrps = 0;
    const start = Date.now();
    const end = start + o.seconds * 1000;
    let nextMarker = start + 3000;
    while (Date.now() < end) {
      const op = randomOp(r, o.diskBytes);
      if (op.kind === 'write') {
        await source.write(op.data!, 0, op.length, op.offset);
        await writer.write('disk0', op.offset, op.data!);
      } else {
        await source.write(Buffer.alloc(op.length), 0, op.length, op.offset);
        await writer.zero('disk0', op.offset, op.length);
      }
      written += op.length;
      if (!midSeq && Date.now() >= start + (o.seconds * 1000) / 2) {
        // The mid-way ACRP: flushed, and the source image copied at exactly that point.
        midSeq = await writer.flush({ appTag: 'app=demo-db;phase=mid' });
        acrps++;
        await copyFile(sourcePath, join(dir, `source-disk0-at-${midSeq}.img`));
      } else if (Date.now() >= nextMarker) {
        writer.cut({ appTag: 'app=demo-db' });
        acrps++;
        nextMarker += 4000;
      }
      const ahead = written / o.rate - (Date.now() - start) / 1000;
      if (ahead > 0) await sleep(ahead * 1000);
    }
    // The workload ends at an application-consistent point (as a planned stop would), which
    // the compressed policy keeps for 2 min: the latest RP outlives the every-RP tier.
    const lastSeq = await writer.flush({ appTag: 'app=demo-db;phase=end' });
    acrps++;
    await writer.close();
    const seeded = await seeding;
    if (seeded.state !== 'REPLICATING') throw new Error(`seeding ended ${seeded.state}: ${seeded.seed?.reason}`);
    o.log(`workload: ${mib(written)} MiB written in ${o.seconds} s, ${acrps} app-consistent markers, ${batches} batches (${mib(uploaded)} MiB uploaded)`);

    const applied = await waitForWatermark(index, pairId, lastSeq, 120_000);
    o.log(`applied: watermark ${applied.watermark} after ${((Date.now() - end) / 1000).toFixed(1)} s (event path S3 → SQS → apply handler)`);
    const midUntil = rpUntil((await index.getRecoveryPoint(pairId, midSeq))!);
    await pinRp(index, pairId, midSeq, { by: 'demo', reason: 'an investigation of the mid-way state' });
    o.log(`pinned the mid-way ACRP (seq ${midSeq}, which its tier kept until ${midUntil}): it lives until unpinned`);
    const before = await storedObjects(store, pairId);
    const firstRpAtMs = (await index.getRecoveryPoint(pairId, firstSeq))!.atMs;
    const history0 = await history.getHistory(pairId);
    o.log(`history: manifest version ${history0.version}, frontier seq ${history0.frontierSeq} (compaction runs the apply path started while the workload ran)`);
    o.log(`stored before the last compaction: ${storedText(before)}`);

    // Let the first RPs leave the every-RP tier, then one compaction run folds everything up to
    // the latest RP and drops what only expired RPs saw; after the grace period a second run's
    // GC deletes the objects no manifest references any more.
    const waitMs = firstRpAtMs + (DEMO_EVERY_SEC + 2) * 1000 - Date.now();
    if (waitMs > 0) {
      o.log(`waiting ${(waitMs / 1000).toFixed(0)} s for the early RPs to expire ...`);
      await sleep(waitMs);
    }
    const launcher = compactionLauncherFromEnv()!;
    await runCompaction(launcher, pairId, o.log);
    await sleep(DEMO_GC_GRACE_MS + 500);
    await runCompaction(launcher, pairId, o.log);
    const after = await storedObjects(store, pairId);
    const history1 = await history.getHistory(pairId);
    o.log(`history: manifest version ${history1.version}, frontier seq ${history1.frontierSeq}, GC done through version ${history1.gcVersion}`);
    o.log(`stored after compaction and GC:      ${storedText(after)}`);

    const nowSec = Math.floor(Date.now() / 1000);
    const rps = await index.listRecoveryPoints(pairId, nowSec);
    const apps = await index.listRecoveryPoints(pairId, nowSec, 'APP');
    o.log(`recovery points: ${rps.length} (${rps.filter((p) => p.type === 'CRASH').length} crash, ${apps.length} app-consistent via the ACRP index)`);
    for (const rp of rps) {
      o.log(`  seq ${String(rp.seq).padStart(4)}  ${rp.type.padEnd(5)} ${new Date(rp.atMs).toISOString()}  until ${rpUntil(rp)}  ${rp.tag ?? ''}`);
    }

    let ok = true;
    for (const [label, seq, expected] of [
      ['first RP (seeded)', firstSeq, join(dir, `source-disk0-at-${firstSeq}.img`)],
      ['mid-way ACRP', midSeq, join(dir, `source-disk0-at-${midSeq}.img`)],
      ['latest RP (the final ACRP)', lastSeq, sourcePath],
    ] as const) {
      const t = Date.now();
      const out = join(dir, `recovered-${seq}-disk0.img`);
      const res = await materialize(store, index, { pairId, seq, history, sinkFor: async () => fileSink(out, o.diskBytes) });
      const secs = (Date.now() - t) / 1000;
      const diff = await compareFiles(expected, out);
      ok &&= diff === undefined;
      o.log(
        `recover ${label} (seq ${seq}${seq <= history1.frontierSeq ? ', its batches compacted away' : ''}): ${mib(o.diskBytes)} MiB in ${secs.toFixed(2)} s from ${res.segments} L0 batches and the history, ${res.gets} GETs -> ` +
          (diff === undefined ? 'VERIFIED bit for bit against the source' : `MISMATCH at byte ${diff}`),
      );
    }
    // The latest RP recovered in the cloud (the recovery workflow: a Lambda per range) into an
    // EBS snapshot (the local EBS direct APIs), read back block by block and compared with the source.
    {
      const t = Date.now();
      const ebs = ebsClient();
      const launcher = recoveryLauncherFromEnv()!;
      try {
        const run = (await recoverInCloud(rpStoreFromEnv(), launcher, { pairId, choice: { seq: lastSeq }, target: { kind: 'ebs' }, by: 'demo', log: () => {} })) as RecoveryRun;
        const disk = run.disks[0];
        const back = join(dir, `snapshot-${lastSeq}-disk0.img`);
        const fh = await open(back, 'w');
        try {
          await fh.truncate(o.diskBytes);
          await readSnapshot(ebs, disk.snapshotId!, async (offset, data) => void (await fh.write(data, 0, Math.min(data.length, o.diskBytes - offset), offset)));
        } finally {
          await fh.close();
        }
        const diff = await compareFiles(sourcePath, back);
        ok &&= diff === undefined;
        o.log(
          `recover latest RP (seq ${lastSeq}) in the cloud (recovery workflow ${run.id}: ${run.rangesTotal} range Lambda${run.rangesTotal === 1 ? '' : 's'}) into EBS snapshot ${disk.snapshotId} (${disk.blocksWritten} blocks of 512 KiB written, zero blocks skipped) in ${((Date.now() - t) / 1000).toFixed(2)} s, read back -> ` +
            (diff === undefined ? 'VERIFIED bit for bit against the source' : `MISMATCH at byte ${diff}`),
        );
      } finally {
        ebs.destroy();
        launcher.destroy();
      }
    }
    await source.close();
    if (!o.keep) await rm(dir, { recursive: true, force: true });
    o.log(`${ok ? 'OK' : 'FAILED'}: demo finished in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return ok;
  } finally {
    await stack.stop();
    o.log('local stack stopped');
  }
}

const MiB = 2 ** 20;
const mib = (n: number): string => (n / MiB).toFixed(1);

const DEMO_EVERY_SEC = 20;
const DEMO_SPACING_SEC = 10;
const DEMO_WINDOW_SEC = 120;
/** Every RP for 20 s, then one per 10 s for 2 min; every ACRP for 2 min. */
const DEMO_RETENTION: RetentionPolicy = {
  all: [
    { windowSec: DEMO_EVERY_SEC, spacingSec: 0 },
    { windowSec: DEMO_WINDOW_SEC, spacingSec: DEMO_SPACING_SEC },
  ],
  app: [{ windowSec: DEMO_WINDOW_SEC, spacingSec: 0 }],
};
/** GC's grace period in the demo (1 h by default): set before the local stack starts its GC handler. */
export const DEMO_GC_GRACE_MS = 5000;

/** Objects and bytes stored under the pair, by kind (journal batches, history objects, base and backup). */
async function storedObjects(store: ObjectStore & KeyLister, pairId: string): Promise<Map<string, { objects: number; bytes: number }>> {
  const out = new Map<string, { objects: number; bytes: number }>();
  for (const key of await store.listKeys(`pairs/${pairId}/`)) {
    const kind = key.split('/')[2];
    const k = out.get(kind) ?? { objects: 0, bytes: 0 };
    k.objects++;
    k.bytes += (await store.size(key)) ?? 0;
    out.set(kind, k);
  }
  return out;
}

function storedText(m: Map<string, { objects: number; bytes: number }>): string {
  const all = [...m.values()].reduce((a, k) => ({ objects: a.objects + k.objects, bytes: a.bytes + k.bytes }), { objects: 0, bytes: 0 });
  const kinds = ['journal', 'history', 'base', 'backups'].map((kind) => `${kind} ${m.get(kind)?.objects ?? 0} (${mib(m.get(kind)?.bytes ?? 0)} MiB)`);
  return `${all.objects} objects, ${mib(all.bytes)} MiB: ${kinds.join(', ')}`;
}

/** Starts a compaction run as an operator does and waits for it. */
async function runCompaction(launcher: CompactionLauncher, pairId: string, log: (line: string) => void): Promise<void> {
  const arn = (await launcher.start(pairId, 'operator'))!;
  const sfn = sfnClient();
  for (const deadline = Date.now() + 120_000; ; await sleep(200)) {
    const out = await sfn.send(new DescribeExecutionCommand({ executionArn: arn }));
    if (out.status === 'SUCCEEDED') {
      const gc = (JSON.parse(out.output ?? '{}') as { gc?: { collected?: number[]; objectsDeleted?: number; batchItemsDeleted?: number } }).gc;
      log(`compaction run ${arn.split(':').pop()}: SUCCEEDED; GC collected ${gc?.collected?.length ?? 0} versions, deleted ${gc?.objectsDeleted ?? 0} objects and ${gc?.batchItemsDeleted ?? 0} batch items`);
      return;
    }
    if (out.status !== 'RUNNING') throw new Error(`compaction run ${arn} ended ${out.status}: ${out.cause ?? ''}`);
    if (Date.now() > deadline) throw new Error(`compaction run ${arn} still running after 120 s`);
  }
}

/** Follows the seed run as `livesync pair status --watch` does, until it ends. */
async function waitSeeded(index: ReplicaIndex, pairId: string, log: (line: string) => void): Promise<Pair> {
  let last = '';
  for (const deadline = Date.now() + 300_000; Date.now() < deadline; await sleep(250)) {
    const pair = (await index.getPair(pairId))!;
    const p = seedProgress(pair)!;
    const line = `seeding: ${pair.state}, ${seedProgressText(p)}`;
    if (line !== last) log(line);
    last = line;
    if (seedRunEnded(pair)) return pair;
  }
  throw new Error(`pair '${pairId}' was not seeded within 300 s`);
}
