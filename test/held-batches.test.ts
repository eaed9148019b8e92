// Cut batches are held in memory and uploaded from there (agent/spool.ts): they never touch
// the disk when the upload comes first. A crash then loses the ones not uploaded, and may
// come after a PUT landed but before the agent recorded its seq as used. The restart must
// (1) not cut an uploaded seq again (it lists the journal past the watermark), (2) fill a
// lost seq with a resync marker (no hole in the seq stream), and (3) resend the lost writes
// (their dirty marks were never cleared). Checked end to end: the journal holds exactly one
// object per seq, and replaying it in seq order gives the image the guest wrote.

import { cp, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { startAgent, type RunningAgent } from '../agent/agent';
import { NbdClient } from '../bench/nbd-client';
import { BATCH_FLAGS, BLOCK_SIZE, decodeBatch, decodeExtent, EXTENT_FLAGS } from '../core/batch-format';
import { parseJournalKey } from '../core/keys';
import { createPair } from '../replica/pairs';
import { cloud, eventually, firstDifference, newPairId } from './helpers';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 8 * MiB;

/** The disk the journal's batches add up to, replayed in seq order; throws unless there is exactly one object per seq from 1. */
function replay(store: MemoryObjectStore, pairId: string): { disk: Buffer; seqs: number[]; flags: Map<number, number> } {
  const bySeq = new Map<number, Buffer[]>();
  for (const [key, body] of store.objects) {
    const k = parseJournalKey(key);
    if (k?.pair === pairId) bySeq.set(k.seq, [...(bySeq.get(k.seq) ?? []), body]);
  }
  const seqs = [...bySeq.keys()].sort((a, b) => a - b);
  const disk = Buffer.alloc(SIZE);
  const flags = new Map<number, number>();
  seqs.forEach((seq, i) => {
    if (seq !== i + 1) throw new Error(`the journal has no seq ${i + 1} (seqs ${seqs.join(', ')})`);
    const bodies = bySeq.get(seq)!;
    if (bodies.length !== 1) throw new Error(`the journal has ${bodies.length} objects for seq ${seq}`);
    const b = decodeBatch(bodies[0], `seq ${seq}`);
    flags.set(seq, b.header.flags);
    for (const e of b.extents) {
      const data = e.flags & EXTENT_FLAGS.ZERO ? Buffer.alloc(e.blockCount * BLOCK_SIZE) : decodeExtent(e, bodies[0].subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), `seq ${seq}`);
      data.copy(disk, e.blockIndex * BLOCK_SIZE);
    }
  });
  return { disk, seqs, flags };
}

test('a crash with a batch held (never uploaded) and the next one uploaded but not recorded: no seq cut twice, the lost one filled and its writes resent', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'livesync-held-'));
  const pairId = newPairId('held');
  const { index } = cloud();
  await createPair(index, { pairId, disks: [{ name: 'disk0', sizeBytes: SIZE }] });
  const journal = new MemoryObjectStore();
  // Per seq: what its PUT does. 'lost': never stored, never answered; 'landed': stored, never answered.
  const fate = new Map<number, 'lost' | 'landed'>();
  const hung: ((err: Error) => void)[] = [];
  let down = false;
  const store = {
    put: async (key: string, body: Buffer, opts?: { crc32c?: number }): Promise<void> => {
      if (down) throw new Error('network unreachable');
      const f = fate.get(parseJournalKey(key)?.seq ?? -1);
      if (f === 'landed') await journal.put(key, body, opts);
      if (f) return new Promise<void>((_, reject) => hung.push(reject));
      return journal.put(key, body, opts);
    },
    get: journal.get.bind(journal),
    upload: journal.upload.bind(journal),
    size: journal.size.bind(journal),
    listKeys: journal.listKeys.bind(journal),
  };
  const image = join(dir, 'disk0.img');
  await writeFile(image, Buffer.alloc(0));
  await truncate(image, SIZE);
  const options = (stateDir: string, path: string) => ({ pairId, disks: [{ name: 'disk0', path }], host: '127.0.0.1', port: 0, store, index, stateDir, maxBatchBytes: 64 * KiB, maxBatchAgeMs: 60_000, drainMs: 100, retryBaseDelayMs: 5 });
  let a: RunningAgent | undefined = await startAgent(options(join(dir, 'a'), image));
  let b: RunningAgent | undefined;
  try {
    let client = await NbdClient.connect('127.0.0.1', a.port, 'disk0');
    await client.write(0, randomBytes(64 * KiB));
    await a.flush(); // seq 1: cut, spooled, uploaded
    await a.drained(10_000);
    fate.set(2, 'lost').set(3, 'landed');
    // 64 KiB batches: each write cuts the one before by size (no explicit cut, which would spool it durably).
    await client.write(1 * MiB, randomBytes(64 * KiB));
    await client.write(3 * MiB, randomBytes(64 * KiB)); // cuts seq 2
    await client.write(5 * MiB, randomBytes(64 * KiB)); // cuts seq 3; this one stays open
    await eventually('seq 3 to land in the journal', async () => ([...journal.objects.keys()].some((k) => parseJournalKey(k)?.seq === 3) ? true : undefined));
    // Held in memory and uploading: neither ever reached a file.
    expect((await readdir(join(dir, 'a', 'spool'))).filter((n) => n.endsWith('.batch'))).toEqual([]);
    expect(a.status().spool.batches).toBe(2);

    // The crash: the state directory and the image as they are now (the page cache survives a process kill).
    await cp(join(dir, 'a'), join(dir, 'b'), { recursive: true, filter: (src) => !src.endsWith('control.sock') });
    await cp(image, join(dir, 'b.img'));
    down = true;
    for (const reject of hung) reject(new Error('connection reset'));
    await client.close();
    await a.stop();
    a = undefined;

    down = false;
    fate.clear();
    b = await startAgent(options(join(dir, 'b'), join(dir, 'b.img')));
    await eventually('the resync after the unclean stop', async () => (b!.status().mode === 'streaming' ? true : undefined), 60_000);
    client = await NbdClient.connect('127.0.0.1', b.port, 'disk0');
    await client.write(7 * MiB, randomBytes(64 * KiB));
    await client.close();
    await b.flush({ rp: true });
    await b.drained(10_000);

    const { disk, flags } = replay(journal, pairId);
    expect(flags.get(2)! & BATCH_FLAGS.RESYNC).toBeTruthy(); // the lost seq, filled
    expect(firstDifference(disk, await readFile(join(dir, 'b.img')))).toBeUndefined();
    expect(b.status().resyncedRegions).toBeGreaterThanOrEqual(2); // at least the lost seq 2's region and seq 4's
  } finally {
    // A failed assertion must not leave the stop waiting on a PUT that never answers.
    down = true;
    for (const reject of hung) reject(new Error('connection reset'));
    await a?.stop();
    await b?.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
