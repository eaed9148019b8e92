// Seeding a pair from a backup in S3: a livesync backup taken while writes go on, and a
// raw image; refusal of bad backups before anything is written; a range that dies
// mid-way and is retried. The steps run in the order the seed state machine runs them.

import { BLOCK_SIZE } from '../core/batch-format';
import { CHUNK_BYTES } from '../core/chunk-format';
import { BackupError } from '../core/errors';
import { seedRangeKey } from '../core/keys';
import { activateSeed, catchUpSeed, failSeed, finalizeSeed, planSeed, seedRange, validateSeed, type SeedDeps, type SeedRun } from '../replica/seeding';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { createPair, waitForWatermark } from '../replica/pairs';
import { sleep } from '../replica/concurrency';
import type { ObjectStore } from '../replica/ports';
import { writeBackup } from '../source/backup';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, newPairId, recover, SourceModel } from './helpers';

const MiB = 1024 * 1024;

const pattern = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
};

function deps(store?: ObjectStore): SeedDeps {
  const c = cloud();
  return { store: store ?? c.store, index: c.index, sourceStore: (bucket) => (bucket === c.bucket && store ? store : new S3ObjectStore(bucket)) };
}

/** The seed state machine's order: validate, plan, ranges (each retried), finalize, catch up, activate; a failure → fail. */
async function runSeed(d: SeedDeps, run: SeedRun, rangeAttempts = 3): Promise<{ firstRpSeq: number; skipped: number }> {
  try {
    await validateSeed(d, run);
    const plan = await planSeed(d, run);
    let skipped = 0;
    for (const item of plan.items) {
      for (let attempt = 1; ; attempt++) {
        try {
          if ((await seedRange(d, item)).skipped) skipped++;
          break;
        } catch (err) {
          if (attempt >= rangeAttempts || err instanceof BackupError) throw err;
        }
      }
    }
    const fin = await finalizeSeed(d, { ...run, ranges: plan.ranges });
    for (let i = 0; !(await catchUpSeed(d, fin)).caughtUp; i++) {
      if (i > 600) throw new Error('journal never reached the first RP');
      await sleep(100);
    }
    await activateSeed(d, fin);
    return { firstRpSeq: fin.firstRpSeq, skipped };
  } catch (err) {
    await failSeed(d, { ...run, reason: (err as Error).message });
    throw err;
  }
}

async function pairRun(pairId: string): Promise<SeedRun> {
  const pair = await cloud().index.getPair(pairId);
  return { pairId, seedId: pair!.seed!.seedId };
}

describe('seeding from a livesync backup', () => {
  test('a backup taken while writes go on, then the journal: the first RP and the latest RP are exact', async () => {
    const c = cloud();
    const pairId = newPairId('seed');
    const disks = [{ name: 'os', sizeBytes: 24 * MiB }, { name: 'data', sizeBytes: 8 * MiB }];
    const manifestKey = `backups/${pairId}/b1/manifest.json`;
    await createPair(c.index, { pairId, disks, backup: `s3://${c.bucket}/${manifestKey}`, ccrpIntervalMs: 100 });
    expect((await c.index.getPair(pairId))!.state).toBe('CONFIGURED');

    // The source: writes before the backup (journalled while CONFIGURED: applied, no RP).
    const model = new SourceModel(disks);
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
    const write = async (disk: string, offset: number, data: Buffer): Promise<void> => {
      model.write(disk, offset, data);
      await w.write(disk, offset, data);
    };
    await write('os', 0, pattern(3 * MiB, 1));
    await write('data', 5 * MiB, pattern(MiB, 2));
    await w.flush();
    let during = 0;
    const backup = await writeBackup({
      store: c.store,
      manifestKey,
      pairId,
      backupId: 'b1',
      disks: disks.map((d) => ({
        name: d.name,
        sizeBytes: d.sizeBytes,
        // Writes land between the backup's reads: the backup is fuzzy, the journal fixes it.
        read: async (offset, length) => {
          await write('os', CHUNK_BYTES + ((during * 7) % 64) * BLOCK_SIZE, pattern(2 * BLOCK_SIZE, 100 + during));
          // Some chunks are written right as they are read (the others stay zero).
          if ((offset / CHUNK_BYTES) % 3 === 0) await write(d.name, offset, pattern(BLOCK_SIZE, 200 + during));
          during++;
          return Buffer.from(model.disks.get(d.name)!.subarray(offset, offset + length));
        },
      })),
      startSeq: async () => (await w.flush(), w.nextSeq),
      endSeq: async () => w.flush(),
    });
    model.snapshot(backup.manifest.endSeq);
    expect(backup.zeroChunks).toBeGreaterThan(0);
    expect(backup.manifest.endSeq).toBeGreaterThanOrEqual(backup.manifest.startSeq);
    expect(await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000))).toEqual([]);

    // Writes go on while seeding runs.
    const run = await pairRun(pairId);
    const seeding = runSeed(deps(), run);
    await write('data', 0, pattern(2 * MiB, 3));
    const { firstRpSeq } = await seeding;
    expect(firstRpSeq).toBe(backup.manifest.endSeq);
    const last = await w.flush({ rp: true });
    await waitForWatermark(c.index, pairId, last, 60_000);

    const pair = (await c.index.getPair(pairId))!;
    expect(pair.state).toBe('REPLICATING');
    expect(pair.seed).toMatchObject({ status: 'DONE', rangesDone: pair.seed!.rangesTotal, bytesDone: backup.manifest.disks.reduce((n, d) => n + d.chunks.length, 0) * CHUNK_BYTES });
    const rps = await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000));
    expect(rps[0]).toMatchObject({ seq: firstRpSeq, type: 'CRASH' });
    expect(rps.some((r) => r.seq < firstRpSeq)).toBe(false);
    for (const [seq, want] of [[firstRpSeq, model.atSeq.get(firstRpSeq)!], [last, model.disks]] as const) {
      const got = await recover(c, pairId, seq);
      for (const d of disks) expect({ seq, disk: d.name, diff: firstDifference(got.get(d.name)!, want.get(d.name)!) }).toEqual({ seq, disk: d.name, diff: undefined });
    }
  });
});
