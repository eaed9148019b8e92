// The seed workflow as deployed: the synthesized state machine started with StartExecution
// (the embedded stack runs it with aws-local-stepfunctions; LocalStack or AWS run their
// own), from a livesync backup taken while writes go on and from a raw image in parts;
// a failed run re-run without redoing finished ranges; a range killed mid-way; a sparse
// 64 GiB disk that costs its data. Then replication goes on, and RPs are exact.

import { BLOCK_SIZE } from '../core/batch-format';
import { CHUNK_BYTES } from '../core/chunk-format';
import { seedRunEnded, type Pair } from '../core/model';
import { seedLauncherFromEnv } from '../adapters/sfn-seed-launcher';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { seedHandlers } from '../lambdas/seed';
import { synthTemplate } from '../lib/synth';
import { machinesFromTemplate, runLocal } from '../local/stepfunctions-local';
import { sleep } from '../replica/concurrency';
import { createPair, startSeed, waitForWatermark } from '../replica/pairs';
import type { ObjectStore } from '../replica/ports';
import { writeBackup, type BackupDiskSource } from '../source/backup';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, fuzzyBackupDisks, newPairId, nowSec, pattern, recover, runCli, SourceModel } from './helpers';

const MiB = 1024 * 1024;


/** Polls the pair until seeding has ended (REPLICATING or SEED_FAILED). */
async function seeded(pairId: string, timeoutMs = 120_000): Promise<Pair> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pair = (await cloud().index.getPair(pairId))!;
    if (seedRunEnded(pair)) return pair;
    if (Date.now() > deadline) throw new Error(`pair '${pairId}' still ${pair.state} after ${timeoutMs} ms: ${JSON.stringify(pair.seed)}`);
    await sleep(200);
  }
}

async function expectImages(pairId: string, seq: number, want: Map<string, Buffer>): Promise<void> {
  const got = await recover(cloud(), pairId, seq);
  for (const [disk, image] of want) expect({ seq, disk, diff: firstDifference(got.get(disk)!, image) }).toEqual({ seq, disk, diff: undefined });
}

/** A backup of in-memory disks (no writes during it), at the given seqs. */
function memoryDisks(images: Map<string, Buffer>): BackupDiskSource[] {
  return [...images].map(([name, image]) => ({ name, sizeBytes: image.length, read: async (o, n) => image.subarray(o, o + n) }));
}

describe('seed workflow through StartExecution', () => {
  test('a livesync backup taken while writes go on, writes during seeding: first and latest RP exact', async () => {
    const c = cloud();
    const pairId = newPairId('wf');
    const disks = [{ name: 'os', sizeBytes: 24 * MiB }, { name: 'data', sizeBytes: 8 * MiB }];
    const model = new SourceModel(disks);
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
    const write = async (disk: string, offset: number, data: Buffer): Promise<void> => {
      model.write(disk, offset, data);
      await w.write(disk, offset, data);
    };
    const manifestKey = `pairs/${pairId}/backups/b1/manifest.json`;
    // The workflow starts first and waits for the backup (the pair's own, which its agent takes).
    await createPair(c.index, { pairId, disks, backup: `s3://${c.bucket}/${manifestKey}`, ccrpIntervalMs: 100 });
    const started = await startSeed(c.index, seedLauncherFromEnv(), pairId);
    expect(started).toMatchObject({ attempt: 1, executionArn: expect.stringContaining(pairId) });
    await write('os', 0, pattern(3 * MiB, 1));
    await write('data', 5 * MiB, pattern(MiB, 2));
    const backup = await writeBackup({
      store: c.store,
      manifestKey,
      pairId,
      backupId: 'b1',
      disks: fuzzyBackupDisks(disks, model, write),
      startSeq: async () => (await w.flush(), w.nextSeq),
      endSeq: async () => w.flush(),
      appConsistent: true,
      appTag: 'app=postgres',
    });
    model.snapshot(backup.manifest.endSeq);

    expect((await c.index.getPair(pairId))!.state).toBe('CONFIGURED');
    // Writes go on while the workflow runs.
    await write('data', 0, pattern(2 * MiB, 3));
    const last = await w.flush({ rp: true });

    const pair = await seeded(pairId);
    expect(pair).toMatchObject({ state: 'REPLICATING', seed: { status: 'DONE', executionArn: started.executionArn } });
    expect(pair.seed!.rangesDone).toBe(pair.seed!.rangesTotal);
    await waitForWatermark(c.index, pairId, last, 60_000);
    const rps = await c.index.listRecoveryPoints(pairId, nowSec());
    // The first RP is the backup's end seq, an ACRP with its tag; nothing before it.
    expect(rps[0]).toMatchObject({ seq: backup.manifest.endSeq, type: 'APP', tag: 'app=postgres' });
    expect(rps.filter((r) => r.seq < backup.manifest.endSeq)).toEqual([]);
    await expectImages(pairId, backup.manifest.endSeq, model.atSeq.get(backup.manifest.endSeq)!);
    await expectImages(pairId, last, model.disks);
  });

  test('a raw image in two parts through the CLI: pair create --backup, pair status --watch, then replication', async () => {
    const c = cloud();
    const pairId = newPairId('rawcli');
    const image = Buffer.alloc(72 * MiB);
    pattern(6 * MiB, 5).copy(image, MiB);
    pattern(3 * MiB, 6).copy(image, 39 * MiB); // a chunk that spans both parts
    pattern(BLOCK_SIZE, 7).copy(image, image.length - BLOCK_SIZE);
    const dir = `pairs/${pairId}/import`;
    await c.store.put(`${dir}/part-0`, image.subarray(0, 40 * MiB));
    await c.store.put(`${dir}/part-1`, image.subarray(40 * MiB));
    const manifest = { format: 'livesync-raw-image', version: 1, disks: [{ name: 'sda', sizeBytes: image.length, parts: [{ key: `${dir}/part-0`, bytes: 40 * MiB }, { key: `${dir}/part-1`, bytes: 32 * MiB }] }] };
    await c.store.put(`${dir}/manifest.json`, Buffer.from(JSON.stringify(manifest)));

    const created = await runCli('pair', 'create', '--pair', pairId, '--disk', 'sda=72M', '--backup', `s3://${c.bucket}/${dir}/manifest.json`, '--ccrp-interval', '100ms');
    expect(created).toMatchObject({ code: 0 });
    expect(JSON.parse(created.stdout)).toMatchObject({ pairId, state: 'CONFIGURED', seed: { attempt: 1, executionArn: expect.any(String) } });
    const watched = await runCli('pair', 'status', '--pair', pairId, '--watch');
    expect(watched).toMatchObject({ code: 0 });
    const lines = watched.stdout.trim().split('\n');
    expect(lines[lines.length - 1]).toMatch(new RegExp(`^${pairId}\\tREPLICATING\\t`));
    expect(await seeded(pairId)).toMatchObject({ state: 'REPLICATING', base: { baseSeq: 0, firstRpSeq: 0 }, seed: { bytesTotal: image.length, rangesTotal: 2 } });
    await expectImages(pairId, 0, new Map([['sda', image]]));

    const w = new BatchWriter({ pairId, disks: [{ name: 'sda', sizeBytes: image.length }], store: c.store, maxBatchAgeMs: 0 });
    await w.write('sda', 38 * MiB, pattern(4 * MiB, 8));
    pattern(4 * MiB, 8).copy(image, 38 * MiB);
    const seq = await w.flush({ rp: true });
    await waitForWatermark(c.index, pairId, seq, 60_000);
    await expectImages(pairId, seq, new Map([['sda', image]]));
  });

  test('a failed run (a rotted chunk) is SEED_FAILED with the reason; the re-run skips finished ranges', async () => {
    const c = cloud();
    const pairId = newPairId('rerun');
    // 18 data chunks: two ranges, 0-15 and 16-17. Chunk 15 (the last the first range reads)
    // rots, so the short second range is done long before the first one fails.
    const image = pattern(72 * MiB, 11);
    const dir = `pairs/${pairId}/backups/b`;
    const { manifest } = await writeBackup({ store: c.store, manifestKey: `${dir}/manifest.json`, pairId, backupId: 'b', disks: memoryDisks(new Map([['sda', image]])), startSeq: async () => 1, endSeq: async () => 0 });
    const chunkKey = (i: number): string => `${dir}/chunks/${manifest.disks[0].chunks[i].sha256}`;
    const rot = async (i: number): Promise<Buffer> => {
      const good = await c.store.get(chunkKey(i));
      const bad = Buffer.from(good);
      bad[bad.length - 1] ^= 0xff;
      await c.store.put(chunkKey(i), bad);
      return good;
    };
    const good15 = await rot(15);

    await createPair(c.index, { pairId, disks: [{ name: 'sda', sizeBytes: image.length }], backup: `s3://${c.bucket}/${dir}/manifest.json` });
    await startSeed(c.index, seedLauncherFromEnv(), pairId);
    const failed = await seeded(pairId);
    expect(failed).toMatchObject({ state: 'SEED_FAILED', seed: { status: 'FAILED', rangesTotal: 2, rangesDone: 1 } });
    expect(failed.seed!.reason).toMatch(/CHECKSUM_MISMATCH/);
    expect(failed.seed!.reason).toContain(chunkKey(15));
    expect(failed.base).toBeUndefined();
    expect(await c.index.listRecoveryPoints(pairId, nowSec())).toEqual([]);
    const status = await runCli('pair', 'status', '--pair', pairId);
    expect(status.code).toBe(1);
    expect(status.stdout).toMatch(/SEED_FAILED.*ranges 1\/2.*reason: .*CHECKSUM_MISMATCH/);

    // The operator repairs chunk 15. Chunk 16 (second range, finished) rots now: a re-run
    // that redid that range would fail on it.
    await c.store.put(chunkKey(15), good15);
    await rot(16);
    const rerun = await startSeed(c.index, seedLauncherFromEnv(), pairId);
    expect(rerun.attempt).toBe(2);
    const pair = await seeded(pairId);
    expect({ state: pair.state, reason: pair.seed!.reason }).toEqual({ state: 'REPLICATING', reason: undefined });
    expect(pair).toMatchObject({ seed: { status: 'DONE', attempts: 2 } });
    expect(pair.seed!.reason).toBeUndefined();
    await expectImages(pairId, 0, new Map([['sda', image]]));
  });

  test('a pair without a backup, a seeded pair, an unknown pair: startSeed refuses, naming it', async () => {
    const c = cloud();
    const plain = newPairId('plain');
    await createPair(c.index, { pairId: plain, disks: [{ name: 'sda', sizeBytes: MiB }] });
    await expect(startSeed(c.index, seedLauncherFromEnv(), plain)).rejects.toThrow(`pair '${plain}' was created without a backup`);
    await expect(startSeed(c.index, seedLauncherFromEnv(), 'no-such-pair')).rejects.toThrow("unknown pair 'no-such-pair'");
    const res = await runCli('pair', 'seed', '--pair', plain);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('created without a backup');
  });

  test('a sparse 64 GiB disk with 100 MiB of data seeds in the time of its data, not its size', async () => {
    const c = cloud();
    const data = pattern(100 * MiB, 21);
    const run = async (sizeBytes: number, at: number): Promise<{ ms: number; pair: Pair }> => {
      const pairId = newPairId('sparse');
      const dir = `pairs/${pairId}/backups/b`;
      const zeros = Buffer.alloc(CHUNK_BYTES);
      await writeBackup({
        store: c.store,
        manifestKey: `${dir}/manifest.json`,
        pairId,
        backupId: 'b',
        disks: [{
          name: 'sda',
          sizeBytes,
          read: async (o, n) => (o >= at && o < at + data.length ? data.subarray(o - at, o - at + n) : zeros.subarray(0, n)),
        }],
        startSeq: async () => 1,
        endSeq: async () => 0,
        concurrency: 8,
      });
      await createPair(c.index, { pairId, disks: [{ name: 'sda', sizeBytes }], backup: `s3://${c.bucket}/${dir}/manifest.json` });
      const t0 = Date.now();
      await startSeed(c.index, seedLauncherFromEnv(), pairId);
      const pair = await seeded(pairId);
      return { ms: Date.now() - t0, pair };
    };
    const full = await run(100 * MiB, 0);
    const sparse = await run(64 * 1024 * MiB, 40 * 1024 * MiB);
    for (const r of [full, sparse]) expect(r.pair).toMatchObject({ state: 'REPLICATING', seed: { bytesTotal: 100 * MiB, rangesTotal: 2 } });
    // The work is the data's: the same ranges and bytes. The time too, within noise.
    console.log(`seeding 100 MiB: full disk ${full.ms} ms, 64 GiB sparse disk ${sparse.ms} ms (ratio ${(sparse.ms / full.ms).toFixed(2)})`);
    expect(sparse.ms).toBeLessThan(3 * full.ms + 2000);
    const base = JSON.parse((await c.store.get(sparse.pair.base!.key)).toString('utf8')) as { disks: { chunks: [number][] }[] };
    expect(base.disks[0].chunks.map(([i]) => i)).toEqual(Array.from({ length: 25 }, (_, i) => 10240 + i));
  });
});

// Runs the synthesized definition in this process (the embedded runner), so a fault can be
// put inside the range handler; against LocalStack or AWS this one has nothing to add.
(process.env.LIVESYNC_EMBEDDED_STACK === '1' ? describe : describe.skip)('seed workflow definition, run in-process with a fault', () => {
  test('Finalize fails the run, naming the ranges without a done marker, though the Map reported every item a success', async () => {
    const c = cloud();
    const pairId = newPairId('lie');
    const image = pattern(72 * MiB, 41); // 18 chunks: range 0 (chunks 0-15) and range 1 (16-17)
    const dir = `pairs/${pairId}/backups/b`;
    await writeBackup({ store: c.store, manifestKey: `${dir}/manifest.json`, pairId, backupId: 'b', disks: memoryDisks(new Map([['sda', image]])), startSeq: async () => 1, endSeq: async () => 0 });
    await createPair(c.index, { pairId, disks: [{ name: 'sda', sizeBytes: image.length }], backup: `s3://${c.bucket}/${dir}/manifest.json` });
    const seedId = (await c.index.getPair(pairId))!.seed!.seedId;
    const handlers = seedHandlers({ index: c.index, store: c.store, sourceStore: (b: string) => new S3ObjectStore(b) });
    // LocalStack's Distributed Map reported MapRunSucceeded with every item failed: here range 0
    // "succeeds" without having done anything, range 1 is seeded for real.
    const ranges: number[] = [];
    const range = async (item: { pairId: string; seedId: string; range: number }): Promise<unknown> => {
      ranges.push(item.range);
      return item.range === 0 ? { range: 0, skipped: false, bytesStored: 0 } : handlers.range(item);
    };
    const machine = machinesFromTemplate(synthTemplate()).find((m) => m.id.startsWith('Seed'))!;
    const started = Date.now();
    const outcome = await runLocal(machine, { steps: handlers.steps, range }, { pairId, seedId }, { waitMs: 200 }).result.then(
      (out) => ({ succeeded: out }),
      (err: Error & { cause?: { name?: string } }) => ({ failed: err.cause?.name ?? err.name }),
    );
    expect(outcome).toEqual({ failed: 'SeedFailed' });
    expect(ranges.sort()).toEqual([0, 1]);
    const pair = (await c.index.getPair(pairId))!;
    expect({ state: pair.state, status: pair.seed!.status, base: pair.base }).toEqual({ state: 'SEED_FAILED', status: 'FAILED', base: undefined });
    expect(pair.seed!.reason).toBe(`SeedIncompleteError: seed ${seedId} of pair '${pairId}': 1 of 2 ranges have no done marker: 0`);
    expect(await c.index.listRecoveryPoints(pairId, nowSec())).toEqual([]);
    // Not retried: the marker cannot appear by asking again (Finalize's error is permanent).
    expect(Date.now() - started).toBeLessThan(2000 + 10_000);
  });

  test('a range Lambda killed mid-range is retried by the state machine and completes correctly', async () => {
    const c = cloud();
    const pairId = newPairId('kill');
    const image = Buffer.alloc(96 * MiB);
    pattern(70 * MiB, 31).copy(image, 8 * MiB);
    const dir = `pairs/${pairId}/backups/b`;
    await writeBackup({ store: c.store, manifestKey: `${dir}/manifest.json`, pairId, backupId: 'b', disks: memoryDisks(new Map([['sda', image]])), startSeq: async () => 1, endSeq: async () => 0 });
    await createPair(c.index, { pairId, disks: [{ name: 'sda', sizeBytes: image.length }], backup: `s3://${c.bucket}/${dir}/manifest.json` });
    const seedId = (await c.index.getPair(pairId))!.seed!.seedId;

    // Each range's first invocation dies at its second chunk (as a Lambda killed at its timeout).
    const invocations = new Map<number, number>();
    const dyingStore = (range: number): ObjectStore => {
      let puts = 0;
      return {
        put: async (k, b) => {
          if (k.includes('/base/chunks/') && ++puts === 2 && invocations.get(range) === 1) throw new Error('Lambda killed mid-range');
          return c.store.put(k, b);
        },
        get: c.store.get.bind(c.store),
        upload: c.store.upload.bind(c.store),
        size: c.store.size.bind(c.store),
      };
    };
    const deps = { index: c.index, sourceStore: (b: string) => new S3ObjectStore(b) };
    const steps = seedHandlers({ ...deps, store: c.store });
    const range = async (item: { pairId: string; seedId: string; range: number }): Promise<unknown> => {
      invocations.set(item.range, (invocations.get(item.range) ?? 0) + 1);
      return seedHandlers({ ...deps, store: dyingStore(item.range) }).range(item);
    };
    const machine = machinesFromTemplate(synthTemplate()).find((m) => m.id.startsWith('Seed'))!;
    const out = (await runLocal(machine, { steps: steps.steps, range }, { pairId, seedId }, { waitMs: 200 }).result) as { state: string; rp: { seq: number } };

    expect(out).toMatchObject({ pairId, seedId, state: 'REPLICATING', rp: { seq: 0, type: 'CRASH' } });
    // 18 data chunks in 2 ranges; each range died once and ran again.
    expect([...invocations.values()]).toEqual([2, 2]);
    const pair = (await c.index.getPair(pairId))!;
    expect(pair).toMatchObject({ state: 'REPLICATING', seed: { status: 'DONE', rangesTotal: 2, lastRangeError: expect.stringContaining('Lambda killed mid-range') } });
    await expectImages(pairId, 0, new Map([['sda', image]]));
  });
});
