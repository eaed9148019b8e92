// Retention end to end on the embedded stack: RPs made by the apply path carry their facts;
// `rp pin`, `pair set-retention`, `rp unpin` and `rp list` as an operator runs them; a policy
// change cut short and run again; an unpin racing with a policy change.

import { randomBytes } from 'node:crypto';
import { planAdvance } from '../core/advance';
import type { RecoveryPoint } from '../core/model';
import { PIN_MARGIN_MS, type RetentionPolicy } from '../core/retention';
import { createPair, pinRp, setRetention, unpinRp, waitForWatermark } from '../replica/pairs';
import { activateSeed } from '../replica/seeding';
import { sleep } from '../replica/concurrency';
import type { ReplicaIndex } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { cloud, newPairId, runCli } from './helpers';

const MiB = 2 ** 20;
const nowSec = (): number => Math.floor(Date.now() / 1000);
const HOUR: RetentionPolicy = { all: [{ windowSec: 3600, spacingSec: 0 }], app: [] };

/** A pair with `n` RPs (every batch asks for one; `app` of them application-consistent), applied by the cloud side. */
async function pairWithRps(prefix: string, n: number, app: number[] = [], retention = HOUR): Promise<{ pairId: string; rps: RecoveryPoint[] }> {
  const c = cloud();
  const pairId = newPairId(prefix);
  const disks = [{ name: 'd', sizeBytes: MiB }];
  await createPair(c.index, { pairId, disks, retention });
  const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
  let seq = 0;
  for (let i = 1; i <= n; i++) {
    await w.write('d', i * 8192, randomBytes(8192));
    seq = app.includes(i) ? w.cut({ appTag: `app=${i}` })! : w.cut({ rp: true })!;
  }
  await w.close();
  await waitForWatermark(c.index, pairId, seq, 30_000);
  return { pairId, rps: await c.index.listRecoveryPoints(pairId, nowSec()) };
}

/** Until every RP is 2 s old: a 1-s policy (expiresAt = ceil(atMs / 1 s) + 1) has then ended them all. */
const pastOneSecondLives = (rps: RecoveryPoint[]): Promise<void> => sleep(Math.max(0, Math.max(...rps.map((r) => r.atMs)) + 2000 - Date.now()));

/** `rp list` lines as fields: seq, type, time, until, why, tag. */
const listed = async (pairId: string): Promise<string[][]> => {
  const res = await runCli('rp', 'list', '--pair', pairId);
  expect(res).toMatchObject({ code: 0 });
  return res.stdout.split('\n').filter(Boolean).map((l) => l.split('\t'));
};

describe('RPs keep the facts they are judged by', () => {
  test('each RP the apply path makes stores the previous RP and ACRP times and its policy revision', async () => {
    const { rps } = await pairWithRps('facts', 4, [2, 4]);
    expect(rps.map((r) => [r.seq, r.type])).toEqual([[1, 'CRASH'], [2, 'APP'], [3, 'CRASH'], [4, 'APP']]);
    expect(rps[0].prevAtMs).toBeUndefined();
    rps.slice(1).forEach((rp, i) => expect(rp.prevAtMs).toBe(rps[i].atMs));
    expect(rps[1].prevAppAtMs).toBeUndefined(); // the first ACRP
    expect(rps[3].prevAppAtMs).toBe(rps[1].atMs);
    expect(rps.every((r) => r.policyRev === 0 && r.expiresAtSec === Math.ceil(r.atMs / 1000) + 3600)).toBe(true);
  });
});

describe('seed activation keeps the facts of the RPs it writes', () => {
  test('its RPs chain over the RPs actually written: the first, the newest 90 of the backlog (the ones before left out)', async () => {
    const c = cloud();
    const pairId = newPairId('actfacts');
    const disks = [{ name: 'd', sizeBytes: MiB }];
    const pair = await createPair(c.index, { pairId, disks, backup: 's3://bucket-x/backups/k/manifest.json', retention: HOUR });
    expect(await c.index.updateSeed(pairId, pair.seed!.seedId, { state: 'SEEDING' })).toBe(true);
    // 96 batches applied while seeding (no RPs then), each asking for one; two application-consistent.
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
    for (let i = 1; i <= 96; i++) {
      await w.write('d', (i % 64) * 4096, randomBytes(4096));
      w.cut(i === 50 || i === 80 ? { appTag: `app=${i}` } : { rp: true });
    }
    await w.close();
    await waitForWatermark(c.index, pairId, 96, 60_000);
    expect(await c.index.listRecoveryPoints(pairId, nowSec())).toEqual([]);
    await activateSeed({ store: c.store, index: c.index, sourceStore: () => c.store }, { pairId, seedId: pair.seed!.seedId, firstRpSeq: 1, app: false, takenMs: Date.now() });
    const rps = await c.index.listRecoveryPoints(pairId, nowSec());
    // The first RP (seq 1), then the backlog's RPs 2..96 less the oldest 5: 7..96.
    expect(rps.map((r) => r.seq)).toEqual([1, ...Array.from({ length: 90 }, (_, i) => i + 7)]);
    expect(rps[0].prevAtMs).toBeUndefined();
    rps.slice(1).forEach((rp, i) => expect([rp.seq, rp.prevAtMs]).toEqual([rp.seq, rps[i].atMs])); // RP 7's predecessor is RP 1
    const [app50, app80] = [rps.find((r) => r.seq === 50)!, rps.find((r) => r.seq === 80)!];
    expect([app50.type, app50.prevAppAtMs, app80.type, app80.prevAppAtMs]).toEqual(['APP', undefined, 'APP', app50.atMs]);
    expect(rps.every((r) => r.policyRev === 0 && r.expiresAtSec === Math.ceil(r.atMs / 1000) + 3600)).toBe(true);
  });
});

describe('pin, set-retention, unpin and rp list through the CLI', () => {
  test('a pinned RP outlives a policy that expires the rest, is listed with no expiry, and unpinned is judged again', async () => {
    const c = cloud();
    const { pairId, rps } = await pairWithRps('retcli', 4, [3]);
    expect(rps).toHaveLength(4);

    const pinned = await runCli('rp', 'pin', '--pair', pairId, '--seq', '2', '--reason', 'case 42: keep for legal', '--by', 'alice');
    expect(pinned).toMatchObject({ code: 0, stdout: expect.stringMatching(/^2\tCRASH\t\S+\tpinned\tpinned by alice at \S+: case 42: keep for legal\t\n$/) });
    const item = await c.index.getRecoveryPoint(pairId, 2);
    expect(item).toMatchObject({ seq: 2, pinned: { by: 'alice', reason: 'case 42: keep for legal' } });
    expect(item!.expiresAtSec).toBeUndefined(); // TTL never deletes it

    // A 1-second policy: every unpinned RP (made 2 s ago or more) ends at once; the pinned one is left alone.
    await pastOneSecondLives(rps);
    const short = await runCli('pair', 'set-retention', '--pair', pairId, '--tier', '1s:0');
    expect(short.code).toBe(0);
    expect(JSON.parse(short.stdout)).toMatchObject({ pairId, policyRev: 1, changed: true, written: { expired: 3 }, skipped: { pinned: 1 } });
    expect((await c.index.getPair(pairId))!.retention).toEqual({ all: [{ windowSec: 1, spacingSec: 0 }], app: [], rev: 1 });
    for (const rp of rps.filter((r) => r.seq !== 2)) {
      expect(await c.index.getRecoveryPoint(pairId, rp.seq)).toMatchObject({ expiresAtSec: Math.ceil(rp.atMs / 1000) + 1, keptBy: ['all:every for 1s'], policyRev: 1 });
    }
    const afterShort = await listed(pairId);
    expect(afterShort.map((f) => [f[0], f[3]])).toEqual([['2', 'pinned']]);
    expect(await c.index.listRecoveryPoints(pairId, nowSec())).toEqual([expect.objectContaining({ seq: 2, pinned: expect.anything() })]);

    // Lengthened again: the expired ones stay expired (compaction may have dropped them); the same command again changes nothing.
    const long = await runCli('pair', 'set-retention', '--pair', pairId, '--tier', '1h:0', '--tier', '1d:15m', '--app-tier', '30d:1d');
    expect(JSON.parse(long.stdout)).toMatchObject({ policyRev: 2, changed: true, written: { shortened: 0, lengthened: 0, expired: 0, same: 0 }, skipped: { pinned: 1 } });
    expect((await listed(pairId)).map((f) => f[0])).toEqual(['2']);
    const again = await runCli('pair', 'set-retention', '--pair', pairId, '--tier', '1h:0', '--tier', '1d:15m', '--app-tier', '30d:1d');
    expect(JSON.parse(again.stdout)).toMatchObject({ policyRev: 2, changed: false });

    // Unpinned under the policy now in force: RP 2 is first in its 15-min bucket only if RP 1 was in another; it lives a day or an hour.
    const unpinned = await runCli('rp', 'unpin', '--pair', pairId, '--seq', '2');
    expect(unpinned.code).toBe(0);
    const rp2 = (await c.index.getRecoveryPoint(pairId, 2))!;
    expect(rp2.pinned).toBeUndefined();
    expect(rp2.policyRev).toBe(2);
    const sameBucket = Math.floor(rps[0].atMs / 900_000) === Math.floor(rps[1].atMs / 900_000);
    expect(rp2.expiresAtSec).toBe(Math.ceil(rps[1].atMs / 1000) + (sameBucket ? 3600 : 86_400));
    expect(await listed(pairId)).toEqual([['2', 'CRASH', new Date(rps[1].atMs).toISOString(), new Date(rp2.expiresAtSec! * 1000).toISOString(), `kept by ${rp2.keptBy.join(', ')}`, '']]);
    const json = await runCli('rp', 'list', '--pair', pairId, '--json');
    expect(JSON.parse(json.stdout)).toMatchObject({ seq: 2, expiresAtSec: rp2.expiresAtSec, prevAtMs: rps[0].atMs, policyRev: 2 });

    // Errors name the pair and the seq.
    const cases: [string[], string][] = [
      [['rp', 'unpin', '--pair', pairId, '--seq', '2'], `RP 2 of pair '${pairId}' is not pinned`],
      [['rp', 'pin', '--pair', pairId, '--seq', '1', '--reason', 'r'], `RP 1 of pair '${pairId}' expired at`],
      [['rp', 'pin', '--pair', pairId, '--seq', '9', '--reason', 'r'], `pair '${pairId}' has no RP at seq 9`],
    ];
    for (const [args, message] of cases) {
      const res = await runCli(...args);
      expect({ code: res.code, stderr: res.stderr }).toEqual({ code: 2, stderr: expect.stringContaining(message) });
    }
    const twice = await pinRp(c.index, pairId, 2, { by: 'bob', reason: 'audit' });
    expect(twice.pinned).toMatchObject({ by: 'bob' });
    await expect(pinRp(c.index, pairId, 2, { by: 'carol', reason: 'audit' })).rejects.toThrow(`RP 2 of pair '${pairId}' is already pinned (by bob at`);
  });

  test('rp list --app lists a pinned ACRP (the acrp index read keeps pinned ones too)', async () => {
    const c = cloud();
    const { pairId, rps } = await pairWithRps('apppin', 3, [2, 3]);
    await pinRp(c.index, pairId, 2, { by: 'ops', reason: 'db upgrade' });
    await pastOneSecondLives(rps);
    await setRetention(c.index, pairId, { all: [{ windowSec: 1, spacingSec: 0 }], app: [] });
    expect((await c.index.listRecoveryPoints(pairId, nowSec(), 'APP')).map((r) => r.seq)).toEqual([2]);
    const res = await runCli('rp', 'list', '--pair', pairId, '--app');
    expect(res).toMatchObject({ code: 0, stdout: expect.stringMatching(/^2\tAPP\t\S+\tpinned\tpinned by ops at \S+: db upgrade\tapp=2\n$/) });
  });

  test('an RP with PIN_MARGIN or less left cannot be pinned (nor lengthened); unpinned, one is judged under the policy then in force', async () => {
    const c = cloud();
    const { pairId, rps } = await pairWithRps('pinmargin', 2, [], { all: [{ windowSec: 50, spacingSec: 0 }], app: [] });
    expect(rps[0].expiresAtSec! * 1000 - Date.now()).toBeLessThan(PIN_MARGIN_MS);
    await expect(pinRp(c.index, pairId, 1, { by: 'ops', reason: 'late' })).rejects.toThrow(new RegExp(`RP 1 of pair '${pairId}' expires at \\S+, within 60 s: too close to its end to pin`));
    const res = await setRetention(c.index, pairId, HOUR);
    expect(res).toMatchObject({ written: { lengthened: 0 }, skipped: { ending: 2 } });
    expect((await c.index.getRecoveryPoint(pairId, 1))!.expiresAtSec).toBe(rps[0].expiresAtSec);

    // A pin taken in time, then the policy shortened to 1 s: unpinned, it is judged under that: 1 s from its time.
    const p2 = await pairWithRps('unpinexp', 1);
    await pinRp(c.index, p2.pairId, 1, { by: 'ops', reason: 'r' });
    await setRetention(c.index, p2.pairId, { all: [{ windowSec: 1, spacingSec: 0 }], app: [] });
    const out = await unpinRp(c.index, p2.pairId, 1);
    expect(out).toMatchObject({ expiresAtSec: Math.ceil(p2.rps[0].atMs / 1000) + 1, policyRev: 1 });
    expect(out.pinned).toBeUndefined();
    // Listed until that second, not from it (the RP was made a moment ago).
    expect(await c.index.listRecoveryPoints(p2.pairId, out.expiresAtSec! - 1)).toHaveLength(1);
    expect(await c.index.listRecoveryPoints(p2.pairId, out.expiresAtSec!)).toEqual([]);
  });
});

describe('a policy change cut short, and races', () => {
  test('set-retention that dies half-way: run again, it finishes, judging only the RPs not judged yet', async () => {
    const c = cloud();
    const { pairId, rps } = await pairWithRps('resume', 6);
    // The process dies at its third RP write (the two before it land: writes go 8 at a time).
    const landed: Promise<boolean>[] = [];
    const dying = new Proxy(c.index, {
      get: (target, prop, receiver) =>
        prop === 'rejudgeRecoveryPoint'
          ? async (...args: Parameters<ReplicaIndex['rejudgeRecoveryPoint']>) => {
              if (landed.length >= 2) throw new Error('crash');
              landed.push(target.rejudgeRecoveryPoint(...args));
              return landed[landed.length - 1];
            }
          : Reflect.get(target, prop, receiver),
    });
    const twoHours = { all: [{ windowSec: 7200, spacingSec: 0 }], app: [] };
    await expect(setRetention(dying, pairId, twoHours)).rejects.toThrow('crash');
    await Promise.all(landed);
    const half = await c.index.listRecoveryPoints(pairId, nowSec());
    expect(half.filter((r) => r.policyRev === 1)).toHaveLength(2);
    const res = await setRetention(c.index, pairId, twoHours);
    expect(res).toMatchObject({ policyRev: 1, changed: false, written: { lengthened: 4 }, skipped: { current: 2 } });
    const done = await c.index.listRecoveryPoints(pairId, nowSec());
    expect(done.map((r) => [r.seq, r.policyRev, r.expiresAtSec])).toEqual(rps.map((r) => [r.seq, 1, Math.ceil(r.atMs / 1000) + 7200]));
  });

  test('an unpin that a policy change overtakes (its pass saw the RP pinned) is judged again under the new policy', async () => {
    const c = cloud();
    const { pairId, rps } = await pairWithRps('unpinrace', 2);
    await pinRp(c.index, pairId, 1, { by: 'ops', reason: 'r' });
    const twoHours = { all: [{ windowSec: 7200, spacingSec: 0 }], app: [] };
    // The whole policy change lands after unpin read the policy and before it writes.
    const racing = new Proxy(c.index, {
      get: (target, prop, receiver) =>
        prop === 'rejudgeRecoveryPoint'
          ? async (...args: Parameters<ReplicaIndex['rejudgeRecoveryPoint']>) => {
              if ('pinnedAtMs' in args[2]) expect(await setRetention(c.index, pairId, twoHours)).toMatchObject({ skipped: { pinned: 1 }, written: { lengthened: 1 } });
              return target.rejudgeRecoveryPoint(...args);
            }
          : Reflect.get(target, prop, receiver),
    });
    const out = await unpinRp(racing, pairId, 1);
    expect(out).toMatchObject({ seq: 1, policyRev: 1, expiresAtSec: Math.ceil(rps[0].atMs / 1000) + 7200 });
    expect(await c.index.getRecoveryPoint(pairId, 1)).toMatchObject({ policyRev: 1, expiresAtSec: Math.ceil(rps[0].atMs / 1000) + 7200 });
  });

  test('RPs planned under the old policy are not written after a change: an advance re-plans (pair rev), activation too (policy rev)', async () => {
    const c = cloud();
    const { pairId } = await pairWithRps('newrps', 1);
    const disks = [{ name: 'd', sizeBytes: MiB }];
    const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB, firstSeq: 2 });
    await w.write('d', 0, randomBytes(8192));
    const seq = w.cut({ rp: true })!;
    await w.close();
    await waitForWatermark(c.index, pairId, seq, 30_000);
    // An advance planned before the change (as an applier would have, at the pair's rev then) cannot commit after it.
    const before = (await c.index.getPair(pairId))!;
    const plan = planAdvance({ pairId, progress: { ...before, watermark: seq - 1 }, ccrpIntervalMs: before.ccrpIntervalMs, retention: before.retention, pending: await c.index.batchesAfter(pairId, seq - 1, 1), nowMs: Date.now() });
    expect(plan.rps).toEqual([expect.objectContaining({ seq, policyRev: 0 })]);
    await setRetention(c.index, pairId, { all: [{ windowSec: 7200, spacingSec: 0 }], app: [] });
    expect(await c.index.commitAdvance(pairId, before.rev, plan)).toBe(false);
    expect((await c.index.getRecoveryPoint(pairId, seq))!.policyRev).toBe(1); // the one the apply path wrote, judged again

    // Activation of a seeded pair: its RPs judged under rev 0 are refused once the policy is at rev 1.
    const seeded = newPairId('actrev');
    const pair = await createPair(c.index, { pairId: seeded, disks, backup: 's3://bucket-x/backups/k/manifest.json' });
    await setRetention(c.index, seeded, { all: [{ windowSec: 7200, spacingSec: 0 }], app: [] });
    const rp = (policyRev: number): RecoveryPoint => ({ pairId: seeded, seq: 0, type: 'CRASH', atMs: Date.now(), expiresAtSec: nowSec() + 7200, keptBy: ['all:every for 7200s'], policyRev });
    expect(await c.index.activateSeed(seeded, pair.seed!.seedId, 'REPLICATING', [rp(0)], 0)).toBe(false);
    expect(await c.index.activateSeed(seeded, pair.seed!.seedId, 'REPLICATING', [rp(1)], 0)).toBe(true);
  });
});

describe('CLI argument errors (exit 2, naming the argument)', () => {
  test.each([
    [['pair', 'set-retention', '--pair', 'p'], '--tier is required'],
    [['pair', 'set-retention', '--pair', 'p', '--tier', '1h'], "--tier: '1h' is not WINDOW:SPACING like 1h:0, 1d:15m or 7d:1h"],
    [['pair', 'set-retention', '--pair', 'p', '--tier', '1h:2h'], "--tier '1h:2h': spacing 7200 s must be a whole number of seconds in 0..window (3600 s)"],
    [['pair', 'set-retention', '--pair', 'p', '--tier', '0:0'], "--tier '0:0': window 0 s must be"],
    [['pair', 'set-retention', '--pair', 'p', '--tier', '1h:0', '--app-tier', '1w:1d'], "--app-tier: '1w:1d' is not WINDOW:SPACING"],
    [['pair', 'set-retention', '--pair', 'no-such-pair', '--tier', '1h:0'], "unknown pair 'no-such-pair'"],
    [['rp', 'pin', '--pair', 'p', '--seq', '1'], '--reason is required'],
    [['rp', 'pin', '--pair', 'p', '--seq', 'x', '--reason', 'r'], "--seq: 'x' is not a non-negative integer"],
    [['rp', 'pin', '--pair', 'p', '--seq', '1', '--reason', 'a\tb'], '--reason: control characters (tabs, newlines) are not allowed'],
    [['rp', 'pin', '--pair', 'no-such-pair', '--seq', '1', '--reason', 'r'], "unknown pair 'no-such-pair'"],
    [['rp', 'unpin', '--pair', 'no-such-pair', '--seq', '1'], "unknown pair 'no-such-pair'"],
    [['rp', 'unpin', '--pair', 'p'], '--seq is required'],
    [['rp', 'list', '--pair', 'no-such-pair'], "unknown pair 'no-such-pair'"],
  ])('livesync %j: %s', async (args, message) => {
    const res = await runCli(...args);
    expect({ code: res.code, stderr: res.stderr }).toEqual({ code: 2, stderr: expect.stringContaining(message) });
  });
});
