// The ReplicaIndex port's contract, one suite run against each adapter: MemoryIndex (what
// bench/history.ts simulates a week over) and DynamoIndex over the test stack's DynamoDB.
// The methods the apply path, compaction and recovery use, with their conditions as DynamoDB
// evaluates them: a batch registers once per seq; advances and RP checks commit only at `rev`;
// RP listings filter expiry at nowSec but keep pinned RPs; pins, judgements and policy changes
// write nothing when their condition fails.

import { MemoryIndex } from '../adapters/memory-index';
import type { AdvancePlan } from '../core/advance';
import type { BatchRecord, Pair, RecoveryPoint } from '../core/model';
import { DEFAULT_RETENTION } from '../core/retention';
import type { ReplicaIndex } from '../replica/ports';
import { cloud, newPairId } from './helpers';

const subjects: [string, () => ReplicaIndex][] = [
  ['MemoryIndex', () => new MemoryIndex()],
  ['DynamoIndex', () => cloud().index],
];

const batch = (pairId: string, seq: number, extra: Partial<BatchRecord> = {}): BatchRecord => ({
  seq,
  key: `pairs/${pairId}/journal/${String(seq).padStart(20, '0')}.0123456789abcdef.batch`,
  sizeBytes: 100 + seq,
  objectCrc: 1000 + seq,
  firstWriteMs: seq * 1000 - 500,
  cutMs: seq * 1000,
  flags: 0,
  extentCount: 1,
  dataBytes: 4096,
  disks: ['disk0'],
  registeredMs: 7,
  ...extra,
});

const rp = (pairId: string, seq: number, extra: Partial<RecoveryPoint> = {}): RecoveryPoint => ({
  pairId,
  seq,
  type: 'CRASH',
  atMs: seq * 1000,
  expiresAtSec: 10_000 + seq,
  keptBy: ['all:every for 3600s'],
  policyRev: 0,
  ...extra,
});

const plan = (watermark: number, rps: RecoveryPoint[] = [], extra: Partial<AdvancePlan> = {}): AdvancePlan => ({
  progress: { watermark, watermarkMs: watermark * 1000, ...(rps.length ? { lastRpSeq: rps[rps.length - 1].seq, lastRpMs: rps[rps.length - 1].atMs, rpMadeMs: 5 } : {}) },
  applied: [],
  rps,
  ...extra,
});

describe.each(subjects)('%s', (_name, make) => {
  let index: ReplicaIndex;
  beforeAll(() => {
    index = make();
  });

  const newPair = async (extra: Partial<Pair> = {}): Promise<string> => {
    const pairId = newPairId('ri');
    await index.createPair({ pairId, state: 'REPLICATING', stateChangedMs: 1, disks: [{ name: 'disk0', sizeBytes: 1 << 20 }], ccrpIntervalMs: 5000, retention: DEFAULT_RETENTION, createdMs: 1, watermark: 0, ...extra });
    return pairId;
  };

  test('a pair is created once, at rev 0, and reads back as written', async () => {
    const p = await newPair();
    expect(await index.getPair(p)).toEqual({ pairId: p, state: 'REPLICATING', stateChangedMs: 1, disks: [{ name: 'disk0', sizeBytes: 1 << 20 }], ccrpIntervalMs: 5000, retention: DEFAULT_RETENTION, createdMs: 1, watermark: 0, rev: 0 });
    await expect(index.createPair({ ...(await index.getPair(p))!, watermark: 9 })).rejects.toThrow(`pair '${p}' already exists`);
    expect((await index.getPair(p))!.watermark).toBe(0);
    expect(await index.getPair(newPairId('ri-missing'))).toBeUndefined();
  });

  test('a batch registers once per seq: a second registration returns the first, whatever it carries', async () => {
    const p = await newPair();
    expect(await index.registerBatch(p, batch(p, 1))).toEqual({ registered: true });
    expect(await index.registerBatch(p, batch(p, 1, { objectCrc: 42, key: 'other' }))).toEqual({ registered: false, existing: batch(p, 1) });
    expect(await index.batchesAfter(p, 0, 10)).toEqual([batch(p, 1)]);
  });

  test('batchesAfter: seqs above afterSeq, ascending, at most limit; segmentsUpTo: at or below', async () => {
    const p = await newPair();
    for (const s of [5, 2, 9, 3, 7]) await index.registerBatch(p, batch(p, s));
    const seqs = (bs: BatchRecord[]): number[] => bs.map((b) => b.seq);
    expect(seqs(await index.batchesAfter(p, 0, 100))).toEqual([2, 3, 5, 7, 9]);
    expect(seqs(await index.batchesAfter(p, 3, 100))).toEqual([5, 7, 9]);
    expect(seqs(await index.batchesAfter(p, 3, 2))).toEqual([5, 7]);
    expect(seqs(await index.batchesAfter(p, 9, 10))).toEqual([]);
    expect(seqs(await index.segmentsUpTo(p, 5))).toEqual([2, 3, 5]);
    expect(seqs(await index.segmentsUpTo(p, 1))).toEqual([]);
  });

  test('commitAdvance writes the plan and its RPs only at rev, and moves rev on', async () => {
    const p = await newPair();
    const rps = [rp(p, 1), rp(p, 3, { type: 'APP', tag: 'db' })];
    expect(await index.commitAdvance(p, 0, plan(3, rps))).toBe(true);
    const after = (await index.getPair(p))!;
    expect(after).toMatchObject({ rev: 1, watermark: 3, watermarkMs: 3000, lastRpSeq: 3, lastRpMs: 3000, rpMadeMs: 5, state: 'REPLICATING' });
    expect(await index.getRecoveryPoint(p, 3)).toEqual(rps[1]);
    // Planned at rev 0: another applier moved the pair; nothing of this plan is written.
    expect(await index.commitAdvance(p, 0, plan(4, [rp(p, 4)]))).toBe(false);
    expect((await index.getPair(p))!).toMatchObject({ rev: 1, watermark: 3 });
    expect(await index.getRecoveryPoint(p, 4)).toBeUndefined();
  });

  test('commitAdvance with the error the watermark passed: the next one shown, or cleared and the state restored', async () => {
    const error = { seq: 2, code: 'CONFLICT', reason: 'x', key: 'k2', atMs: 9 };
    const p = await newPair({ state: 'ERROR', error });
    const next = { seq: 5, code: 'MALFORMED', reason: 'y', key: 'k5', atMs: 10 };
    expect(await index.commitAdvance(p, 0, plan(2), { next })).toBe(true);
    expect((await index.getPair(p))!).toMatchObject({ state: 'ERROR', error: next, watermark: 2 });
    expect(await index.commitAdvance(p, 1, plan(5), {})).toBe(true);
    const cleared = (await index.getPair(p))!;
    expect(cleared.state).toBe('REPLICATING');
    expect(cleared.error).toBeUndefined();
  });

  test('an advance plan of more than one transaction (99 RPs + the pair) is refused before writing', async () => {
    const p = await newPair();
    const rps = Array.from({ length: 100 }, (_, i) => rp(p, i + 1));
    await expect(index.commitAdvance(p, 0, plan(100, rps))).rejects.toThrow(RangeError);
    expect((await index.getPair(p))!.rev).toBe(0);
  });

  test('commitRpCheck: the RP and the pair bookkeeping at rev; the pending check set or removed', async () => {
    const p = await newPair();
    expect(await index.commitRpCheck(p, 0, { rpCheckDueMs: 7000 })).toBe(true);
    expect((await index.getPair(p))!).toMatchObject({ rev: 1, rpCheckDueMs: 7000 });
    const made = { rp: rp(p, 4), progress: { watermark: 4, lastRpMs: 4000, lastRpSeq: 4, rpMadeMs: 8000 } };
    expect(await index.commitRpCheck(p, 0, { made })).toBe(false); // stale rev: nothing written
    expect(await index.getRecoveryPoint(p, 4)).toBeUndefined();
    expect(await index.commitRpCheck(p, 1, { made })).toBe(true);
    const after = (await index.getPair(p))!;
    expect(after).toMatchObject({ rev: 2, lastRpMs: 4000, lastRpSeq: 4, rpMadeMs: 8000 });
    expect(after.rpCheckDueMs).toBeUndefined();
    expect(await index.getRecoveryPoint(p, 4)).toEqual(rp(p, 4));
  });

  test('listRecoveryPoints: unexpired at nowSec or pinned, ascending; APP only; paged by afterSeq and limit', async () => {
    const p = await newPair();
    const pin = { by: 'ops', reason: 'hold', atMs: 1 };
    const rps = [rp(p, 0, { expiresAtSec: 200 }), rp(p, 1, { expiresAtSec: 100 }), rp(p, 2, { type: 'APP', tag: 'db', expiresAtSec: 101 }), rp(p, 3, { type: 'APP', tag: 'db', expiresAtSec: 50 }), rp(p, 4, { expiresAtSec: 300 })];
    expect(await index.commitAdvance(p, 0, plan(4, rps))).toBe(true);
    expect(await index.pinRecoveryPoint(p, 3, pin, 10)).toBe(true);
    const seqs = async (...a: Parameters<ReplicaIndex['listRecoveryPoints']> extends [string, ...infer R] ? R : never): Promise<number[]> => (await index.listRecoveryPoints(p, ...a)).map((r) => r.seq);
    // expiresAt > nowSec: RP 1 (expires at 100) is gone at 100; the pinned RP 3 outlives its old expiry.
    expect(await seqs(100)).toEqual([0, 2, 3, 4]);
    expect(await seqs(99)).toEqual([0, 1, 2, 3, 4]);
    expect(await seqs(250)).toEqual([3, 4]);
    expect(await seqs(100, 'APP')).toEqual([2, 3]);
    expect(await seqs(101, 'APP')).toEqual([3]);
    expect(await seqs(100, undefined, { afterSeq: 0 })).toEqual([2, 3, 4]);
    expect(await seqs(100, undefined, { afterSeq: 0, limit: 2 })).toEqual([2, 3]);
    expect(await seqs(100, 'APP', { afterSeq: 2 })).toEqual([3]);
    // Expired but not yet deleted by TTL: still there to a GetItem (recovery judges it with rpLives).
    expect(await index.getRecoveryPoint(p, 1)).toEqual(rps[1]);
    const pinned = (await index.getRecoveryPoint(p, 3))!;
    expect(pinned.pinned).toEqual(pin);
    expect(pinned.expiresAtSec).toBeUndefined();
  });

  test('pin only an unpinned RP that expires after aboveSec; rejudge only as read', async () => {
    const p = await newPair();
    expect(await index.commitAdvance(p, 0, plan(2, [rp(p, 1, { expiresAtSec: 100 }), rp(p, 2, { expiresAtSec: 100, policyRev: 1 })]))).toBe(true);
    const pin = { by: 'ops', reason: 'hold', atMs: 77 };
    expect(await index.pinRecoveryPoint(p, 1, pin, 100)).toBe(false); // 100 is not after 100
    expect(await index.pinRecoveryPoint(p, 9, pin, 0)).toBe(false); // no such RP
    expect(await index.pinRecoveryPoint(p, 1, pin, 99)).toBe(true);
    expect(await index.pinRecoveryPoint(p, 1, { ...pin, atMs: 78 }, 0)).toBe(false); // pinned already
    // Unpin: only the pin that is there (its atMs).
    const next = { expiresAtSec: 150, keptBy: ['all:every for 3600s'], policyRev: 2 };
    expect(await index.rejudgeRecoveryPoint(p, 1, { pinnedAtMs: 78 }, next)).toBe(false);
    expect(await index.rejudgeRecoveryPoint(p, 1, { pinnedAtMs: 77 }, next)).toBe(true);
    expect(await index.getRecoveryPoint(p, 1)).toEqual(rp(p, 1, { ...next }));
    // A policy change: as read (expiry), still live above aboveSec, judged under an older policy.
    expect(await index.rejudgeRecoveryPoint(p, 2, { expiresAtSec: 99, aboveSec: 0 }, next)).toBe(false);
    expect(await index.rejudgeRecoveryPoint(p, 2, { expiresAtSec: 100, aboveSec: 100 }, next)).toBe(false);
    expect(await index.rejudgeRecoveryPoint(p, 2, { expiresAtSec: 100, aboveSec: 0 }, { ...next, policyRev: 1 })).toBe(false);
    expect(await index.rejudgeRecoveryPoint(p, 2, { expiresAtSec: 100, aboveSec: 0 }, next)).toBe(true);
    expect(await index.getRecoveryPoint(p, 2)).toEqual(rp(p, 2, { ...next }));
  });

  test('setRetention: the next policy rev only, and the pair rev moves so plans made under the old one fail', async () => {
    const p = await newPair();
    const policy = { ...DEFAULT_RETENTION, all: [{ windowSec: 600, spacingSec: 0 }] };
    await expect(index.setRetention(p, { ...policy, rev: 0 })).rejects.toThrow(RangeError);
    expect(await index.setRetention(p, { ...policy, rev: 2 })).toBe(false);
    expect(await index.setRetention(p, { ...policy, rev: 1 })).toBe(true);
    expect(await index.setRetention(p, { ...policy, rev: 1 })).toBe(false);
    const after = (await index.getPair(p))!;
    expect(after.retention).toEqual({ ...policy, rev: 1 });
    expect(after.rev).toBe(1);
    expect(await index.commitAdvance(p, 0, plan(1))).toBe(false);
    expect(await index.setRetention(newPairId('ri-missing'), { ...policy, rev: 1 })).toBe(false);
  });

  test('quarantine: a record per object; a blocking one marks the pair ERROR (the lowest seq shown) and moves rev', async () => {
    const p = await newPair();
    const q = (seq: number, name: string) => ({ pairId: p, seq, key: `pairs/${p}/journal/${name}`, code: 'MALFORMED', reason: `bad ${seq}`, atMs: 100 + seq });
    await index.quarantine(q(5, 'b'), true);
    expect((await index.getPair(p))!).toMatchObject({ state: 'ERROR', error: { seq: 5, key: q(5, 'b').key }, rev: 1, stateChangedMs: 105 });
    await index.quarantine(q(7, 'c'), true); // a higher one: the lower stays shown, rev moves
    expect((await index.getPair(p))!).toMatchObject({ error: { seq: 5 }, rev: 2 });
    await index.quarantine(q(3, 'a'), true);
    expect((await index.getPair(p))!).toMatchObject({ error: { seq: 3 }, rev: 3 });
    await index.quarantine(q(3, 'a'), false); // a redelivery rewrites the same record
    expect((await index.listQuarantine(p)).map((r) => `${r.seq}${r.key.slice(-1)}`)).toEqual(['3a', '5b', '7c']);
  });

  test('a blocking quarantine at or below the watermark leaves the pair alone', async () => {
    const p = await newPair();
    expect(await index.commitAdvance(p, 0, plan(4))).toBe(true);
    await index.quarantine({ pairId: p, seq: 4, key: `pairs/${p}/journal/x`, code: 'REPLAY', reason: 'r', atMs: 1 }, true);
    const after = (await index.getPair(p))!;
    expect(after.state).toBe('REPLICATING');
    expect(after.error).toBeUndefined();
    expect(after.rev).toBe(1);
  });
});
