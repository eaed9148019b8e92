// npm run bench:history — a simulated week of one pair at compressed time, in this process,
// on an injected clock, through the code the Lambdas run: ApplyService (replica/apply.ts) for
// every batch and RP check, the compaction workflow's handlers (lambdas/compact.ts: a run is
// compactOnce units while `more`) started when compactionDue (core/compaction-trigger.ts) says
// so after an advance and every 15 simulated minutes, gcOnce (replica/gc.ts, 1 h grace) on
// the 15-minute schedule, materialize (replica/materialize.ts, through the history) for the
// recoveries. Adapters: MemoryObjectStore, MemoryIndex, MemoryHistory, MemoryRpChecks, each
// behind a request meter. The same batches (same keys, same bytes, same order) go to a second
// pair store that never compacts: the uncompacted figures come from the same run.
// Prints one JSON line on stdout; progress on stderr.
//
// Workload (seeded, BENCH_HISTORY_SEED): disk0 of 16 GiB whose first 1 GiB is a seeded base
// of random data (BENCH_HISTORY_BASE_MIB; 0 = none); the rest is never written. One batch
// per simulated second for 8 busy hours a day (09:00–17:00 UTC), one extent each: 80% in a
// hot 2 MiB, 15% in a warm 32 MiB, 5% uniform over the base's 1 GiB (the disk's allocated
// part: so the data a recovery reads is the same on day 1 and day 7, and the day-7/day-1
// ratio measures history, not growth); length 1–16 blocks (geometric, p = 0.35: mean 2.8
// blocks, 11.3 KiB); random (incompressible) data. The batch at the end of each busy hour is
// application-consistent (an ACRP); crash RPs every 5 s (ccrpIntervalMs 5000);
// DEFAULT_RETENTION.
//
// Scale: 10 GiB a day over 28,800 busy seconds is 364 KiB a batch; this writes 1/32 of it
// (`scale` 32), and the hot and warm regions are 1/32 of 64 MiB and 1 GiB, so the writes a
// block gets per second are production's. Batch, RP, unit and request counts are real;
// `at_10GiB_day` multiplies what grows with the bytes (stored, batch and data PUT bytes) by 32
// and leaves what does not (manifests: one per unit, sized by ranges and pieces) as it is.
//
// Fields:
//   stored_bytes_ratio     bytes of every object under the pair (base, journal, history) /
//                          bytes the live RPs need: distinct (block, version) pairs some live
//                          RP at the end of the week sees, 4 KiB each, counted once (the base's
//                          version of a block included while a live RP still sees it).
//                          _above_base: the same without the base (its objects, its versions)
//   max_sources_per_read, p50_sources_per_read: core/read-sources.ts readBound over every live
//                          RP x range with data, hourly (day and night); the max of the hourly
//                          max, the max of the hourly p50 (worst: where the max was)
//   recover_latest_s_day1/dayN, recover_latest_s_day7_vs_day1: materialize of the newest RP
//                          at the end of the first and last busy day (after the RP timer made
//                          the watermark an RP, before the next scheduled run), wall seconds
//                          through a latency model (15 ms to first byte, 90 MB/s per GET, 16
//                          GETs in flight) into a sink that checks every byte against the model;
//                          each the median of BENCH_HISTORY_RECOVERY_REPS (3) runs alternated with
//                          the plain download below, each after a full GC (recover_samples_s).
//                          recover_vs_raw_day7_vs_day1: the same against the plain download at the
//                          same moment (the bench's model and stores grow in this process and slow
//                          both); recover_gets_/recover_mib_day7_vs_day1: what recovery read
//   materialize_ratio_vs_raw: raw seconds / recovery seconds on the last day, raw = the
//                          recovered data bytes as 4 MiB ranged GETs of one object through the
//                          same model into the same checking sink (target >= 0.5); recover_cpu_s_dayN and raw_download_cpu_s
//                          the CPU seconds of each (every thread), which the shared core makes
//                          the steadier figure. The sink compares a window of the newest RP
//                          with the model in one pass (block CRCs only to say where it differs)
//   put_bytes_ratio        compaction PUT bytes (runs, images, manifests) / batch bytes PUT
//   put_bytes_floor        core/merge-floor.ts: the least merge + image bytes per byte ingested
//                          any compaction needs under the read bound (budget 13) for items of
//                          this run's size (item_kib: data per (batch, range) pair): `fold` when
//                          every batch is folded (its best split of the budget), `free` when
//                          batches may stay read sources, `this_split` the design's split (4
//                          batches a fold, 4 pieces); at_10GiB_day_fold modelled at scale 1
//   orphan_bytes_after_gc  after the last day, GC on the schedule until grace has passed since
//                          the last unit: bytes under the pair no current manifest, base, L0
//                          batch item or uncollected VERSION# record references
//   requests_per_day       requests by kind over the simulated days (the recoveries and the
//                          bench's own sampling not counted), DynamoDB in request units (a
//                          strongly consistent read: 1 per 4 KB, items estimated at 250 bytes; a
//                          write 1 per item, 2 in a transaction), priced with core/cost-model.ts
//                          US_EAST_1 (S3 list counted as a PUT-class request), and the compaction
//                          workflow's Step Functions state transitions (2 a unit, 1 a run, 1 more
//                          for the schedule's runs' GC; usd_sfn, in usd)
//   compaction_mib_s       (bytes read + written by units) / wall seconds inside units
//   uncompacted            the same workload without compaction: recovery day 1 / day N,
//                          stored bytes and objects
// BENCH_HISTORY_DAYS (default 7) shortens the week (the last day's figures are then "dayN").

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { MemoryHistory } from '../adapters/memory-history';
import { MemoryIndex } from '../adapters/memory-index';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { MemoryRpChecks } from '../adapters/memory-rp-checks';
import { BATCH_FLAGS, BLOCK_SIZE, encodeBatch } from '../core/batch-format';
import { CHUNK_BYTES, encodeChunk } from '../core/chunk-format';
import { compactionDue, L0_TRIGGER } from '../core/compaction-trigger';
import { crc32c } from '../core/crc32c';
import { SFN_STANDARD_TRANSITION_USD, US_EAST_1 } from '../core/cost-model';
import { manifestRefs } from '../core/gc-plan';
import { baseChunkKey, baseManifestKey, journalKey } from '../core/keys';
import { MAX_PIECES_PER_SPAN, parseRangeId, rangeId, RANGE_BLOCKS, type Manifest, type RangeId } from '../core/manifest';
import { foldFloor, freeFloor, mergeCostTable, splitFloor } from '../core/merge-floor';
import type { Pair } from '../core/model';
import { readBound, type L0Batch } from '../core/read-sources';
import { decodePiece } from '../core/run-format';
import { DEFAULT_RETENTION } from '../core/retention';
import { countAtOrBelow } from '../core/sorted';
import type { BaseManifest } from '../core/seed-manifests';
import { compactHandlers } from '../lambdas/compact';
import { ApplyService } from '../replica/apply';
import { mapLimit } from '../replica/concurrency';
import { gcOnce } from '../replica/gc';
import { manifestOf, readManifest } from '../replica/history-manifest';
import { materialize, type ImageSink } from '../replica/materialize';
import type { ByteRange, HistoryIndex, KeyLister, ObjectDeleter, ObjectStore, PutOptions, ReplicaIndex } from '../replica/ports';
import { rng, type Rng } from '../source/workload';
import { round } from './measure';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const HOUR = 3600_000;
const DAY = 24 * HOUR;
const QUARTER = 15 * 60_000;
const DAYS = Number(process.env.BENCH_HISTORY_DAYS ?? 7);
const SEED = Number(process.env.BENCH_HISTORY_SEED ?? 15);
const BASE_BYTES = Number(process.env.BENCH_HISTORY_BASE_MIB ?? 1024) * MiB;
const SCALE = 32;
const DISK_BYTES = 16 * GiB;
/** Where the writes go (bytes): the base's 1 GiB (also without a base). */
const REGION = { hot: { at: 100 * MiB, size: 2 * MiB }, warm: { at: 512 * MiB, size: 32 * MiB }, uniform: { at: 0, size: 1 * GiB } };
const BUSY_FROM_H = 9;
/** Busy hours a day (BENCH_HISTORY_HOURS: fewer only while developing the bench). */
const BUSY_HOURS = Number(process.env.BENCH_HISTORY_HOURS ?? 8);
/** Recoveries (and plain downloads) of the newest RP at the end of the first and last day, alternated: medians (BENCH_HISTORY_RECOVERY_REPS). */
const RECOVERY_REPS = Number(process.env.BENCH_HISTORY_RECOVERY_REPS ?? 3);
const GRACE_MS = 60 * 60_000;
const PAIR = 'bench';
const DISK = 'disk0';
/** 2026-01-05 00:00 UTC, a Monday. */
const START_MS = Date.UTC(2026, 0, 5);

const log = (m: string): void => void process.stderr.write(`[bench:history] ${m}\n`);
// The handlers log every unit with console.log (lambdas/config.ts jsonLogger): stdout is for the result line alone.
console.log = () => {};
if (!Number.isInteger(RECOVERY_REPS) || RECOVERY_REPS < 1) throw new Error(`BENCH_HISTORY_RECOVERY_REPS must be a positive integer, not '${process.env.BENCH_HISTORY_RECOVERY_REPS}'`);
if (!Number.isInteger(DAYS) || DAYS < 1) throw new Error(`BENCH_HISTORY_DAYS must be a positive integer, not '${process.env.BENCH_HISTORY_DAYS}'`);
if (!(BASE_BYTES >= 0 && BASE_BYTES % CHUNK_BYTES === 0 && BASE_BYTES <= REGION.uniform.size)) throw new Error(`BENCH_HISTORY_BASE_MIB must be a multiple of 4 up to 1024`);

// ---------------------------------------------------------------------------------------
// Meters: requests by kind, S3 bytes by what the key is.

type Counts = Record<string, number>;
const add = (c: Counts, k: string, n = 1): void => void (c[k] = (c[k] ?? 0) + n);

const keyKind = (key: string): string =>
  key.includes('/journal/') ? 'batch' : key.includes('/history/') ? (key.endsWith('manifest.json') || key.includes('/part-') ? 'manifest' : key.includes('/image-') ? 'image' : 'run') : key.includes('/base/') ? 'base' : 'other';

/** An ObjectStore (and lister, deleter) that counts requests and bytes by key kind into `c`. */
class MeteredStore implements ObjectStore, KeyLister, ObjectDeleter {
  constructor(private readonly inner: MemoryObjectStore, readonly c: Counts) {}
  async put(key: string, body: Buffer, opts?: PutOptions): Promise<void> {
    add(this.c, 's3.put');
    add(this.c, `s3.put_bytes.${keyKind(key)}`, body.length);
    await this.inner.put(key, body, opts);
  }
  async get(key: string, range?: ByteRange, maxBytes?: number, versionId?: string): Promise<Buffer> {
    add(this.c, 's3.get');
    const b = await this.inner.get(key, range, maxBytes, versionId);
    add(this.c, `s3.get_bytes.${keyKind(key)}`, b.length);
    return b;
  }
  upload(key: string, body: NodeJS.ReadableStream & AsyncIterable<unknown>): Promise<void> {
    throw new Error(`bench: upload of ${key} not expected`);
  }
  async size(key: string): Promise<number | undefined> {
    add(this.c, 's3.head');
    return this.inner.size(key);
  }
  async listKeys(prefix: string, startAfter?: string): Promise<string[]> {
    const keys = await this.inner.listKeys(prefix, startAfter);
    add(this.c, 's3.list', Math.max(1, Math.ceil(keys.length / 1000)));
    return keys;
  }
  async deleteKeys(keys: string[]): Promise<void> {
    add(this.c, 's3.delete', Math.ceil(keys.length / 1000));
    add(this.c, 's3.deleted_keys', keys.length);
    await this.inner.deleteKeys(keys);
  }
}

/** DynamoDB request units of one call of a port method (result: what it returned). */
type DdbCost = (args: any[], result: any) => { rru?: number; wru?: number };
/** A strongly consistent Query returning n items of ~250 bytes. */
const query = (n: number): { rru: number } => ({ rru: Math.max(1, Math.ceil((n * 250) / 4096)) });
const get1 = { rru: 1 };
const write1 = { wru: 1 };
const DDB_COSTS: Record<string, DdbCost> = {
  getPair: () => get1,
  registerBatch: (_a, r) => (r.registered ? write1 : { wru: 1, rru: 1 }),
  batchesAfter: (_a, r) => query(r.length),
  segmentsUpTo: (_a, r) => query(r.length),
  commitAdvance: (a) => ({ wru: 2 * (1 + a[2].rps.length) }),
  commitRpCheck: (a) => (a[2].made ? { wru: 4 } : write1),
  quarantine: () => ({ wru: 2 }),
  listQuarantine: (_a, r) => query(r.length),
  listRecoveryPoints: (_a, r) => query(r.length),
  getRecoveryPoint: () => get1,
  getHistory: () => get1,
  acquireCompactor: () => write1,
  renewCompactor: () => write1,
  releaseCompactor: () => write1,
  // ConditionCheck + HISTORY + VERSION# (removed keys gzipped, ~12.7 bytes each: adapters/dynamo-history.ts) + PAIR, 2 units per KB each.
  publish: (a) => ({ wru: 2 * (3 + Math.max(1, Math.ceil((300 + a[3].removedKeys.length * 12.7) / 1024))) }),
  putReaderLease: () => write1,
  releaseReaderLease: () => write1,
  listReaderLeases: (_a, r) => query(r.length),
  versionsAfter: (_a, r) => ({ rru: Math.max(1, Math.ceil(r.reduce((n: number, v: { removedKeys: string[] }) => n + 300 + v.removedKeys.length * 12.7, 0) / 4096)) }),
  deleteBatchItems: (a) => ({ wru: a[1].length }),
  advanceGc: () => write1,
  deleteVersionRecord: () => write1,
};

/** The port behind a meter: each call counted as `ddb.{method}` and its request units. */
function metered<T extends object>(target: T, c: Counts): T {
  return new Proxy(target, {
    get(t, prop, recv) {
      const v = Reflect.get(t, prop, recv);
      const cost = typeof prop === 'string' ? DDB_COSTS[prop] : undefined;
      if (typeof v !== 'function' || !cost) return v;
      return async (...args: unknown[]) => {
        const r = await v.apply(t, args);
        const u = cost(args, r);
        add(c, `ddb.${String(prop)}`);
        add(c, 'ddb.rru', u.rru ?? 0);
        add(c, 'ddb.wru', u.wru ?? 0);
        return r;
      };
    },
  });
}

// ---------------------------------------------------------------------------------------
// The S3 latency model for recoveries: 15 ms to first byte, 90 MB/s per GET, 16 in flight.

const FIRST_BYTE_MS = 15;
const GET_BYTES_PER_MS = 90e6 / 1000;
const IN_FLIGHT = 16;

class LatencyStore implements ObjectStore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  gets = 0;
  bytes = 0;
  constructor(private readonly inner: Pick<ObjectStore, 'get'>) {}
  async get(key: string, range?: ByteRange, maxBytes?: number, versionId?: string): Promise<Buffer> {
    if (this.active >= IN_FLIGHT) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      const b = await this.inner.get(key, range, maxBytes, versionId);
      this.gets++;
      this.bytes += b.length;
      await new Promise((r) => setTimeout(r, FIRST_BYTE_MS + b.length / GET_BYTES_PER_MS));
      return b;
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
  put(): Promise<void> {
    throw new Error('the latency model only reads');
  }
  upload(): Promise<void> {
    throw new Error('the latency model only reads');
  }
  async size(): Promise<number | undefined> {
    throw new Error('the latency model only reads');
  }
}

// ---------------------------------------------------------------------------------------
// The workload and its model.

/** The disk's data region as the source last wrote it (the base, then every write), for checking recoveries. */
const model = Buffer.alloc(REGION.uniform.size);
/** Per written block, the seqs that wrote it, ascending (0 = the base's version). */
const versions = new Map<number, number[]>();
/** Per written block, the CRC-32C of each of its versions (parallel to `versions`): what a recovery at any RP must read. */
const crcs = new Map<number, number[]>();
const ZERO_BLOCK_CRC = crc32c(Buffer.alloc(BLOCK_SIZE));
/** Per seq, the range the batch touches (one extent, 1–16 blocks: at most two ranges). */
const batchRanges: Set<RangeId>[] = [];
let batchBytes = 0;
let extentBlocks = 0;
/** (batch, range) pairs: the items a range's history is built from (core/merge-floor.ts). */
let rangeTouches = 0;

function extentFor(r: Rng): { block: number; count: number } {
  let count = 1;
  while (count < 16 && r() >= 0.35) count++;
  const roll = r();
  const reg = roll < 0.8 ? REGION.hot : roll < 0.95 ? REGION.warm : REGION.uniform;
  const blocks = reg.size / BLOCK_SIZE;
  count = Math.min(count, blocks);
  const block = reg.at / BLOCK_SIZE + Math.floor(r() * (blocks - count + 1));
  return { block, count };
}

function makeBatch(r: Rng, seq: number, cutMs: number, app: boolean): { key: string; body: Buffer } {
  const { block, count } = extentFor(r);
  const data = randomBytes(count * BLOCK_SIZE);
  data.copy(model, block * BLOCK_SIZE);
  lastWrittenSeq = seq;
  for (let b = block; b < block + count; b++) {
    const crc = crc32c(data.subarray((b - block) * BLOCK_SIZE, (b - block + 1) * BLOCK_SIZE));
    const list = versions.get(b);
    if (list) {
      list.push(seq);
      crcs.get(b)!.push(crc);
    } else {
      versions.set(b, [seq]);
      crcs.set(b, [crc]);
    }
  }
  const ranges = new Set<RangeId>();
  for (let b = block; b < block + count; b += 1) ranges.add(rangeId(DISK, Math.floor(b / 1024)));
  batchRanges[seq] = ranges;
  rangeTouches += ranges.size;
  extentBlocks += count;
  const body = encodeBatch(
    { pairId: PAIR, seq, prevSeq: seq - 1, firstWriteMs: cutMs - 1000, cutMs, flags: app ? BATCH_FLAGS.APP_CONSISTENT : 0, appTag: app ? 'hourly' : undefined, disks: [DISK] },
    [{ disk: 0, blockIndex: block, data }],
  );
  batchBytes += body.length;
  return { key: journalKey(PAIR, seq, seq.toString(16).padStart(16, '0')), body };
}

/** Base chunks of random data over [0, BASE_BYTES), the same objects in every store. */
async function makeBase(stores: MemoryObjectStore[]): Promise<Pair['base']> {
  if (BASE_BYTES === 0) return undefined;
  randomBytesInto(model.subarray(0, BASE_BYTES));
  const chunks: BaseManifest['disks'][number]['chunks'] = [];
  await mapLimit(Array.from({ length: BASE_BYTES / CHUNK_BYTES }, (_, i) => i), 4, async (i) => {
    const { body, ref } = await encodeChunk(i, model.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES));
    for (const s of stores) await s.put(baseChunkKey(PAIR, ref.sha256), body);
    chunks[i] = [i, ref.sha256, ref.crc32c, ref.length];
  });
  for (let b = 0; b < BASE_BYTES / BLOCK_SIZE; b++) {
    versions.set(b, [0]);
    crcs.set(b, [crc32c(model.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE))]);
  }
  const manifest: BaseManifest = { format: 'livesync-base', version: 1, pairId: PAIR, seedId: 'bench', baseSeq: 0, firstRpSeq: 0, source: 's3://bench/base', createdMs: START_MS, chunkBytes: CHUNK_BYTES, disks: [{ name: DISK, sizeBytes: DISK_BYTES, chunks }] };
  const key = baseManifestKey(PAIR, 'bench');
  for (const s of stores) await s.put(key, Buffer.from(JSON.stringify(manifest)));
  return { key, baseSeq: 0, firstRpSeq: 0 };
}

function randomBytesInto(buf: Buffer): void {
  for (let at = 0; at < buf.length; at += 64 * MiB) randomBytes(Math.min(64 * MiB, buf.length - at)).copy(buf, at);
}

// ---------------------------------------------------------------------------------------
// One pair store: its adapters, its apply service; the compacted one has its workflow too.

interface Peer {
  name: string;
  objects: MemoryObjectStore;
  index: MemoryIndex;
  history: MemoryHistory;
  checks: MemoryRpChecks;
  apply: ApplyService;
  c: Counts;
}

let nowMs = START_MS;
const clock = (): number => nowMs;

async function newPeer(name: string, objects: MemoryObjectStore, base: Pair['base']): Promise<Peer> {
  const c: Counts = {};
  const index = new MemoryIndex(clock);
  const history = new MemoryHistory(index.historyHooks());
  const checks = new MemoryRpChecks(clock);
  const pair: Pair = { pairId: PAIR, state: 'REPLICATING', stateChangedMs: START_MS, disks: [{ name: DISK, sizeBytes: DISK_BYTES }], ccrpIntervalMs: 5000, retention: DEFAULT_RETENTION, createdMs: START_MS, watermark: 0, ...(base ? { base } : {}) };
  await index.createPair(pair);
  const apply = new ApplyService(new MeteredStore(objects, c), metered<ReplicaIndex>(index, c), undefined, clock, undefined, checks);
  return { name, objects, index, history, checks, apply, c };
}

/** Bytes and objects under the pair. */
function storedBytes(objects: MemoryObjectStore, filter: (key: string) => boolean = () => true): { bytes: number; objects: number } {
  let bytes = 0;
  let n = 0;
  for (const [k, v] of objects.objects) {
    if (!k.startsWith(`pairs/${PAIR}/`) || !filter(k)) continue;
    bytes += v.length;
    n++;
  }
  return { bytes, objects: n };
}

/** Distinct (block, version) pairs the live RPs see (the base's version 0 included or not). */
function neededBlocks(points: readonly number[], withBase: boolean): number {
  if (points.length === 0) return 0;
  let n = 0;
  for (const vs of versions.values()) {
    // Version vs[i] is seen iff some point p has vs[i] <= p < vs[i + 1].
    for (let i = 0; i < vs.length; i++) {
      if (vs[i] === 0 && !withBase) continue;
      const hi = i + 1 < vs.length ? vs[i + 1] : Infinity;
      const j = firstAtOrAbove(points, vs[i]);
      if (j < points.length && points[j] < hi) n++;
    }
  }
  return n;
}

/** Index of the first element of ascending `a` (integer seqs) that is ≥ v. */
const firstAtOrAbove = (a: readonly number[], v: number): number => countAtOrBelow(a, v - 1);

async function currentManifest(p: Peer, pair: Pair): Promise<Manifest> {
  return (await manifestOf(p.objects, pair, await p.history.getHistory(PAIR))).manifest;
}

async function livePoints(p: Peer): Promise<number[]> {
  return (await p.index.listRecoveryPoints(PAIR, Math.floor(nowMs / 1000))).map((r) => r.seq);
}

/** What a recovery at RP k got wrong: blocks whose bytes are not the newest version <= k. */
interface Mismatch {
  seq: number;
  badBlocks: number;
  first?: { block: number; range: RangeId; expectedSeq: number; got: string; versionsNear: number[] };
}
const mismatches: Mismatch[] = [];
/** The seq of the newest batch in `model`: an RP at or above it must read exactly `model`. */
let lastWrittenSeq = 0;

/**
 * A sink that checks every block of the data region against the version an RP at `seq` must
 * read (the newest write <= seq, the base's, or zeros), by CRC-32C; past the region, that the
 * recovery wrote no data. Mismatches are recorded (`mismatches`), not thrown: the week goes on.
 */
function checkingSink(seq: number): { sink: ImageSink; done: () => Mismatch } {
  const m: Mismatch = { seq, badBlocks: 0 };
  return {
    done: () => m,
    sink: {
      doneWithWindow: true, // compared within write()
      async write(offset, window, ranges) {
        for (const r of ranges) if (offset + r.end > model.length) throw new Error(`recovery at ${seq} wrote data at ${offset + r.start}..${offset + r.end}, past the data region`);
        // An RP at or above the newest write reads exactly the model: one compare (the block-by-block CRCs below only to say where it differs).
        const end = Math.min(window.length, model.length - offset);
        if (seq >= lastWrittenSeq && end > 0 && window.subarray(0, end).equals(model.subarray(offset, offset + end))) return;
        for (let at = 0; at < window.length && offset + at < model.length; at += BLOCK_SIZE) {
          const block = (offset + at) / BLOCK_SIZE;
          const got = crc32c(window.subarray(at, at + BLOCK_SIZE));
          const vs = versions.get(block);
          const i = vs ? firstAtOrAbove(vs, seq + 1) - 1 : -1;
          const want = i >= 0 ? crcs.get(block)![i] : ZERO_BLOCK_CRC;
          if (got === want) continue;
          m.badBlocks++;
          if (!m.first) {
            const j = crcs.get(block)?.indexOf(got) ?? -1;
            m.first = {
              block,
              range: rangeId(DISK, Math.floor(block / RANGE_BLOCKS)),
              expectedSeq: i >= 0 ? vs![i] : -1,
              got: got === ZERO_BLOCK_CRC ? 'zeros' : j >= 0 ? `the version of seq ${vs![j]}` : 'bytes of no version',
              versionsNear: vs ? vs.slice(Math.max(0, i - 3), i + 4) : [],
            };
          }
        }
      },
      close: async () => {},
      abort: async () => {},
    },
  };
}

interface Recovery {
  s: number;
  /** CPU seconds of the process (every thread: the verifying workers too) during it, the checking sink's included. */
  cpuS: number;
  seq: number;
  gets: number;
  mib: number;
  sources: number;
  segments: number;
  dataBytes: number;
}

async function recoverLatest(p: Peer, withHistory: boolean): Promise<Recovery> {
  const points = await livePoints(p);
  const seq = points[points.length - 1];
  const store = new LatencyStore(p.objects);
  const { sink, done } = checkingSink(seq);
  const t = performance.now();
  const cpu = cpuS();
  const out = await materialize(store, p.index, { pairId: PAIR, seq, nowMs, sinkFor: async () => sink, ...(withHistory ? { history: p.history } : {}) });
  const s = (performance.now() - t) / 1000;
  const cpuUsed = cpuS() - cpu;
  const dataBytes = out.disks[0].dataBytes;
  const m = done();
  if (m.badBlocks > 0) {
    mismatches.push({ ...m, peer: p.name } as Mismatch);
    log(`${p.name}: recovery of RP ${seq} differs from the model in ${m.badBlocks} blocks, first ${JSON.stringify(m.first)}`);
  }
  return { s: round(s, 2), cpuS: round(cpuUsed, 2), seq, gets: store.gets, mib: round(store.bytes / MiB, 1), sources: out.sources, segments: out.segments, dataBytes };
}

/**
 * A plain download of `bytes` (4 MiB ranged GETs of one object) through the same model, each
 * part copied into a window and handed to the same checking sink as the recovery's (the
 * sink's compare is the bench's work, not recovery's: both sides pay it).
 */
async function rawDownload(bytes: number): Promise<{ s: number; cpuS: number }> {
  const store = new LatencyStore({ get: async (_k, range) => model.subarray(range!.start % model.length, (range!.start % model.length) + (range!.end - range!.start)) });
  const parts: ByteRange[] = [];
  for (let at = 0; at < bytes; at += CHUNK_BYTES) parts.push({ start: at, end: Math.min(bytes, at + CHUNK_BYTES) });
  const { sink } = checkingSink(lastWrittenSeq);
  const t = performance.now();
  const cpu = cpuS();
  await Promise.all(
    parts.map(async (r) => {
      const window = Buffer.allocUnsafe(r.end - r.start);
      (await store.get('raw', r)).copy(window);
      await sink.write(r.start % model.length, window, [{ start: 0, end: window.length }]);
    }),
  );
  return { s: round((performance.now() - t) / 1000, 2), cpuS: round(cpuS() - cpu, 2) };
}

/** Full collections on demand: the bench's heap (its model, both stores) grows with the days, and what a recovery finds left to collect should not. */
const fullGc: () => void = (() => {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

/**
 * The newest RP's recovery and the plain download of the same bytes, alternated
 * RECOVERY_REPS times, each after a full collection: medians (the recovery's other fields from
 * its median run). Both see the same process, so their ratio shows what the bench's growth does.
 */
async function recoverAndDownload(p: Peer): Promise<{ recovery: Recovery; raw: Recovery; samples: { recover: number[]; raw: number[] } }> {
  const runs: Recovery[] = [];
  const raws: { s: number; cpuS: number }[] = [];
  for (let i = 0; i < RECOVERY_REPS; i++) {
    fullGc();
    runs.push(await recoverLatest(p, true));
    fullGc();
    raws.push(await rawDownload(runs[0].dataBytes));
  }
  const mid = <T extends { s: number }>(xs: T[]): T => [...xs].sort((a, b) => a.s - b.s)[(xs.length - 1) >> 1];
  const raw = mid(raws);
  return {
    recovery: mid(runs),
    raw: { ...raw, seq: 0, gets: 0, mib: round(runs[0].dataBytes / MiB, 1), sources: 0, segments: 0, dataBytes: runs[0].dataBytes },
    samples: { recover: runs.map((r) => r.s), raw: raws.map((r) => r.s) },
  };
}

/**
 * What any compaction must PUT here (core/merge-floor.ts): merges and images per byte
 * ingested for items of this run's size (data bytes per (batch, range) pair) under the
 * design's read bound (1 image + MAX_PIECES_PER_SPAN pieces + 2 × L0_TRIGGER batches = 13),
 * and modelled at 10 GiB a day, where a batch holds SCALE extents: a class of share w over r
 * ranges gets λ = w·SCALE/r extents a batch in each range, λ/(1 − e^−λ) in a batch that
 * touches one. Rewrites and manifests come on top.
 */
function putFloors(batches: number): Record<string, unknown> {
  const budget = 1 + MAX_PIECES_PER_SPAN + 2 * L0_TRIGGER;
  const table = mergeCostTable(1500, budget - 1);
  const floors = (itemBytes: number) => {
    const input = { itemBytes, imageBytes: CHUNK_BYTES, budget };
    return { fold: foldFloor(input, table), free: freeFloor(input, table), ours: splitFloor({ itemBytes, imageBytes: CHUNK_BYTES, batchesPerFold: L0_TRIGGER, pieces: MAX_PIECES_PER_SPAN }, table) };
  };
  const item = (extentBlocks * BLOCK_SIZE) / rangeTouches;
  const here = floors(item);
  const extent = (extentBlocks * BLOCK_SIZE) / batches;
  const classes: [number, number][] = [
    [0.8, (REGION.hot.size * SCALE) / CHUNK_BYTES],
    [0.15, (REGION.warm.size * SCALE) / CHUNK_BYTES],
    [0.05, REGION.uniform.size / CHUNK_BYTES],
  ];
  let at10 = 0;
  for (const [w, ranges] of classes) {
    const lambda = (w * SCALE) / ranges;
    at10 += w * foldFloor({ itemBytes: (extent * lambda) / (1 - Math.exp(-lambda)), imageBytes: CHUNK_BYTES, budget }, table).perByte;
  }
  return {
    budget,
    item_kib: round(item / 1024, 2),
    fold: round(here.fold.perByte, 2),
    fold_best_split: `${here.fold.batchesPerFold} batches + ${here.fold.pieces} pieces`,
    free: round(here.free.perByte, 2),
    this_split: round(here.ours.perByte, 2),
    at_10GiB_day_fold: round(at10, 2),
  };
}

// ---------------------------------------------------------------------------------------

/** CPU seconds of this process so far (user + system): the machine is shared, wall time is noisy. */
const cpuS = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function main(): Promise<void> {
  const began = performance.now();
  const cObjects = new MemoryObjectStore();
  const uObjects = new MemoryObjectStore();
  const base = await makeBase([cObjects, uObjects]);
  log(`base: ${BASE_BYTES / MiB} MiB in ${round((performance.now() - began) / 1000, 1)} s`);
  const comp = await newPeer('compacted', cObjects, base);
  const plain = await newPeer('uncompacted', uObjects, base);
  // The workflow's handlers over metered ports (what the unit and GC functions would call).
  const unitC: Counts = comp.c;
  const unitStore = new MeteredStore(cObjects, {});
  const deps = { store: unitStore, index: metered<ReplicaIndex>(comp.index, unitC), history: metered<HistoryIndex>(comp.history, unitC), listPairs: async () => [PAIR] };
  const handlers = compactHandlers(deps, clock);
  const gcStore = new MeteredStore(cObjects, comp.c);
  const r = rng(SEED);

  const unitStats = { units: 0, published: 0, runs: 0, s: 0, cpuS: 0, gcRuns: 0, gcS: 0 };
  /**
   * What each published unit wrote, by the decision that wrote it (from the manifest before
   * and after): fold (a new piece above the old frontier), merge (a new piece reaching below
   * it, not an old piece's span), rewrite (an old piece's exact span: its dead versions
   * dropped), image; bytes and counts, and per range kind (hot, warm, cold).
   */
  const wrote: Counts = {};
  let prevManifest: Manifest | undefined;
  const rangeKind = (id: RangeId): string => {
    const at = parseRangeId(id).index * RANGE_BLOCKS * BLOCK_SIZE;
    const overlaps = (g: { at: number; size: number }): boolean => at < g.at + g.size && g.at < at + CHUNK_BYTES;
    return overlaps(REGION.hot) ? 'hot' : overlaps(REGION.warm) ? 'warm' : 'cold';
  };
  const classify = async (): Promise<void> => {
    const head = await comp.history.getHistory(PAIR);
    if (!head.manifestKey) return;
    const next = (await readManifest(cObjects, head.manifestKey)).manifest;
    const prefix = head.manifestKey.slice(0, -'manifest.json'.length);
    const before = prevManifest;
    // What the unit wrote of its manifest: the head and the parts under its prefix.
    add(wrote, 'manifest.bytes', (await cObjects.get(head.manifestKey)).length + (next.parts ?? []).filter((p) => p.key.startsWith(prefix)).reduce((n, p) => n + p.length, 0));
    for (const [id, r] of Object.entries(next.ranges)) {
      const kind = rangeKind(id);
      const old = before?.ranges[id]?.pieces ?? [];
      for (const q of r.pieces) {
        if (!q.key.startsWith(prefix)) continue;
        const what = q.seqLo > (before?.frontierSeq ?? 0) ? 'fold' : old.some((o) => o.seqLo === q.seqLo && o.seqHi === q.seqHi) ? 'rewrite' : 'merge';
        add(wrote, `${what}.bytes`, q.length);
        add(wrote, `${what}.${kind}.bytes`, q.length);
        add(wrote, `${what}.count`);
      }
      for (const img of r.images) {
        if (img.zero || !img.key.startsWith(prefix)) continue;
        add(wrote, 'image.bytes', img.length);
        add(wrote, `image.${kind}.bytes`, img.length);
        add(wrote, 'image.count');
      }
    }
    prevManifest = next;
  };
  const run = async (): Promise<void> => {
    unitStats.runs++;
    for (let units = 0; ; ) {
      const t = performance.now();
      const cpu = cpuS();
      const out = await handlers.unit({ pairId: PAIR, units });
      unitStats.s += (performance.now() - t) / 1000;
      unitStats.cpuS += cpuS() - cpu;
      unitStats.units++;
      if (out.published) {
        unitStats.published++;
        await classify();
      }
      units = out.units ?? units + 1;
      if (!out.more) break;
    }
  };
  const gc = async (): Promise<void> => {
    const t = performance.now();
    await gcOnce({ store: gcStore, deleter: gcStore, history: metered<HistoryIndex>(comp.history, comp.c) }, PAIR, { nowMs, graceMs: GRACE_MS });
    unitStats.gcS += (performance.now() - t) / 1000;
    unitStats.gcRuns++;
  };
  const deliverChecks = async (p: Peer): Promise<void> => {
    for (const check of p.checks.take(nowMs)) await p.apply.checkRp(check);
  };

  const bound = { max: 0, p50: 0, worst: undefined as unknown, samples: 0, maxBacklog: 0 };
  const sample = async (): Promise<void> => {
    const pair = (await comp.index.getPair(PAIR))!;
    const m = await currentManifest(comp, pair);
    const l0: L0Batch[] = (await comp.index.batchesAfter(PAIR, m.frontierSeq, Infinity)).filter((b) => b.seq <= pair.watermark).map((b) => ({ seq: b.seq, ranges: batchRanges[b.seq] }));
    const points = await livePoints(comp);
    const rb = readBound(m, l0, points);
    if (rb.unreadable.length > 0) throw new Error(`live RPs the manifest cannot read: ${rb.unreadable.slice(0, 5).join(', ')}`);
    bound.samples++;
    bound.maxBacklog = Math.max(bound.maxBacklog, l0.length);
    if (rb.max > bound.max) bound.max = rb.max;
    if (rb.max >= bound.max) bound.worst = { ...rb.worst, day: Math.floor((nowMs - START_MS) / DAY) + 1, backlog: l0.length, manifestVersion: m.version };
    bound.p50 = Math.max(bound.p50, rb.p50);
  };

  /** Recovers the newest live RP of the compacted pair (with `all`, the oldest and a middle one too; no latency model) and checks every block. */
  const checkRecoveries = async (all: boolean): Promise<void> => {
    const pts = await livePoints(comp);
    if (pts.length === 0) return;
    for (const k of new Set(all ? [pts[pts.length - 1], pts[0], pts[pts.length >> 1]] : [pts[pts.length - 1]])) {
      const { sink, done } = checkingSink(k);
      await materialize(cObjects, comp.index, { pairId: PAIR, seq: k, nowMs, sinkFor: async () => sink, history: comp.history });
      const m = done();
      checked.rps++;
      if (m.badBlocks > 0) {
        mismatches.push(m);
        log(`hourly check: recovery of RP ${k} differs from the model in ${m.badBlocks} blocks, first ${JSON.stringify(m.first)}`);
      }
    }
  };
  const checked = { rps: 0 };
  let seq = 0;
  const recoveries: Record<string, Recovery> = {};
  const recoverySamples: Record<string, { recover: number[]; raw: number[] }> = {};
  const storedAt: Record<string, unknown> = {};
  let nextQuarter = START_MS + QUARTER;
  let nextHour = START_MS + HOUR;
  /** The schedule's work up to `until` (every quarter: a run, GC; every hour: TTL, a sample). */
  const idleUntil = async (until: number): Promise<void> => {
    while (Math.min(nextQuarter, nextHour) <= until) {
      nowMs = Math.min(nextQuarter, nextHour);
      await deliverChecks(comp);
      await deliverChecks(plain);
      if (nowMs === nextQuarter) {
        await run();
        await gc();
        nextQuarter += QUARTER;
      }
      if (nowMs === nextHour) {
        comp.index.expireRps(PAIR, Math.floor(nowMs / 1000));
        plain.index.expireRps(PAIR, Math.floor(nowMs / 1000));
        await sample();
        const hourOfDay = new Date(nowMs).getUTCHours();
        if (process.env.BENCH_HISTORY_CHECK_HOURLY && hourOfDay > BUSY_FROM_H && hourOfDay <= BUSY_FROM_H + BUSY_HOURS) await checkRecoveries(hourOfDay === BUSY_FROM_H + BUSY_HOURS);
        nextHour += HOUR;
        if (process.env.BENCH_HISTORY_VERBOSE) log(`${new Date(nowMs).toISOString()}: ${seq} batches, ${unitStats.units} units (${round(unitStats.cpuS, 1)} CPU s), ${round(cpuS(), 1)} CPU s, ${round((performance.now() - began) / 1000, 1)} s`);
      }
    }
    nowMs = until;
    await deliverChecks(comp);
    await deliverChecks(plain);
  };

  for (let day = 0; day < DAYS; day++) {
    const busyFrom = START_MS + day * DAY + BUSY_FROM_H * HOUR;
    await idleUntil(busyFrom);
    const t = performance.now();
    for (let sec = 1; sec <= BUSY_HOURS * 3600; sec++) {
      await idleUntil(busyFrom + sec * 1000);
      seq++;
      const { key, body } = makeBatch(r, seq, nowMs, sec % 3600 === 0);
      // The source's PUT (counted on the compacted side: it is the pair's bill), into both stores.
      add(comp.c, 's3.put');
      add(comp.c, 's3.put_bytes.batch', body.length);
      await cObjects.put(key, body);
      await uObjects.put(key, body);
      const before = (await comp.index.getPair(PAIR))!;
      const a = await comp.apply.applyObject(key);
      const b = await plain.apply.applyObject(key);
      if (a.outcome !== 'applied' || b.outcome !== 'applied') throw new Error(`batch ${seq}: ${a.outcome}/${b.outcome} ${a.detail ?? ''} ${b.detail ?? ''}`);
      const after = (await comp.index.getPair(PAIR))!;
      if (compactionDue({ fromWatermark: before.watermark, toWatermark: after.watermark, compactedThrough: after.compactedThrough ?? 0 })) await run();
    }
    log(`day ${day + 1}: ${seq} batches, ${unitStats.units} units (${round(unitStats.s, 1)} s, ${round(unitStats.cpuS, 1)} CPU s in units), busy hours in ${round((performance.now() - t) / 1000, 1)} s, ${round(process.memoryUsage().rss / GiB, 2)} GiB RSS`);
    {
      // The day so far (progress; the result line has the week): PUT bytes by decision, the read bound, stored against needed.
      const pts = await livePoints(comp);
      const batchMiB = (comp.c['s3.put_bytes.batch'] ?? 0) / MiB;
      const put = ((comp.c['s3.put_bytes.run'] ?? 0) + (comp.c['s3.put_bytes.image'] ?? 0) + (comp.c['s3.put_bytes.manifest'] ?? 0)) / MiB + ((unitStore.c['s3.put_bytes.run'] ?? 0) + (unitStore.c['s3.put_bytes.image'] ?? 0) + (unitStore.c['s3.put_bytes.manifest'] ?? 0)) / MiB;
      log(`day ${day + 1} figures: ${JSON.stringify({ put_bytes_ratio: round(put / batchMiB, 2), put_by_decision_mib: Object.fromEntries(Object.entries(wrote).filter(([k]) => !k.includes('.count')).map(([k, v]) => [k, round(v / MiB, 1)])), max_sources: bound.max, p50_sources: bound.p50, worst: bound.worst, stored_ratio_above_base: round(storedBytes(cObjects, (k) => !k.includes('/base/')).bytes / (neededBlocks(pts, false) * BLOCK_SIZE), 3), live_rps: pts.length, cpu_s: round(cpuS(), 1) })}`);
    }
    if (day === 0 || day === DAYS - 1) {
      // The newest RP once the RP timer has made the watermark one; before the next scheduled run.
      await idleUntil(busyFrom + BUSY_HOURS * HOUR + 60_000);
      const tag = day === 0 ? 'day1' : 'dayN';
      // Stored against needed while compaction is busy (the end of the week's figure is after the night's settling).
      const pts = await livePoints(comp);
      storedAt[tag] = {
        ratio: round(storedBytes(cObjects).bytes / (neededBlocks(pts, true) * BLOCK_SIZE), 3),
        ratio_above_base: round(storedBytes(cObjects, (k) => !k.includes('/base/')).bytes / (neededBlocks(pts, false) * BLOCK_SIZE), 3),
        uncompacted_ratio_above_base: round(storedBytes(uObjects, (k) => !k.includes('/base/')).bytes / (neededBlocks(pts, false) * BLOCK_SIZE), 3),
        live_rps: pts.length,
      };
      const { recovery, raw, samples } = await recoverAndDownload(comp);
      recoveries[`c_${tag}`] = recovery;
      recoveries[`raw_${tag}`] = raw;
      recoverySamples[tag] = samples;
      recoveries[`u_${tag}`] = await recoverLatest(plain, false);
      log(`recoveries ${tag}: ${JSON.stringify(Object.fromEntries(Object.entries(recoveries).filter(([k]) => k.endsWith(tag))))} samples ${JSON.stringify(samples)}`);
      if (DAYS === 1 && day === 0) {
        recoveries.c_dayN = recoveries.c_day1;
        recoveries.u_dayN = recoveries.u_day1;
        recoveries.raw_dayN = recoveries.raw_day1;
        recoverySamples.dayN = recoverySamples.day1;
      }
    }
  }
  const endOfWrites = nowMs;
  // Requests over the simulated days (the settling below not counted): apply, RP checks and GC in comp.c, units in unitStore.c.
  const countsAtEnd: Counts = { ...comp.c };
  for (const [k, v] of Object.entries(unitStore.c)) add(countsAtEnd, k, v);
  const unitBytesAtEnd = { ...unitStore.c };
  // Settle: the schedule goes on until grace has passed since the last unit, then one more GC.
  await idleUntil(endOfWrites + GRACE_MS + 2 * QUARTER);
  await gc();

  // Stored against needed, at the end (live RPs now).
  const points = await livePoints(comp);
  const needAll = neededBlocks(points, true) * BLOCK_SIZE;
  const needAbove = neededBlocks(points, false) * BLOCK_SIZE;
  const isBase = (k: string): boolean => k.includes(`/base/`);
  const cStored = storedBytes(cObjects);
  const cAbove = storedBytes(cObjects, (k) => !isBase(k));
  const uStored = storedBytes(uObjects);
  const uAbove = storedBytes(uObjects, (k) => !isBase(k));

  // What the stored bytes are: by object kind; pieces' versions live (some live RP sees them) or dead; images by range kind.
  const storedBy: Counts = {};
  for (const [k, v] of cObjects.objects) if (k.startsWith(`pairs/${PAIR}/`)) add(storedBy, keyKind(k), v.length);
  const points0 = await livePoints(comp);
  const mEnd = await currentManifest(comp, (await comp.index.getPair(PAIR))!);
  const seen = (block: number, seq: number): boolean => {
    const vs = versions.get(block) ?? [];
    const i = firstAtOrAbove(vs, seq);
    const hi = i + 1 < vs.length ? vs[i + 1] : Infinity;
    const j = firstAtOrAbove(points0, seq);
    return j < points0.length && points0[j] < hi;
  };
  const pieceBytes: Counts = {};
  for (const [id, r] of Object.entries(mEnd.ranges)) {
    const kind = rangeKind(id);
    const first = parseRangeId(id).index * RANGE_BLOCKS;
    add(pieceBytes, `pieces.${kind}`, r.pieces.length);
    add(pieceBytes, `images.${kind}`, r.images.filter((i) => !i.zero).length);
    for (const img of r.images) if (!img.zero) add(pieceBytes, `image_bytes.${kind}`, img.length);
    for (const q of r.pieces) {
      const buf = (await cObjects.get(q.key)).subarray(q.offset, q.offset + q.length);
      for (const e of decodePiece(buf, q.key, q.crc32c).entries) {
        for (let b = 0; b < e.blockCount; b++) add(pieceBytes, `${seen(first + e.blockIndex + b, e.seq) ? 'live' : 'dead'}.${kind}`, BLOCK_SIZE);
      }
    }
  }

  // Orphans: bytes under the pair nothing references (current manifest, base, L0 items, uncollected records).
  const pair = (await comp.index.getPair(PAIR))!;
  const m = await currentManifest(comp, pair);
  const head = await comp.history.getHistory(PAIR);
  const held = manifestRefs(m, head.manifestKey);
  for (const rec of await comp.history.versionsAfter(PAIR, head.gcVersion, Infinity)) for (const k of [rec.manifestKey, ...rec.removedKeys]) held.add(k);
  for (const b of await comp.index.batchesAfter(PAIR, 0, Infinity)) held.add(b.key);
  let orphanBytes = 0;
  let orphans = 0;
  for (const [k, v] of cObjects.objects) {
    if (isBase(k) || held.has(k)) continue;
    orphanBytes += v.length;
    orphans++;
  }

  // Requests per day (the simulated days), priced.
  const days = DAYS;
  const c = countsAtEnd;
  const perDay = (n: number | undefined): number => round((n ?? 0) / days, 1);
  const s3Put = (c['s3.put'] ?? 0) + (c['s3.list'] ?? 0);
  const s3Get = (c['s3.get'] ?? 0) + (c['s3.head'] ?? 0);
  const lambda = seq + comp.checks.scheduled.length + unitStats.units + unitStats.gcRuns;
  // The compaction workflow's state transitions (lib/compaction-workflow.ts): Unit and More per unit, Compacted per run, and Gc in the schedule's runs (one per GC pass here).
  const transitions = 2 * unitStats.units + unitStats.runs + unitStats.gcRuns;
  const sfnUsd = transitions * SFN_STANDARD_TRANSITION_USD;
  const usd = sfnUsd + s3Put * US_EAST_1.s3PutClass + s3Get * US_EAST_1.s3GetClass + (c['ddb.wru'] ?? 0) * US_EAST_1.ddbWriteUnits + (c['ddb.rru'] ?? 0) * US_EAST_1.ddbReadUnits + lambda * US_EAST_1.lambdaInvocations;
  const putData = (c['s3.put_bytes.run'] ?? 0) + (c['s3.put_bytes.image'] ?? 0);
  const putManifest = c['s3.put_bytes.manifest'] ?? 0;
  const batchPut = c['s3.put_bytes.batch'] ?? 0;
  const compRead = Object.entries(unitBytesAtEnd).filter(([k]) => k.startsWith('s3.get_bytes.')).reduce((n, [, v]) => n + v, 0);
  const compWritten = Object.entries(unitBytesAtEnd).filter(([k]) => k.startsWith('s3.put_bytes.')).reduce((n, [, v]) => n + v, 0);
  const putRatio = (putData + putManifest) / batchPut;
  const result = {
    days: DAYS,
    scale: SCALE,
    batches: seq,
    batch_kib: round(batchBytes / seq / 1024, 2),
    extent_blocks_mean: round(extentBlocks / seq, 2),
    base_mib: BASE_BYTES / MiB,
    live_rps_at_end: points.length,
    stored_bytes_ratio: round(cStored.bytes / needAll, 3),
    stored_bytes_ratio_above_base: round(cAbove.bytes / needAbove, 3),
    stored_at_busy_end: storedAt,
    stored_mib: round(cStored.bytes / MiB, 1),
    stored_objects: cStored.objects,
    needed_mib: round(needAll / MiB, 1),
    needed_above_base_mib: round(needAbove / MiB, 1),
    max_sources_per_read: bound.max,
    p50_sources_per_read: bound.p50,
    sources_worst: bound.worst,
    bound_samples: bound.samples,
    l0_backlog_max_at_samples: bound.maxBacklog,
    recover_latest_s_day1: recoveries.c_day1.s,
    recover_latest_s_dayN: recoveries.c_dayN.s,
    recover_latest_s_day7_vs_day1: round(recoveries.c_dayN.s / recoveries.c_day1.s, 2),
    // The same ratio against the plain download of the same bytes at the same moment: what the bench's own growth (its model and both stores are in this process) does to both.
    recover_vs_raw_day7_vs_day1: round(recoveries.c_dayN.s / recoveries.raw_dayN.s / (recoveries.c_day1.s / recoveries.raw_day1.s), 2),
    recover_gets_day7_vs_day1: round(recoveries.c_dayN.gets / recoveries.c_day1.gets, 2),
    recover_mib_day7_vs_day1: round(recoveries.c_dayN.mib / recoveries.c_day1.mib, 2),
    recover_samples_s: recoverySamples,
    recover_compacted: { day1: recoveries.c_day1, dayN: recoveries.c_dayN },
    raw_download_s: recoveries.raw_dayN.s,
    raw_download_s_day1: recoveries.raw_day1.s,
    materialize_ratio_vs_raw: round(recoveries.raw_dayN.s / recoveries.c_dayN.s, 2),
    // CPU seconds (all threads) of the last day's recovery and of the raw download: what the wall ratio is made of on a shared core.
    recover_cpu_s_dayN: recoveries.c_dayN.cpuS,
    raw_download_cpu_s: recoveries.raw_dayN.cpuS,
    put_bytes_ratio: round(putRatio, 2),
    put_by_decision_mib: Object.fromEntries(Object.entries(wrote).map(([k, v]) => [k, k.endsWith('.count') ? v : round(v / MiB, 1)])),
    stored_by_kind_mib: Object.fromEntries(Object.entries(storedBy).map(([k, v]) => [k, round(v / MiB, 1)])),
    history_at_end: Object.fromEntries(Object.entries(pieceBytes).map(([k, v]) => [k, k.startsWith('pieces') || k.startsWith('images.') ? v : round(v / MiB, 1)])),
    put_mib: { batch: round(batchPut / MiB, 1), run: round((c['s3.put_bytes.run'] ?? 0) / MiB, 1), image: round((c['s3.put_bytes.image'] ?? 0) / MiB, 1), manifest: round(putManifest / MiB, 1) },
    recoveries_checked: checked.rps + 4,
    recovery_mismatches: mismatches,
    orphan_bytes_after_gc: orphanBytes,
    orphan_objects_after_gc: orphans,
    units: unitStats.units,
    units_published: unitStats.published,
    runs: unitStats.runs,
    gc_runs: unitStats.gcRuns,
    compaction_mib_s: round((compRead + compWritten) / MiB / unitStats.s, 1),
    compaction_mib_cpu_s: round((compRead + compWritten) / MiB / unitStats.cpuS, 1),
    compaction_read_mib: round(compRead / MiB, 1),
    requests_per_day: {
      s3_put: perDay(c['s3.put']),
      s3_get: perDay(c['s3.get']),
      s3_head: perDay(c['s3.head']),
      s3_list: perDay(c['s3.list']),
      s3_delete: perDay(c['s3.delete']),
      ddb_rru: perDay(c['ddb.rru']),
      ddb_wru: perDay(c['ddb.wru']),
      rp_checks: perDay(comp.checks.scheduled.length),
      lambda: perDay(lambda),
      sfn_transitions: perDay(transitions),
      usd_sfn: round(sfnUsd / days, 4),
      usd: round(usd / days, 4),
    },
    at_10GiB_day: {
      stored_gib: round((cAbove.bytes * SCALE + (cStored.bytes - cAbove.bytes)) / GiB, 2),
      batch_gib_day: round((batchPut * SCALE) / days / GiB, 2),
      put_bytes_ratio: round((putData * SCALE + putManifest) / (batchPut * SCALE), 2),
      compaction_put_gib_day: round((putData * SCALE + putManifest) / days / GiB, 2),
    },
    put_bytes_floor: putFloors(seq),
    uncompacted: {
      recover_latest_s_day1: recoveries.u_day1.s,
      recover_latest_s_dayN: recoveries.u_dayN.s,
      recover_latest_s_day7_vs_day1: round(recoveries.u_dayN.s / recoveries.u_day1.s, 2),
      recover: { day1: recoveries.u_day1, dayN: recoveries.u_dayN },
      stored_bytes_ratio: round(uStored.bytes / needAll, 3),
      stored_bytes_ratio_above_base: round(uAbove.bytes / needAbove, 3),
      stored_mib: round(uStored.bytes / MiB, 1),
      stored_objects: uStored.objects,
    },
    units_s: round(unitStats.s, 1),
    units_cpu_s: round(unitStats.cpuS, 1),
    cpu_s: round(cpuS(), 1),
    gc_s: round(unitStats.gcS, 1),
    total_s: round((performance.now() - began) / 1000, 1),
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
