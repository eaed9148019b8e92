// Integrity checks of the read path that nothing else exercises on their own: a base chunk
// whose data no longer hashes to its name, a batch object replaced by another valid batch
// (its trailer no longer matches the registered seq and CRC), and expired ACRPs, which
// must not be listed although TTL has not deleted them yet. Each case is built so that only
// the check it is about can catch it: without that check, recovery returns wrong bytes (or
// the listing shows an expired RP) and the test fails.

import { randomBytes } from 'node:crypto';
import { UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { batchSk, documentClient, pairPk } from '../adapters/dynamo-table';
import { MemoryHistory } from '../adapters/memory-history';
import { decodeBatch, EXTENT_FLAGS } from '../core/batch-format';
import { crc32c } from '../core/crc32c';
import { compactOnce } from '../replica/compactor';
import { forgeCrc32c } from './forge-crc';
import { seedLauncherFromEnv } from '../adapters/sfn-seed-launcher';
import { CHUNK_BYTES } from '../core/chunk-format';
import { CorruptExtentError } from '../core/errors';
import { baseChunkKey } from '../core/keys';
import { seedRunEnded } from '../core/model';
import { sleep } from '../replica/concurrency';
import { createPair, startSeed, waitForWatermark } from '../replica/pairs';
import { writeBackup } from '../source/backup';
import { BatchWriter } from '../source/batch-writer';
import { cloud, eventually, firstDifference, newPairId, nowSec, recover, runCli } from './helpers';

const MiB = 1024 * 1024;

/** The BATCH item as a batch applied before SHA-256s were recorded has it. */
async function unrecordSha256(pairId: string, seq: number): Promise<void> {
  const doc = documentClient();
  await doc.send(new UpdateCommand({ TableName: process.env.LIVESYNC_TABLE!, Key: { pk: pairPk(pairId), sk: batchSk(seq) }, UpdateExpression: 'REMOVE sha256' }));
  doc.destroy();
}

describe('recovery refuses stored data that is not what was registered', () => {
  test('a base chunk whose data does not hash to its name (header and CRC intact) stops recovery, naming the chunk', async () => {
    const c = cloud();
    const pairId = newPairId('basesha');
    // Random data: zstd cannot shrink it, so the chunk stores it raw and a flipped payload
    // byte still "decompresses"; the chunk header (and its CRC) is untouched. Only the
    // SHA-256 of the data can tell.
    const image = randomBytes(CHUNK_BYTES);
    const manifestKey = `pairs/${pairId}/backups/b/manifest.json`;
    const backup = await writeBackup({
      store: c.store,
      manifestKey,
      pairId,
      backupId: 'b',
      disks: [{ name: 'sda', sizeBytes: image.length, read: async (o, n) => image.subarray(o, o + n) }],
      startSeq: async () => 1,
      endSeq: async () => 0,
    });
    await createPair(c.index, { pairId, disks: [{ name: 'sda', sizeBytes: image.length }], backup: `s3://${c.bucket}/${manifestKey}` });
    await startSeed(c.index, seedLauncherFromEnv(), pairId);
    for (const t0 = Date.now(); !seedRunEnded((await c.index.getPair(pairId))!); await sleep(200)) {
      if (Date.now() - t0 > 120_000) throw new Error(`pair '${pairId}' not seeded after 120 s`);
    }
    const pair = (await c.index.getPair(pairId))!;
    expect(pair.state).toBe('REPLICATING');
    const [rp] = await c.index.listRecoveryPoints(pairId, nowSec());
    expect(firstDifference((await recover(c, pairId, rp.seq)).get('sda')!, image)).toBeUndefined();

    const key = baseChunkKey(pairId, backup.manifest.disks[0].chunks[0].sha256);
    const body = Buffer.from(await c.store.get(key));
    expect(body.length).toBeGreaterThan(CHUNK_BYTES); // stored raw
    body[body.length - 1000] ^= 0x01; // in the payload, far from the header
    await c.store.put(key, body);
    await expect(recover(c, pairId, rp.seq)).rejects.toThrow(CorruptExtentError);
    await expect(recover(c, pairId, rp.seq)).rejects.toThrow(new RegExp(`${key}.*SHA-256`));
  });

  test.each([
    ['seq', 'a valid batch of the next seq'],
    ['crc', 'another valid batch of the same seq'],
  ] as const)('trailer %s: a batch object replaced by %s (same size, every inner checksum valid) stops recovery', async (which, _what) => {
    const c = cloud();
    const pairId = newPairId(`trailer-${which}`);
    const disks = [{ name: 'd', sizeBytes: 4 * MiB }];
    await createPair(c.index, { pairId, disks });
    // Random (incompressible) writes of the same length at the same offset: every batch has
    // the same layout and size, so the replacement's index and extents read and verify.
    const keys: string[] = [];
    const writes = [randomBytes(256 * 1024), randomBytes(256 * 1024)];
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB, onUploaded: (b) => keys.push(b.key) });
    for (const data of writes) {
      await w.write('d', MiB, data);
      await w.flush({ rp: true });
    }
    await w.close();
    await waitForWatermark(c.index, pairId, 2, 60_000);
    const first = await c.store.get(keys[0]);
    expect(firstDifference((await recover(c, pairId, 1)).get('d')!.subarray(MiB, MiB + writes[0].length), writes[0])).toBeUndefined();

    let replacement: Buffer;
    if (which === 'seq') {
      replacement = await c.store.get(keys[1]); // seq 2's object under seq 1's key
    } else {
      // Seq 1 of the same pair with other data, never uploaded: another source's batch.
      const other: Buffer[] = [];
      const w2 = new BatchWriter({ pairId, disks, store: { ...c.store, put: async (_k: string, b: Buffer) => void other.push(b) } as typeof c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
      await w2.write('d', MiB, randomBytes(256 * 1024));
      await w2.flush({ rp: true });
      await w2.close();
      replacement = other[0];
    }
    expect(replacement.length).toBe(first.length);
    // Overwritten after apply (a re-upload by another writer, tampering): no event re-applies
    // it, and recovery reads the registered key.
    await c.store.put(keys[0], replacement);
    // Its event finds seq 1 applied and refuses the object (quarantined, not blocking).
    await eventually('the replacement refused', async () => ((await c.index.listQuarantine(pairId)).some((q) => q.key === keys[0]) ? true : undefined));
    expect(await c.index.getPair(pairId)).toMatchObject({ state: 'REPLICATING', watermark: 2 });
    await expect(recover(c, pairId, 1)).rejects.toThrow(CorruptExtentError);
    // Apply recorded the batch's SHA-256: that check comes first. (The trailer's guards the
    // batches applied before SHA-256s were recorded: the next test removes the record's.)
    await expect(recover(c, pairId, 1)).rejects.toThrow(new RegExp(`${keys[0]}: SHA-256 [0-9a-f]{64} of batch 1 is not the [0-9a-f]{64} recorded when it was applied`));
    await unrecordSha256(pairId, 1);
    await expect(recover(c, pairId, 1)).rejects.toThrow(/does not match the registered batch/);
  });

  test('a batch replaced after apply by a forgery whose every CRC matches (trailer, index, extents) is caught by the SHA-256 apply recorded: recovery and compaction refuse it, naming the object', async () => {
    const c = cloud();
    const pairId = newPairId('forged');
    const disks = [{ name: 'd', sizeBytes: 4 * MiB }];
    await createPair(c.index, { pairId, disks });
    const keys: string[] = [];
    const data = randomBytes(256 * 1024); // incompressible: stored raw
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB, onUploaded: (b) => keys.push(b.key) });
    await w.write('d', MiB, data);
    await w.flush({ rp: true });
    await w.write('d', 2 * MiB, randomBytes(64 * 1024));
    await w.flush({ rp: true });
    await w.close();
    await waitForWatermark(c.index, pairId, 2, 60_000);
    const original = await c.store.get(keys[0]);
    const batch = decodeBatch(original, keys[0]);
    expect(batch.extents).toHaveLength(1);
    const e = batch.extents[0];
    expect(e.flags & EXTENT_FLAGS.ZSTD).toBe(0);
    // The forger's payload: the first 4 KiB wiped, 4 bytes further on set so that the
    // extent's CRC-32C is unchanged; so the index, its CRC and the object CRC are too.
    const forged = Buffer.from(original);
    const payload = forged.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength);
    payload.fill(0xee, 0, 4096);
    forgeCrc32c(payload, 8192, crc32c(original.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength)));
    expect(forged.equals(original)).toBe(false);
    expect(decodeBatch(forged, 'forged').trailer.objectCrc).toBe(batch.trailer.objectCrc); // every CRC checks out
    await c.store.put(keys[0], forged); // an overwrite the bucket policy refuses in AWS; the local S3 has no policy
    // Its event: the same seq and CRC as the applied batch, other bytes: refused, not a duplicate.
    await eventually('the forgery refused', async () => ((await c.index.listQuarantine(pairId)).find((q) => q.key === keys[0])));
    expect((await c.index.listQuarantine(pairId)).find((q) => q.key === keys[0])).toMatchObject({ code: 'REPLAY' });
    await expect(recover(c, pairId, 1)).rejects.toThrow(new RegExp(`${keys[0]}: SHA-256 .* of batch 1 is not the .* recorded when it was applied: the object was replaced`));
    await expect(recover(c, pairId, 2)).rejects.toThrow(CorruptExtentError);
    // Compaction reads it whole to fold it, and refuses it too: nothing is published.
    const history = new MemoryHistory();
    await expect(compactOnce({ store: c.store, index: c.index, history }, pairId, { holder: 'test' })).rejects.toThrow(new RegExp(`${keys[0]}: SHA-256`));
    expect((await history.getHistory(pairId)).version).toBe(0);
  });
});

describe('expired ACRPs are not listed, although TTL has not deleted them yet', () => {
  test('listRecoveryPoints(APP) and `rp list --app`', async () => {
    const c = cloud();
    const pairId = newPairId('acrpttl');
    const disks = [{ name: 'd', sizeBytes: MiB }];
    // Long enough for one `rp list` to run before it expires (a CLI process starts in 1-3 s).
    await createPair(c.index, { pairId, disks, retention: { all: [{ windowSec: 8, spacingSec: 0 }], app: [] } });
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
    await w.write('d', 0, randomBytes(8192));
    const seq = w.cut({ appTag: 'app=db' });
    await w.close();
    await waitForWatermark(c.index, pairId, seq!, 30_000);
    const acrps = await c.index.listRecoveryPoints(pairId, nowSec(), 'APP');
    expect(acrps.map((r) => [r.seq, r.type, r.tag])).toEqual([[seq, 'APP', 'app=db']]);
    const expiresAtSec = acrps[0].expiresAtSec!;
    expect(await c.index.listRecoveryPoints(pairId, expiresAtSec - 1, 'APP')).toHaveLength(1);
    expect(await c.index.listRecoveryPoints(pairId, expiresAtSec, 'APP')).toEqual([]);
    const live = await runCli('rp', 'list', '--pair', pairId, '--app');
    expect({ code: live.code, stdout: live.stdout }).toEqual({ code: 0, stdout: expect.stringMatching(new RegExp(`^${seq}\tAPP\t.*app=db`)) });
    // Past its expiry for the CLI's clock too.
    await sleep(Math.max(0, (expiresAtSec + 1) * 1000 - Date.now()));
    const expired = await runCli('rp', 'list', '--pair', pairId, '--app');
    expect({ code: expired.code, stdout: expired.stdout }).toEqual({ code: 0, stdout: '' });
  });
});
