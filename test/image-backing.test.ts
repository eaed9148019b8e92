// Image-backed held batches (agent/image-backing.ts): while uploads are behind, the spool lets
// go of a sequential batch's body instead of writing it to a file, and the images give it back.
// The pieces on their own, then an agent whose uploads are held while the guest writes over
// ranges whose batches were let go.

import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent } from '../agent/agent';
import { NbdClient } from '../bench/nbd-client';
import { ImageRanges, MAX_BACKED_EXTENTS, rebuildBody, rebuildPlan } from '../agent/image-backing';
import { Spool, SpoolCorruptError } from '../agent/spool';
import { decodeBatch, decodeExtent, encodeBatch, encodeBatchAsync, EXTENT_FLAGS, type ExtentInput } from '../core/batch-format';
import { journalPrefix } from '../core/keys';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BodyPool } from '../source/body-pool';
import { cloud, firstDifference, newPairId, pattern, recover } from './helpers';

const MiB = 1024 * 1024;
const header = (seq: number) => ({ pairId: 'p', seq, prevSeq: seq - 1, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['a', 'b'] });

/** An image per disk in memory, and a reader over them as the spool's readImage. */
function images(bytes: number): { disks: Buffer[]; read: (disk: number, offset: number, into: Buffer) => Promise<void> } {
  const disks = [0, 1].map(() => randomBytes(bytes)); // stored raw, as zstd cannot shrink it
  return { disks, read: async (disk, offset, into) => void disks[disk].copy(into, 0, offset, offset + into.length) };
}

/** A batch of the images' current bytes at these block ranges: what a cut would hold. */
function cutOf(img: Buffer[], seq: number, ranges: [disk: number, block: number, blocks: number][]): { body: Buffer; extents: ExtentInput[] } {
  const extents = ranges.map(([disk, block, blocks]) => ({ disk, blockIndex: block, data: Buffer.from(img[disk].subarray(block * 4096, (block + blocks) * 4096)) }));
  return { body: encodeBatch(header(seq), extents), extents };
}

const rangesOf = (extents: ExtentInput[]) => extents.map((e) => ({ disk: e.disk, offset: e.blockIndex * 4096, length: e.data!.length }));

describe('ImageRanges', () => {
  test.each([
    ['inside', 0, 4096, 4096, [1]],
    ['touching the end', 0, 8192, 4096, []],
    ['touching the start', 0, 0, 4096, []],
    ['across both', 0, 4095, 3 * MiB, [1, 2]],
    ['another disk', 1, 4096, 4096, []],
    ['far away', 0, 64 * MiB, 4096, []],
    ['of a whole 2 TiB disk (a TRIM)', 0, 0, 2 ** 41, [1, 2]],
    ['past both, however large', 0, 4 * MiB, 2 ** 41, []],
  ])('a write %s of a tracked range', (_name, disk, offset, length, want) => {
    const r = new ImageRanges();
    r.track(1, [{ disk: 0, offset: 4096, length: 4096 }]);
    r.track(2, [{ disk: 0, offset: 2 * MiB, length: MiB }]);
    expect(r.overlapping(disk as number, offset as number, length as number)).toEqual(want);
  });

  test('untracking clears the regions it counted, and only those', () => {
    const r = new ImageRanges();
    r.track(1, [{ disk: 0, offset: 0, length: 2 * MiB }]);
    r.track(2, [{ disk: 0, offset: MiB, length: 4096 }]);
    r.untrack(1);
    expect(r.overlapping(0, 0, MiB)).toEqual([]);
    expect(r.overlapping(0, MiB, 4096)).toEqual([2]);
    r.untrack(2);
    expect(r.size).toBe(0);
    expect(r.overlapping(0, 0, 8 * MiB)).toEqual([]);
  });
});

describe('rebuildPlan', () => {
  test('a body of raw extents (and zero extents) is laid out again byte for byte from the images', async () => {
    const { disks, read } = images(4 * MiB);
    const extents: ExtentInput[] = [
      { disk: 0, blockIndex: 3, data: Buffer.from(disks[0].subarray(3 * 4096, 300 * 4096)) },
      { disk: 0, blockIndex: 400, zeroBlocks: 10 },
      { disk: 1, blockIndex: 0, data: Buffer.from(disks[1].subarray(0, 4096)) },
    ];
    const body = encodeBatch(header(7), extents);
    const plan = rebuildPlan(body, 'test')!;
    expect(plan.payloads).toHaveLength(3); // 297 blocks: split at 256
    const again = Buffer.alloc(plan.length, 0xee);
    await rebuildBody(plan, again, read);
    expect(again.equals(body)).toBe(true);
  });

  test('a compressed payload, or too many data extents, cannot be given back', async () => {
    const zeros = Buffer.alloc(64 * 1024); // zstd takes it to a few bytes
    const compressed = await encodeBatchAsync(header(1), [{ disk: 0, blockIndex: 0, data: Buffer.from(zeros.fill(1)) }]);
    expect(decodeBatch(compressed, 'z').extents[0].flags & EXTENT_FLAGS.ZSTD).toBeTruthy();
    expect(rebuildPlan(compressed, 'z')).toBeUndefined();
    const many = encodeBatch(header(2), Array.from({ length: MAX_BACKED_EXTENTS + 1 }, (_, i) => ({ disk: 0, blockIndex: 2 * i, data: Buffer.alloc(4096, i + 1) })));
    expect(rebuildPlan(many, 'many')).toBeUndefined();
  });
});

describe('Spool with image-backed batches', () => {
  async function setUp(): Promise<{ spool: Spool; dir: string; img: ReturnType<typeof images>; cuts: ReturnType<typeof cutOf>[] }> {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-backed-'));
    const img = images(8 * MiB);
    const cuts = [1, 2, 3, 4].map((seq) => cutOf(img.disks, seq, [[0, (seq - 1) * 256, 256]]));
    // Room in memory for one body: the others are let go as they come.
    const spool = await Spool.open(dir, 64 * MiB, { memoryBytes: cuts[0].body.length, bodies: new BodyPool(2 * MiB) });
    spool.readImage = img.read;
    for (const [i, c] of cuts.entries()) {
      spool.trackImageRanges(i + 1, rangesOf(c.extents));
      await spool.add(i + 1, Buffer.from(c.body), { durable: false });
    }
    return { spool, dir, img, cuts };
  }

  test('bodies over the memory budget are let go, not written, and read back whole from the images', async () => {
    const { spool, dir, cuts } = await setUp();
    expect(spool.imageBackedCount).toBe(3);
    expect(spool.filesWritten).toBe(0);
    expect(await readdir(dir)).toEqual([]);
    for (const [i, c] of cuts.entries()) {
      expect((await spool.read(i + 1)).equals(c.body)).toBe(true);
      await spool.remove(i + 1);
    }
    expect(spool.imageBackedCount).toBe(0);
  });

  test('a write over a let-go batch waits for its rebuild; one elsewhere does not wait', async () => {
    const { spool, img, cuts } = await setUp();
    expect(spool.beforeImageWrite(0, 5 * MiB, MiB)).toBeUndefined(); // no batch there
    const wait = spool.beforeImageWrite(0, 2 * MiB + 4096, 4096); // batch 3's range
    expect(wait).toBeInstanceOf(Promise);
    await wait;
    img.disks[0].fill(0x77, 2 * MiB, 3 * MiB); // the write lands
    expect(spool.imageBackedCount).toBe(2);
    expect((await spool.read(3)).equals(cuts[2].body)).toBe(true);
  });

  test('an image changed without the check fails the rebuild, naming the batch; nothing is uploaded from it', async () => {
    const { spool, img } = await setUp();
    img.disks[0][3 * MiB + 100] ^= 1; // batch 4's range, behind the spool's back
    await expect(spool.read(4)).rejects.toThrow(SpoolCorruptError);
    await expect(spool.read(4)).rejects.toThrow(/00000000000000000004\.batch \(rebuilt from the disk images\) is unreadable: object checksum/);
  });

  test("a FLUSH over a batch the images cannot give back goes on; the batch stays held, unsecured, and its upload fails", async () => {
    const { spool } = await setUp();
    const secured: number[] = [];
    spool.onSecured = (seq) => void secured.push(seq);
    const before = spool.filesWritten;
    // Batch 3's range changed behind the spool's back (never in the agent: writes check first).
    const img = (spool as unknown as { readImage: (d: number, o: number, into: Buffer) => Promise<void> }).readImage;
    spool.readImage = async (d, o, into) => {
      await img(d, o, into);
      if (o === 2 * MiB) into[7] ^= 1;
    };
    await spool.syncThrough(4);
    expect(spool.filesWritten).toBe(before + 3); // every batch but 3
    expect(secured).not.toContain(3);
    expect(spool.heldCount).toBe(1);
    await expect(spool.read(3)).rejects.toThrow(SpoolCorruptError);
  });

  test('syncThrough writes let-go batches to their files from the images', async () => {
    const { spool, dir, cuts } = await setUp();
    await spool.syncThrough(4);
    expect(spool.imageBackedCount).toBe(0);
    expect(spool.filesWritten).toBe(4);
    for (const [i, c] of cuts.entries()) expect((await readFile(join(dir, `${String(i + 1).padStart(20, '0')}.batch`))).equals(c.body)).toBe(true);
    // On file, the images may change: nothing waits for a write any more.
    expect(spool.beforeImageWrite(0, 0, 8 * MiB)).toBeUndefined();
  });
});

describe('an agent whose uploads are behind', () => {
  test('lets sequential batches go, rebuilds one before a write changes its range, and the journal holds what was written when', async () => {
    const c = cloud();
    const pairId = newPairId('backed');
    const size = 64 * MiB;
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
    const dir = await mkdtemp(join(tmpdir(), 'livesync-backed-agent-'));
    const image = join(dir, 'disk0.img');
    await writeFile(image, '');
    await truncate(image, size);
    // The journal's PUTs wait at this gate: the spool fills up while the guest writes.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const store = new Proxy(c.store, {
      get(target, prop) {
        if (prop === 'put') {
          return async (key: string, body: Buffer, opts?: Parameters<typeof target.put>[2]) => {
            if (key.startsWith(journalPrefix(pairId))) await gate;
            return target.put(key, body, opts);
          };
        }
        const v = Reflect.get(target, prop) as unknown;
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const agent = await startAgent({ pairId, disks: [{ name: 'disk0', path: image }], host: '127.0.0.1', port: 0, store, index: c.index, stateDir: join(dir, 'state') });
    const nbd = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
    try {
      // 40 MiB in 1 MiB writes: ten 4 MiB batches, nine cut. Four wait in their PUTs, two fit
      // the memory budget, the rest are let go (no file written).
      const first = Buffer.concat(Array.from({ length: 40 }, (_, i) => pattern(MiB, i + 1)));
      for (let i = 0; i < 40; i++) await nbd.write(i * MiB, first.subarray(i * MiB, (i + 1) * MiB));
      const held = agent.status().spool;
      expect(held.imageBacked).toBeGreaterThanOrEqual(2);
      expect(held.filesWritten).toBe(0);
      // Over the open batch's last half MiB and past it: the batch is cut before this write is
      // recorded, and after the image took it, so the image no longer backs it (it may go to a file).
      await nbd.write(39 * MiB + MiB / 2, pattern(MiB, 97));
      // Over let-go batches' ranges: whole blocks, and a part of one.
      await nbd.write(29 * MiB, pattern(MiB, 99));
      await nbd.write(33 * MiB + 3000, pattern(1000, 98));
      open();
      const seq = await agent.flush({ rp: true });
      await waitForWatermark(c.index, pairId, seq, 60_000);
      const got = (await recover(c, pairId, seq)).get('disk0')!;
      expect(firstDifference(got, await readFile(image))).toBeUndefined();
      // Every batch cut by the first writes holds what they wrote, not what came over it later.
      const keys = (await c.store.listKeys(journalPrefix(pairId))).sort();
      for (const key of keys.slice(0, 10)) {
        const b = await c.store.get(key);
        const batch = decodeBatch(b, key);
        expect(batch.header.seq).toBeLessThanOrEqual(10);
        for (const e of batch.extents) {
          const data = decodeExtent(e, b.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), key);
          expect(firstDifference(data, first.subarray(e.blockIndex * 4096, e.blockIndex * 4096 + data.length))).toBeUndefined();
        }
      }
    } finally {
      open();
      await nbd.close();
      await agent.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
