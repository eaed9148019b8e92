// Trials of the apply path: its Lambda's process killed mid-invocation; duplicate, reordered
// and late events; corrupt, truncated, foreign, oversized and overwritten batches. Each ends
// with every live RP of its pair recovered and compared with the source (common.ts).

import { MemoryObjectStore } from '../../adapters/memory-object-store';
import { encodeBatch } from '../../core/batch-format';
import { journalKey, parseJournalKey } from '../../core/keys';
import { ObjectExistsError } from '../../replica/ports';
import { ObjectConflictError, putOnce } from '../../replica/put-once';
import { compactOnce } from '../../replica/compactor';
import { gcOnce } from '../../replica/gc';
import { createPair } from '../../replica/pairs';
import { sleep } from '../../replica/concurrency';
import { randInt } from '../../source/workload';
import { applyQueueDrained, newPairId } from '../helpers';
import { checkExact, count, expectHealthy, KiB, MiB, ModelSource, pattern, retried, sendEvent, underEdgeFaults, untilWatermark, upload, type Trial } from './common';

const DISKS = [
  { name: 'd0', sizeBytes: 4 * MiB },
  { name: 'd1', sizeBytes: 1 * MiB },
];

async function newPair(t: Trial, prefix: string): Promise<string> {
  const pairId = newPairId(prefix);
  await createPair(t.c.index, { pairId, disks: DISKS });
  return pairId;
}

/** A new pair and `n` batches of it (an RP each), in memory, not uploaded: each object with its seq, in seq order. */
async function unsentBatches(t: Trial, prefix: string, n: number): Promise<{ pairId: string; src: ModelSource; objects: { key: string; body: Buffer; seq: number }[] }> {
  const pairId = await newPair(t, prefix);
  const mem = new MemoryObjectStore();
  const src = new ModelSource(pairId, DISKS, mem);
  for (let i = 0; i < n; i++) await src.batch(t.r);
  await src.writer.close();
  const objects = [...mem.objects].map(([key, body]) => ({ key, body, seq: parseJournalKey(key)!.seq })).sort((a, b) => a.seq - b.seq);
  return { pairId, src, objects };
}

/** The apply Lambda's process SIGKILLed 1–3 times while batches arrive. */
export async function applyKill(t: Trial): Promise<string> {
  const pairId = await newPair(t, 'fc-applykill');
  const src = new ModelSource(pairId, DISKS, t.c.store);
  const n = randInt(t.r, 8, 24);
  const killsAt = Array.from({ length: randInt(t.r, 1, 3) }, () => randInt(t.r, 0, n - 1));
  let kills = 0;
  let midInvocation = 0;
  await underEdgeFaults(t, async () => {
    for (let i = 0; i < n; i++) {
      await src.batch(t.r);
      for (const k of killsAt) {
        if (k !== i) continue;
        await sleep(randInt(t.r, 0, 80)); // somewhere in the apply of what was just uploaded, or idle
        const inFlight = t.stack.kill('apply');
        if (inFlight >= 0) kills++;
        if (inFlight > 0) midInvocation++;
      }
    }
    await src.writer.close();
    await untilWatermark(t, pairId, src.seqs.at(-1)!);
  });
  t.tally.realKills += kills;
  count(t, 'apply_sigkill', kills);
  count(t, 'apply_sigkill_mid_invocation', midInvocation);
  await expectHealthy(t, pairId);
  if ((await t.c.index.listQuarantine(pairId)).length > 0) throw new Error(`pair '${pairId}': a batch was quarantined after an apply crash`);
  const rps = await checkExact(t, pairId, src.model);
  return `${n} batches, ${kills} kills (${midInvocation} mid-invocation), ${rps} RPs`;
}

/**
 * Batches uploaded in a shuffled order (their events arrive reordered), some events sent
 * again at once or later (duplicates), and, once the history has folded and collected them,
 * old events again (late).
 */
export async function events(t: Trial): Promise<string> {
  const { pairId, src, objects } = await unsentBatches(t, 'fc-events', randInt(t.r, 4, 12));
  const n = objects.length;
  const order = shuffle(t, objects.map((_, i) => i));
  const reordered = order.some((v, i) => v !== i);
  let dups = 0;
  await underEdgeFaults(t, async () => {
    for (const i of order) {
      await upload(t, objects[i].key, objects[i].body);
      if (t.r() < 0.3) {
        dups++;
        await sendEvent(t, objects[i].key, objects[i].body.length);
      }
      if (t.r() < 0.3) await sleep(randInt(t.r, 0, 50));
    }
    await untilWatermark(t, pairId, n);
  });
  count(t, 'reordered_events', reordered ? 1 : 0);
  count(t, 'duplicate_event', dups);
  await checkExact(t, pairId, src.model, { sample: 8 });

  // Fold everything, collect the journal, then deliver some of its events again.
  const res = await compactOnce(t.c, pairId, { holder: `campaign-${t.seed}` });
  await gcOnce(t.c, pairId, { nowMs: Date.now() + 2 * 3600_000 });
  const late = objects.filter(() => t.r() < 0.4);
  for (const o of late) await sendEvent(t, o.key, o.body.length);
  count(t, 'late_event', late.length);
  await applyQueueDrained(120_000);
  await expectHealthy(t, pairId);
  const q = await t.c.index.listQuarantine(pairId);
  if (q.length > 0) throw new Error(`pair '${pairId}': duplicate or late events were quarantined: ${q.map((x) => `${x.seq} ${x.code}`).join(', ')}`);
  const rps = await checkExact(t, pairId, src.model);
  return `${n} batches, ${dups} duplicates, ${late.length} late after a unit (${res.published ? `v${res.version} through seq ${res.frontierSeq}` : res.reason}), ${rps} RPs`;
}

type Bad = 'corrupt' | 'truncated' | 'foreign' | 'oversized' | 'overwritten';
const BAD: Bad[] = ['corrupt', 'truncated', 'foreign', 'oversized', 'overwritten'];

/**
 * Bad objects put into the pair's journal between its good batches, each under a key of a
 * seq the source writes: before or after the good batch of that seq (an overwrite only after:
 * a valid batch first at a seq is that seq's batch). Each must be refused, naming it, and the
 * good ones applied; an overwrite of a stored object's key is refused by the store.
 */
export async function badBatches(t: Trial): Promise<string> {
  const { pairId, src, objects: good } = await unsentBatches(t, 'fc-bad', randInt(t.r, 4, 10));
  const n = good.length;
  const plan = Array.from({ length: randInt(t.r, 1, 3) }, () => ({ kind: BAD[randInt(t.r, 0, BAD.length - 1)], seq: randInt(t.r, 1, n), first: t.r() < 0.5 }));
  const injected: string[] = [];

  const inject = async (kind: Bad, seq: number): Promise<void> => {
    const body = badBody(t, kind, good[seq - 1].body, pairId, seq);
    const key = journalKey(pairId, seq);
    await upload(t, key, body);
    injected.push(key);
    count(t, `${kind}_batch`);
    if (kind === 'overwritten') {
      // Over the good object itself: the store refuses (create-only), nothing is replaced.
      const refused = await retried('the overwrite attempt', () =>
        putOnce(t.c.store, good[seq - 1].key, body).then(
          () => false,
          (err: Error) => {
            if (err instanceof ObjectExistsError || err instanceof ObjectConflictError) return true;
            throw err; // an injected 503: try again
          },
        ),
      );
      if (!refused) throw new Error(`pair '${pairId}': an overwrite of ${good[seq - 1].key} was not refused`);
    }
  };

  await underEdgeFaults(t, async () => {
    for (const g of good) {
      for (const p of plan) if (p.seq === g.seq && p.first && p.kind !== 'overwritten') await inject(p.kind, p.seq);
      await upload(t, g.key, g.body);
    }
    await untilWatermark(t, pairId, n);
    for (const p of plan) if (!p.first || p.kind === 'overwritten') await inject(p.kind, p.seq);
    await applyQueueDrained(120_000);
  });
  // The source's writes first (what a refused object must not have cost), then the refusals.
  const rps = await checkExact(t, pairId, src.model);
  await expectHealthy(t, pairId);
  // Each bad object is quarantined under its key, none of the good ones; or, arriving once
  // the history had folded its seq, ignored unread (apply never reads below compactedThrough).
  const q = await t.c.index.listQuarantine(pairId);
  const quarantined = new Set(q.map((x) => x.key));
  const folded = (await t.c.index.getPair(pairId))?.compactedThrough ?? 0;
  const missed = injected.filter((k) => !quarantined.has(k) && parseJournalKey(k)!.seq > folded);
  if (missed.length > 0) throw new Error(`pair '${pairId}': bad objects neither quarantined nor below the folded seq ${folded}: ${missed.join(', ')}`);
  const wrongly = good.filter((g) => quarantined.has(g.key));
  if (wrongly.length > 0) throw new Error(`pair '${pairId}': good batches quarantined: ${wrongly.map((g) => g.key).join(', ')}`);
  return `${n} batches, bad: ${plan.map((p) => `${p.kind}@${p.seq}${p.first ? ' first' : ''}`).join(', ')}; ${rps} RPs`;
}

function badBody(t: Trial, kind: Bad, goodBody: Buffer, pairId: string, seq: number): Buffer {
  switch (kind) {
    case 'corrupt': {
      const b = Buffer.from(goodBody);
      b[randInt(t.r, 0, b.length - 1)] ^= 1 << randInt(t.r, 0, 7);
      return b;
    }
    case 'truncated':
      return goodBody.subarray(0, randInt(t.r, 0, goodBody.length - 1));
    case 'foreign':
      // A well-formed batch of another pair, at this seq.
      return batchOf(t, `${pairId}-other`, seq);
    case 'oversized':
      return Buffer.alloc(32 * MiB + randInt(t.r, 1, 64 * KiB), 0xa5);
    case 'overwritten':
      // A well-formed batch of this pair at this seq, with other bytes: another writer's.
      return batchOf(t, pairId, seq);
  }
}

function batchOf(t: Trial, pairId: string, seq: number): Buffer {
  const now = Date.now();
  return encodeBatch({ pairId, seq, prevSeq: seq - 1, firstWriteMs: now, cutMs: now, flags: 0, disks: DISKS.map((d) => d.name) }, [{ disk: 0, blockIndex: randInt(t.r, 0, 1023), data: pattern(t.r, 4 * KiB) }]);
}

function shuffle<T>(t: Trial, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = randInt(t.r, 0, i);
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}
