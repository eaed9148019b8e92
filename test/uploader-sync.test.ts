// The uploader makes a spooled batch durable before the journal can hold it: a batch spooled
// without a sync (the usual cut) and uploaded, then lost from the spool in a host crash before
// its seq is recorded as used, would have its seq cut again with other data.

import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { Spool } from '../agent/spool';
import { Uploader } from '../agent/uploader';
import { encodeBatch } from '../core/batch-format';

const batch = (seq: number): Buffer =>
  encodeBatch({ pairId: 'p', seq, prevSeq: seq - 1, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['d'] }, [{ disk: 0, blockIndex: seq, data: Buffer.alloc(8192, seq) }]);

test('every batch is synced before its PUT, not later', async () => {
  const spool = await Spool.open(await mkdtemp(join(tmpdir(), 'livesync-upload-')), 2 ** 20);
  for (let seq = 1; seq <= 3; seq++) await spool.add(seq, batch(seq), { durable: false });
  expect(spool.unsyncedCount).toBe(3);
  const store = new MemoryObjectStore();
  const seen: number[] = [];
  const put = store.put.bind(store);
  store.put = async (key, body, opts) => {
    seen.push(spool.unsyncedCount); // batches above the one being PUT may still be unsynced
    return put(key, body, opts);
  };
  const uploader = new Uploader({ pairId: 'p', spool, store, maxInFlight: 1 });
  uploader.kick();
  await uploader.idle(5000);
  expect(store.objects.size).toBe(3);
  expect(seen).toEqual([2, 1, 0]);
});
