// Recovery through a compacted history (replica/materialize.ts with a manifest): a pair is
// replicated through the embedded stack, a manifest is built by hand from the source model
// (images as LSCK chunks, pieces in run objects, under a history prefix), published through
// the DynamoDB history index, and the journal objects it folded are deleted. Every retained
// point and every RP above the frontier must read back bit for bit; anything else is pruned;
// a corrupt piece or image is named; the reader lease lives exactly as long as the read.

import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BLOCK_SIZE } from '../core/batch-format';
import { encodeChunk, isAllZero } from '../core/chunk-format';
import { crc32c } from '../core/crc32c';
import { CorruptExtentError, CorruptHistoryError, HistoryPrunedError, ReaderLeaseLostError } from '../core/errors';
import { historyPrefix } from '../core/keys';
import { encodeManifestV1, RANGE_BLOCKS, rangeId, type ImageEntry, type Manifest, type PieceEntry } from '../core/manifest';
import { readBound } from '../core/read-sources';
import { encodePiece, pieceBlocksBitmap, type PieceVersionInput } from '../core/run-format';
import { heldBytes } from '../replica/chunk-verifier';
import { limiter } from '../replica/concurrency';
import { compactOnce, currentManifest } from '../replica/compactor';
import { replicaDigests } from '../replica/digests';
import { fileSink, materialize, type ImageSink, type MaterializeOptions } from '../replica/materialize';
import { createPair, waitForWatermark } from '../replica/pairs';
import { openRp } from '../replica/rp-reader';
import type { CompactorLease, HistoryIndex, ReaderLease } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, newPairId, pattern, SourceModel } from './helpers';

const MiB = 1024 * 1024;
const RANGE = RANGE_BLOCKS * BLOCK_SIZE;
const DISKS = [
  { name: 'd', sizeBytes: 12 * MiB },
  { name: 'e', sizeBytes: MiB },
];
const c = cloud();
const pairId = newPairId('hist');
const model = new SourceModel(DISKS);
const journal = new Map<number, string>();
let prefix = '';

/** Seq 1..8, one batch and one RP each: writes, overwrites and zeroes across the ranges d:0..2 and e:0. */
const STEPS: ((w: BatchWriter) => Promise<void>)[] = [
  async (w) => {
    await put(w, 'd', 0, pattern(64 * 1024, 1));
    await put(w, 'd', RANGE + 64 * 1024, pattern(256 * 1024, 2));
    await put(w, 'd', 2 * RANGE, pattern(MiB, 3));
    await put(w, 'e', 0, pattern(64 * 1024, 4));
  },
  async (w) => {
    await put(w, 'd', 8 * BLOCK_SIZE, pattern(64 * 1024, 5));
    await put(w, 'e', 512 * 1024, pattern(64 * 1024, 6));
  },
  async (w) => {
    await put(w, 'd', RANGE + 128 * 1024, pattern(64 * 1024, 7));
    await put(w, 'd', 3 * MiB, pattern(128 * 1024, 8));
    await put(w, 'd', 2 * RANGE + 4 * BLOCK_SIZE, pattern(4 * BLOCK_SIZE, 9));
  },
  async (w) => {
    await zero(w, 'd', 2 * RANGE, RANGE); // d:2 all zeros at 4: its zero image
    await put(w, 'd', 100 * BLOCK_SIZE, pattern(BLOCK_SIZE, 10));
    await put(w, 'e', 4096, pattern(8192, 11));
  },
  async (w) => {
    await put(w, 'd', 2 * RANGE + MiB, pattern(32 * 1024, 12));
    await put(w, 'd', RANGE, pattern(16 * 1024, 13));
    await put(w, 'e', 900 * 1024, pattern(16 * 1024, 14));
  },
  async (w) => {
    await put(w, 'd', 1000 * BLOCK_SIZE, pattern(24 * BLOCK_SIZE, 15));
    await zero(w, 'd', RANGE + 64 * 1024, 64 * 1024);
  },
  async (w) => {
    await put(w, 'd', 2 * BLOCK_SIZE, pattern(BLOCK_SIZE, 16));
    await put(w, 'd', 2 * RANGE + 3 * MiB, pattern(64 * 1024, 17));
  },
  async (w) => {
    await put(w, 'd', RANGE + 3 * MiB, pattern(64 * 1024, 18));
    await put(w, 'e', 0, pattern(4096, 19));
  },
];
async function put(w: BatchWriter, disk: string, offset: number, data: Buffer) {
  model.write(disk, offset, data);
  await w.write(disk, offset, data);
}
async function zero(w: BatchWriter, disk: string, offset: number, length: number) {
  model.zero(disk, offset, length);
  await w.zero(disk, offset, length);
}

/** The frontier and the retained points of the hand-built manifest. */
const FRONTIER = 6;
const RETAINED = [2, 4, 6];

/** Range `r` of `disk` in the model at `seq`. */
const rangeAt = (seq: number, disk: string, r: number): Buffer => {
  const image = seq === 0 ? Buffer.alloc(DISKS.find((d) => d.name === disk)!.sizeBytes) : model.atSeq.get(seq)!.get(disk)!;
  return image.subarray(r * RANGE, Math.min(image.length, (r + 1) * RANGE));
};

/** Every version of range `r` written in seqs [lo, hi]: the runs of blocks each seq changed (zeros as zero versions). */
function versionsOf(disk: string, r: number, lo: number, hi: number): PieceVersionInput[] {
  const out: PieceVersionInput[] = [];
  for (let s = lo; s <= hi; s++) {
    const before = rangeAt(s - 1, disk, r);
    const after = rangeAt(s, disk, r);
    const changed = (b: number) => !before.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE).equals(after.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE));
    const blocks = after.length / BLOCK_SIZE;
    for (let b = 0; b < blocks; ) {
      if (!changed(b)) {
        b++;
        continue;
      }
      let e = b + 1;
      while (e < blocks && changed(e)) e++;
      const data = Buffer.from(after.subarray(b * BLOCK_SIZE, e * BLOCK_SIZE));
      out.push(isAllZero(data) ? { seq: s, blockIndex: b, blockCount: e - b, zero: true } : { seq: s, blockIndex: b, blockCount: e - b, data });
      b = e;
    }
  }
  return out;
}

/** Run objects being assembled: pieces back to back. */
const runs = new Map<string, Buffer[]>();
const runLength = (key: string) => (runs.get(key) ?? []).reduce((n, b) => n + b.length, 0);

function piece(run: number, disk: string, r: number, seqLo: number, seqHi: number): PieceEntry {
  const key = `${prefix}run-${String(run).padStart(4, '0')}.run`;
  const versions = versionsOf(disk, r, seqLo, seqHi);
  const bytes = encodePiece({ disk, rangeIndex: r, seqLo, seqHi, versions });
  const offset = runLength(key);
  runs.set(key, [...(runs.get(key) ?? []), bytes]);
  const dataBytes = versions.reduce((n, v) => n + (v.zero ? 0 : v.blockCount * BLOCK_SIZE), 0);
  return { key, offset, length: bytes.length, crc32c: bytes.readUInt32LE(bytes.length - 4), seqLo, seqHi, blocks: pieceBlocksBitmap(versions), dataBytes };
}

async function image(disk: string, r: number, seq: number): Promise<ImageEntry> {
  const data = rangeAt(seq, disk, r);
  if (isAllZero(data)) return { seq, zero: true };
  const { body, ref } = await encodeChunk(r, Buffer.from(data));
  const key = `${prefix}image-${ref.sha256}.chunk`;
  await c.store.put(key, body);
  return { seq, key, sha256: ref.sha256, crc32c: ref.crc32c, length: ref.length };
}

let manifest: Manifest;
const v0: { version?: number; image?: Buffer } = {};

/** Recovers every disk at `seq` into memory; `onWrite` runs at each window. */
async function recoverAt(seq: number, o: Partial<MaterializeOptions> = {}, onWrite?: () => Promise<void>) {
  const out = new Map<string, Buffer>();
  const res = await materialize(c.store, c.index, {
    pairId,
    seq,
    history: c.history,
    windowBytes: 4 * MiB,
    sinkFor: async (disk, size): Promise<ImageSink> => {
      const img = Buffer.alloc(size);
      out.set(disk, img);
      return {
        write: async (offset, window) => {
          await onWrite?.();
          window.copy(img, offset);
        },
        close: async () => {},
        abort: async () => {},
      };
    },
    ...o,
  });
  return { res, out };
}

const expectModelAt = (seq: number, out: Map<string, Buffer>) => {
  for (const d of DISKS) expect({ seq, disk: d.name, diff: firstDifference(out.get(d.name)!, model.atSeq.get(seq)!.get(d.name)!) }).toEqual({ seq, disk: d.name, diff: undefined });
};

const leases = () => c.history.listReaderLeases(pairId, Date.now());

/** The history index with hooks around the lease calls and HISTORY reads. */
function spy(h: HistoryIndex, over: Partial<HistoryIndex>): HistoryIndex & { puts: ReaderLease[]; releases: string[] } {
  const puts: ReaderLease[] = [];
  const releases: string[] = [];
  return {
    ...Object.fromEntries((Object.getOwnPropertyNames(Object.getPrototypeOf(h)) as (keyof HistoryIndex)[]).filter((k) => k !== ('constructor' as string)).map((k) => [k, (h[k] as (...a: unknown[]) => unknown).bind(h)])),
    async putReaderLease(p: string, l: ReaderLease) {
      puts.push({ ...l });
      return over.putReaderLease ? over.putReaderLease(p, l) : h.putReaderLease(p, l);
    },
    async releaseReaderLease(p: string, id: string, nowMs: number) {
      releases.push(id);
      return h.releaseReaderLease(p, id, nowMs);
    },
    ...(over.getHistory ? { getHistory: over.getHistory } : {}),
    puts,
    releases,
  } as HistoryIndex & { puts: ReaderLease[]; releases: string[] };
}

/**
 * The compactor lease, held by the test from before the first batch to the end: the local
 * stack's apply path starts compaction units as the L0 grows, and each finds it held.
 */
let compactor: CompactorLease;
const LEASE_MS = 15 * 60_000;

/** Writes manifest `m` under its version's prefix and publishes it over version m.version - 1 under the test's lease. */
async function publish(m: Manifest, prefixOf = historyPrefix(pairId, m.version)): Promise<string> {
  m.generation = compactor.gen;
  const key = `${prefixOf}manifest.json`;
  await c.store.put(key, encodeManifestV1(m));
  const now = Date.now();
  expect(await c.history.publish(pairId, compactor, m.version - 1, { version: m.version, manifestKey: key, publishedMs: now, removedKeys: [], foldedSeqs: [] }, m.frontierSeq, now)).toBe(true);
  return key;
}

beforeAll(async () => {
  await createPair(c.index, { pairId, disks: DISKS });
  compactor = (await c.history.acquireCompactor(pairId, 'test', Date.now(), LEASE_MS))!;
  const w = new BatchWriter({ pairId, disks: DISKS, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 2 * MiB, onUploaded: (b) => journal.set(b.seq, b.key) });
  for (const [i, step] of STEPS.entries()) {
    await step(w);
    const seq = await w.flush({ rp: true });
    expect(seq).toBe(i + 1); // one batch per step
    model.snapshot(seq);
  }
  await waitForWatermark(c.index, pairId, STEPS.length, 60_000);
  // Never compacted, through the history index: version 0.
  const { res, out } = await recoverAt(2);
  v0.version = res.manifestVersion;
  v0.image = out.get('d');

  // Version 1, by hand: frontier 6, retained 2, 4, 6.
  prefix = historyPrefix(pairId, 1);
  manifest = {
    format: 1,
    pairId,
    version: 1,
    generation: 0,
    publishedMs: Date.now(),
    frontierSeq: FRONTIER,
    retained: RETAINED,
    ranges: {
      [rangeId('d', 0)]: { images: [await image('d', 0, 2)], pieces: [piece(0, 'd', 0, 3, 4), piece(0, 'd', 0, 5, 6)] },
      [rangeId('d', 1)]: { images: [], pieces: [piece(0, 'd', 1, 1, 3), piece(0, 'd', 1, 4, 6)] },
      [rangeId('d', 2)]: { images: [await image('d', 2, 4)], pieces: [piece(1, 'd', 2, 1, 3), piece(1, 'd', 2, 5, 6)] },
      [rangeId('e', 0)]: { images: [await image('e', 0, 6)], pieces: [piece(1, 'e', 0, 1, 2), piece(1, 'e', 0, 3, 4), piece(1, 'e', 0, 5, 6)] },
    },
  };
  expect(manifest.ranges['d:2'].images[0]).toEqual({ seq: 4, zero: true });
  for (const [key, parts] of runs) await c.store.put(key, Buffer.concat(parts));
  await publish(manifest, prefix);
  // What the history folded is gone, as GC leaves it (BATCH# items, then objects): a read that
  // touched a batch at or below the frontier would fail.
  const folded = [...journal].filter(([seq]) => seq <= FRONTIER);
  await c.history.deleteBatchItems(pairId, folded.map(([seq]) => seq));
  await c.deleter.deleteKeys(folded.map(([, key]) => key));
});

afterAll(async () => {
  await c.history.releaseCompactor(pairId, compactor);
});

describe('materialize through the history', () => {
  test('a pair never compacted reads as version 0 through the history index', () => {
    expect(v0.version).toBe(0);
    expect(firstDifference(v0.image!, model.atSeq.get(2)!.get('d')!)).toBeUndefined();
  });

  test('every retained point and every RP above the frontier reads bit for bit, the folded batches deleted', async () => {
    for (const seq of [...RETAINED, 7, 8]) {
      const { res, out } = await recoverAt(seq);
      expectModelAt(seq, out);
      expect(res.manifestVersion).toBe(1);
      expect(res.segments).toBe(Math.max(0, seq - FRONTIER));
    }
    // Windows smaller than a range are rounded up to it: the same bytes.
    expectModelAt(8, (await recoverAt(8, { windowBytes: 64 * 1024 })).out);
  });

  test('into an image file the workers write themselves (images, pieces with zero versions, L0 extents): every point bit for bit, write() never called', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-direct-'));
    try {
      for (const seq of [...RETAINED, 8]) {
        const out = new Map<string, Buffer>();
        await materialize(c.store, c.index, {
          pairId,
          seq,
          history: c.history,
          windowBytes: 4 * MiB,
          sinkFor: async (disk, size) => {
            const sink = await fileSink(join(dir, `${disk}-${seq}.img`), size);
            return { ...sink, write: () => Promise.reject(new Error('a window was written: the direct path was not taken')) };
          },
        });
        for (const d of DISKS) out.set(d.name, await readFile(join(dir, `${d.name}-${seq}.img`)));
        expectModelAt(seq, out);
        // Zero blocks (an image's among them) are left as holes: no more allocated than the data's blocks.
        for (const d of DISKS) {
          const img = out.get(d.name)!;
          let dataBlocks = 0;
          for (let b = 0; b < img.length; b += BLOCK_SIZE) if (!isAllZero(img.subarray(b, b + BLOCK_SIZE))) dataBlocks++;
          expect({ seq, disk: d.name, allocated: (await stat(join(dir, `${d.name}-${seq}.img`))).blocks * 512 <= dataBlocks * BLOCK_SIZE }).toEqual({ seq, disk: d.name, allocated: true });
        }
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('sources: the read bound observed, per range image + pieces + L0 batches touching it', async () => {
    // At 8: d:0 image(2) + pieces [3,4] [5,6] + batch 7 = 4; d:1 pieces [1,3] [4,6] + batch 8 = 3;
    // d:2 zero image (no object) + piece [5,6] + batch 7 = 2; e:0 image(6) + batch 8 = 2.
    expect((await recoverAt(8)).res.sources).toBe(4);
    // At 4: d:0 image + [3,4] = 2; d:1 [1,3] [4,6] = 2; d:2 zero image = 0; e:0 [1,2] [3,4] = 2.
    expect((await recoverAt(4)).res.sources).toBe(2);
  });

  test("a window's pieces of one run object come in one ranged GET", async () => {
    // At 6 with all of d in one window: the manifest, d:0's image, run-0000's four pieces of
    // d:0 and d:1 (back to back) in one GET, d:2's piece [5,6] of run-0001, e:0's image: 5.
    const { res, out } = await recoverAt(6, { windowBytes: 12 * MiB });
    expectModelAt(6, out);
    expect(res.gets).toBe(5);
  });

  test("read-ahead: with a window per range, d:0's GET of run-0000 brings d:1's pieces too, kept by a worker for d:1's window; nothing is kept after", async () => {
    // At 6 with 4 MiB windows: the same 5 GETs as with all of d in one window. What was kept
    // is let go as its windows place it: none by e's window (d is done), none after.
    const kept: number[] = [];
    const { res, out } = await recoverAt(6, {}, async () => void kept.push(await heldBytes()));
    expectModelAt(6, out);
    expect(res.gets).toBe(5);
    expect(kept.at(-1)).toBe(0);
    expect(await heldBytes()).toBe(0);
    // A reader closed before the windows that read ahead came lets go of what it kept for them.
    const reader = await openRp(c.store, c.index, { pairId, seq: 6, history: c.history });
    await reader.fill('d', 0, Buffer.from(new SharedArrayBuffer(RANGE)), limiter(4), { readAheadTo: 3 * RANGE_BLOCKS });
    expect(await heldBytes()).toBeGreaterThan(0);
    await reader.close();
    expect(await heldBytes()).toBe(0);
    // A corrupt piece read ahead fails the read, naming it, and nothing is left kept. The byte
    // is in a raw payload: its version's data check finds it (the piece's CRC takes raw payloads
    // by their entries' data CRCs).
    const d1 = manifest.ranges['d:1'].pieces[0]; // [1, 3], read at 4 with d:0's [3, 4]
    const good = await c.store.get(d1.key);
    const bad = Buffer.from(good);
    bad[d1.offset + d1.length - 100] ^= 0xff;
    await c.store.put(d1.key, bad);
    try {
      await expect(recoverAt(4)).rejects.toThrow(new RegExp(`${d1.key.replace(/[.]/g, '\\.')}@${d1.offset} entry \\(seq \\d+, block \\d+\\): data checksum`));
      expect(await heldBytes()).toBe(0);
      expect(await leases()).toEqual([]);
    } finally {
      await c.store.put(d1.key, good);
    }
  });

  test('a live RP the manifest did not retain is pruned: HistoryPrunedError, no lease left', async () => {
    for (const seq of [1, 3, 5]) {
      await expect(recoverAt(seq)).rejects.toThrow(HistoryPrunedError);
      await expect(recoverAt(seq)).rejects.toThrow(`seq ${seq} is no longer readable`);
    }
    expect(await leases()).toEqual([]);
  });

  test('once compacted and collected, a read without the history index is refused', async () => {
    await expect(recoverAt(8, { history: undefined })).rejects.toThrow(`pair '${pairId}' was compacted through seq 6 and GC has collected batches it folded: reading it needs its history index`);
  });

  test('the reader lease holds the seq and the version during the read and is gone after', async () => {
    const seen: ReaderLease[][] = [];
    await recoverAt(7, {}, async () => void seen.push(await leases()));
    expect(seen.length).toBe(4); // 3 windows of d, 1 of e
    for (const l of seen) expect(l).toEqual([expect.objectContaining({ kind: 'recovery', seq: 7, manifestVersion: 1 })]);
    expect(await leases()).toEqual([]);
  });

  test('a publish between HISTORY and the lease moves the lease to the new version', async () => {
    let first = true;
    const h = spy(c.history, {
      getHistory: async (p) => {
        const head = await c.history.getHistory(p);
        if (!first) return head;
        first = false;
        return { version: 0, frontierSeq: 0, publishedMs: 0, gcVersion: 0 }; // read before the publish
      },
    });
    const { res, out } = await recoverAt(6, { history: h });
    expectModelAt(6, out);
    expect(res.manifestVersion).toBe(1);
    expect(h.puts.map((l) => l.manifestVersion)).toEqual([0, 1]);
    expect(new Set(h.puts.map((l) => l.id)).size).toBe(1); // one lease, moved
    expect(h.releases).toEqual([h.puts[0].id]);
  });

  test('the lease is renewed while reading; a renewal that fails stops the read and the lease is released', async () => {
    const ok = spy(c.history, {});
    await recoverAt(6, { history: ok, leaseTtlMs: 1500 }, () => new Promise((r) => setTimeout(r, 600)));
    expect(ok.puts.length).toBeGreaterThan(2);
    expect(ok.puts[ok.puts.length - 1].expiresMs).toBeGreaterThan(ok.puts[0].expiresMs);

    let n = 0;
    const failing = spy(c.history, {
      putReaderLease: async (p, l) => {
        if (n++ > 0) throw new Error('throttled');
        await c.history.putReaderLease(p, l);
      },
    });
    await expect(recoverAt(6, { history: failing, leaseTtlMs: 1500 }, () => new Promise((r) => setTimeout(r, 600)))).rejects.toThrow(/reader lease .* could not be renewed: throttled/);
    expect(failing.releases.length).toBe(1);
    expect(await leases()).toEqual([]);
  });

  test('a disk read range by range (the recovery workflow) equals it read whole, through the manifest and the L0', async () => {
    for (const seq of [4, 8]) {
      const whole = (await recoverAt(seq)).out.get('d')!;
      const parts = Buffer.alloc(whole.length, 0xee);
      for (let start = 0; start < whole.length; start += 2 * RANGE) {
        const { res, out } = await recoverAt(seq, { only: { disk: 'd', start, end: Math.min(start + 2 * RANGE, whole.length) } });
        expect(res.disks.map((d) => d.name)).toEqual(['d']);
        out.get('d')!.copy(parts, start, start, Math.min(start + 2 * RANGE, whole.length));
      }
      expect({ seq, diff: firstDifference(parts, model.atSeq.get(seq)!.get('d')!) }).toEqual({ seq, diff: undefined });
    }
    // A range that does not start on a range of the history (4 MiB) is refused, naming it.
    await expect(recoverAt(8, { only: { disk: 'd', start: MiB, end: 2 * RANGE } })).rejects.toThrow(`range [${MiB}, ${2 * RANGE}) of disk 'd' (${12 * MiB} bytes) must start on a multiple of ${RANGE} bytes`);
    await expect(recoverAt(8, { only: { disk: 'x', start: 0, end: RANGE } })).rejects.toThrow("pair '" + pairId + "' has no disk 'x'");
  });

  test('a held lease (the workflow run\'s) is renewed only while live, never revived, and not released by the read', async () => {
    const head = await c.history.getHistory(pairId);
    const id = 'recovery-held-test';
    await c.history.putReaderLease(pairId, { id, kind: 'recovery', seq: 8, manifestVersion: head.version, expiresMs: Date.now() + 60_000 });
    const { out } = await recoverAt(8, { heldLease: { id, head } });
    expectModelAt(8, out);
    expect(await leases()).toEqual([expect.objectContaining({ id, seq: 8 })]);
    // Lapsed: the read refuses to go on, and the lease stays lapsed.
    await c.history.putReaderLease(pairId, { id, kind: 'recovery', seq: 8, manifestVersion: head.version, expiresMs: Date.now() - 1 });
    await expect(recoverAt(8, { heldLease: { id, head } })).rejects.toThrow(ReaderLeaseLostError);
    expect(await leases()).toEqual([]);
    await c.history.releaseReaderLease(pairId, id, Date.now());
    await expect(recoverAt(8, { heldLease: { id, head } })).rejects.toThrow(`reader lease ${id} lapsed`);
  });

  test('digests read through the manifest under a digests lease; a pruned seq is refused', async () => {
    const h = spy(c.history, {});
    const region = 256 * 1024;
    const digests = await replicaDigests(c.store, c.index, { pairId, seq: 6, regionBytes: () => region, history: h });
    for (const d of DISKS) {
      const img = model.atSeq.get(6)!.get(d.name)!;
      expect([...digests.get(d.name)!]).toEqual(Array.from({ length: d.sizeBytes / region }, (_, i) => crc32c(img.subarray(i * region, (i + 1) * region))));
    }
    expect(h.puts[0]).toMatchObject({ kind: 'digests', seq: 6, manifestVersion: 1 });
    await expect(replicaDigests(c.store, c.index, { pairId, seq: 5, regionBytes: () => region, history: c.history })).rejects.toThrow(HistoryPrunedError);
    expect(await leases()).toEqual([]);
  });

  test('a corrupt piece fails the read naming key@offset; a corrupt image names its key; no lease is left', async () => {
    const e0 = manifest.ranges['e:0'].pieces[1]; // [3, 4], read at 4
    const good = await c.store.get(e0.key);
    const bad = Buffer.from(good);
    bad[e0.offset + e0.length - 100] ^= 0xff; // in its last payload
    await c.store.put(e0.key, bad);
    try {
      const err = await recoverAt(4).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CorruptHistoryError);
      expect((err as Error).message).toContain(`${e0.key}@${e0.offset}`);
      expect(await leases()).toEqual([]);
      // Still readable where that piece is not read.
      expectModelAt(6, (await recoverAt(6)).out);
    } finally {
      await c.store.put(e0.key, good);
    }
    const img = manifest.ranges['d:0'].images[0] as { key: string };
    const body = await c.store.get(img.key);
    const rotten = Buffer.from(body);
    rotten[rotten.length - 10] ^= 0xff;
    await c.store.put(img.key, rotten);
    try {
      await expect(recoverAt(2)).rejects.toThrow(CorruptExtentError);
      await expect(recoverAt(2)).rejects.toThrow(img.key);
      expect(await leases()).toEqual([]);
    } finally {
      await c.store.put(img.key, body);
    }
    expectModelAt(2, (await recoverAt(2)).out);
  });

  test('a piece that is not what its manifest entry says (its bitmap), or holds blocks past the disk, fails the read, naming it', async () => {
    // Version 2: version 1 with one bit of d:1's first piece's bitmap flipped (checkManifest cannot see it).
    const m2: Manifest = JSON.parse(JSON.stringify(manifest));
    m2.version = 2;
    const p = m2.ranges['d:1'].pieces[0];
    const bits = Buffer.from(p.blocks, 'base64');
    bits[100] ^= 1;
    p.blocks = bits.toString('base64');
    await publish(m2);
    await expect(recoverAt(2)).rejects.toThrow(new CorruptHistoryError(`${p.key}@${p.offset}`, 'holds other blocks than its bitmap in the manifest says'));
    expect(await leases()).toEqual([]);

    // Version 3: e:0's piece [3, 4] also holds a zero version of block 300, past the end of e (256 blocks).
    const m3: Manifest = JSON.parse(JSON.stringify(manifest));
    m3.version = 3;
    const versions = [...versionsOf('e', 0, 3, 4), { seq: 4, blockIndex: 300, blockCount: 1, zero: true as const }];
    const bytes = encodePiece({ disk: 'e', rangeIndex: 0, seqLo: 3, seqHi: 4, versions });
    const prefix3 = historyPrefix(pairId, 3);
    await c.store.put(`${prefix3}run-0000.run`, bytes);
    m3.ranges['e:0'].pieces[1] = { key: `${prefix3}run-0000.run`, offset: 0, length: bytes.length, crc32c: bytes.readUInt32LE(bytes.length - 4), seqLo: 3, seqHi: 4, blocks: pieceBlocksBitmap(versions), dataBytes: m3.ranges['e:0'].pieces[1].dataBytes };
    await publish(m3, prefix3);
    await expect(recoverAt(4)).rejects.toThrow(new CorruptHistoryError(`${prefix3}run-0000.run@0`, "entry (seq 4, block 300) runs past the disk's end (256 blocks)"));
  });

  test("a piece whose raw payload changed fails its version's data check, and with its CRC made to fit, the piece's check; in a GET that brought two pieces", async () => {
    // The next version: e:0's pieces [1, 2] and [3, 4] back to back in one run object (both read
    // at 4, in one GET); a raw payload byte of the second changed. The piece's CRC takes a raw
    // payload by its entry's data CRC, so the piece checks, and its version's data CRC does not.
    // With the piece's CRC rewritten to fit the changed bytes (in the piece and the manifest),
    // the piece's own check fails instead.
    const m4: Manifest = JSON.parse(JSON.stringify(manifest));
    m4.version = (await c.history.getHistory(pairId)).version + 1;
    const prefix4 = historyPrefix(pairId, m4.version);
    const first = encodePiece({ disk: 'e', rangeIndex: 0, seqLo: 1, seqHi: 2, versions: versionsOf('e', 0, 1, 2) });
    const forged = encodePiece({ disk: 'e', rangeIndex: 0, seqLo: 3, seqHi: 4, versions: versionsOf('e', 0, 3, 4) });
    forged[forged.length - 100] ^= 0xff; // in its last payload, a raw one
    const key = `${prefix4}run-0000.run`;
    await c.store.put(key, Buffer.concat([first, forged]));
    const [p0, p1] = m4.ranges['e:0'].pieces;
    m4.ranges['e:0'].pieces[0] = { ...p0, key, offset: 0, length: first.length, crc32c: first.readUInt32LE(first.length - 4) };
    m4.ranges['e:0'].pieces[1] = { ...p1, key, offset: first.length, length: forged.length, crc32c: forged.readUInt32LE(forged.length - 4) };
    await publish(m4, prefix4);
    await expect(recoverAt(4)).rejects.toThrow(new RegExp(`${key.replace(/[.]/g, '\\.')}@${first.length} entry \\(seq 4, block \\d+\\): data checksum`));
    await expect(recoverAt(4)).rejects.toThrow(CorruptHistoryError);
    expect(await leases()).toEqual([]);
    // Its CRC made to fit the changed bytes: the piece's check, combined from the entries' data CRCs, fails.
    const m5: Manifest = JSON.parse(JSON.stringify(m4));
    m5.version = m4.version + 1;
    const prefix5 = historyPrefix(pairId, m5.version);
    forged.writeUInt32LE(crc32c(forged.subarray(0, forged.length - 4)), forged.length - 4);
    const key5 = `${prefix5}run-0000.run`;
    await c.store.put(key5, Buffer.concat([first, forged]));
    m5.ranges['e:0'].pieces[0] = { ...m4.ranges['e:0'].pieces[0], key: key5 };
    m5.ranges['e:0'].pieces[1] = { ...m4.ranges['e:0'].pieces[1], key: key5, crc32c: forged.readUInt32LE(forged.length - 4) };
    await publish(m5, prefix5);
    await expect(recoverAt(4)).rejects.toThrow(new RegExp(`${key5.replace(/[.]/g, '\\.')}@${first.length}: piece checksum`));
    expect(await leases()).toEqual([]);
  });
});

describe('materialize after real compaction', () => {
  test('units fold the L0 into pieces and images: every live RP reads bit for bit with the folded journal deleted; RPs a later unit did not retain are pruned', async () => {
    const disks = [{ name: 'd', sizeBytes: 8 * MiB }];
    const id = newPairId('histc');
    const src = new SourceModel(disks);
    const keys = new Map<number, string>();
    await createPair(c.index, { pairId: id, disks });
    // The test runs the units itself: the local stack's, which the apply path starts as the L0 grows, find the lease held.
    let held = (await c.history.acquireCompactor(id, 'test', Date.now(), LEASE_MS))!;
    const w = new BatchWriter({ pairId: id, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 2 * MiB, onUploaded: (b) => keys.set(b.seq, b.key) });
    const step = async (i: number) => {
      // A hot first range rewritten every time, a warm second one, a cold write now and then.
      const writes: [number, Buffer][] = [[(i % 8) * 64 * 1024, pattern(64 * 1024, 100 + i)], [RANGE + ((i * 37) % 200) * BLOCK_SIZE, pattern(8 * BLOCK_SIZE, 200 + i)]];
      if (i % 5 === 0) writes.push([RANGE + 2 * MiB + i * BLOCK_SIZE, pattern(BLOCK_SIZE, 300 + i)]);
      for (const [at, data] of writes) {
        src.write('d', at, data);
        await w.write('d', at, data);
      }
      const seq = await w.flush({ rp: true });
      src.snapshot(seq);
      return seq;
    };
    const read = async (seq: number) => {
      const img = Buffer.alloc(disks[0].sizeBytes);
      const res = await materialize(c.store, c.index, { pairId: id, seq, history: c.history, sinkFor: async () => ({ write: async (at, win) => void win.copy(img, at), close: async () => {}, abort: async () => {} }) });
      expect({ seq, diff: firstDifference(img, src.atSeq.get(seq)!.get('d')!) }).toEqual({ seq, diff: undefined });
      return res;
    };
    for (let i = 1; i <= 12; i++) await step(i);
    await waitForWatermark(c.index, id, 12, 60_000);
    await c.history.releaseCompactor(id, held);
    const folded: number[] = [];
    for (let unit = 1; ; unit++) {
      const res = await compactOnce({ store: c.store, index: c.index, history: c.history }, id, { holder: 'test', maxBatches: 4, imageBytes: 256 * 1024 });
      if (!res.published) break;
      expect(res.version).toBe(unit);
      folded.push(...res.foldedSeqs);
    }
    expect(folded).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    // Until GC collects a batch, a reader without the history index still reads the whole L0 (as version 0).
    const old = Buffer.alloc(disks[0].sizeBytes);
    await materialize(c.store, c.index, { pairId: id, seq: 9, sinkFor: async () => ({ write: async (at, win) => void win.copy(old, at), close: async () => {}, abort: async () => {} }) });
    expect(firstDifference(old, src.atSeq.get(9)!.get('d')!)).toBeUndefined();
    await c.history.deleteBatchItems(id, folded);
    await c.deleter.deleteKeys(folded.map((s) => keys.get(s)!));
    let most = 0;
    for (let seq = 1; seq <= 12; seq++) {
      const res = await read(seq);
      expect(res.manifestVersion).toBe(3);
      expect(res.segments).toBe(0);
      most = Math.max(most, res.sources);
    }
    // The bound recovery met is the one the manifest promises (core/read-sources.ts readBound).
    const manifestNow = async () => (await currentManifest(c.store, c.history, (await c.index.getPair(id))!)).manifest;
    expect(most).toBe(readBound(await manifestNow(), [], Array.from({ length: 12 }, (_, i) => i + 1)).max);
    expect(most).toBeGreaterThan(1); // pieces were read, not only images
    expect(most).toBeLessThanOrEqual(13);

    // Two more batches; a unit 40 days on, when every RP has expired, keeps only the cut (14).
    held = (await c.history.acquireCompactor(id, 'test', Date.now(), LEASE_MS))!;
    await step(13);
    await step(14);
    await waitForWatermark(c.index, id, 14, 60_000);
    expect((await read(14)).segments).toBe(2);
    await c.history.releaseCompactor(id, held);
    const later = Date.now() + 40 * 86_400_000;
    const res = await compactOnce({ store: c.store, index: c.index, history: c.history }, id, { holder: 'test', nowMs: later, imageBytes: 256 * 1024 });
    expect(res).toMatchObject({ published: true, frontierSeq: 14 });
    await c.history.deleteBatchItems(id, [13, 14]);
    await c.deleter.deleteKeys([keys.get(13)!, keys.get(14)!]);
    const settled = await read(14);
    expect(settled).toMatchObject({ manifestVersion: 4, segments: 0 });
    expect(settled.sources).toBe(readBound(await manifestNow(), [], [14]).max);
    expect(settled.sources).toBeLessThanOrEqual(3); // settled: an image and a piece or two
    for (const seq of [1, 12, 13]) await expect(read(seq)).rejects.toThrow(HistoryPrunedError); // live RPs by today's clock, pruned by the unit's
    expect(await c.history.listReaderLeases(id, Date.now())).toEqual([]);
  });
});
