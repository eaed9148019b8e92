// npm run bench:apply — replication and recovery cost against plain S3, measured in one
// run on the embedded local stack (S3 in this process, DynamoDB Local a Java child), the two
// sides of each comparison alternating from rep to rep (which goes first rotates), medians.
// Prints one JSON line on stdout; progress on stderr.
//
// Replication: one workload (a sequential 1 MiB fill of the disk, then random writes and
// zeroes over a quarter of it), written through a BatchWriter (encode + PUT, 4 uploads in
// flight), then every batch applied as Lambda does: invocations of up to 10 objects (the
// event source's batch size), 4 at once, each reading and registering its objects one at a
// time and then advancing the pair once (ApplyService.applyObjects): 4 GETs in flight, as the
// raw side has. Before 2026-12-05 each object was applied on its own, 4 at once, each with
// its own advance (commits racing on the pair's rev).
//   written_mib              what the workload's write requests carry: MiB of data written,
//                            zeroed ranges excluded (zeroed_mib says how much it zeroed)
//   batch_object_mib         what the batch objects hold (the encoded bodies: compressed
//                            extents, indexes, headers): the bytes S3 stores and serves
//   apply_written_mib_s      written_mib / (source encode+PUT + apply) seconds (the bench's
//                            copy of each write into its model of the disk not counted)
//   raw_s3_written_mib_s     written_mib / seconds of plain S3 moving the batch objects: the
//                            very bodies the writer PUT (same count, same sizes, same adapter,
//                            4 at once) each PutObject then GetObject under another key
//   ratio_vs_raw             apply_written_mib_s / raw_s3_written_mib_s = raw seconds /
//                            replication seconds, for the same bytes moved (target ≥ 0.5).
//                            Before 2026-12 the raw side moved `dataBytes`-sized objects (the
//                            uncompressed extents, zeroes counted): ~2× the batch objects
//   raw_s3_object_mib_s      batch_object_mib / raw seconds: plain S3's own rate here
//   source_upload_written_mib_s, apply_only_written_mib_s: written_mib over each half alone
//   s3_puts/gets, ddb_writes, batches per GiB written (DynamoDB writes count each
//                            transaction item)
// Disk size independence (one workload on a 1 GiB and a 1 TiB disk, ABBA blocks):
//   disk_size_cost_ratio     apply time on the 1 TiB disk / on the 1 GiB disk
//   disk_size_request_ratio  the same for S3 + DynamoDB requests (the bill)
// Recovery of the whole disk at the last RP into a local (sparse) file, checked once against
// the source:
//   materialize_mib_s        disk MiB / seconds of materialize (every extent and chunk
//                            verified), from the RP lookup to the file closed
//   raw_get_mib_s            disk MiB / seconds of one plain GetObject of the same image
//                            (uploaded as one object) streamed into a file
//   materialize_ratio_vs_raw materialize_mib_s / raw_get_mib_s (target ≥ 0.5)
//   materialize_peak_rss_growth_mib: the process's RSS peak during recovery over before it
//
// Everything measured runs in this one process (the S3 server too) beside DynamoDB Local;
// both sides of each comparison share that placement, so nothing is pinned. The RP Store's
// DynamoDB client talks to DynamoDB Local directly, past the local stack's counting proxy
// (requests are counted on the SDK clients here): the proxy, which does not exist in AWS,
// would run on this process's event loop for the replication side only. Through it, apply
// took 3.03 s against 2.51 s direct (medians of 3 alternated reps at 256 MiB, CPU 2.02 -> 1.84 s). DynamoDB Local
// needs Java: checked first, and installed with apt-get when run as root (bench/peers.ts).
// BENCH_DISK_MIB (default 256) and BENCH_REPS (default 3) scale it; BENCH_APPLY_PARTS
// (default replication,size,recovery) picks parts, the figures of the others are null.

import { writeFile, mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { dynamoClient, s3Client } from '../adapters/aws-clients';
import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { startLocalStack, type LocalStack } from '../local/stack';
import { ApplyService } from '../replica/apply';
import { mapLimit } from '../replica/concurrency';
import { fileSink, materialize } from '../replica/materialize';
import { createPair } from '../replica/pairs';
import type { ObjectStore } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { randomOp, rng, type WriteOp } from '../source/workload';
import { compareFiles } from '../cli/compare';
import { countRequests, median, partsFromEnv, reset, round, runBench, timed } from './measure';
import { ensurePeers, JAVA_PEER } from './peers';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const TiB = 2 ** 40;
const diskBytes = Number(process.env.BENCH_DISK_MIB ?? 256) * MiB;
const reps = Number(process.env.BENCH_REPS ?? 3);
const PARTS = ['replication', 'size', 'recovery'] as const;
const parts = partsFromEnv('BENCH_APPLY_PARTS', PARTS);
/** Lambda applies several events of a pair at once; so do we. The writer uploads 4 at once too. */
const APPLY_CONCURRENCY = 4;
/** Messages per invocation: the apply queue's event source batch size (lib/apply-pipeline.ts). */
const APPLY_BATCH = 10;
const dir = join(process.cwd(), '.livesync', 'bench');

process.env.LOG_LEVEL = 'warn';
const log = (m: string): void => void process.stderr.write(`[bench:apply] ${m}\n`);
if (!Number.isInteger(reps) || reps < 1) throw new Error(`BENCH_REPS must be a positive integer, not '${process.env.BENCH_REPS}'`);
if (!(diskBytes >= 4 * MiB && diskBytes % MiB === 0)) throw new Error(`BENCH_DISK_MIB must be a whole number of MiB, at least 4, not '${process.env.BENCH_DISK_MIB}'`);

/** A full sequential fill (like a first sync) followed by random overwrites of a quarter of the disk. */
function workload(size: number, seed: number): WriteOp[] {
  const r = rng(seed);
  const ops: WriteOp[] = [];
  for (let off = 0; off < size; off += MiB) {
    let op = randomOp(r, MiB, MiB);
    while (op.kind !== 'write' || op.length !== MiB) op = randomOp(r, MiB, MiB);
    ops.push({ ...op, offset: off });
  }
  for (let n = 0; n < size / 4; ) {
    const op = randomOp(r, size);
    ops.push(op);
    n += op.length;
  }
  return ops;
}

/** Bytes the workload writes (write requests) and zeroes. */
function workloadBytes(ops: WriteOp[]): { written: number; zeroed: number } {
  let written = 0;
  let zeroed = 0;
  for (const op of ops) {
    if (op.kind === 'write') written += op.length;
    else zeroed += op.length;
  }
  return { written, zeroed };
}

/** The store, keeping every body PUT through it (the batch objects, for the raw side to move). */
function capturing(store: ObjectStore, bodies: Buffer[]): ObjectStore {
  return {
    put: (key, body, opts) => (bodies.push(body), store.put(key, body, opts)),
    get: (key, range, maxBytes) => store.get(key, range, maxBytes),
    upload: (key, body) => store.upload(key, body),
    size: (key) => store.size(key),
  };
}

let stack: LocalStack | undefined;

async function main(): Promise<void> {
  await mkdir(dir, { recursive: true });
  const cleanup = async (): Promise<void> => {
    await stack?.stop();
    for (const f of ['source.img', 'recovered.img', 'raw.img']) await rm(join(dir, f), { force: true });
  };
  await runBench(log, cleanup, async () => {
    ensurePeers([JAVA_PEER], log); // the one peer this bench needs
    stack = await startLocalStack({ eventPath: false, dir: join(dir, 'stack') });
    const s3 = s3Client();
    // Straight to DynamoDB Local, not through the stack's counting proxy: the proxy would run
    // in this process, on the event loop both sides share, for the replication side only (this
    // bench counts requests on the clients themselves).
    const ddb = stack.uncountedDynamoEndpoint ? dynamoClient({ endpoint: stack.uncountedDynamoEndpoint }) : dynamoClient();
    const s3Counts = countRequests(s3);
    const ddbCounts = countRequests(ddb);
    const store = new S3ObjectStore(stack.env.LIVESYNC_BUCKET, s3);
    const index = new DynamoIndex(stack.env.LIVESYNC_TABLE, ddb);
    const service = new ApplyService(store, index);
    let pairNo = 0;

    /** Source side (encode + PUT every batch), then apply them all; returns timings and the batch bodies. */
    const replicate = async (size: number, ops: WriteOp[], model?: Buffer, concurrency = APPLY_CONCURRENCY) => {
      const pairId = `bench-${Date.now().toString(36)}-${pairNo++}`;
      const disks = [{ name: 'disk0', sizeBytes: size }];
      await createPair(index, { pairId, disks });
      const keys: string[] = [];
      const objectBytes: number[] = [];
      const bodies: Buffer[] = [];
      const writer = new BatchWriter({
        pairId,
        disks,
        store: capturing(store, bodies),
        maxBatchAgeMs: 0,
        maxBatchBytes: 8 * MiB,
        onUploaded: (b) => (keys.push(b.key), objectBytes.push(b.bytes)),
        readBlock: async (_d, block) => Buffer.from(model!.subarray(block * 4096, (block + 1) * 4096)),
      });
      // The model (the source disk, kept for the writer's partial-block reads and the recovery
      // check) is the bench's own bookkeeping: its time is taken out of the upload's.
      let bookkeepingS = 0;
      const keep = (f: () => void): void => {
        const t = performance.now();
        f();
        bookkeepingS += (performance.now() - t) / 1000;
      };
      const upload = await timed(async () => {
        for (const op of ops) {
          if (op.kind === 'write') {
            if (model) keep(() => op.data!.copy(model, op.offset));
            await writer.write('disk0', op.offset, op.data!);
          } else {
            if (model) keep(() => model.fill(0, op.offset, op.offset + op.length));
            await writer.zero('disk0', op.offset, op.length);
          }
        }
        return writer.flush({ rp: true });
      });
      upload.seconds -= bookkeepingS;
      await writer.close();
      const invocations = Array.from({ length: Math.ceil(keys.length / APPLY_BATCH) }, (_, i) => keys.slice(i * APPLY_BATCH, (i + 1) * APPLY_BATCH));
      const apply = await timed(async () => (await mapLimit(invocations, concurrency, (ks) => service.applyObjects(ks, 1))).flat());
      const outcomes = new Set(apply.value.map((a) => ('error' in a ? `error: ${String(a.error)}` : a.outcome)));
      if ((await index.getPair(pairId))!.watermark !== upload.value) throw new Error(`bench pair ${pairId} did not apply fully: ${[...outcomes]}`);
      const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
      if (bodies.length !== keys.length || sum(bodies.map((b) => b.length)) !== sum(objectBytes)) {
        throw new Error(`captured ${bodies.length} bodies (${sum(bodies.map((b) => b.length))} bytes) for ${keys.length} batch objects (${sum(objectBytes)} bytes)`);
      }
      return { pairId, seq: upload.value, bodies, objectBytes: sum(objectBytes), uploadS: upload.seconds, applyS: apply.seconds, bookkeepingS };
    };

    /** Plain S3 moving the given bodies: each PUT, then each GET, under raw/ keys, same adapter, same concurrency. */
    const raw = async (bodies: Buffer[]): Promise<number> => {
      const keys = bodies.map((_, i) => `raw/${Date.now().toString(36)}-${i}`);
      const put = await timed(() => mapLimit(keys, APPLY_CONCURRENCY, (k, i) => store.put(k, bodies[i])));
      const get = await timed(() =>
        mapLimit(keys, APPLY_CONCURRENCY, async (k, i) => {
          const got = await store.get(k);
          if (got.length !== bodies[i].length) throw new Error(`raw GET of ${k}: ${got.length} bytes, PUT ${bodies[i].length}`);
        }),
      );
      return put.seconds + get.seconds;
    };

    const figures: Record<string, unknown> = {};
    const ops = workload(diskBytes, 1);
    const { written, zeroed } = workloadBytes(ops);
    let last: Awaited<ReturnType<typeof replicate>> | undefined;
    let model: Buffer | undefined;
    let batchObjectBytes: number | undefined;
    const replicateWithModel = async () => {
      model = Buffer.alloc(diskBytes);
      last = await replicate(diskBytes, ops, model);
      batchObjectBytes = last.objectBytes;
      return last;
    };

    // 1. Replication vs plain S3 moving the same objects; which side goes first alternates.
    if (parts.has('replication')) {
      log(`replication: ${round(written / MiB, 1)} MiB written, ${reps} reps (a warm-up first)`);
      await replicateWithModel(); // warm-up, not counted; its bodies serve a raw side that goes first
      const applyS: number[] = [];
      const uploadS: number[] = [];
      const applyOnlyS: number[] = [];
      const rawS: number[] = [];
      let counts = { puts: 0, gets: 0, ddbWrites: 0, batches: 0 };
      let bookkeeping = 0;
      for (let i = 0; i < reps; i++) {
        const sides = {
          apply: async () => {
            reset(s3Counts);
            reset(ddbCounts);
            const r = await replicateWithModel();
            counts = {
              puts: s3Counts.PutObject ?? 0,
              gets: s3Counts.GetObject ?? 0,
              ddbWrites: (ddbCounts.PutItem ?? 0) + (ddbCounts.UpdateItem ?? 0) + (ddbCounts.TransactItems ?? 0),
              batches: r.bodies.length,
            };
            applyS.push(r.uploadS + r.applyS);
            bookkeeping = r.bookkeepingS;
            uploadS.push(r.uploadS);
            applyOnlyS.push(r.applyS);
          },
          raw: async () => void rawS.push(await raw(last!.bodies)),
        };
        const order = i % 2 === 0 ? (['apply', 'raw'] as const) : (['raw', 'apply'] as const);
        for (const side of order) await sides[side]();
        log(`rep ${i + 1}/${reps} (${order.join(' then ')}): replication ${round(applyS[i])} s (model bookkeeping ${round(bookkeeping, 3)} s not counted), raw S3 ${round(rawS[i])} s`);
      }
      const gib = written / GiB;
      const mib = written / MiB;
      Object.assign(figures, {
        apply_written_mib_s: round(mib / median(applyS)),
        raw_s3_written_mib_s: round(mib / median(rawS)),
        ratio_vs_raw: round(median(rawS) / median(applyS)),
        raw_s3_object_mib_s: round(last!.objectBytes / MiB / median(rawS)),
        source_upload_written_mib_s: round(mib / median(uploadS)),
        apply_only_written_mib_s: round(mib / median(applyOnlyS)),
        replication_s_reps: applyS.map((x) => round(x)),
        raw_s3_s_reps: rawS.map((x) => round(x)),
        s3_puts_per_gib: round(counts.puts / gib, 1),
        s3_gets_per_gib: round(counts.gets / gib, 1),
        ddb_writes_per_gib: round(counts.ddbWrites / gib, 1),
        batches_per_gib: round(counts.batches / gib, 1),
      });
    }

    // 2. Disk size independence: one workload on a 1 GiB and on a 1 TiB disk, in ABBA blocks
    // (GiB, TiB, TiB, GiB) so drift and the first-run penalty cancel; the ratio per block,
    // then the median. Random 4 KiB-aligned writes only, within the first 128 MiB, applied one
    // batch at a time: concurrent appliers retry on contention at random, which is noise here.
    if (parts.has('size')) {
      log('disk size: 1 GiB against 1 TiB, ABBA blocks');
      const fixed = workload(128 * MiB, 2).slice(128).filter((op) => op.offset % 4096 === 0 && op.length % 4096 === 0);
      await replicate(GiB, fixed); // warm-up, not counted
      const sizeRatios: number[] = [];
      const sizeRequestRatios: number[] = [];
      const applyCost = async (size: number) => {
        reset(s3Counts);
        reset(ddbCounts);
        const { applyS } = await replicate(size, fixed, undefined, 1);
        const requests = Object.values(s3Counts).reduce((a, b) => a + b, 0) + Object.values(ddbCounts).reduce((a, b) => a + b, 0);
        return { applyS, requests };
      };
      for (let i = 0; i < Math.max(9, reps); i++) {
        const g1 = await applyCost(GiB);
        const t1 = await applyCost(TiB);
        const t2 = await applyCost(TiB);
        const g2 = await applyCost(GiB);
        sizeRatios.push((t1.applyS + t2.applyS) / (g1.applyS + g2.applyS));
        sizeRequestRatios.push((t1.requests + t2.requests) / (g1.requests + g2.requests));
      }
      Object.assign(figures, { disk_size_cost_ratio: round(median(sizeRatios), 3), disk_size_request_ratio: round(median(sizeRequestRatios), 3) });
    }

    // 3. Recovery vs a plain download of the same image; which goes first alternates; memory watched.
    if (parts.has('recovery')) {
      if (!last) {
        log('recovery: replicating the workload first');
        await replicateWithModel();
      }
      const { pairId, seq } = last!;
      const imageKey = `raw/image-${Date.now()}`;
      await s3.send(new PutObjectCommand({ Bucket: store.bucket, Key: imageKey, Body: model }));
      await writeFile(join(dir, 'source.img'), model!);
      model = undefined;
      last = undefined; // the bodies: no longer needed
      const matS: number[] = [];
      const rawGetS: number[] = [];
      let peakRss = 0;
      const rssBefore = process.memoryUsage().rss;
      const sides = {
        materialize: async (i: number) => {
          const out = join(dir, 'recovered.img');
          const watch = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 20);
          const mat = await timed(() => materialize(store, index, { pairId, seq, sinkFor: async (_d, size) => fileSink(out, size) }));
          clearInterval(watch);
          matS.push(mat.seconds);
          if (i === 0 && (await compareFiles(join(dir, 'source.img'), out)) !== undefined) throw new Error('recovered image differs from the source');
        },
        raw: async () => {
          const get = await timed(async () => {
            const res = await s3.send(new GetObjectCommand({ Bucket: store.bucket, Key: imageKey }));
            const fh = await open(join(dir, 'raw.img'), 'w');
            for await (const chunk of res.Body as AsyncIterable<Buffer>) await fh.write(chunk);
            await fh.close();
          });
          rawGetS.push(get.seconds);
        },
      };
      for (let i = 0; i < reps; i++) {
        const order = i % 2 === 0 ? (['materialize', 'raw'] as const) : (['raw', 'materialize'] as const);
        for (const side of order) await sides[side](i);
        log(`recovery rep ${i + 1}/${reps} (${order.join(' then ')}): materialize ${round(matS[i])} s, raw GET ${round(rawGetS[i])} s`);
      }
      const disk = diskBytes / MiB;
      Object.assign(figures, {
        materialize_mib_s: round(disk / median(matS)),
        raw_get_mib_s: round(disk / median(rawGetS)),
        materialize_ratio_vs_raw: round(median(rawGetS) / median(matS)),
        materialize_s_reps: matS.map((x) => round(x)),
        raw_get_s_reps: rawGetS.map((x) => round(x)),
        materialize_peak_rss_growth_mib: round((peakRss - rssBefore) / MiB, 1),
      });
    }

    const keys = [
      'apply_written_mib_s', 'raw_s3_written_mib_s', 'ratio_vs_raw', 'raw_s3_object_mib_s', 'source_upload_written_mib_s', 'apply_only_written_mib_s',
      's3_puts_per_gib', 's3_gets_per_gib', 'ddb_writes_per_gib', 'batches_per_gib', 'disk_size_cost_ratio', 'disk_size_request_ratio',
      'materialize_mib_s', 'raw_get_mib_s', 'materialize_ratio_vs_raw', 'materialize_peak_rss_growth_mib',
    ];
    console.log(
      JSON.stringify({
        bench: 'apply',
        ...Object.fromEntries(keys.map((k) => [k, figures[k] ?? null])),
        disk_mib: diskBytes / MiB,
        written_mib: round(written / MiB, 1),
        zeroed_mib: round(zeroed / MiB, 1),
        batch_object_mib: batchObjectBytes === undefined ? null : round(batchObjectBytes / MiB, 1),
        ...Object.fromEntries(Object.entries(figures).filter(([k]) => !keys.includes(k))),
        reps,
      }),
    );
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
