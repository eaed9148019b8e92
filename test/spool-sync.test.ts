// The spool's two kinds of add: durable (synced before it shows, with every earlier batch
// added without a sync), and not (written and renamed only, made durable by syncThrough
// before the FLUSH that needs it is answered); and the upload's check of a body read back.
// fdatasync/fsync calls are counted on the FileHandle prototype: what the spool asks of the
// file system is what makes a batch survive a host crash.

import { open, readFile, readdir, truncate, writeFile } from 'node:fs/promises';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Spool, SpoolCorruptError } from '../agent/spool';
import { encodeBatch } from '../core/batch-format';

const MiB = 1024 * 1024;
const batch = (seq: number): Buffer =>
  encodeBatch({ pairId: 'p', seq, prevSeq: seq - 1, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['d'] }, [{ disk: 0, blockIndex: seq, data: Buffer.alloc(8192, seq) }]);
const name = (seq: number): string => `${String(seq).padStart(20, '0')}.batch`;

/** Counts fdatasync (files) and fsync (the directory) calls made through FileHandle. */
async function syncCounter(): Promise<{ datasyncs: () => number; syncs: () => number; restore: () => void }> {
  const probe = await open(__filename, 'r');
  const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void>; sync: () => Promise<void> };
  await probe.close();
  const datasync = jest.spyOn(proto, 'datasync');
  const sync = jest.spyOn(proto, 'sync');
  return {
    datasyncs: () => datasync.mock.calls.length,
    syncs: () => sync.mock.calls.length,
    restore: () => {
      datasync.mockRestore();
      sync.mockRestore();
    },
  };
}

describe('Spool: durable and deferred adds', () => {
  let counter: Awaited<ReturnType<typeof syncCounter>>;
  beforeEach(async () => {
    counter = await syncCounter();
  });
  afterEach(() => counter.restore());

  test('durable (the default): data synced before the rename, the directory after', async () => {
    const spool = await Spool.open(await mkdtemp(join(tmpdir(), 'livesync-spool-')), MiB);
    const before = [counter.datasyncs(), counter.syncs()];
    await spool.add(1, batch(1));
    expect([counter.datasyncs() - before[0], counter.syncs() - before[1]]).toEqual([1, 1]);
    expect(spool.unsyncedCount).toBe(0);
    await spool.syncThrough(1); // nothing left: no call at all
    expect([counter.datasyncs() - before[0], counter.syncs() - before[1]]).toEqual([1, 1]);
  });

  test('durable false: visible and readable with no sync; syncThrough syncs exactly the batches up to its seq, then the directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const spool = await Spool.open(dir, MiB, { memoryBytes: 0 }); // every read comes from the file
    const d0 = counter.datasyncs();
    const s0 = counter.syncs();
    for (let seq = 1; seq <= 3; seq++) await spool.add(seq, batch(seq), { durable: false });
    expect(counter.datasyncs() - d0).toBe(0);
    expect(counter.syncs() - s0).toBe(0);
    expect(spool.seqs()).toEqual([1, 2, 3]);
    expect((await readdir(dir)).sort()).toEqual([name(1), name(2), name(3)]);
    expect((await spool.read(2)).equals(batch(2))).toBe(true);
    expect(spool.unsyncedCount).toBe(3);

    await spool.syncThrough(2);
    expect(counter.datasyncs() - d0).toBe(2);
    expect(counter.syncs() - s0).toBe(1);
    expect(spool.unsyncedCount).toBe(1);
    await spool.syncThrough(2); // already durable: nothing to do
    expect(counter.datasyncs() - d0).toBe(2);
    expect(counter.syncs() - s0).toBe(1);

    // A durable add also makes the earlier deferred ones durable (a FLUSH covers all before it).
    await spool.add(4, batch(4));
    expect(counter.datasyncs() - d0).toBe(4); // its own, and seq 3's
    expect(counter.syncs() - s0).toBe(2);
    expect(spool.unsyncedCount).toBe(0);
  });

  test('syncThrough waits for adds called before it, and skips batches uploaded and removed meanwhile', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const spool = await Spool.open(dir, MiB);
    const d0 = counter.datasyncs();
    const adds = [1, 2, 3].map((seq) => spool.add(seq, batch(seq), { durable: false }));
    await spool.syncThrough(3); // not awaited the adds: it does
    await Promise.all(adds);
    expect(counter.datasyncs() - d0).toBe(3);
    expect(spool.unsyncedCount).toBe(0);

    await spool.add(5, batch(5), { durable: false });
    await spool.remove(5); // uploaded before any FLUSH asked for it
    await spool.add(6, batch(6), { durable: false });
    await spool.syncThrough(6);
    expect(counter.datasyncs() - d0).toBe(4); // seq 6 only
    expect(spool.seqs()).toEqual([1, 2, 3, 6]);
  });

  test('batches appear in call order whatever their durability, and reopen as written', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const spool = await Spool.open(dir, MiB);
    // What was visible when each add resolved: every seq up to it, in order.
    const seen = new Map<number, number[]>();
    await Promise.all([1, 2, 3, 4].map((seq) => spool.add(seq, batch(seq), { durable: seq % 2 === 0 }).then(() => seen.set(seq, spool.seqs()))));
    for (const [seq, visible] of seen) expect(visible.slice(0, seq)).toEqual([1, 2, 3, 4].slice(0, seq));
    const again = await Spool.open(dir, MiB);
    for (const seq of [1, 2, 3, 4]) await again.check(seq);
    expect(again.seqs()).toEqual([1, 2, 3, 4]);
  });
});

describe('Spool: the upload reads back with the whole-object checksum', () => {
  test('a body read back from its file is refused when a byte flipped, when cut short, or when it holds another seq', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-spool-'));
    const spool = await Spool.open(dir, MiB, { memoryBytes: 0 });
    for (let seq = 1; seq <= 4; seq++) await spool.add(seq, batch(seq), { durable: false });
    expect((await spool.read(1)).equals(batch(1))).toBe(true);

    const flipped = await readFile(join(dir, name(2)));
    flipped[200] ^= 0x10; // inside the payload
    await writeFile(join(dir, name(2)), flipped);
    await expect(spool.read(2)).rejects.toThrow(SpoolCorruptError);
    await expect(spool.read(2)).rejects.toThrow(/object checksum/);

    await truncate(join(dir, name(3)), batch(3).length - 100); // torn: the end marker is gone
    await expect(spool.read(3)).rejects.toThrow(SpoolCorruptError);

    await writeFile(join(dir, name(4)), batch(1)); // a whole batch, but not this seq's
    await expect(spool.read(4)).rejects.toThrow(/holds seq 1/);
  });
});
