// A compaction unit over the embedded stack: replicate a hot/cold workload with an RP per
// batch, compact, and read every live RP through the manifest (images, pieces, the L0 above
// the frontier) against the source model; crashes before publish, lease fencing, and an
// object corrupted between write and verify.

import { CorruptHistoryError } from '../core/errors';
import type { Manifest } from '../core/manifest';
import { readBound, readable } from '../core/read-sources';
import { MemoryHistory } from '../adapters/memory-history';
import { compactOnce, currentManifest, type CompactOptions, type CompactResult } from '../replica/compactor';
import { gcOnce } from '../replica/gc';
import { manifestOf } from '../replica/history-manifest';
import { materialize } from '../replica/materialize';
import { createPair, waitForWatermark } from '../replica/pairs';
import type { ObjectStore, PutOptions } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { cloud, firstDifference, newPairId, pattern, SourceModel } from './helpers';
import { loadBatches, median, readDiskAt, type L0Entry } from './history-read';

const KiB = 1024;
const MiB = 1024 * KiB;
const disks = [{ name: 'd0', sizeBytes: 24 * MiB }];

/** A store that can corrupt what it is given to keep (between a unit's write and its read-back). */
class FaultyStore implements ObjectStore {
  corrupt?: RegExp;
  readonly puts: string[] = [];
  constructor(private readonly inner: ObjectStore) {}
  async put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    this.puts.push(key);
    if (this.corrupt?.test(key)) {
      body = Buffer.from(body);
      body[body.length >> 1] ^= 0x40;
    }
    return this.inner.put(key, body, opts);
  }
  get: ObjectStore['get'] = (...a) => this.inner.get(...a);
  upload: ObjectStore['upload'] = (...a) => this.inner.upload(...a);
  size: ObjectStore['size'] = (...a) => this.inner.size(...a);
}

interface Replicated {
  pairId: string;
  model: SourceModel;
  seqs: number[];
  ingestedBytes: number;
}

/**
 * `n` batches, one RP each: every batch writes 2 scattered 16 KiB blocks runs in the hot
 * 4 MiB (range 0) and one 64 KiB run in range 1; every 8th also writes 256 KiB somewhere in
 * the cold ranges 2..5, and every 10th zeroes 32 KiB of the hot range.
 */
async function replicate(pairId: string, n: number, start = 0, model = new SourceModel(disks)): Promise<Replicated> {
  const c = cloud();
  if (start === 0) await createPair(c.index, { pairId, disks, ccrpIntervalMs: 3600_000 });
  const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 4 * MiB, firstSeq: start + 1 });
  const seqs: number[] = [];
  const write = async (offset: number, data: Buffer): Promise<void> => {
    model.write('d0', offset, data);
    await w.write('d0', offset, data);
  };
  for (let i = start; i < start + n; i++) {
    await write((((i * 37) % 250) * 16 * KiB), pattern(16 * KiB, i * 3 + 1));
    await write((((i * 91 + 7) % 250) * 16 * KiB), pattern(16 * KiB, i * 3 + 2));
    await write(4 * MiB + ((i * 5) % 60) * 64 * KiB, pattern(64 * KiB, i * 3 + 3));
    if (i % 8 === 0) await write(8 * MiB + ((i * 13) % 60) * 256 * KiB, pattern(256 * KiB, 1000 + i));
    if (i % 10 === 5) {
      const at = ((i * 11) % 120) * 32 * KiB;
      model.zero('d0', at, 32 * KiB);
      await w.zero('d0', at, 32 * KiB);
    }
    const seq = await w.flush({ rp: true });
    model.snapshot(seq);
    seqs.push(seq);
  }
  await waitForWatermark(c.index, pairId, seqs[seqs.length - 1], 60_000);
  const batches = await c.index.batchesAfter(pairId, 0, 10_000);
  return { pairId, model, seqs, ingestedBytes: batches.reduce((x, b) => x + b.sizeBytes, 0) };
}

async function loadL0(store: ObjectStore, pairId: string): Promise<Map<number, L0Entry>> {
  return loadBatches(store, await cloud().index.batchesAfter(pairId, 0, 10_000));
}

/**
 * The reference reader's GETs, each made once: history objects never change under their key
 * (the RPs of one check read the same images and pieces over and over).
 */
function onceReads(store: ObjectStore): ObjectStore {
  const got = new Map<string, Promise<Buffer>>();
  return {
    put: (key, body, opts) => store.put(key, body, opts),
    upload: (key, body) => store.upload(key, body),
    size: (key) => store.size(key),
    get: (key, range, maxBytes) => {
      const id = `${key}@${range?.start}-${range?.end}`;
      if (!got.has(id)) got.set(id, store.get(key, range, maxBytes));
      return got.get(id)!;
    },
  };
}

/** Reads every live RP at `nowMs` through the manifest in force; returns the per-range object counts. */
async function checkLiveRps(store: ObjectStore, history: MemoryHistory, r: Replicated, nowMs: number): Promise<{ counts: number[]; rps: number[]; m: Manifest }> {
  const c = cloud();
  const pair = (await c.index.getPair(r.pairId))!;
  const { manifest: m } = await currentManifest(store, history, pair);
  const l0 = await loadL0(store, r.pairId);
  const reference = onceReads(store);
  const rps = (await c.index.listRecoveryPoints(r.pairId, Math.floor(nowMs / 1000))).map((x) => x.seq);
  const counts: number[] = [];
  for (const [i, k] of rps.entries()) {
    expect({ k, readable: readable(m, k) }).toEqual({ k, readable: true });
    const want = r.model.atSeq.get(k)!.get('d0')!;
    const image = await readDiskAt(reference, m, l0, 'd0', disks[0].sizeBytes, k, counts);
    expect({ k, diff: firstDifference(image, want) }).toEqual({ k, diff: undefined });
    // Recovery itself (replica/materialize.ts, through the manifest) on every 4th RP and the newest.
    if (i % 4 === 0 || i === rps.length - 1) {
      const got = Buffer.alloc(want.length);
      await materialize(store, c.index, { pairId: r.pairId, seq: k, history, nowMs, sinkFor: async () => ({ write: async (at, w) => void w.copy(got, at), close: async () => {}, abort: async () => {} }) });
      expect({ k, materialized: firstDifference(got, want) }).toEqual({ k, materialized: undefined });
    }
  }
  return { counts, rps, m };
}


/** Units until one has nothing to fold. */
async function compactAll(store: ObjectStore, history: MemoryHistory, pairId: string, o: Partial<CompactOptions> & { nowMs?: () => number } = {}): Promise<CompactResult[]> {
  const out: CompactResult[] = [];
  for (;;) {
    const res = await compactOnce({ store, index: cloud().index, history }, pairId, { holder: 'test', ...o });
    if (!res.published) {
      expect(res.reason).toMatch(/nothing to fold/);
      return out;
    }
    out.push(res);
  }
}

describe('compactOnce', () => {
  test('hot/cold workload, an RP per batch: every live RP reads bit-exact through the manifest, before and after RPs expire', async () => {
    const history = new MemoryHistory();
    const store = new FaultyStore(cloud().store);
    const r = await replicate(newPairId('cmp'), 48);
    const pairId = r.pairId;
    const cfg = { imageBytes: Number(process.env.COMPACT_IMAGE_KIB ?? 512) * KiB, maxBatches: Number(process.env.COMPACT_MAX_BATCHES ?? 4) };
    const before = await checkLiveRps(store, history, r, Date.now());
    expect(before.m.version).toBe(0);

    const units = await compactAll(store, history, pairId, cfg);
    expect(units.length).toBeGreaterThanOrEqual(12);
    const after = await checkLiveRps(store, history, r, Date.now());
    expect(after.m.frontierSeq).toBe(r.seqs[r.seqs.length - 1]);
    expect(after.rps).toEqual(before.rps); // nothing expired: every RP still reads
    const l0 = [...(await loadL0(store, pairId))].map(([seq, x]) => ({ seq, ranges: x.ranges }));
    const bound = readBound(after.m, l0, after.rps);
    expect(bound.unreadable).toEqual([]);
    expect(bound.max).toBeLessThanOrEqual(5); // settled: ≤ 1 image + 4 pieces
    // Every image and piece each unit wrote is referenced or listed as removed by a later one.
    const written = units.reduce((n, u) => n + u.written.bytes, 0);

    // Two hours later, most RPs have expired: another 16 batches, then compaction drops what only they saw.
    const more = await replicate(pairId, 16, 48, r.model);
    const r2 = { ...r, seqs: [...r.seqs, ...more.seqs], ingestedBytes: more.ingestedBytes };
    const later = Date.now() + 2 * 3600_000;
    const units2 = await compactAll(store, history, pairId, { ...cfg, nowMs: () => later });
    expect(units2.flatMap((u) => u.foldedSeqs)).toEqual(more.seqs); // 4 folding units, then any prune-only ones
    const final = await checkLiveRps(store, history, r2, later);
    expect(final.m.retained.length).toBeLessThan(final.rps.length + 8);
    expect(final.rps.length).toBeLessThan(r2.seqs.length / 2);
    expect(final.m.retained).toEqual(expect.arrayContaining(final.rps.filter((s) => s <= final.m.frontierSeq)));
    const written2 = written + units2.reduce((n, u) => n + u.written.bytes, 0);
    const imageBytes = [...units, ...units2].reduce((n, u) => n + u.written.imageBytes, 0);
    const stored = [...referenced(final.m)].length;
    // The figures the report quotes.
    console.log(JSON.stringify({
      batches: r2.seqs.length,
      ingested_bytes: r2.ingestedBytes,
      compaction_put_bytes: written2,
      put_bytes_ratio: +(written2 / r2.ingestedBytes).toFixed(3),
      image_put_bytes: imageBytes,
      put_bytes_ratio_first_48: +(written / r.ingestedBytes).toFixed(3),
      sources_before: { max: Math.max(...before.counts), p50: median(before.counts) },
      sources_after: { max: Math.max(...after.counts), p50: median(after.counts) },
      sources_after_expiry: { max: Math.max(...final.counts), p50: median(final.counts) },
      units: units.length + units2.length,
      objects_referenced: stored,
      retained: final.m.retained.length,
    }));
    expect(Math.max(...before.counts)).toBeGreaterThan(Math.max(...after.counts));
  });

  test('a crash after the objects are written, or after the manifest, leaves the old version in force; the next unit publishes', async () => {
    const history = new MemoryHistory();
    const store = new FaultyStore(cloud().store);
    const r = await replicate(newPairId('crash'), 10);
    let t = Date.now();
    const deps = { store, index: cloud().index, history };
    const first = await compactOnce(deps, r.pairId, { holder: 'a', maxBatches: 4, imageBytes: 256 * KiB, nowMs: () => t });
    expect(first.published).toBe(true);
    for (const step of ['written', 'verified', 'manifest'] as const) {
      const crash = compactOnce(deps, r.pairId, { holder: 'b', maxBatches: 4, imageBytes: 256 * KiB, nowMs: () => t, onStep: (s) => { if (s === step) throw new Error(`crash at ${s}`); } });
      await expect(crash).rejects.toThrow(`crash at ${step}`);
      expect((await history.getHistory(r.pairId)).version).toBe(1);
      await checkLiveRps(store, history, r, t);
      t += 60_000;
    }
    expect(store.puts.filter((k) => k.endsWith('manifest.json'))).toHaveLength(2); // the first unit's, and the one that crashed after it
    const next = await compactOnce(deps, r.pairId, { holder: 'c', maxBatches: 4, imageBytes: 256 * KiB, nowMs: () => t });
    expect(next).toMatchObject({ published: true, version: 2 });
    await checkLiveRps(store, history, r, t);
  });

  test('lease fencing: a second holder cannot start, and a unit whose lease was taken over publishes nothing', async () => {
    const history = new MemoryHistory();
    const store = cloud().store;
    const r = await replicate(newPairId('fence'), 8);
    const deps = { store, index: cloud().index, history };
    let t = Date.now();
    let release!: () => void;
    const paused = new Promise<void>((res) => (release = res));
    let reached!: () => void;
    const atVerified = new Promise<void>((res) => (reached = res));
    const stalled = compactOnce(deps, r.pairId, { holder: 'slow', leaseTtlMs: 30_000, nowMs: () => t, onStep: async (s) => { if (s === 'verified') { reached(); await paused; } } });
    await atVerified;
    // While the lease is live, another holder gets nothing.
    expect(await compactOnce(deps, r.pairId, { holder: 'other', nowMs: () => t })).toMatchObject({ published: false, reason: expect.stringMatching(/holds the compactor lease/) });
    // The stalled unit's lease expires; another takes over and publishes version 1.
    t += 60_000;
    expect(await compactOnce(deps, r.pairId, { holder: 'other', maxBatches: 4, nowMs: () => t })).toMatchObject({ published: true, version: 1 });
    release();
    expect(await stalled).toMatchObject({ published: false, reason: expect.stringMatching(/lost the compactor lease|moved/) });
    expect((await history.getHistory(r.pairId)).version).toBe(1);
    await checkLiveRps(store, history, r, t);
  });

  test('with nothing new to fold, a unit still prunes what expired RPs alone saw (prune-only: frontier unchanged)', async () => {
    const history = new MemoryHistory();
    const store = cloud().store;
    const r = await replicate(newPairId('prune'), 12);
    const first = await compactAll(store, history, r.pairId, { maxBatches: 4 });
    const frontier = first[first.length - 1].frontierSeq;
    const later = Date.now() + 3 * 3600_000;
    const pruned = await compactAll(store, history, r.pairId, { maxBatches: 4, nowMs: () => later });
    expect(pruned.length).toBe(1);
    expect(pruned[0]).toMatchObject({ published: true, frontierSeq: frontier, foldedSeqs: [] });
    expect(pruned[0].removedKeys.length).toBeGreaterThanOrEqual(1); // the old manifest, and any piece only expired RPs read
    const { m } = await checkLiveRps(store, history, r, later);
    expect(m.retained.length).toBeLessThan(4);
    // Once pruned, nothing more to do: the next call publishes nothing.
    expect(await compactOnce({ store, index: cloud().index, history }, r.pairId, { holder: 't', nowMs: later })).toMatchObject({ published: false, reason: expect.stringMatching(/nothing to fold or prune/) });
  });

  test("a reader lease's seq stays readable after its RP expired", async () => {
    const history = new MemoryHistory();
    const store = cloud().store;
    const r = await replicate(newPairId('lease'), 10);
    const later = Date.now() + 3 * 3600_000;
    await history.putReaderLease(r.pairId, { id: 'rec-1', kind: 'recovery', seq: r.seqs[2], manifestVersion: 0, expiresMs: later + 600_000 });
    const units = await compactAll(store, history, r.pairId, { maxBatches: 4, nowMs: () => later });
    expect(units.length).toBeGreaterThan(0);
    const pair = (await cloud().index.getPair(r.pairId))!;
    const { manifest: m } = await currentManifest(store, history, pair);
    expect(m.retained).toContain(r.seqs[2]);
    const l0 = await loadBatches(store, (await cloud().index.batchesAfter(r.pairId, m.frontierSeq, 100)));
    const got = await readDiskAt(store, m, l0, 'd0', disks[0].sizeBytes, r.seqs[2]);
    expect(firstDifference(got, r.model.atSeq.get(r.seqs[2])!.get('d0')!)).toBeUndefined();
    // Without the lease that seq would not be kept: the expired RPs around it are not.
    expect(m.retained).not.toContain(r.seqs[1]);
  });

  test.each([['a run', /run-\d+\.run$/], ['an image', /image-[0-9a-f]+\.chunk$/], ['a manifest part', /part-\d+\.json\.gz$/]])('%s corrupted between write and verify is caught; nothing is published', async (_what, pattern) => {
    const history = new MemoryHistory();
    const store = new FaultyStore(cloud().store);
    const r = await replicate(newPairId('rot'), 6);
    store.corrupt = pattern;
    const res = compactOnce({ store, index: cloud().index, history }, r.pairId, { holder: 'a', imageBytes: 64 * KiB });
    await expect(res).rejects.toThrow(CorruptHistoryError);
    await expect(res).rejects.toThrow(/pairs\/.*\/history\/00000000000000000001-[0-9a-f]{16}\//);
    expect(store.puts.filter((k) => k.endsWith('manifest.json'))).toEqual([]);
    expect(await history.getHistory(r.pairId)).toMatchObject({ version: 0 });
    await checkLiveRps(store, history, r, Date.now());
  });
});

test('manifest parts: a unit writes the head and the parts of the groups it planned; every other group keeps its part object, and the replaced part is in removedKeys', async () => {
  const c = cloud();
  const pairId = newPairId('parts');
  const big = [{ name: 'd0', sizeBytes: 128 * MiB }];
  await createPair(c.index, { pairId, disks: big, ccrpIntervalMs: 3600_000 });
  const model = new SourceModel(big);
  const w = new BatchWriter({ pairId, disks: big, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 4 * MiB, firstSeq: 1 });
  const history = new MemoryHistory();
  const store = new FaultyStore(c.store);
  const batch = async (writes: [number, number][]): Promise<number> => {
    for (const [at, n] of writes) {
      model.write('d0', at, pattern(16 * KiB, n));
      await w.write('d0', at, pattern(16 * KiB, n));
    }
    const seq = await w.flush({ rp: true });
    model.snapshot(seq);
    await waitForWatermark(c.index, pairId, seq, 60_000);
    return seq;
  };
  // Range 0 is group d0:0, range 20 (80 MiB) group d0:1.
  await batch([[0, 1], [80 * MiB, 2]]);
  const deps = { store, index: c.index, history };
  expect(await compactOnce(deps, pairId, { holder: 't' })).toMatchObject({ published: true, version: 1 });
  const pair = async () => (await c.index.getPair(pairId))!;
  const m1 = (await currentManifest(store, history, await pair())).manifest;
  expect(m1.parts!.map((p) => p.group)).toEqual(['d0:0', 'd0:1']);
  const seq2 = await batch([[16 * KiB, 3]]);
  store.puts.length = 0;
  const u2 = await compactOnce(deps, pairId, { holder: 't' });
  expect(u2.published).toBe(true);
  const read2 = await manifestOf(store, await pair(), await history.getHistory(pairId));
  const m2 = read2.manifest;
  // The compactor's own reads come from its part cache: the head alone.
  expect(await currentManifest(store, history, await pair())).toMatchObject({ manifest: m2, gets: 1 });
  expect(store.puts.filter((k) => k.includes('/part-'))).toEqual([m2.parts![0].key]);
  expect(m2.parts![0].key).not.toBe(m1.parts![0].key);
  expect(m2.parts![1]).toEqual(m1.parts![1]); // d0:1 untouched: the same object
  expect(read2.gets).toBe(3); // head + 2 parts
  expect(u2.removedKeys).toContain(m1.parts![0].key);
  expect(u2.removedKeys).not.toContain(m1.parts![1].key);
  // Both ranges read back through the reused and the new part.
  const got = Buffer.alloc(big[0].sizeBytes);
  await materialize(store, c.index, { pairId, seq: seq2, history, nowMs: Date.now(), sinkFor: async () => ({ write: async (at, b) => void b.copy(got, at), close: async () => {}, abort: async () => {} }) });
  expect(firstDifference(got, model.atSeq.get(seq2)!.get('d0')!)).toBeUndefined();
  // GC past the grace: the replaced part goes with version 1's head; the reused one stays, and version 2 still reads.
  const later = Date.now() + 2 * 3600_000;
  expect(await gcOnce({ store: c.store, deleter: c.deleter, history }, pairId, { nowMs: later })).toMatchObject({ gcVersion: 2 });
  const left = new Set(await c.store.listKeys(`pairs/${pairId}/history/`));
  expect([m1.parts![0].key, m1.parts![1].key, m2.parts![0].key].map((k) => left.has(k))).toEqual([false, true, true]);
  expect((await manifestOf(store, await pair(), await history.getHistory(pairId))).manifest).toEqual(m2);
});

function referenced(m: Manifest): Set<string> {
  const out = new Set<string>();
  for (const r of Object.values(m.ranges)) {
    for (const i of r.images) if (!i.zero) out.add(i.key);
    for (const q of r.pieces) out.add(q.key);
  }
  return out;
}
