// The main job, end to end on the embedded local stack: a disk with data on it is backed up
// into S3 and seeds its pair through the seed workflow (the synthesized state machine),
// while a random write workload with application-consistent markers goes on and the event
// path applies it; then the RPs are listed, and the first (seeded) RP, a mid-way ACRP and the
// latest RP are recovered and verified bit for bit.

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
import { createPair, seedProgress, startSeed, waitForWatermark } from '../replica/pairs';
import type { ReplicaIndex } from '../replica/ports';
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
  o.log('starting the local AWS stack (DynamoDB Local, S3, SQS) ...');
  process.env.LOG_LEVEL ??= 'warn'; // the apply handler's per-batch lines would drown the summary
  const stack = await startLocalStack({ log: o.log });
  try {
    o.log(`  S3 ${stack.env.AWS_ENDPOINT_URL_S3}  DynamoDB ${stack.env.AWS_ENDPOINT_URL_DYNAMODB}  SQS ${stack.env.AWS_ENDPOINT_URL_SQS}`);
    const { store, index, bucket } = rpStoreFromEnv();
    const pairId = `demo-${Date.now().toString(36)}`;
    const disks = [{ name: 'disk0', sizeBytes: o.diskBytes }];
    const backupKey = seedBackupKey(pairId);
    await createPair(index, { pairId, disks, ccrpIntervalMs: o.ccrpIntervalMs, backup: `s3://${bucket}/${backupKey}` });
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
    const lastSeq = await writer.flush({ rp: true });
    await writer.close();
    const seeded = await seeding;
    if (seeded.state !== 'REPLICATING') throw new Error(`seeding ended ${seeded.state}: ${seeded.seed?.reason}`);
    o.log(`workload: ${mib(written)} MiB written in ${o.seconds} s, ${acrps} app-consistent markers, ${batches} batches (${mib(uploaded)} MiB uploaded)`);

    const applied = await waitForWatermark(index, pairId, lastSeq, 120_000);
    o.log(`applied: watermark ${applied.watermark} after ${((Date.now() - end) / 1000).toFixed(1)} s (event path S3 → SQS → apply handler)`);
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
      ['latest RP', lastSeq, sourcePath],
    ] as const) {
      const t = Date.now();
      const out = join(dir, `recovered-${seq}-disk0.img`);
      const res = await materialize(store, index, { pairId, seq, sinkFor: async () => fileSink(out, o.diskBytes) });
      const secs = (Date.now() - t) / 1000;
      const diff = await compareFiles(expected, out);
      ok &&= diff === undefined;
      o.log(
        `recover ${label} (seq ${seq}): ${mib(o.diskBytes)} MiB in ${secs.toFixed(2)} s from ${res.segments} segments, ${res.gets} GETs -> ` +
          (diff === undefined ? 'VERIFIED bit for bit against the source' : `MISMATCH at byte ${diff}`),
      );
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
