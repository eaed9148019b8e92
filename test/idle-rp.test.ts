// The RP timer (core/rp-timer.ts): when the source goes quiet, stops or dies, the watermark
// becomes an RP within ccrpInterval of the last applied batch, decided on the cloud side,
// and recovering it gives exactly the bytes written. Each case fails without the timer (the
// last batches below the source's interval never become an RP then), except the clean stop:
// the agent's last cut asks for an RP itself, and the timer only backs it up.

import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import { ReceiveMessageCommand } from '@aws-sdk/client-sqs';
import { dynamoClient, endpointFor, sqsClient } from '../adapters/aws-clients';
import { DynamoIndex } from '../adapters/dynamo-index';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { MemoryRpChecks } from '../adapters/memory-rp-checks';
import { SqsRpChecks } from '../adapters/sqs-rp-checks';
import { callAgent } from '../agent/control';
import { NbdClient } from '../bench/nbd-client';
import { parseRpCheck, type RpCheck } from '../core/rp-timer';
import { createApplyQueues } from '../local/event-source';
import { ApplyService } from '../replica/apply';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { rng } from '../source/workload';
import { exited, spawnAgentProcess } from './agent-process';
import { cloud, eventually, firstDifference, newPairId, nowSec, pattern, recover, SourceModel } from './helpers';

const KiB = 1024;
const MiB = 1024 * KiB;
const disks = [{ name: 'disk0', sizeBytes: 8 * MiB }];

/** Writes `batches` batches of random 4 KiB-aligned writes, each cut on its own, within a few ms of source time. */
async function writeBatches(writer: BatchWriter, model: SourceModel, batches: number, seed: number): Promise<number> {
  const r = rng(seed);
  let last = 0;
  for (let b = 0; b < batches; b++) {
    for (let i = 0; i < 8; i++) {
      const offset = Math.floor(r() * (disks[0].sizeBytes / (4 * KiB) - 16)) * 4 * KiB;
      const data = pattern(Math.ceil(r() * 16) * 4 * KiB, seed * 1000 + b * 10 + i);
      await writer.write('disk0', offset, data);
      model.write('disk0', offset, data);
    }
    last = await writer.flush();
  }
  return last;
}

/** A new pair, applied by an ApplyService on a memory store whose clock and check queue the test holds. */
async function timerRig(prefix: string) {
  const c = cloud();
  const pairId = newPairId(prefix);
  await createPair(c.index, { pairId, disks, ccrpIntervalMs: 5000 });
  const clock = { now: Date.now() };
  const mem = new MemoryObjectStore();
  const checks = new MemoryRpChecks(() => clock.now);
  const warnings: string[] = [];
  const log = { info: () => {}, warn: (msg: string, data?: object) => void warnings.push(`${msg} ${JSON.stringify(data)}`) };
  const service = new ApplyService(mem, c.index, log, () => clock.now, undefined, checks);
  const model = new SourceModel(disks);
  const writer = new BatchWriter({ pairId, disks, store: mem, maxBatchAgeMs: 0, readBlock: async (_d, block) => Buffer.from(model.disks.get('disk0')!.subarray(block * 4096, (block + 1) * 4096)) });
  /** Applies every journal object in the store, in seq order (those applied already are duplicates). */
  const applyAll = async (): Promise<string[]> => {
    const outcomes: string[] = [];
    for (const key of [...mem.objects.keys()].sort()) outcomes.push((await service.applyObject(key)).outcome);
    return outcomes;
  };
  return { c, pairId, clock, mem, checks, warnings, service, model, writer, applyAll };
}

describe('RP timer in the apply service (checks delivered by the test, clock set by it)', () => {
  test('one check per quiet pair; it makes the watermark an RP once, however often it is delivered; unknown pairs are ignored', async () => {
    const { c, pairId, clock, mem, checks, warnings, service, model, writer, applyAll } = await timerRig('timer');
    const last = await writeBatches(writer, model, 6, 1);
    await writer.close();
    expect(last).toBe(6);
    expect(await applyAll()).toEqual(Array(6).fill('applied'));

    // Seq 1 is an RP (the pair's first); 2-6 came within the interval: no RP by the source's clock.
    expect((await c.index.listRecoveryPoints(pairId, nowSec())).map((rp) => rp.seq)).toEqual([1]);
    // One check for the pair, not one per batch, due when the interval since RP 1 is over.
    expect(checks.scheduled.map((s) => [s.check.pairId, s.delaySec])).toEqual([[pairId, 5]]);
    expect((await c.index.getPair(pairId))?.rpCheckDueMs).toBe(clock.now + 5000);
    expect(checks.take(clock.now + 4999)).toEqual([]);

    // Delivered twice at once (SQS is at-least-once), and once more later: one RP, at the watermark.
    clock.now += 5000;
    const [check] = checks.take(clock.now);
    const outcomes = await Promise.all([service.checkRp(check), service.checkRp(check)]);
    expect(outcomes.sort()).toEqual(['cleared', 'rp']);
    expect(await service.checkRp(check)).toBe('cleared');
    const rps = await c.index.listRecoveryPoints(pairId, nowSec());
    expect(rps.map((rp) => [rp.seq, rp.type])).toEqual([[1, 'CRASH'], [6, 'CRASH']]);
    const pair = await c.index.getPair(pairId);
    expect(pair).toMatchObject({ watermark: 6, lastRpSeq: 6, rpMadeMs: clock.now });
    expect(pair?.rpCheckDueMs).toBeUndefined();
    expect(checks.scheduled).toHaveLength(1);

    // The RP holds exactly what was written.
    const got = (await recover({ store: mem, index: c.index }, pairId, 6)).get('disk0')!;
    expect(firstDifference(got, model.disks.get('disk0')!)).toBeUndefined();

    // A check for a pair that does not exist (deleted, or never was) is ignored, with a log line.
    const stray: RpCheck = { kind: 'rp-check', pairId: newPairId('gone'), dueMs: clock.now };
    expect(await service.checkRp(stray)).toBe('ignored');
    expect(warnings).toEqual([expect.stringContaining(`rp-check ignored: unknown pair {"pairId":"${stray.pairId}"`)]);
  });

  test('an RP the source asks for meanwhile postpones the timer: the check re-arms for the rest', async () => {
    const { c, pairId, clock, checks, service, model, writer, applyAll: apply } = await timerRig('rearm');
    await writeBatches(writer, model, 2, 2); // 1: RP, 2: a check due at +5 s
    await apply();
    clock.now += 3000;
    await writer.write('disk0', 0, pattern(4096, 9));
    model.write('disk0', 0, pattern(4096, 9));
    await writer.flush({ rp: true }); // 3: an RP by request, written at +3 s
    await apply();
    await writeBatches(writer, model, 1, 3); // 4: no RP; the check is pending already
    await apply();
    await writer.close();
    expect(checks.scheduled).toHaveLength(1);
    clock.now += 2000;
    expect(await service.checkRp(checks.take(clock.now)[0])).toBe('rearmed');
    expect(checks.scheduled.map((s) => s.delaySec)).toEqual([5, 3]); // due 5 s after RP 3
    clock.now += 3000;
    expect(await service.checkRp(checks.take(clock.now)[0])).toBe('rp');
    expect((await c.index.listRecoveryPoints(pairId, nowSec())).map((rp) => rp.seq)).toEqual([1, 3, 4]);
  });
});

describe('RP timer races', () => {
  test('a check delivered before the commit that records it is not lost', async () => {
    const { c, pairId, clock, mem, checks, model, writer } = await timerRig('race');
    // The queue delivers the first check at once, while the advance that sent it has not committed.
    let early = true;
    const queue = {
      schedule: async (check: RpCheck, delaySec: number): Promise<void> => {
        if (!early) return checks.schedule(check, delaySec);
        early = false;
        outcomes.push(await service.checkRp(check));
      },
    };
    const outcomes: string[] = [];
    const service = new ApplyService(mem, c.index, undefined, () => clock.now, undefined, queue);
    await writeBatches(writer, model, 1, 5);
    await service.applyObject([...mem.objects.keys()][0]); // RP 1
    clock.now += 4500; // the next check is due in 0.5 s: sent with no delay
    await writeBatches(writer, model, 1, 6);
    await writer.close();
    const key = [...mem.objects.keys()].sort()[1];
    expect((await service.applyObject(key)).outcome).toBe('applied');
    expect(outcomes).toEqual(['cleared']); // it saw seq 1, an RP; its write made the advance re-read
    // The advance's retry sent another check, which the pair waits for; it makes the RP.
    const pair = (await c.index.getPair(pairId))!;
    expect(pair.rpCheckDueMs).toBe(checks.scheduled[0]?.check.dueMs);
    clock.now += 1000;
    expect(await service.checkRp(checks.take(clock.now)[0])).toBe('rp');
    expect((await c.index.listRecoveryPoints(pairId, nowSec())).map((rp) => rp.seq)).toEqual([1, 2]);
  });
});

describe('pair writes that lose to a concurrent transaction', () => {
  // AWS refuses a transaction on an item another transaction holds (TransactionConflict); the
  // timer's RP and an advance are both transactions on the pair item. Nothing was written, so
  // the writer re-reads and retries at once instead of failing its message for a redelivery.
  test('TransactionConflict is a lost race (false), like a failed rev condition', async () => {
    const client = dynamoClient({ region: 'us-east-1', endpoint: 'http://127.0.0.1:9', credentials: { accessKeyId: 'x', secretAccessKey: 'x' } });
    let refuse: () => Error = () => new Error('unset');
    client.middlewareStack.add(() => async () => { throw refuse(); }, { step: 'initialize', name: 'refuse' });
    const index = new DynamoIndex('table', client);
    const rp = { pairId: 'p', seq: 2, type: 'CRASH' as const, atMs: 1, expiresAtSec: 2e9, keptBy: [] };
    const plan = { progress: { watermark: 2 }, applied: [], rps: [rp] };
    const conflict = (codes: string[]) => () => new TransactionCanceledException({ $metadata: {}, message: 'Transaction cancelled', CancellationReasons: codes.map((Code) => ({ Code })) });
    for (const codes of [['None', 'TransactionConflict'], ['TransactionConflict', 'None'], ['ConditionalCheckFailed', 'None']]) {
      refuse = conflict(codes);
      expect(await index.commitRpCheck('p', 1, { made: { rp, progress: { lastRpMs: 1, lastRpSeq: 2, rpMadeMs: 1 } } })).toBe(false);
      expect(await index.commitAdvance('p', 1, plan)).toBe(false);
    }
    refuse = () => Object.assign(new Error('conflict'), { name: 'TransactionConflictException' });
    expect(await index.commitRpCheck('p', 1, {})).toBe(false);
    refuse = conflict(['None', 'ValidationError']);
    await expect(index.commitRpCheck('p', 1, { made: { rp, progress: { lastRpMs: 1, lastRpSeq: 2, rpMadeMs: 1 } } })).rejects.toThrow(TransactionCanceledException);
    client.destroy();
  });
});

describe('RP timer through the event path (SQS delayed messages)', () => {
  // The hardest case for the bound: the last batch comes right after an RP (here one the source
  // asked for), so the timer waits out nearly the whole interval after it.
  test('batches closer than ccrpInterval, the last right after an RP, then quiet: an RP at the watermark within the interval + 2 s, holding the bytes written', async () => {
    const c = cloud();
    const pairId = newPairId('quiet');
    const ccrpIntervalMs = 3000;
    await createPair(c.index, { pairId, disks, ccrpIntervalMs });
    const model = new SourceModel(disks);
    const writer = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, readBlock: async (_d, block) => Buffer.from(model.disks.get('disk0')!.subarray(block * 4096, (block + 1) * 4096)) });
    await writeBatches(writer, model, 5, 4);
    await writer.write('disk0', 0, pattern(8192, 5));
    model.write('disk0', 0, pattern(8192, 5));
    expect(await writer.flush({ rp: true })).toBe(6);
    const last = await writeBatches(writer, model, 1, 6);
    await writer.close();
    await waitForWatermark(c.index, pairId, last, 60_000);
    const appliedSeen = Date.now();
    const rp = await eventually('an RP at the watermark', async () => (await c.index.listRecoveryPoints(pairId, nowSec())).find((p) => p.seq === last), ccrpIntervalMs + 10_000);
    const rpSeen = Date.now();
    const rps = await c.index.listRecoveryPoints(pairId, nowSec());
    expect(rps.map((p) => p.seq)).toEqual([1, 6, last]); // 2-5 stay none: only the newest state is kept
    expect(rp.type).toBe('CRASH');

    // On the cloud's clock: from the last batch's registration to the RP's creation.
    const pair = (await c.index.getPair(pairId))!;
    const lastBatch = (await c.index.batchesAfter(pairId, last - 1, 1))[0];
    const cloudDelayMs = pair.rpMadeMs! - lastBatch.registeredMs;
    console.log(JSON.stringify({ idle_rp: 'event path', ccrpIntervalMs, cloudDelayMs, observedMs: rpSeen - appliedSeen }));
    expect(cloudDelayMs).toBeLessThanOrEqual(ccrpIntervalMs + 2000);
    expect(rpSeen - appliedSeen).toBeLessThanOrEqual(ccrpIntervalMs + 2000);

    const got = (await recover(c, pairId, last)).get('disk0')!;
    expect(firstDifference(got, model.disks.get('disk0')!)).toBeUndefined();
  });
});

// Only on the embedded stack: elsewhere the queue is SQS (or LocalStack's), not the emulator.
(process.env.LIVESYNC_EMBEDDED_STACK ? describe : describe.skip)('the local SQS emulator', () => {
  // The timer relies on DelaySeconds; were it ignored locally, checks would come back at once
  // and re-arm until due: the same RPs, at many times the messages.
  test('holds a message back for its DelaySeconds, and long polls then deliver it', async () => {
    const endpoint = endpointFor('SQS')!;
    const sqs = sqsClient();
    try {
      const { queueUrl } = await createApplyQueues(sqs, endpoint, newPairId('delay-probe'), 5, 30);
      const sent = Date.now();
      await new SqsRpChecks(queueUrl, sqs).schedule({ kind: 'rp-check', pairId: 'p', dueMs: sent + 2000 }, 2);
      const received = await eventually('the delayed check', async () => {
        const out = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, WaitTimeSeconds: 1 }));
        return out.Messages?.length ? { at: Date.now(), check: parseRpCheck(out.Messages[0].Body!) } : undefined;
      });
      expect(received.check).toEqual({ kind: 'rp-check', pairId: 'p', dueMs: sent + 2000 });
      expect(received.at - sent).toBeGreaterThanOrEqual(2000);
      expect(received.at - sent).toBeLessThan(3000);
    } finally {
      sqs.destroy();
    }
  });
});

describe('RP timer with a real agent (livesync agent, as an operator runs it)', () => {
  const size = 32 * MiB;
  const ccrpIntervalMs = 5000; // the default
  let dir: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'livesync-idle-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /**
   * A new pair and agent; a first FLUSH (RP 1, the pair's first batch), then 6 MiB of random
   * 4 KiB writes ending in a FLUSH, within the interval of RP 1 (so the source's rule makes
   * none of them an RP); returns once the watermark holds that FLUSH.
   */
  async function writeAndFlush(prefix: string) {
    const c = cloud();
    const pairId = newPairId(prefix);
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }], ccrpIntervalMs });
    const image = join(dir, 'disk0.img');
    await writeFile(image, '');
    await truncate(image, size);
    const agent = await spawnAgentProcess(pairId, { disk0: image }, join(dir, 'state'));
    const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
    await client.write(0, pattern(64 * KiB, 1));
    await client.flush();
    await eventually('RP 1', async () => ((await c.index.listRecoveryPoints(pairId, nowSec())).length > 0 ? true : undefined));
    const r = rng(7);
    const inFlight: Promise<void>[] = [];
    for (let i = 0; i < 1536; i++) {
      inFlight.push(client.write(Math.floor(r() * (size / 4096)) * 4096, pattern(4096, i)));
      if (inFlight.length >= 16) await Promise.all(inFlight.splice(0));
    }
    await Promise.all(inFlight);
    await client.flush();
    const flushedMs = Date.now();
    await client.close();
    // Everything the FLUSH acknowledged is cut, uploaded and applied.
    const sock = join(dir, 'state', 'control.sock');
    const cut = await eventually('the flushed batch uploaded', async () => {
      const st = await callAgent(sock, { op: 'status' });
      if (!st.ok || !('status' in st)) return undefined;
      const s = st.status as typeof st.status & { lastFlushSeq?: number };
      return s.lastCutSeq >= (s.lastFlushSeq ?? 0) && s.spool.batches === 0 && s.upload.inFlight === 0 ? s.lastCutSeq : undefined;
    });
    const pair = await waitForWatermark(c.index, pairId, cut, 60_000);
    // The case this is about: the flushed state is not an RP by the source's rule.
    expect((await c.index.listRecoveryPoints(pairId, nowSec())).map((p) => p.seq)).not.toContain(pair.watermark);
    return { c, pairId, image, agent, flushedMs, watermark: pair.watermark };
  }

  /** The RP holding the final state: at the watermark, within the interval + 2 s of its last batch; its bytes are the image's. */
  async function expectRpAtWatermark(run: { c: ReturnType<typeof cloud>; pairId: string; image: string; flushedMs: number }, how: string): Promise<void> {
    const { c, pairId } = run;
    const rp = await eventually('an RP at the watermark', async () => {
      const pair = (await c.index.getPair(pairId))!;
      const rps = await c.index.listRecoveryPoints(pairId, nowSec());
      return rps.find((p) => p.seq === pair.watermark);
    }, ccrpIntervalMs + 10_000);
    const rpSeenMs = Date.now();
    const pair = (await c.index.getPair(pairId))!;
    expect(rp.seq).toBe(pair.watermark);
    const lastBatch = (await c.index.batchesAfter(pairId, pair.watermark - 1, 1))[0];
    const cloudDelayMs = (pair.rpMadeMs ?? 0) - lastBatch.registeredMs;
    console.log(JSON.stringify({ idle_rp: how, ccrpIntervalMs, watermark: pair.watermark, rps: (await c.index.listRecoveryPoints(pairId, nowSec())).map((p) => p.seq), cloudDelayMs, flushToRpMs: rpSeenMs - run.flushedMs }));
    expect(cloudDelayMs).toBeLessThanOrEqual(ccrpIntervalMs + 2000);
    expect(rpSeenMs - run.flushedMs).toBeLessThanOrEqual(ccrpIntervalMs + 2000 + 2000); // + the upload and apply of the flushed batch
    const got = (await recover(c, pairId, rp.seq)).get('disk0')!;
    expect(firstDifference(got, await readFile(run.image))).toBeUndefined();
  }

  test('stopped cleanly after a FLUSH: an RP at the flushed state', async () => {
    const run = await writeAndFlush('stop');
    run.agent.child.kill('SIGTERM');
    await exited(run.agent.child);
    await expectRpAtWatermark(run, 'clean stop');
  });

  test('killed (SIGKILL) after a FLUSH: an RP at the watermark within the interval + 2 s, bytes equal', async () => {
    const run = await writeAndFlush('killed');
    run.agent.child.kill('SIGKILL');
    await exited(run.agent.child);
    await expectRpAtWatermark(run, 'SIGKILL');
  });
});
