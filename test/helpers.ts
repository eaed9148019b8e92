// Shared by the integration tests: the RP Store from the environment (the embedded local
// stack, LocalStack or a real account), a source model, and recovery into memory.

import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { sqsClient } from '../adapters/aws-clients';
import { rpStoreFromEnv, type RpStore } from '../adapters/from-env';
import { BLOCK_SIZE } from '../core/batch-format';
import { CHUNK_BYTES } from '../core/chunk-format';
import { parseJournalKey } from '../core/keys';
import type { DiskSpec } from '../core/model';
import type { BackupDiskSource } from '../source/backup';
import { materialize, type ImageSink } from '../replica/materialize';
import { sleep } from '../replica/concurrency';
import { waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import type { HistoryIndex, ObjectStore, ReplicaIndex } from '../replica/ports';

export const cloud = (): RpStore => rpStoreFromEnv();

/** Whether a command is on PATH (call at load time: it blocks, and an agent may serve from this process later). */
export function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}

export const newPairId = (prefix: string): string => `${prefix}-${randomBytes(4).toString('hex')}`;

/**
 * Writes `n` batches of pair `pairId` (of `disks`, the first written) into `store`, seq 1 to
 * n, an RP asked at each, for the apply path to be given; returns the pair's journal keys in
 * seq order.
 */
export async function journalBatches(store: ObjectStore, pairId: string, disks: DiskSpec[], n: number): Promise<string[]> {
  const keys: string[] = [];
  const writer = new BatchWriter({ pairId, disks, store, maxBatchAgeMs: 0, maxBatchBytes: 1 << 30, onUploaded: (b) => void keys.push(b.key) });
  for (let seq = 1; seq <= n; seq++) {
    await writer.write(disks[0].name, (seq % 64) * 8192, Buffer.alloc(8192, seq));
    writer.cut({ rp: true });
  }
  await writer.close();
  return keys.sort((a, b) => parseJournalKey(a)!.seq - parseJournalKey(b)!.seq);
}

/** The source's disks in memory, with a copy taken at every batch boundary we care about. */
export class SourceModel {
  readonly disks = new Map<string, Buffer>();
  readonly atSeq = new Map<number, Map<string, Buffer>>();

  constructor(specs: DiskSpec[]) {
    for (const d of specs) this.disks.set(d.name, Buffer.alloc(d.sizeBytes));
  }

  write(disk: string, offset: number, data: Buffer): void {
    data.copy(this.disks.get(disk)!, offset);
  }

  zero(disk: string, offset: number, length: number): void {
    this.disks.get(disk)!.fill(0, offset, offset + length);
  }

  snapshot(seq: number): void {
    this.atSeq.set(seq, new Map([...this.disks].map(([k, v]) => [k, Buffer.from(v)])));
  }
}

/** Materializes every disk of the pair at `seq` into memory. */
export async function recover(store: { store: ObjectStore; index: ReplicaIndex; history?: HistoryIndex }, pairId: string, seq: number, windowBytes?: number): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  await materialize(store.store, store.index, {
    pairId,
    seq,
    windowBytes,
    history: store.history,
    sinkFor: async (disk, size): Promise<ImageSink> => {
      const image = Buffer.alloc(size);
      out.set(disk, image);
      return { write: async (offset, window) => void window.copy(image, offset), close: async () => {}, abort: async () => {} };
    },
  });
  return out;
}

/** An RP of everything the agent acknowledged so far (an ACRP, which flushes), applied by the cloud side. */
export async function takeRp(agent: { acrp(tag: string): Promise<number> }, pairId: string, tag = 'test'): Promise<number> {
  const seq = await agent.acrp(tag);
  await waitForWatermark(cloud().index, pairId, seq, 60_000);
  return seq;
}

/** Polls `probe` until it returns a value (not undefined) or the time is up. */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

/** Compares images without printing megabytes on failure: the first differing byte. */
export function firstDifference(a: Buffer, b: Buffer): number | undefined {
  if (a.equals(b)) return undefined;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Runs the `livesync` CLI as an operator would, with the tests' environment. */
export async function runCli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCliWithEnv(process.env, ...args);
}

export async function runCliWithEnv(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(join(__dirname, '../node_modules/.bin/tsx'), [join(__dirname, '../cli/livesync.ts'), ...args], { env });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

export const nowSec = (): number => Math.floor(Date.now() / 1000);

/**
 * Waits until the apply queue holds no message, visible or in flight (the embedded stack
 * names it; elsewhere its events are not ours to see, and a pause stands in).
 */
export async function applyQueueDrained(timeoutMs = 30_000): Promise<void> {
  const QueueUrl = process.env.LIVESYNC_APPLY_QUEUE_URL;
  if (!QueueUrl) return sleep(3000);
  const sqs = sqsClient();
  const names = ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] as const;
  try {
    await eventually('the apply queue to drain', async () => {
      const { Attributes: a = {} } = await sqs.send(new GetQueueAttributesCommand({ QueueUrl, AttributeNames: [...names] }));
      return names.every((n) => a[n] === '0') ? true : undefined;
    }, timeoutMs);
  } finally {
    sqs.destroy();
  }
}

/** nbdsh: Debian's python3 has the nbd module, so /usr/bin goes first. A failure carries nbdsh's stderr. */
export function execNbdsh(...args: string[]): Promise<{ stdout: string }> {
  return promisify(execFile)('nbdsh', args, { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH}` } }).catch((err: { stderr?: string; message: string }) => {
    throw new Error(err.stderr || err.message);
  });
}

/** `n` bytes of a deterministic pattern (incompressible enough to be stored as written). */
export function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
}

/**
 * The model's disks as a backup source that writes (through `write`, which also journals)
 * between the chunks it reads, and on every third chunk right before reading it: a fuzzy
 * backup, made consistent only by the journal up to its end seq.
 */
export function fuzzyBackupDisks(disks: DiskSpec[], model: SourceModel, write: (disk: string, offset: number, data: Buffer) => Promise<void>): BackupDiskSource[] {
  let during = 0;
  return disks.map((d) => ({
    ...d,
    read: async (offset, length) => {
      await write(disks[0].name, CHUNK_BYTES + ((during * 7) % 64) * BLOCK_SIZE, pattern(2 * BLOCK_SIZE, 100 + during));
      if ((offset / CHUNK_BYTES) % 3 === 0) await write(d.name, offset, pattern(BLOCK_SIZE, 200 + during));
      during++;
      return Buffer.from(model.disks.get(d.name)!.subarray(offset, offset + length));
    },
  }));
}
