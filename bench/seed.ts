// npm run bench:seed — the seed workflow (the synthesized Step Functions state machine, run by
// the embedded local stack) against a plain S3 copy of the same objects, in one run on the
// embedded local stack, alternating, medians. Prints one JSON line on stdout; progress on stderr.
//
//   seed_mib_s         disk data seeded per second: a 1 GiB disk full of data, from startSeed
//                      (StartExecution) until the pair is REPLICATING (polled every 100 ms)
//   raw_copy_mib_s     the peer: the same backup chunk objects (those of a full-disk backup
//                      taken at setup) each GET and PUT under another key
//                      (pairs/<pair>/rawcopy/<rep>/<sha>)
//                      with the same S3 client adapter (S3ObjectStore) against the same local
//                      S3, 32 requests at once. 32 is the seed workflow's Map concurrency (ranges
//                      at once) and a usual S3 transfer-manager setting: a copier at that
//                      parallelism is what a user would compare against. The bytes moved are the
//                      stored (compressed) chunk objects; the rate is in disk-data MiB (1024 MiB /
//                      seconds), the unit of seed_mib_s
//   ratio_vs_raw       seed_mib_s / raw_copy_mib_s (target ≥ 0.6)
//   sparse_cost_ratio  what a sparse disk costs end to end: backup + seed of a 64 GiB sparse
//                      disk holding the same 1 GiB of data (contiguous, in the middle of
//                      the disk) / backup + seed of the 1 GiB full disk (target ≤ 1.3). The
//                      backup reads each disk's image file (a real sparse file for the 64
//                      GiB disk) through the agent's read path (readRange, 4 chunks at once,
//                      zero chunks skipped, as `livesync backup` does), then the pair is
//                      created and seeded. Before 2026-12 this ratio timed the seeds alone,
//                      after an untimed backup had dropped the zero chunks: both seeds then
//                      did the same 256 chunks, so it was ~1 by construction; that figure is
//                      still reported as sparse_seed_only_ratio
//   backup_s, sparse_backup_s, seed_s, sparse_seed_s: the two halves of each, medians
//
// Each rep has fresh pairs and backups. The raw copy copies the chunk objects of a backup of
// the full disk taken at setup (not timed). The three measurements alternate, their order
// rotating from rep to rep (raw/full/sparse, full/sparse/raw, sparse/raw/full) so drift and
// cache warmth do not favour one; medians over BENCH_SEED_REPS reps (default 3), per-rep
// figures as *_s_reps.
//
// The disk data is generated per 4 MiB chunk (never the whole GiB in memory), deterministic
// per chunk: every 4 KiB block is 2 KiB of xorshift32 pseudo-random bytes (seeded by chunk
// and block) followed by 2 KiB of a fixed text pattern, so zstd (level 1, as backups use)
// stores about half of it, like real disk contents and unlike all-random or all-pattern data.
// It is written once at setup into two image files under .livesync/bench-seed: the full disk
// (1 GiB) and the sparse one (64 GiB apparent, the data in the middle, holes around it).
//
// Every seeded pair is checked: REPLICATING, seed DONE, bytesTotal 1 GiB, every range done,
// a base manifest of exactly the 256 data chunks at their indexes, and one base chunk object
// decoded end to end and compared with the generated data.
//
// Where the time goes (seed_phase_s / sparse_phase_s, medians per phase): the phase ends as
// the same 100 ms polls of the pair see them, made exact where the pair or the base says when:
// validate (startSeed's index updates and StartExecution, then the validate task, until
// SEEDING: the pair's stateChangedMs), plan (until rangesTotal is set, ±0.1 s),
// ranges (until rangesDone = rangesTotal, ±0.1 s, or the base's createdMs if earlier), finalize
// (until the base manifest's createdMs), activate (catch-up + activate: the seed's finishedMs).
// The poll's lag after finishedMs (≤ 0.1 s) is in seed_s but in no phase.
//
// Everything but DynamoDB Local (a Java child) runs in this process on this host: s3rver, the
// local Step Functions runner and the seed handlers share one event loop; the raw copy has
// only s3rver and the copier. The event path (S3 → SQS → apply) is off: no journal is written.
// DynamoDB Local needs Java: checked first, and installed with apt-get when run as root
// (bench/peers.ts).

import { randomBytes } from 'node:crypto';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DeleteObjectsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { s3Client } from '../adapters/aws-clients';
import { rpStoreFromEnv } from '../adapters/from-env';
import { readRange } from '../agent/pair-capture';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { seedLauncherFromEnv } from '../adapters/sfn-seed-launcher';
import { CHUNK_BYTES, decodeChunk } from '../core/chunk-format';
import { baseChunkKey } from '../core/keys';
import type { Pair } from '../core/model';
import { backupChunkKey, type BackupManifest } from '../core/seed-manifests';
import { startLocalStack, type LocalStack } from '../local/stack';
import { mapLimit, sleep } from '../replica/concurrency';
import { createPair, startSeed } from '../replica/pairs';
import type { ReplicaIndex } from '../replica/ports';
import { writeBackup, type BackupDiskSource } from '../source/backup';
import { median, round, runBench } from './measure';
import { ensurePeers, JAVA_PEER } from './peers';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const BLOCK = 4096;
const DATA_BYTES = GiB;
const DATA_CHUNKS = DATA_BYTES / CHUNK_BYTES; // 256
const SPARSE_BYTES = 64 * GiB;
/** The sparse disk's data, centred in it (chunk-aligned: 31.5 GiB). */
const SPARSE_DATA_AT = (SPARSE_BYTES - DATA_BYTES) / 2;
const RAW_CONCURRENCY = 32;
/** writeBackup's chunks at once (setup only). */
const BACKUP_CONCURRENCY = 4;
const POLL_MS = 100;
const SEED_TIMEOUT_MS = 30 * 60_000;
const DISK = 'sda';
const reps = Number(process.env.BENCH_SEED_REPS ?? 3);
const root = join(__dirname, '..');
const dir = join(root, '.livesync', 'bench-seed');

// Handlers log with console.log (stdout) unless LOG_LEVEL says otherwise; stdout is for the
// result line alone, so anything else written with console.log goes to stderr.
process.env.LOG_LEVEL = 'warn';
const out = (line: string): void => void process.stdout.write(`${line}\n`);
console.log = (...args: unknown[]) => console.error(...args);
const log = (m: string): void => void process.stderr.write(`[bench:seed] ${m}\n`);

if (!Number.isInteger(reps) || reps < 1) throw new Error(`BENCH_SEED_REPS must be a positive integer, not '${process.env.BENCH_SEED_REPS}'`);

// ---- the disk data ------------------------------------------------------------------------

const PATTERN = Buffer.alloc(BLOCK / 2);
PATTERN.write('livesync bench:seed -- the compressible half of every 4 KiB block: a fixed text pattern, repeated. '.repeat(30));

/** Data chunk `i` (0..255) of the 1 GiB: per 4 KiB block, 2 KiB pseudo-random then 2 KiB pattern. */
function dataChunk(i: number): Buffer {
  const b = Buffer.alloc(CHUNK_BYTES);
  const words = new Uint32Array(b.buffer, b.byteOffset, CHUNK_BYTES / 4);
  for (let blk = 0; blk < CHUNK_BYTES / BLOCK; blk++) {
    let x = (Math.imul(i + 1, 0x9e3779b1) ^ Math.imul(blk + 1, 0x85ebca6b)) | 1;
    const w = (blk * BLOCK) / 4;
    for (let k = 0; k < BLOCK / 8; k++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[w + k] = x;
    }
    PATTERN.copy(b, blk * BLOCK + BLOCK / 2);
  }
  return b;
}

const imagePath = (sparse: boolean): string => join(dir, sparse ? 'sparse.img' : 'full.img');

/** Setup: the two image files, the full disk (1 GiB of data) and the sparse one (64 GiB, the same data centred, holes around it). */
async function writeImages(): Promise<void> {
  const full = await open(imagePath(false), 'w');
  const sparse = await open(imagePath(true), 'w');
  try {
    await full.truncate(DATA_BYTES);
    await sparse.truncate(SPARSE_BYTES);
    for (let i = 0; i < DATA_CHUNKS; i++) {
      const data = dataChunk(i);
      await full.write(data, 0, CHUNK_BYTES, i * CHUNK_BYTES);
      await sparse.write(data, 0, CHUNK_BYTES, SPARSE_DATA_AT + i * CHUNK_BYTES);
    }
  } finally {
    await full.close();
    await sparse.close();
  }
}

// ---- one seeded pair ----------------------------------------------------------------------

interface Prepared {
  pairId: string;
  manifestKey: string;
  manifest: BackupManifest;
  bytesStored: number;
  sparse: boolean;
  /** writeBackup's seconds. */
  backupS: number;
}

/**
 * A backup of the disk's image file as the agent takes one (its read path, 4 chunks at once,
 * zero chunks skipped), then the pair created with it. The backup is timed.
 */
async function prepare(bucket: string, index: ReplicaIndex, store: S3ObjectStore, pairId: string, sparse: boolean): Promise<Prepared> {
  const manifestKey = `pairs/${pairId}/backups/b1/manifest.json`;
  const sizeBytes = sparse ? SPARSE_BYTES : DATA_BYTES;
  const fh = await open(imagePath(sparse), 'r');
  const disk: BackupDiskSource = { name: DISK, sizeBytes, read: (offset, length) => readRange(fh, offset, length) };
  const t = performance.now();
  const backup = await writeBackup({ store, manifestKey, pairId, backupId: 'b1', disks: [disk], startSeq: async () => 1, endSeq: async () => 0, concurrency: BACKUP_CONCURRENCY }).finally(() => fh.close());
  const backupS = (performance.now() - t) / 1000;
  if (backup.chunksStored !== DATA_CHUNKS) throw new Error(`backup of ${pairId}: ${backup.chunksStored} chunks stored, expected ${DATA_CHUNKS}`);
  await createPair(index, { pairId, disks: [{ name: DISK, sizeBytes }], backup: `s3://${bucket}/${manifestKey}` });
  log(`  ${pairId}: backup of ${sizeBytes / GiB} GiB (${backup.chunksStored} chunks, ${round(backup.bytesStored / MiB, 1)} MiB stored, ${backup.zeroChunks} zero) in ${round(backupS)} s`);
  return { pairId, manifestKey, manifest: backup.manifest, bytesStored: backup.bytesStored, sparse, backupS };
}

interface Phases {
  validate: number;
  plan: number;
  ranges: number;
  finalize: number;
  activate: number;
}

/** startSeed, then polls until REPLICATING; seconds (poll-detected) and the phases. */
async function seed(index: ReplicaIndex, store: S3ObjectStore, p: Prepared): Promise<{ seconds: number; phases: Phases; pair: Pair }> {
  const launcher = seedLauncherFromEnv();
  const wall0 = Date.now();
  const t0 = performance.now();
  await startSeed(index, launcher, p.pairId);
  // Poll-detected phase ends (ms since t0); exact ones from the pair where it has them.
  const seen: Partial<Record<keyof Phases, number>> = {};
  let seedingSinceMs: number | undefined;
  for (;;) {
    const pair = await index.getPair(p.pairId);
    const now = performance.now() - t0;
    if (!pair) throw new Error(`pair ${p.pairId} vanished`);
    const s = pair.seed;
    if (pair.state === 'SEED_FAILED' || s?.status === 'FAILED') throw new Error(`seed of ${p.pairId} failed: ${s?.reason ?? pair.state}`);
    if (pair.state === 'SEEDING' && seedingSinceMs === undefined) seedingSinceMs = pair.stateChangedMs;
    if (seen.validate === undefined && pair.state !== 'CONFIGURED') seen.validate = now;
    if (seen.plan === undefined && s?.rangesTotal !== undefined) seen.plan = now;
    if (seen.ranges === undefined && s?.rangesTotal !== undefined && (s.rangesDone ?? 0) >= s.rangesTotal) seen.ranges = now;
    if (seen.finalize === undefined && pair.base !== undefined) seen.finalize = now;
    if (pair.state === 'REPLICATING' && s?.status === 'DONE') {
      const seconds = now / 1000;
      seen.activate = now;
      // A phase that ended between two polls shows at the next one; fill from the later ones.
      if (seedingSinceMs !== undefined) seen.validate = Math.min(seen.validate ?? Infinity, seedingSinceMs - wall0);
      if (s.finishedMs !== undefined) seen.activate = Math.min(now, s.finishedMs - wall0);
      // finalize stamps the base manifest (createdMs) just before it puts the base on the pair.
      const createdMs = pair.base ? (JSON.parse((await store.get(pair.base.key)).toString('utf8')) as { createdMs?: number }).createdMs : undefined;
      if (createdMs !== undefined) seen.finalize = Math.min(seen.finalize ?? Infinity, createdMs - wall0);
      if (seen.finalize !== undefined) seen.ranges = Math.min(seen.ranges ?? Infinity, seen.finalize);
      const order: (keyof Phases)[] = ['validate', 'plan', 'ranges', 'finalize', 'activate'];
      let prev = 0;
      const phases = {} as Phases;
      for (const k of order) {
        const end = Math.max(prev, seen[k] ?? prev);
        phases[k] = (end - prev) / 1000;
        prev = end;
      }
      return { seconds, phases, pair };
    }
    if (now > SEED_TIMEOUT_MS) throw new Error(`pair ${p.pairId} still ${pair.state} after ${SEED_TIMEOUT_MS / 1000} s: ${JSON.stringify(s)}`);
    await sleep(POLL_MS);
  }
}

/** The seeded pair is whole: counters, base manifest, and one chunk decoded and compared. */
async function check(store: S3ObjectStore, p: Prepared, pair: Pair): Promise<void> {
  const s = pair.seed!;
  const fail = (why: string): never => {
    throw new Error(`seeded pair ${p.pairId} (${p.sparse ? 'sparse' : 'full'}): ${why}; seed ${JSON.stringify(s)}`);
  };
  if (s.bytesTotal !== DATA_BYTES) fail(`bytesTotal ${s.bytesTotal}, expected ${DATA_BYTES}`);
  if (s.rangesTotal === undefined || s.rangesDone !== s.rangesTotal) fail(`ranges ${s.rangesDone}/${s.rangesTotal}`);
  if (!pair.base) fail('no base on the pair');
  const base = JSON.parse((await store.get(pair.base!.key)).toString('utf8')) as { disks: { name: string; chunks: [number, string, number, number][] }[] };
  const chunks = base.disks[0]?.chunks ?? [];
  if (chunks.length !== DATA_CHUNKS) fail(`base manifest lists ${chunks.length} chunks, expected ${DATA_CHUNKS}`);
  const first = (p.sparse ? SPARSE_DATA_AT : 0) / CHUNK_BYTES;
  chunks.forEach(([i], j) => i !== first + j && fail(`base chunk ${j} has index ${i}, expected ${first + j}`));
  const j = p.sparse ? DATA_CHUNKS - 1 : 0;
  const [index, sha256, crc32c, length] = chunks[j];
  const key = baseChunkKey(p.pairId, sha256);
  const data = decodeChunk(await store.get(key), { index, sha256, crc32c, length }, key);
  if (!data.equals(dataChunk(j))) fail(`base chunk ${index} does not hold the disk's data`);
}

/** The peer: every chunk object of the full disk's backup GET and PUT under rawcopy/<tag>/, 32 at once. */
async function rawCopy(store: S3ObjectStore, p: Prepared, tag: string): Promise<{ seconds: number; bytes: number }> {
  const shas = p.manifest.disks[0].chunks.map((c) => c.sha256);
  let bytes = 0;
  const t0 = performance.now();
  await mapLimit(shas, RAW_CONCURRENCY, async (sha) => {
    const body = await store.get(backupChunkKey(p.manifestKey, sha));
    await store.put(`pairs/${p.pairId}/rawcopy/${tag}/${sha}`, body);
    bytes += body.length;
  });
  const seconds = (performance.now() - t0) / 1000;
  if (bytes !== p.bytesStored) throw new Error(`raw copy moved ${bytes} bytes, the backup stored ${p.bytesStored}`);
  return { seconds, bytes };
}

/** Removes everything under pairs/<pair>/ (between reps, to keep the local S3 small). */
async function deletePair(s3: S3Client, bucket: string, pairId: string): Promise<number> {
  let n = 0;
  for (;;) {
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `pairs/${pairId}/`, MaxKeys: 1000 }));
    const keys = (listed.Contents ?? []).map((o) => ({ Key: o.Key! }));
    if (keys.length === 0) return n;
    const res = await s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
    if (res.Errors?.length) throw new Error(`deleting ${pairId}'s objects: ${JSON.stringify(res.Errors[0])}`);
    n += keys.length;
  }
}

const secs = (t: number): number => round((performance.now() - t) / 1000, 1);

// ---- main ----------------------------------------------------------------------------------

async function main(): Promise<void> {
  const stackDir = join(dir, 'stack');
  let stack: LocalStack | undefined;
  let peakRss = 0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
  const cleanup = async (): Promise<void> => {
    clearInterval(sampler);
    await stack?.stop();
    await rm(stackDir, { recursive: true, force: true }); // this run's objects
    for (const sparse of [false, true]) await rm(imagePath(sparse), { force: true });
  };
  await runBench(log, cleanup, async () => {
    await mkdir(dir, { recursive: true });
    ensurePeers([JAVA_PEER], log); // the one peer this bench needs
    log('setup: writing the image files (1 GiB full, 64 GiB sparse)');
    let t = performance.now();
    await writeImages();
    log(`setup: images written in ${secs(t)} s; starting the local stack (event path off)`);
    stack = await startLocalStack({ dir: stackDir, eventPath: false, log });
    const { bucket, store, index } = rpStoreFromEnv();
    const s3 = s3Client();
    // The raw copy's source: a backup of the full disk, taken once, not timed.
    const rawSource = await prepare(bucket, index, store, `bench-seed-${randomBytes(4).toString('hex')}-rawsource`, false);
    const storedBytes = rawSource.bytesStored;

    const seedS: number[] = [];
    const rawS: number[] = [];
    const sparseS: number[] = [];
    const backupS: number[] = [];
    const sparseBackupS: number[] = [];
    const phases: Phases[] = [];
    const sparsePhases: Phases[] = [];
    let rangesTotal = 0;

    for (let rep = 0; rep < reps; rep++) {
      const tag = randomBytes(4).toString('hex');
      const pairs: string[] = [];
      /** Backup + pair + seed of one disk, checked; returns the backup's and the seed's seconds. */
      const endToEnd = async (sparse: boolean): Promise<{ backup: number; seed: number; phases: Phases }> => {
        const p = await prepare(bucket, index, store, `bench-seed-${tag}-${sparse ? 'sparse' : 'full'}`, sparse);
        pairs.push(p.pairId);
        const r = await seed(index, store, p);
        await check(store, p, r.pair);
        rangesTotal = r.pair.seed!.rangesTotal!;
        return { backup: p.backupS, seed: r.seconds, phases: r.phases };
      };
      const steps: Record<'raw' | 'full' | 'sparse', () => Promise<void>> = {
        raw: async () => {
          const r = await rawCopy(store, rawSource, tag);
          rawS.push(r.seconds);
          log(`rep ${rep + 1}/${reps} raw copy: ${round(r.seconds)} s (${round(DATA_BYTES / MiB / r.seconds, 1)} disk-MiB/s, ${round(r.bytes / MiB / r.seconds, 1)} stored-MiB/s)`);
        },
        full: async () => {
          const r = await endToEnd(false);
          backupS.push(r.backup);
          seedS.push(r.seed);
          phases.push(r.phases);
          log(`rep ${rep + 1}/${reps} full disk: backup ${round(r.backup)} s, seed ${round(r.seed)} s (${round(DATA_BYTES / MiB / r.seed, 1)} MiB/s; ${fmtPhases(r.phases)})`);
        },
        sparse: async () => {
          const r = await endToEnd(true);
          sparseBackupS.push(r.backup);
          sparseS.push(r.seed);
          sparsePhases.push(r.phases);
          log(`rep ${rep + 1}/${reps} sparse disk: backup ${round(r.backup)} s, seed ${round(r.seed)} s (${fmtPhases(r.phases)})`);
        },
      };
      const order = (['raw', 'full', 'sparse'] as const).map((_, i, all) => all[(i + rep) % all.length]);
      for (const step of order) await steps[step]();
      t = performance.now();
      let removed = 0;
      for (const pairId of pairs) removed += await deletePair(s3, bucket, pairId);
      log(`rep ${rep + 1}/${reps}: raw ${round(rawS[rep])} s, full ${round(backupS[rep] + seedS[rep])} s, sparse ${round(sparseBackupS[rep] + sparseS[rep])} s (order ${order.join('/')}); ${removed} objects removed in ${secs(t)} s`);
    }
    s3.destroy();
    const fullE2e = backupS.map((b, i) => b + seedS[i]);
    const sparseE2e = sparseBackupS.map((b, i) => b + sparseS[i]);

    const seedMibS = DATA_BYTES / MiB / median(seedS);
    const rawMibS = DATA_BYTES / MiB / median(rawS);
    const medPhases = (ps: Phases[]): Record<string, number> =>
      Object.fromEntries((Object.keys(ps[0]) as (keyof Phases)[]).map((k) => [k, round(median(ps.map((p) => p[k])))]));
    out(
      JSON.stringify({
        bench: 'seed',
        seed_mib_s: round(seedMibS, 1),
        raw_copy_mib_s: round(rawMibS, 1),
        ratio_vs_raw: round(seedMibS / rawMibS, 3),
        sparse_cost_ratio: round(median(sparseE2e) / median(fullE2e), 3),
        sparse_seed_only_ratio: round(median(sparseS) / median(seedS), 3),
        backup_s: round(median(backupS)),
        sparse_backup_s: round(median(sparseBackupS)),
        seed_s: round(median(seedS)),
        sparse_seed_s: round(median(sparseS)),
        raw_s: round(median(rawS)),
        full_e2e_s_reps: fullE2e.map((x) => round(x)),
        sparse_e2e_s_reps: sparseE2e.map((x) => round(x)),
        seed_s_reps: seedS.map((x) => round(x)),
        raw_s_reps: rawS.map((x) => round(x)),
        sparse_cost_ratio_reps: sparseE2e.map((x, i) => round(x / fullE2e[i], 3)),
        raw_copy_stored_mib_s: round(storedBytes / MiB / median(rawS), 1),
        seed_phase_s: medPhases(phases),
        sparse_phase_s: medPhases(sparsePhases),
        data_mib: DATA_BYTES / MiB,
        stored_mib: round(storedBytes / MiB, 1),
        sparse_disk_gib: SPARSE_BYTES / GiB,
        chunks: DATA_CHUNKS,
        ranges: rangesTotal,
        raw_concurrency: RAW_CONCURRENCY,
        peak_rss_mib: round(peakRss / MiB, 1),
        reps,
      }),
    );
  });
}

const fmtPhases = (p: Phases): string => (Object.entries(p) as [string, number][]).map(([k, v]) => `${k} ${round(v)}`).join(', ');

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
