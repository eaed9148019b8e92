// npm run bench:apply — replication and recovery cost against plain S3, measured in one
// run on the embedded local stack, alternating, medians. Prints one JSON line.
//
//   apply_mib_s              MiB of batch data / (batch encode+PUT + apply) seconds
//   raw_s3_mib_s             the same bytes, as objects of the same sizes: PutObject + GetObject
//   s3_puts/gets, ddb_writes per GiB written (DynamoDB writes count each transaction item)
//   disk_size_cost_ratio     apply time of one workload on a 1 TiB disk / on a 1 GiB disk
//   disk_size_request_ratio  the same for S3 + DynamoDB requests (the bill)
//   materialize_mib_s        recovery of the whole disk at the last RP into a local file
//   materialize_ratio_vs_raw over a plain GetObject of the same image into a file
//
// BENCH_DISK_MIB (default 256) and BENCH_REPS (default 3) scale it.

import { writeFile, mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { startLocalStack } from '../local/stack';
import { ApplyService } from '../replica/apply';
import { mapLimit } from '../replica/concurrency';
import { fileSink, materialize } from '../replica/materialize';
import { createPair } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { randomOp, rng, type WriteOp } from '../source/workload';
import { compareFiles } from '../cli/compare';
import { countRequests, median, reset, round, timed } from './measure';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const TiB = 2 ** 40;
const diskBytes = Number(process.env.BENCH_DISK_MIB ?? 256) * MiB;
const reps = Number(process.env.BENCH_REPS ?? 3);
/** Lambda applies several events of a pair at once; so do we. */
const APPLY_CONCURRENCY = 4;
const dir = join(process.cwd(), '.livesync', 'bench');

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

async function main(): Promise<void> {
  process.env.LOG_LEVEL = 'warn';
  await mkdir(dir, { recursive: true });
  const stack = await startLocalStack({ eventPath: false, dir: join(dir, 'stack') });
  try {
    const s3 = new S3Client({});
    const ddb = new DynamoDBClient({});
    const s3Counts = countRequests(s3);
    const ddbCounts = countRequests(ddb);
    const store = new S3ObjectStore(stack.env.LIVESYNC_BUCKET, s3);
    const index = new DynamoIndex(stack.env.LIVESYNC_TABLE, ddb);
    const service = new ApplyService(store, index);
    let pairNo = 0;

    /** Source side (encode + PUT every batch), then apply them all; returns timings. */
    const replicate = async (size: number, ops: WriteOp[], model?: Buffer, concurrency = APPLY_CONCURRENCY) => {
      const pairId = `bench-${Date.now().toString(36)}-${pairNo++}`;
      const disks = [{ name: 'disk0', sizeBytes: size }];
      await createPair(index, { pairId, disks });
      const keys: string[] = [];
      const batchBytes: number[] = [];
      const writer = new BatchWriter({
        pairId,
        disks,
        store,
        maxBatchAgeMs: 0,
        maxBatchBytes: 8 * MiB,
        onUploaded: (b) => (keys.push(b.key), batchBytes.push(b.dataBytes)),
        readBlock: async (_d, block) => Buffer.from(model!.subarray(block * 4096, (block + 1) * 4096)),
      });
      let logical = 0;
      const upload = await timed(async () => {
        for (const op of ops) {
          logical += op.length;
          if (op.kind === 'write') {
            model && op.data!.copy(model, op.offset);
            await writer.write('disk0', op.offset, op.data!);
          } else {
            model?.fill(0, op.offset, op.offset + op.length);
            await writer.zero('disk0', op.offset, op.length);
          }
        }
        return writer.flush({ rp: true });
      });
      await writer.close();
      const apply = await timed(() => mapLimit(keys, concurrency, (k) => service.applyObject(k)));
      const outcomes = new Set(apply.value.map((a) => a.outcome));
      if ((await index.getPair(pairId))!.watermark !== upload.value) throw new Error(`bench pair ${pairId} did not apply fully: ${[...outcomes]}`);
      return { pairId, seq: upload.value, logical, batchBytes, uploadS: upload.seconds, applyS: apply.seconds };
    };

    /** Plain PutObject + GetObject of objects of the given sizes, same concurrency. */
    const raw = async (sizes: number[]) => {
      const body = Buffer.alloc(Math.max(...sizes), 0x5a);
      const keys = sizes.map((_, i) => `raw/${Date.now()}-${i}`);
      const put = await timed(() => mapLimit(keys, APPLY_CONCURRENCY, (k, i) => s3.send(new PutObjectCommand({ Bucket: store.bucket, Key: k, Body: body.subarray(0, sizes[i]) }))));
      const get = await timed(() => mapLimit(keys, APPLY_CONCURRENCY, async (k) => (await s3.send(new GetObjectCommand({ Bucket: store.bucket, Key: k }))).Body!.transformToByteArray()));
      return put.seconds + get.seconds;
    };

    // 1. Replication vs plain S3, alternating.
    const ops = workload(diskBytes, 1);
    const applyRates: number[] = [];
    const uploadOnly: number[] = [];
    const applyOnly: number[] = [];
    const rawRates: number[] = [];
    let last!: Awaited<ReturnType<typeof replicate>>;
    let model!: Buffer;
    let counts = { puts: 0, gets: 0, ddbWrites: 0, batches: 0 };
    for (let i = 0; i < reps; i++) {
      reset(s3Counts);
      reset(ddbCounts);
      model = Buffer.alloc(diskBytes);
      last = await replicate(diskBytes, ops, model);
      counts = {
        puts: s3Counts.PutObject ?? 0,
        gets: s3Counts.GetObject ?? 0,
        ddbWrites: (ddbCounts.PutItem ?? 0) + (ddbCounts.UpdateItem ?? 0) + (ddbCounts.TransactItems ?? 0),
        batches: last.batchBytes.length,
      };
      const dataBytes = last.batchBytes.reduce((a, b) => a + b, 0);
      applyRates.push(dataBytes / MiB / (last.uploadS + last.applyS));
      uploadOnly.push(dataBytes / MiB / last.uploadS);
      applyOnly.push(dataBytes / MiB / last.applyS);
      rawRates.push(dataBytes / MiB / (await raw(last.batchBytes)));
    }
    const gib = last.batchBytes.reduce((a, b) => a + b, 0) / GiB;

    // 2. Disk size independence: one workload on a 1 GiB and on a 1 TiB disk, in ABBA blocks
    // (GiB, TiB, TiB, GiB) so drift and the first-run penalty cancel; the ratio per block,
    // then the median. Random 4 KiB-aligned writes only, within the first 128 MiB, applied one
    // batch at a time: concurrent appliers retry on contention at random, which is noise here.
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

    // 3. Recovery vs a plain download of the same image, alternating; memory watched.
    const imageKey = `raw/image-${Date.now()}`;
    await s3.send(new PutObjectCommand({ Bucket: store.bucket, Key: imageKey, Body: model }));
    await writeFile(join(dir, 'source.img'), model);
    const matRates: number[] = [];
    const rawGetRates: number[] = [];
    let peakRss = 0;
    const rssBefore = process.memoryUsage().rss;
    for (let i = 0; i < reps; i++) {
      const out = join(dir, 'recovered.img');
      const watch = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 20);
      const mat = await timed(() => materialize(store, index, { pairId: last.pairId, seq: last.seq, sinkFor: async (_d, size) => fileSink(out, size) }));
      clearInterval(watch);
      matRates.push(diskBytes / MiB / mat.seconds);
      if (i === 0 && (await compareFiles(join(dir, 'source.img'), out)) !== undefined) throw new Error('recovered image differs from the source');
      const get = await timed(async () => {
        const res = await s3.send(new GetObjectCommand({ Bucket: store.bucket, Key: imageKey }));
        const fh = await open(join(dir, 'raw.img'), 'w');
        for await (const chunk of res.Body as AsyncIterable<Buffer>) await fh.write(chunk);
        await fh.close();
      });
      rawGetRates.push(diskBytes / MiB / get.seconds);
    }

    const apply = median(applyRates);
    const rawS3 = median(rawRates);
    const mat = median(matRates);
    const rawGet = median(rawGetRates);
    console.log(
      JSON.stringify({
        bench: 'apply',
        apply_mib_s: round(apply),
        raw_s3_mib_s: round(rawS3),
        ratio_vs_raw: round(apply / rawS3),
        source_upload_mib_s: round(median(uploadOnly)),
        apply_only_mib_s: round(median(applyOnly)),
        s3_puts_per_gib: round(counts.puts / gib, 1),
        s3_gets_per_gib: round(counts.gets / gib, 1),
        ddb_writes_per_gib: round(counts.ddbWrites / gib, 1),
        batches_per_gib: round(counts.batches / gib, 1),
        disk_size_cost_ratio: round(median(sizeRatios), 3),
        disk_size_request_ratio: round(median(sizeRequestRatios), 3),
        materialize_mib_s: round(mat),
        materialize_ratio_vs_raw: round(mat / rawGet),
        raw_get_mib_s: round(rawGet),
        materialize_peak_rss_growth_mib: round((peakRss - rssBefore) / MiB, 1),
        disk_mib: diskBytes / MiB,
        written_mib: round(last.logical / MiB, 1),
        reps,
      }),
    );
  } finally {
    await stack.stop();
    await rm(join(dir, 'source.img'), { force: true });
    await rm(join(dir, 'recovered.img'), { force: true });
    await rm(join(dir, 'raw.img'), { force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
