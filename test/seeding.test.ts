// Seeding a pair from a backup in S3: a livesync backup taken while writes go on, and a
// raw image; refusal of bad backups before anything is written; a range that dies
// mid-way and is retried. The steps run in the order the seed state machine runs them.

import { BLOCK_SIZE } from '../core/batch-format';
import { CHUNK_BYTES } from '../core/chunk-format';
import { BackupError } from '../core/errors';
import { baseManifestKey, seedRangeKey } from '../core/keys';
import { activateSeed, catchUpSeed, failSeed, finalizeSeed, planSeed, rangeList, SeedIncompleteError, seedRange, validateSeed, type SeedDeps, type SeedRun } from '../replica/seeding';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { createPair, waitForWatermark } from '../replica/pairs';
import { sleep } from '../replica/concurrency';
import type { ObjectStore } from '../replica/ports';
import { writeBackup } from '../source/backup';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, fuzzyBackupDisks, newPairId, pattern, recover, SourceModel } from './helpers';

const MiB = 1024 * 1024;


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
    const backup = await writeBackup({
      store: c.store,
      manifestKey,
      pairId,
      backupId: 'b1',
      disks: fuzzyBackupDisks(disks, model, write),
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

describe('activation', () => {
  test('a batch applied between its read and its commit makes it plan again: the newest state gets its RP', async () => {
    const c = cloud();
    const pairId = newPairId('act');
    const disks = [{ name: 'disk0', sizeBytes: 8 * MiB }];
    const key = `backups/${pairId}/disk0.img`;
    await c.store.put(key, pattern(8 * MiB, 11));
    await createPair(c.index, { pairId, disks, backup: `s3://${c.bucket}/${key}`, ccrpIntervalMs: 3_600_000 });
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0 });
    await w.write('disk0', 0, pattern(MiB, 12));
    await waitForWatermark(c.index, pairId, await w.flush(), 60_000);

    // The first commit comes after another batch was applied (no RP timer runs while seeding).
    const d = deps();
    let raced = false;
    const index = d.index;
    d.index = Object.assign(Object.create(index), {
      activateSeed: async (...args: Parameters<typeof index.activateSeed>) => {
        if (!raced) {
          raced = true;
          await w.write('disk0', MiB, pattern(MiB, 13));
          await waitForWatermark(c.index, pairId, await w.flush(), 60_000);
        }
        return index.activateSeed(...args);
      },
    });
    await runSeed(d, await pairRun(pairId));
    expect(raced).toBe(true);
    const pair = (await c.index.getPair(pairId))!;
    const rps = await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000));
    expect(rps[rps.length - 1].seq).toBe(pair.watermark);
  });
});

describe('seeding from a raw image', () => {
  test('one raw object (zero chunks skipped), a range killed mid-way and retried, then the journal', async () => {
    const c = cloud();
    const pairId = newPairId('raw');
    const size = 40 * MiB;
    const image = Buffer.alloc(size);
    pattern(5 * MiB, 7).copy(image, 2 * MiB);
    pattern(BLOCK_SIZE, 8).copy(image, size - BLOCK_SIZE);
    const key = `backups/${pairId}/disk0.img`;
    await c.store.put(key, image);
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }], backup: `s3://${c.bucket}/${key}`, ccrpIntervalMs: 100 });

    // The seeding "Lambda" dies after storing 2 chunks of its first range: the retry completes it.
    let puts = 0;
    const dying: ObjectStore = {
      put: async (k, b) => {
        if (k.includes('/base/chunks/') && ++puts === 3) throw new Error('Lambda killed (timeout)');
        return c.store.put(k, b);
      },
      get: c.store.get.bind(c.store),
      upload: c.store.upload.bind(c.store),
      size: c.store.size.bind(c.store),
    };
    const run = await pairRun(pairId);
    const { firstRpSeq } = await runSeed(deps(dying), run);
    expect(firstRpSeq).toBe(0);
    expect(puts).toBeGreaterThan(3);
    const pair = (await c.index.getPair(pairId))!;
    expect(pair.state).toBe('REPLICATING');
    expect((await recover(c, pairId, 0)).get('disk0')!.equals(image)).toBe(true);
    // Only the chunks holding data were stored.
    const base = JSON.parse((await c.store.get(pair.base!.key)).toString('utf8')) as { disks: { chunks: unknown[] }[] };
    expect(base.disks[0].chunks.length).toBe(3);

    // Replication goes on over the base.
    const w = new BatchWriter({ pairId, disks: pair.disks, store: c.store, maxBatchAgeMs: 0 });
    await w.write('disk0', 3 * MiB, pattern(MiB, 9));
    pattern(MiB, 9).copy(image, 3 * MiB);
    const seq = await w.flush({ rp: true });
    await waitForWatermark(c.index, pairId, seq, 60_000);
    expect(firstDifference((await recover(c, pairId, seq)).get('disk0')!, image)).toBeUndefined();

    // A finished seed is not run again: the pair is REPLICATING now.
    await expect(planSeed(deps(), run)).rejects.toThrow(`pair '${pairId}' is REPLICATING, not SEEDING`);
  });
});

describe('bad backups are refused before anything is written', () => {
  const cases: [string, (c: ReturnType<typeof cloud>, pairId: string, dir: string) => Promise<string>, RegExp][] = [
    ['a missing chunk', async (c, pairId, dir) => {
      const res = await backupOf(c, pairId, dir);
      await c.store.put(`${dir}/manifest.json`, Buffer.from(JSON.stringify({ ...res, disks: [{ ...res.disks[0], chunks: [...res.disks[0].chunks, { index: 3, sha256: 'f'.repeat(64), crc32c: 1, length: CHUNK_BYTES }] }] })));
      return `${dir}/manifest.json`;
    }, /MISSING_CHUNK: chunk 3 of disk 'disk0' \(offset 12582912\) is missing/],
    ['a disk of the wrong size', async (c, pairId, dir) => {
      const res = await backupOf(c, pairId, dir);
      await c.store.put(`${dir}/manifest.json`, Buffer.from(JSON.stringify({ ...res, disks: [{ ...res.disks[0], sizeBytes: 32 * MiB, chunks: [] }] })));
      return `${dir}/manifest.json`;
    }, /MISMATCH: disk 'disk0' is 33554432 bytes, the pair's is 16777216/],
    ['another pair\'s backup', async (c, _pairId, dir) => (await backupOf(c, 'someone-else', dir), `${dir}/manifest.json`), /MISMATCH: is a backup of pair 'someone-else'/],
    ['a truncated manifest', async (c, pairId, dir) => {
      await backupOf(c, pairId, dir);
      const text = (await c.store.get(`${dir}/manifest.json`)).toString('utf8');
      await c.store.put(`${dir}/manifest.json`, Buffer.from(text.slice(0, text.length / 2)));
      return `${dir}/manifest.json`;
    }, /MALFORMED: not JSON/],
    ['a raw image of the wrong size', async (c, _pairId, dir) => (await c.store.put(`${dir}/disk.img`, Buffer.alloc(MiB)), `${dir}/disk.img`), /MISMATCH: disk 'disk0' is 1048576 bytes/],
    // Where a seed may read: another pair's prefix is refused before anything is read.
    ['its own backup, stored in another pair\'s prefix', async (c, pairId) => {
      const dir = `pairs/other-${pairId}/backups/b`;
      await backupOf(c, pairId, dir);
      return `${dir}/manifest.json`;
    }, /FORBIDDEN: pair '[^']+' may not seed from this key \(it is pair 'other-[^']+'s\)/],
    ...(['other', 'own'] as const).map((whose): (typeof cases)[number] => [
      `a raw-image manifest naming a part in ${whose === 'own' ? 'its own journal' : 'another pair\'s journal'} (refused before any part is read)`,
      async (c, pairId, dir) => {
        const part = `pairs/${whose === 'own' ? pairId : `other-${pairId}`}/journal/${'1'.padStart(20, '0')}-0123456789abcdef.batch`; // not even there: no HEAD is made
        const manifest = { format: 'livesync-raw-image', version: 1, disks: [{ name: 'disk0', sizeBytes: 16 * MiB, parts: [{ key: part, bytes: 16 * MiB }] }] };
        await c.store.put(`${dir}/raw.json`, Buffer.from(JSON.stringify(manifest)));
        return `${dir}/raw.json`;
      },
      /\/journal\/0+1-0123456789abcdef\.batch: FORBIDDEN: pair '[^']+' may not seed from this key \((it is pair 'other-|pairs\/[^/]+\/journal\/ is the replication's own)/,
    ]),
  ];

  test.each(cases)('%s', async (_name, make, message) => {
    const c = cloud();
    const pairId = newPairId('bad');
    const dir = `backups/${pairId}`;
    const key = await make(c, pairId, dir);
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: 16 * MiB }], backup: `s3://${c.bucket}/${key}` });
    const run = await pairRun(pairId);
    await expect(runSeed(deps(), run)).rejects.toThrow(message);
    const pair = (await c.index.getPair(pairId))!;
    expect(pair).toMatchObject({ state: 'SEED_FAILED', seed: { status: 'FAILED' } });
    expect(pair.seed!.reason).toMatch(message);
    expect(pair.base).toBeUndefined();
    expect(await c.store.size(seedRangeKey(pairId, run.seedId, 0))).toBeUndefined();
    expect(await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000))).toEqual([]);
  });

  test('a chunk whose bytes rotted fails its range (named), and the pair offers nothing', async () => {
    const c = cloud();
    const pairId = newPairId('rot');
    const dir = `backups/${pairId}`;
    const m = await backupOf(c, pairId, dir);
    const chunkKey = `${dir}/chunks/${m.disks[0].chunks[0].sha256}`;
    const body = await c.store.get(chunkKey);
    body[body.length - 1] ^= 0xff;
    await c.store.put(chunkKey, body);
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: 16 * MiB }], backup: `s3://${c.bucket}/${dir}/manifest.json` });
    await expect(runSeed(deps(), await pairRun(pairId))).rejects.toThrow(/CHECKSUM_MISMATCH/);
    const pair = (await c.index.getPair(pairId))!;
    expect(pair.state).toBe('SEED_FAILED');
    expect(pair.seed!.reason).toContain(chunkKey);
    expect(pair.base).toBeUndefined();
    expect(await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000))).toEqual([]);
  });
});

/** A small valid backup of a 16 MiB disk with data in chunks 0 and 2. */
async function backupOf(c: ReturnType<typeof cloud>, pairId: string, dir: string) {
  const disk = Buffer.alloc(16 * MiB);
  pattern(MiB, 1).copy(disk, 0);
  pattern(MiB, 2).copy(disk, 9 * MiB);
  const res = await writeBackup({
    store: c.store,
    manifestKey: `${dir}/manifest.json`,
    pairId,
    backupId: 'b',
    disks: [{ name: 'disk0', sizeBytes: disk.length, read: async (o, n) => disk.subarray(o, o + n) }],
    startSeq: async () => 1,
    endSeq: async () => 0,
  });
  return res.manifest;
}

describe('waiting for what the agent provides', () => {
  test('validate waits for a backup in the pair\'s own prefix, and catch-up for the journal, each up to the limit', async () => {
    const c = cloud();
    const pairId = newPairId('wait');
    const key = `pairs/${pairId}/backups/seed/manifest.json`;
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: 16 * MiB }], backup: `s3://${c.bucket}/${key}` });
    const run = await pairRun(pairId);
    let now = 1_000_000;
    const d: SeedDeps = { ...deps(), now: () => now, waitTimeoutMs: 60_000 };
    // Not there yet: ask again later (the state machine's WaitForBackup loop); the pair stays CONFIGURED.
    expect(await validateSeed(d, run)).toEqual({ ...run, ready: false, backupWaitSinceMs: now });
    now += 30_000;
    expect(await validateSeed(d, { ...run, backupWaitSinceMs: 1_000_000 })).toMatchObject({ ready: false, backupWaitSinceMs: 1_000_000 });
    expect((await c.index.getPair(pairId))!.state).toBe('CONFIGURED');
    now += 31_000;
    await expect(validateSeed(d, { ...run, backupWaitSinceMs: 1_000_000 })).rejects.toThrow(`backup s3://${c.bucket}/${key}: MISSING_CHUNK: no backup appeared within 61 s`);

    // The backup arrives; its end seq is beyond anything journalled: catch-up waits, then gives up.
    await writeBackup({ store: c.store, manifestKey: key, pairId, backupId: 'seed', disks: [{ name: 'disk0', sizeBytes: 16 * MiB, read: async (_o, n) => Buffer.alloc(n) }], startSeq: async () => 1, endSeq: async () => 5 });
    expect(await validateSeed(d, run)).toEqual({ ...run, ready: true, kind: 'backup' });
    const plan = await planSeed(d, run);
    const fin = await finalizeSeed(d, { ...run, ranges: plan.ranges });
    expect(fin.firstRpSeq).toBe(5);
    const first = await catchUpSeed(d, fin);
    expect(first).toMatchObject({ caughtUp: false, watermark: 0, catchUpSinceMs: now });
    now += 61_000;
    await expect(catchUpSeed(d, first)).rejects.toThrow(`pair '${pairId}': the journal stayed at seq 0, below the backup's end seq 5, for 61 s (is the agent running and uploading?)`);
  });
});

describe('finalize checks every range\'s done marker', () => {
  test('the ranges without one are named, runs collapsed', () => {
    expect(rangeList([0])).toBe('0');
    expect(rangeList([0, 1, 2, 3, 4, 5, 9, 12, 13, 14, 15])).toBe('0-5, 9, 12-15');
    expect(rangeList(Array.from({ length: 50 }, (_, i) => 2 * i)).split(', ')).toHaveLength(41);
  });

  test('a run whose ranges were not all done fails at finalize, naming them; nothing is offered', async () => {
    const c = cloud();
    const pairId = newPairId('undone');
    const dir = `pairs/${pairId}/backups/b`;
    const image = pattern(72 * MiB, 51); // 18 chunks: ranges 0 and 1
    await writeBackup({ store: c.store, manifestKey: `${dir}/manifest.json`, pairId, backupId: 'b', disks: [{ name: 'disk0', sizeBytes: image.length, read: async (o, n) => image.subarray(o, o + n) }], startSeq: async () => 1, endSeq: async () => 0 });
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: image.length }], backup: `s3://${c.bucket}/${dir}/manifest.json` });
    const run = await pairRun(pairId);
    const d = deps();
    await validateSeed(d, run);
    const plan = await planSeed(d, run);
    expect(plan.ranges).toBe(2);
    await seedRange(d, plan.items[1]); // range 0 never ran, whatever the Map said
    const err = await finalizeSeed(d, { ...run, ranges: plan.ranges }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SeedIncompleteError);
    expect(err).toMatchObject({ pairId, seedId: run.seedId, missing: [0], ranges: 2, message: `seed ${run.seedId} of pair '${pairId}': 1 of 2 ranges have no done marker: 0` });
    const pair = (await c.index.getPair(pairId))!;
    expect(pair.base).toBeUndefined();
    expect(await c.store.size(baseManifestKey(pairId, run.seedId))).toBeUndefined();
  });
});
