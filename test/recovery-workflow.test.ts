// The recovery workflow (lib/recovery-workflow.ts, replica/recovery-run.ts) on the stack: an RP
// of a two-disk pair, one disk of three ranges, recovered in the cloud into raw images in S3
// (one multipart upload per disk, a part per range) and into EBS snapshots, the bytes equal
// to the source's at that RP; the run's item says COMPLETED with its progress, and its lease
// is gone. A run that failed half way resumes without redoing its finished ranges.

import { randomBytes } from 'node:crypto';
import { ebsClient } from '../adapters/aws-clients';
import { DynamoRecoveries } from '../adapters/dynamo-recoveries';
import { readSnapshot } from '../adapters/ebs-snapshot-sink';
import { recoveryDepsFromConfig } from '../lambdas/recover';
import { createPair, waitForWatermark } from '../replica/pairs';
import { failRecovery, finishRecovery, newRecoveryId, recoverRange, startRecovery } from '../replica/recovery-run';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, newPairId, runCli } from './helpers';

const MiB = 2 ** 20;
// LocalStack community has no EBS direct APIs (see test/recover-ebs.test.ts).
const ebsReachable = Boolean(process.env.AWS_ENDPOINT_URL_EBS) || !process.env.AWS_ENDPOINT_URL;
const DISKS = [
  { name: 'big', sizeBytes: 132 * MiB }, // ranges of 64 MiB: 64 + 64 + 4
  { name: 'small', sizeBytes: 8 * MiB },
];
const c = cloud();
const pairId = newPairId('recwf');
const models = new Map(DISKS.map((d) => [d.name, Buffer.alloc(d.sizeBytes)]));
const at = new Map<number, Map<string, Buffer>>();
let first = 0;
let last = 0;

async function write(w: BatchWriter, disk: string, offset: number, data: Buffer): Promise<void> {
  await w.write(disk, offset, data);
  data.copy(models.get(disk)!, offset);
}

beforeAll(async () => {
  await createPair(c.index, { pairId, disks: DISKS });
  const w = new BatchWriter({ pairId, disks: DISKS, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 8 * MiB });
  // Data in every range of 'big' (and across the 64 MiB boundary), some of it rewritten later.
  await write(w, 'big', 0, randomBytes(MiB));
  await write(w, 'big', 64 * MiB - 256 * 1024, randomBytes(512 * 1024));
  await write(w, 'big', 129 * MiB, randomBytes(2 * MiB));
  await write(w, 'small', 4096, randomBytes(64 * 1024));
  first = w.cut({ rp: true })!;
  at.set(first, new Map([...models].map(([k, v]) => [k, Buffer.from(v)])));
  await write(w, 'big', 512 * 1024, randomBytes(MiB));
  await write(w, 'big', 100 * MiB, randomBytes(3 * MiB));
  await write(w, 'small', 4096, Buffer.alloc(32 * 1024)); // data → zeros
  last = w.cut({ rp: true })!;
  at.set(last, new Map([...models].map(([k, v]) => [k, Buffer.from(v)])));
  await w.close();
  await waitForWatermark(c.index, pairId, last, 60_000);
});

const expectImagesAt = (seq: number, images: Map<string, Buffer>) => {
  for (const d of DISKS) expect({ seq, disk: d.name, diff: firstDifference(images.get(d.name)!, at.get(seq)!.get(d.name)!) }).toEqual({ seq, disk: d.name, diff: undefined });
};

const leases = () => c.history.listReaderLeases(pairId, Date.now());

test('an RP recovered in the cloud into raw images in S3: a part per range, the bytes at that RP, the run COMPLETED with its progress, no lease left', async () => {
  const prefix = `recoveries/${pairId}/first`;
  const out = await runCli('recover', '--pair', pairId, '--rp', String(first), '--to', `s3://${c.bucket}/${prefix}`);
  expect(out.stderr).toMatch(/started/);
  expect(out.code).toBe(0);
  const run = JSON.parse(out.stdout);
  expect(run).toMatchObject({ status: 'COMPLETED', seq: first, rangesTotal: 4, rangesDone: 4, doneBytes: 140 * MiB, totalBytes: 140 * MiB, attempts: 1, progress: { etaMs: 0 } });
  expect(run.outputs).toEqual({ big: `s3://${c.bucket}/${prefix}/big.img`, small: `s3://${c.bucket}/${prefix}/small.img` });
  expectImagesAt(first, new Map(await Promise.all(DISKS.map(async (d) => [d.name, await c.store.get(`${prefix}/${d.name}.img`)] as const))));
  expect(await leases()).toEqual([]);
  // recovery show says the same.
  const shown = JSON.parse((await runCli('recovery', 'show', '--pair', pairId, '--id', run.id)).stdout);
  expect(shown).toMatchObject({ id: run.id, status: 'COMPLETED', rangesDone: 4 });
});

(ebsReachable ? test : test.skip)('the latest RP recovered in the cloud into EBS snapshots, one per disk, read back bit for bit, then a volume per disk and an AMI', async () => {
  const out = await runCli('recover', '--pair', pairId, '--latest', '--to', 'ebs', '--create-volume', 'us-east-1a', '--register-image', `livesync ${pairId} RP ${last}`);
  expect(out.code).toBe(0);
  const run = JSON.parse(out.stdout);
  expect(run).toMatchObject({ status: 'COMPLETED', seq: last, rangesDone: 4 });
  // The last step asked for: a volume per disk in the zone, and an AMI whose root is the first disk.
  expect(Object.keys(run.volumes)).toEqual(['big', 'small']);
  expect(run.imageId).toMatch(/^ami-/);
  const ebs = ebsClient();
  try {
    const images = new Map<string, Buffer>();
    for (const d of DISKS) {
      const image = Buffer.alloc(d.sizeBytes);
      await readSnapshot(ebs, run.snapshots[d.name].id, async (offset, data) => void data.copy(image, offset));
      images.set(d.name, image);
    }
    expectImagesAt(last, images);
    // Blocks with data only: big has 1 + 2 + 1 + 4 + 6 blocks of 512 KiB touched; small's zeroed 32 KiB leaves its block holding data.
    expect(run.snapshots.big.blocksWritten).toBe(3 + 2 + 4 + 6);
    expect(run.snapshots.small.blocksWritten).toBe(1);
  } finally {
    ebs.destroy();
  }
  expect(await leases()).toEqual([]);
});

test('a run that failed half way resumes without redoing its finished ranges, and recovers the same bytes', async () => {
  const deps = recoveryDepsFromConfig();
  const recoveryId = newRecoveryId(pairId, last);
  const prefix = `recoveries/${pairId}/resumed`;
  // Attempt 1, by hand: planned, range 1 done, then the run fails (as the workflow's Catch does).
  const plan = await startRecovery(deps, { pairId, recoveryId, seq: last, target: { kind: 's3', bucket: c.bucket, prefix }, by: 'test' });
  expect(plan.ranges).toEqual([0, 1, 2, 3]);
  await recoverRange(deps, { pairId, recoveryId, range: 1 });
  expect(await leases()).toEqual([expect.objectContaining({ kind: 'recovery', seq: last })]);
  await failRecovery(deps, { pairId, recoveryId, error: { Error: 'Error', Cause: 'the Lambda timed out' } });
  const runs = new DynamoRecoveries(c.table);
  expect(await runs.getRecovery(pairId, recoveryId)).toMatchObject({ status: 'FAILED', error: 'the Lambda timed out', rangesDone: 1, doneBytes: 64 * MiB });
  expect(await leases()).toEqual([]);
  // A resume plans only what is not done, under a new lease.
  const again = await startRecovery(deps, { pairId, recoveryId });
  expect(again.ranges).toEqual([0, 2, 3]);
  await failRecovery(deps, { pairId, recoveryId, error: { Error: 'Error', Cause: 'stopped by the test' } });

  // The workflow resumes it (attempt 3) and finishes.
  const out = await runCli('recover', '--pair', pairId, '--resume', recoveryId);
  expect(out.stderr).toMatch(/resuming recovery .* \(attempt 3; 1 of 4 ranges were done\)/);
  expect(out.code).toBe(0);
  expect(JSON.parse(out.stdout)).toMatchObject({ id: recoveryId, status: 'COMPLETED', attempts: 3, rangesDone: 4, doneBytes: 140 * MiB });
  expectImagesAt(last, new Map(await Promise.all(DISKS.map(async (d) => [d.name, await c.store.get(`${prefix}/${d.name}.img`)] as const))));
  expect(await leases()).toEqual([]);
  // A finish retried after it completed the uploads (its Lambda died before it said so) completes the run.
  await runs.updateRecovery(pairId, recoveryId, { status: 'RUNNING' });
  expect(await finishRecovery(deps, { pairId, recoveryId })).toMatchObject({ outputs: { big: `s3://${c.bucket}/${prefix}/big.img` } });
  expect(await runs.getRecovery(pairId, recoveryId)).toMatchObject({ status: 'COMPLETED' });
  // A completed run is not resumed.
  const done = await runCli('recover', '--pair', pairId, '--resume', recoveryId);
  expect(done.code).not.toBe(0);
  expect(done.stderr).toMatch(`recovery run '${recoveryId}' of pair '${pairId}' is complete: nothing to resume`);
});

test('bad requests are refused before anything runs, naming what is wrong', async () => {
  const elsewhere = await runCli('recover', '--pair', pairId, '--latest', '--to', `s3://${c.bucket}/pairs/${pairId}/x`);
  expect(elsewhere.code).not.toBe(0);
  expect(elsewhere.stderr).toMatch(`in the RP Store's bucket a recovered image goes under recoveries/`);
  const unknown = await runCli('recover', '--pair', pairId, '--resume', 'no-such-run');
  expect(unknown.stderr).toMatch(`pair '${pairId}' has no recovery run 'no-such-run'`);
  const pair = await runCli('recover', '--pair', 'no-such-pair', '--latest', '--to', 'ebs');
  expect(pair.stderr).toMatch(/no-such-pair/);
  const volumeOfS3 = await runCli('recover', '--pair', pairId, '--latest', '--to', `s3://${c.bucket}/recoveries/x`, '--create-volume', 'us-east-1a');
  expect(volumeOfS3.stderr).toMatch('--create-volume and --register-image follow a recovery into EBS: give --to ebs');
  const deps = recoveryDepsFromConfig();
  await expect(startRecovery(deps, { pairId, recoveryId: 'bad id!', seq: last, target: { kind: 'ebs' } })).rejects.toThrow("recovery id 'bad id!' must be 1-80 of [A-Za-z0-9._-]");
  await expect(startRecovery(deps, { pairId, recoveryId: newRecoveryId(pairId, 999), seq: 999, target: { kind: 'ebs' } })).rejects.toThrow(`pair '${pairId}' has no live recovery point at seq 999`);
});
