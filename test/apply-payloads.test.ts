// Apply checks every stored payload of a batch (decoded, its length and CRC-32C against the
// index) in a worker thread, not only the object's checksums. A batch whose object CRC is
// consistent but whose payload is not what its index says (a writer's bug, or a forger who
// recomputed the object CRC) is quarantined naming the extent, and the pair is not advanced.
// Through the real apply path, on the test stack's index.

import { randomBytes } from 'node:crypto';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { EXTENT_FLAGS, decodeBatch } from '../core/batch-format';
import { crc32c } from '../core/crc32c';
import { ApplyService } from '../replica/apply';
import { createPair } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { cloud, newPairId } from './helpers';

const disks = [{ name: 'disk0', sizeBytes: 1024 * 1024 }];

/** One batch of `data` at offset 0, its first extent's payload changed and the object CRC made to match again. */
async function tampered(store: MemoryObjectStore, pairId: string, data: Buffer): Promise<{ key: string; zstd: boolean }> {
  let key = '';
  const writer = new BatchWriter({ pairId, disks, store, maxBatchAgeMs: 0, maxBatchBytes: 1 << 30, onUploaded: (b) => void (key = b.key) });
  await writer.write('disk0', 0, data);
  await writer.flush({ rp: true });
  await writer.close();
  const body = Buffer.from(store.objects.get(key)!);
  const e = decodeBatch(body, key).extents[0];
  body[e.payloadOffset + Math.floor(e.payloadLength / 2)] ^= 0x40;
  body.writeUInt32LE(crc32c(body.subarray(0, body.length - 8)), body.length - 8);
  store.objects.set(key, body);
  return { key, zstd: (e.flags & EXTENT_FLAGS.ZSTD) !== 0 };
}

test.each([
  ['stored as is (random data): its data CRC-32C differs', () => randomBytes(64 * 1024), false],
  ['compressed (a pattern): it no longer decodes to its data', () => Buffer.alloc(64 * 1024, 'livesync '), true],
])('a batch whose payload is not what its index says is quarantined, naming the extent: %s', async (_what, data, zstd) => {
  const { index } = cloud();
  const pairId = newPairId('payload');
  await createPair(index, { pairId, disks });
  const store = new MemoryObjectStore();
  const bad = await tampered(store, pairId, data());
  expect(bad.zstd).toBe(zstd);
  const result = await new ApplyService(store, index).applyObject(bad.key);
  expect(result).toMatchObject({ outcome: 'quarantined', seq: 1 });
  const [q] = await index.listQuarantine(pairId);
  expect(q).toMatchObject({ seq: 1, key: bad.key, code: 'CHECKSUM_MISMATCH' });
  expect(q.reason).toMatch(zstd ? /does not decompress|data checksum/ : /data checksum/);
  expect(JSON.stringify(q)).toContain('extent 0');
  expect((await index.getPair(pairId))!.watermark).toBe(0);
  expect(await index.batchesAfter(pairId, 0, 10)).toEqual([]);
});
