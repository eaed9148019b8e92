// What every trial of the fault campaign shares: its context and tally, a source model written
// through the batch writer, waits that outlast injected faults, and the check — every live RP
// recovered and compared with what the source had at its seq.

import { SendMessageCommand } from '@aws-sdk/client-sqs';
import { sqsClient } from '../../adapters/aws-clients';
import type { RpStore } from '../../adapters/from-env';
import { BLOCK_SIZE } from '../../core/batch-format';
import type { DiskSpec, RecoveryPoint } from '../../core/model';
import type { LocalStack } from '../../local/stack';
import { sleep } from '../../replica/concurrency';
import { putOnce } from '../../replica/put-once';
import { BatchWriter } from '../../source/batch-writer';
import { randInt, type Rng } from '../../source/workload';
import { firstDifference, recover, SourceModel } from '../helpers';

export interface Tally {
  /** Faults injected, by kind. */
  faults: Record<string, number>;
  /** SIGKILLs of real processes (the agent, the apply or compaction Lambda's process). */
  realKills: number;
  rpsChecked: number;
  rpsBitExact: number;
  /** Acknowledged writes an RP that should hold them did not (blocks, or the agent's slots). */
  writesLost: number;
}

export interface Trial {
  stack: LocalStack;
  c: RpStore;
  r: Rng;
  seed: number;
  /** A scratch directory of this trial's own. */
  dir: string;
  tally: Tally;
  log: (msg: string) => void;
}

export const KiB = 1024;
export const MiB = 1024 * KiB;

export function count(t: Trial, kind: string, n = 1): void {
  if (n > 0) t.tally.faults[kind] = (t.tally.faults[kind] ?? 0) + n;
}

/** Polls `probe` until it returns a value; errors (an injected throttle) count as "not yet". */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = ` (last error: ${(err as Error).message})`;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last}`);
    await sleep(100);
  }
}

export async function untilWatermark(t: Trial, pairId: string, seq: number): Promise<void> {
  await until(`pair '${pairId}' to reach watermark ${seq}`, async () => {
    const p = await t.c.index.getPair(pairId);
    if (p?.error) throw new Error(`pair '${pairId}' in error at seq ${p.error.seq}: ${p.error.reason}`);
    return p && p.watermark >= seq ? true : undefined;
  });
}

/**
 * With probability ½, S3 and DynamoDB refuse a share of requests (503 SlowDown, throttling)
 * while `body` runs: every client meets them through its SDK's retries and its own.
 */
export async function underEdgeFaults<T>(t: Trial, body: () => Promise<T>): Promise<T> {
  if (t.r() < 0.5) return body();
  const rate = [0.02, 0.1, 0.25][randInt(t.r, 0, 2)];
  const before = t.stack.faults.injected();
  t.stack.faults.set({ s3: rate, dynamodb: rate });
  try {
    return await body();
  } finally {
    t.stack.faults.set({ s3: 0, dynamodb: 0 });
    const after = t.stack.faults.injected();
    count(t, 's3_503', after.s3 - before.s3);
    count(t, 'dynamodb_throttle', after.dynamodb - before.dynamodb);
  }
}

/**
 * Runs `step` (a compaction unit, a GC) until it completes, as the workflow retries a failed
 * task: an injected throttle that outlasted the SDK's retries fails one attempt, not the trial.
 */
export async function retried<T>(what: string, step: () => Promise<T>, attempts = 20): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await step();
    } catch (err) {
      if (i >= attempts) throw new Error(`${what} failed ${attempts} times: ${(err as Error).message}`);
      await sleep(100 * i);
    }
  }
}

/**
 * PUTs a journal object as a source does: create-only, retried until it lands (an injected
 * 503 that outlasted the SDK's retries is retried again; a retry whose first attempt landed
 * finds its own bytes: replica/put-once.ts).
 */
export async function upload(t: Trial, key: string, body: Buffer): Promise<void> {
  await retried(`the upload of ${key}`, () => putOnce(t.c.store, key, body));
}

/** Every live RP of the pair (pinned or not expired), in seq order. */
export async function liveRps(t: Trial, pairId: string): Promise<RecoveryPoint[]> {
  const out: RecoveryPoint[] = [];
  for (;;) {
    const page = await t.c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000), undefined, { afterSeq: out.at(-1)?.seq });
    if (page.length === 0) return out;
    out.push(...page);
  }
}

/** A random pattern of `length` bytes from the trial's generator (replayable from its seed). */
export function pattern(r: Rng, length: number): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 4) b.writeUInt32LE((r() * 4294967296) >>> 0, i);
  return b;
}

/** A source whose every batch is an RP: the model keeps the disks' bytes at each seq. */
export class ModelSource {
  readonly model: SourceModel;
  readonly writer: BatchWriter;
  readonly seqs: number[] = [];

  constructor(
    readonly pairId: string,
    readonly disks: DiskSpec[],
    store: ConstructorParameters<typeof BatchWriter>[0]['store'],
  ) {
    this.model = new SourceModel(disks);
    // Retries outlast the injected 503s; a batch is one object, whatever its size.
    this.writer = new BatchWriter({ pairId, disks, store, maxBatchAgeMs: 0, maxBatchBytes: 1 << 30, retry: { attempts: 50, baseDelayMs: 20, maxDelayMs: 500 } });
  }

  /** A few random writes and zeroes, whole blocks, then a cut with an RP: its seq. */
  async batch(r: Rng, ops = randInt(r, 1, 6)): Promise<number> {
    const d = this.disks[randInt(r, 0, this.disks.length - 1)];
    for (let i = 0; i < ops; i++) {
      const blocks = randInt(r, 1, 16);
      const offset = randInt(r, 0, d.sizeBytes / BLOCK_SIZE - blocks) * BLOCK_SIZE;
      const length = blocks * BLOCK_SIZE;
      if (r() < 0.1) {
        this.model.zero(d.name, offset, length);
        await this.writer.zero(d.name, offset, length);
      } else {
        const data = pattern(r, length);
        this.model.write(d.name, offset, data);
        await this.writer.write(d.name, offset, data);
      }
    }
    const seq = this.writer.cut({ rp: true })!;
    this.model.snapshot(seq);
    this.seqs.push(seq);
    return seq;
  }
}

/**
 * Recovers every live RP of the pair (or a sample) and compares each disk with the model at
 * its seq. An RP the model has no state for is a failure (no RP may appear at a seq that was
 * not asked for).
 */
export async function checkExact(t: Trial, pairId: string, model: SourceModel, opts: { sample?: number } = {}): Promise<number> {
  const all = await liveRps(t, pairId);
  if (all.length === 0) throw new Error(`pair '${pairId}' has no live RP to check`);
  // A sample (between the steps of a trial): the oldest, the newest and random others.
  const rps = opts.sample && all.length > opts.sample ? [all[0], all.at(-1)!, ...all.slice(1, -1).filter(() => t.r() < (opts.sample! - 2) / (all.length - 2))] : all;
  for (const rp of rps) {
    const want = model.atSeq.get(rp.seq);
    if (!want) throw new Error(`pair '${pairId}' has RP ${rp.seq}, a seq the source never made an RP of`);
    const got = await recover(t.c, pairId, rp.seq);
    t.tally.rpsChecked++;
    let lost = 0;
    for (const [disk, bytes] of want) lost += blocksDiffering(got.get(disk), bytes);
    if (lost === 0) t.tally.rpsBitExact++;
    else {
      t.tally.writesLost += lost;
      const disk = [...want].find(([d, b]) => firstDifference(got.get(d) ?? Buffer.alloc(0), b) !== undefined)![0];
      throw new Error(`pair '${pairId}' RP ${rp.seq}: ${lost} blocks differ from the source (first on '${disk}' at byte ${firstDifference(got.get(disk) ?? Buffer.alloc(0), want.get(disk)!)})`);
    }
  }
  return rps.length;
}

function blocksDiffering(got: Buffer | undefined, want: Buffer): number {
  if (!got || got.length !== want.length) return want.length / BLOCK_SIZE;
  let n = 0;
  for (let at = 0; at < want.length; at += BLOCK_SIZE) if (!got.subarray(at, at + BLOCK_SIZE).equals(want.subarray(at, at + BLOCK_SIZE))) n++;
  return n;
}

/** The S3 notification the bucket sends for a new journal object, sent to the apply queue again (a duplicate or a late event). */
export async function sendEvent(t: Trial, key: string, size: number): Promise<void> {
  const record = { eventVersion: '2.1', eventSource: 'aws:s3', eventName: 'ObjectCreated:Put', s3: { bucket: { name: t.c.bucket }, object: { key: encodeURIComponent(key).replace(/%2F/g, '/'), size } } };
  const sqs = sqsClient();
  try {
    await sqs.send(new SendMessageCommand({ QueueUrl: t.stack.env.LIVESYNC_APPLY_QUEUE_URL, MessageBody: JSON.stringify({ Records: [record] }) }));
  } finally {
    sqs.destroy();
  }
}

/** The pair replicates and nothing of it is in error. */
export async function expectHealthy(t: Trial, pairId: string): Promise<void> {
  const p = await t.c.index.getPair(pairId);
  if (p?.state !== 'REPLICATING' || p.error) throw new Error(`pair '${pairId}' is ${p?.state}${p?.error ? ` (error at seq ${p.error.seq}: ${p.error.reason})` : ''}, not REPLICATING`);
}
