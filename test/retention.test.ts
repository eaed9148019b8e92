import fc from 'fast-check';
import { planAdvance } from '../core/advance';
import { BATCH_FLAGS } from '../core/batch-format';
import type { BatchRecord, RecoveryPoint } from '../core/model';
import { decideRpCheck } from '../core/rp-timer';
import {
  DEFAULT_RETENTION,
  PIN_MARGIN_MS,
  applyPolicy,
  expiryFor,
  checkPolicy,
  judgeStored,
  rejudge,
  rpFacts,
  rpLives,
  type RetentionPolicy,
  type RpFacts,
} from '../core/retention';

const T0 = Date.UTC(2026, 10, 24, 12, 0, 0); // on a 15-minute, hour and day boundary
const s = (ms: number): number => Math.ceil(ms / 1000);
const MIN = 60_000;

describe('retention expiry (default tiers)', () => {
  test.each([
    ['first RP ever: kept by every tier', { atMs: T0, app: false }, s(T0) + 7 * 86400],
    ['same 15-min bucket as previous: hour window only', { atMs: T0 + 5 * MIN, prevAtMs: T0, app: false }, s(T0 + 5 * MIN) + 3600],
    ['first in a new 15-min bucket, same hour: day window', { atMs: T0 + 16 * MIN, prevAtMs: T0 + 5 * MIN, app: false }, s(T0 + 16 * MIN) + 86400],
    ['first in a new hour: week window', { atMs: T0 + 61 * MIN, prevAtMs: T0 + 59 * MIN, app: false }, s(T0 + 61 * MIN) + 7 * 86400],
    ['ACRP first of its day: 30 days', { atMs: T0 + 5 * MIN, prevAtMs: T0, prevAppAtMs: T0 - 86400_000, app: true }, s(T0 + 5 * MIN) + 30 * 86400],
    ['second ACRP of the day: general tiers only', { atMs: T0 + 5 * MIN, prevAtMs: T0, prevAppAtMs: T0, app: true }, s(T0 + 5 * MIN) + 3600],
  ])('%s', (_name, times, want) => {
    const e = expiryFor(times, DEFAULT_RETENTION);
    expect(e.expiresAtSec).toBe(want);
    expect(e.keptBy.length).toBeGreaterThan(0);
  });

  test('policies with a spacing wider than their window are refused', () => {
    expect(() => checkPolicy({ all: [{ windowSec: 60, spacingSec: 120 }], app: [] })).toThrow(/retention tier all\[0\]: spacing 120 s must be .* in 0..window/);
    expect(() => checkPolicy({ all: [{ windowSec: 60, spacingSec: 0 }], app: [{ windowSec: 0, spacingSec: 0 }] })).toThrow(/retention tier app\[0\]: window 0 s must be/);
    expect(() => checkPolicy({ all: [{ windowSec: 1.5, spacingSec: 0 }], app: [] })).toThrow(/whole number of seconds/);
    expect(() => checkPolicy({ all: [], app: [] })).toThrow(/at least one/);
  });
});

describe('applyPolicy (default tiers): golden tables', () => {
  // A day of crash RPs every 5 s from T0 (12:00 UTC), the one on each hour an ACRP instead:
  // each RP carries the times of the RP and the ACRP before it, as it was created with.
  const DAY_MS = 86_400_000;
  const day = (pinned: number[] = []): RpFacts[] => {
    const out: RpFacts[] = [];
    let prevAtMs: number | undefined;
    let prevAppAtMs: number | undefined;
    for (let i = 0; i < 17_280; i++) {
      const atMs = T0 + i * 5000;
      const app = i % 720 === 0;
      out.push({ seq: i + 1, atMs, prevAtMs, prevAppAtMs, app, pinned: pinned.includes(i + 1) });
      prevAtMs = atMs;
      if (app) prevAppAtMs = atMs;
    }
    return out;
  };
  const kept = (rps: RpFacts[], nowMs: number): number[] => applyPolicy(rps, DEFAULT_RETENTION, nowMs).flatMap((d) => (d.keep ? [d.seq] : []));

  test.each([
    // 719 of the last hour (every RP), the 92 older firsts of a 15-minute bucket (1 day each), and the first RP ever (7 days: its hour tier)
    ['at the end of the day', DAY_MS, 812],
    // the hour tier's 7 days are over for all; the ACRPs first of their UTC day (12:00 on the 24th, 00:00 on the 25th) keep 30 days
    ['a week and a day later', 8 * DAY_MS, 2],
    ['31 days later', 31 * DAY_MS, 0],
  ])('%s', (_name, afterMs, want) => {
    expect(kept(day(), T0 + afterMs)).toHaveLength(want);
  });

  test('the first RP ever, the hour firsts and the day-first ACRPs: which survive a week and a day', () => {
    expect(kept(day(), T0 + 8 * DAY_MS)).toEqual([1, 8641]); // 12:00 on the 24th, 00:00 on the 25th
  });

  test('a pinned RP lives whatever the policy says, and says why; unpinned, it is judged again at once', () => {
    const now = T0 + 31 * DAY_MS;
    const [pinned] = applyPolicy(day([5000]).filter((r) => r.seq === 5000), DEFAULT_RETENTION, now);
    expect(pinned).toEqual({ seq: 5000, keep: true, reason: 'pinned', keptBy: ['pinned', 'all:every for 3600s'] });
    expect(kept(day([5000]), now)).toEqual([5000]);
    const [unpinned] = applyPolicy(day().filter((r) => r.seq === 5000), DEFAULT_RETENTION, now);
    expect(unpinned).toMatchObject({ seq: 5000, keep: false, reason: 'expired', expiresAtSec: s(T0 + 4999 * 5000) + 3600 });
  });

  test('an RP is expired from the second its window ends, not after', () => {
    const rp = { seq: 7, atMs: T0 + 1000, prevAtMs: T0, app: false }; // same 15-min bucket: the hour tier only
    const end = (s(T0 + 1000) + 3600) * 1000;
    expect(applyPolicy([rp], DEFAULT_RETENTION, end - 1)[0]).toMatchObject({ keep: true, reason: 'tier' });
    expect(applyPolicy([rp], DEFAULT_RETENTION, end)[0]).toMatchObject({ keep: false, reason: 'expired' });
  });

  test('a changed policy judges the same facts again: every RP kept an hour longer under a 2-hour every-tier', () => {
    const policy = { ...DEFAULT_RETENTION, all: [{ windowSec: 7200, spacingSec: 0 }, ...DEFAULT_RETENTION.all.slice(1)] };
    const got = applyPolicy(day(), policy, T0 + DAY_MS).filter((d) => d.keep).length;
    expect(got).toBe(812 + 720 - 4); // the hour before the last one too, less its four 15-min firsts (kept already)
  });

  test('at creation and afterwards the same function decides: expiryFor and applyPolicy agree on any facts', () => {
    const facts = fc.record({
      atMs: fc.integer({ min: T0, max: T0 + 40 * DAY_MS }),
      back: fc.option(fc.integer({ min: 1, max: 2 * DAY_MS }), { nil: undefined }),
      appBack: fc.option(fc.integer({ min: 1, max: 3 * DAY_MS }), { nil: undefined }),
      app: fc.boolean(),
      nowAfter: fc.integer({ min: 0, max: 40 * DAY_MS }),
    });
    fc.assert(
      fc.property(facts, (f) => {
        const t = { atMs: f.atMs, prevAtMs: f.back === undefined ? undefined : f.atMs - f.back, prevAppAtMs: f.appBack === undefined ? undefined : f.atMs - f.appBack, app: f.app };
        const e = expiryFor(t, DEFAULT_RETENTION);
        const [d] = applyPolicy([{ ...t, seq: 1 }], DEFAULT_RETENTION, f.atMs + f.nowAfter);
        expect(d.expiresAtSec).toBe(e.expiresAtSec);
        expect(d.keptBy).toEqual(e.keptBy);
        expect(d.keep).toBe(f.atMs + f.nowAfter < e.expiresAtSec * 1000);
      }),
    );
  });
});

// The wiring: RPs as the creators store them (judgeNew), judged again later from their items alone.
describe('stored RPs: creation and later judgements agree, policy changes, pins', () => {
  const DAY_MS = 86_400_000;
  const batch = (seq: number, cutMs: number, flags = 0): BatchRecord => ({
    seq, key: `k${seq}`, sizeBytes: 1, objectCrc: seq, firstWriteMs: cutMs, cutMs, flags, extentCount: 0, dataBytes: 0, disks: ['d'], registeredMs: 0,
  });
  /** A day of batches every 5 s from T0, the one on each hour application-consistent, through planAdvance as the apply path runs it. */
  const storedDay = (policy: RetentionPolicy = DEFAULT_RETENTION): RecoveryPoint[] => {
    const pending = Array.from({ length: 17_280 }, (_, i) => batch(i + 1, T0 + i * 5000, i % 720 === 0 ? BATCH_FLAGS.APP_CONSISTENT : 0));
    return planAdvance({ pairId: 'p', progress: { watermark: 0 }, ccrpIntervalMs: 5000, retention: policy, pending, maxRps: Infinity }).rps;
  };
  const live = (rps: RecoveryPoint[], nowMs: number): number => rps.filter((rp) => rpLives(rp, nowMs)).length;
  /** `pair set-retention`'s pass over the stored RPs at `nowMs` (what the index's conditional writes do). */
  const change = (rps: RecoveryPoint[], policy: RetentionPolicy, nowMs: number): { rps: RecoveryPoint[]; why: Record<string, number> } => {
    const why: Record<string, number> = {};
    const out = rps.map((rp) => {
      const d = rejudge(rp, policy, nowMs);
      const k = d.action === 'write' ? d.change : d.why;
      why[k] = (why[k] ?? 0) + 1;
      return d.action === 'write' ? { ...rp, expiresAtSec: d.expiresAtSec, keptBy: d.keptBy, policyRev: d.policyRev } : rp;
    });
    return { rps: out, why };
  };
  const pin = (rp: RecoveryPoint, atMs: number): RecoveryPoint => ({ ...rp, expiresAtSec: undefined, pinned: { by: 'ops', reason: 'case 42', atMs } });

  test('the stored day is the golden table: 812 live at its end, each RP carrying the facts it was judged by', () => {
    const rps = storedDay();
    expect(live(rps, T0 + DAY_MS)).toBe(812);
    expect(rps[0]).toMatchObject({ seq: 1, policyRev: 0 });
    expect(rps[0].prevAtMs).toBeUndefined();
    expect(rps[1]).toMatchObject({ seq: 2, prevAtMs: T0 });
    expect(rps[1].prevAppAtMs).toBeUndefined(); // a crash RP: the app tiers never judge it
    expect(rps[720]).toMatchObject({ seq: 721, type: 'APP', prevAtMs: T0 + 719 * 5000, prevAppAtMs: T0 });
    expect(storedDay({ ...DEFAULT_RETENTION, rev: 3 }).slice(0, 2).map((rp) => rp.policyRev)).toEqual([3, 3]); // the revision it was judged under
  });

  test('at creation and later, one rule: every RP planAdvance and the RP timer make is what applyPolicy says of its item', () => {
    const batches = fc.array(fc.record({ gap: fc.integer({ min: 1, max: 4 * 3_600_000 }), app: fc.boolean(), req: fc.boolean() }), { minLength: 1, maxLength: 60 });
    fc.assert(
      fc.property(batches, fc.integer({ min: 0, max: 40 * DAY_MS }), (bs, later) => {
        let at = T0;
        const pending = bs.map((b, i) => batch(i + 1, (at += b.gap), (b.app ? BATCH_FLAGS.APP_CONSISTENT : 0) | (b.req ? BATCH_FLAGS.RP_REQUESTED : 0)));
        const plan = planAdvance({ pairId: 'p', progress: { watermark: 0 }, ccrpIntervalMs: 5000, retention: DEFAULT_RETENTION, pending, maxRps: Infinity });
        // The timer's RP over a watermark left without one (a quiet source).
        const quiet = { ...plan.progress, watermark: plan.progress.watermark + 1, watermarkMs: at + 7000 };
        const timer = decideRpCheck(quiet, { kind: 'rp-check', pairId: 'p', dueMs: 0 }, { nowMs: at + 1e6, ccrpIntervalMs: 5000, offersRps: true, retention: DEFAULT_RETENTION });
        const rps = [...plan.rps, ...(timer.action === 'rp' ? [timer.rp] : [])];
        rps.forEach((rp, i) => {
          const [d] = applyPolicy([rpFacts(rp)], DEFAULT_RETENTION, rp.atMs + later);
          expect([d.expiresAtSec, d.keptBy]).toEqual([rp.expiresAtSec, rp.keptBy]);
          expect(rp.prevAtMs).toBe(rps[i - 1]?.atMs); // the previous RP of any type
          if (rp.type === 'APP') expect(rp.prevAppAtMs).toBe(rps.slice(0, i).filter((r) => r.type === 'APP').pop()?.atMs);
        });
      }),
    );
  });

  test('a shortened policy: live RPs judged again (719 of the last hour stay), an expired one stays expired, a re-run writes nothing', () => {
    const now = T0 + DAY_MS;
    const hourOnly: RetentionPolicy = { all: [{ windowSec: 3600, spacingSec: 0 }], app: [], rev: 1 };
    const first = change(storedDay(), hourOnly, now);
    expect(live(first.rps, now)).toBe(719);
    // 812 were live: of the last hour's 719, 716 keep their hour ('same') and its three 15-min firsts lose their day;
    // the 93 older (the day's 15-min firsts, the first RP ever) end now; the rest had expired already.
    expect(first.why).toEqual({ same: 716, shortened: 3, expired: 93 + (17_280 - 812) });
    expect(change(first.rps, hourOnly, now).why).toEqual({ current: 719, expired: 17_280 - 719 });
  });

  test('a lengthened policy revives nothing: 812 stay live (not the 1528 it would keep of a fresh day), 719 of them lengthened', () => {
    const now = T0 + DAY_MS;
    const twoHours: RetentionPolicy = { ...DEFAULT_RETENTION, all: [{ windowSec: 7200, spacingSec: 0 }, ...DEFAULT_RETENTION.all.slice(1)], rev: 1 };
    const { rps, why } = change(storedDay(), twoHours, now);
    expect(live(rps, now)).toBe(812);
    expect(applyPolicy(storedDay().map(rpFacts), twoHours, now).filter((d) => d.keep)).toHaveLength(1528);
    // Of the last hour's 719: its first minute's 12 end within PIN_MARGIN (left to expire), its three 15-min firsts
    // keep their day ('same', as the 93 older ones), the other 704 get 2 hours.
    expect(why).toEqual({ lengthened: 704, ending: 12, same: 3 + 93, expired: 17_280 - 812 });
    // An hour on, those 704 still live; unchanged, they would have ended.
    expect(live(rps, now + 3_599_000) - live(storedDay(), now + 3_599_000)).toBe(704);
  });

  test('an RP is lengthened only with more than PIN_MARGIN left, and only under a newer policy', () => {
    const rp: RecoveryPoint = { pairId: 'p', seq: 7, type: 'CRASH', atMs: T0 + 1000, prevAtMs: T0, keptBy: ['all:every for 3600s'], policyRev: 0, ...{ expiresAtSec: s(T0 + 1000) + 3600 } };
    const longer: RetentionPolicy = { all: [{ windowSec: 7200, spacingSec: 0 }], app: [], rev: 1 };
    const end = rp.expiresAtSec! * 1000;
    expect(rejudge(rp, longer, end - PIN_MARGIN_MS)).toEqual({ action: 'skip', why: 'ending' });
    expect(rejudge(rp, longer, end - PIN_MARGIN_MS - 1000)).toMatchObject({ action: 'write', change: 'lengthened', expiresAtSec: rp.expiresAtSec! + 3600 });
    expect(rejudge({ ...rp, policyRev: 1 }, longer, T0)).toEqual({ action: 'skip', why: 'current' });
    expect(rejudge({ ...rp, policyRev: undefined }, longer, T0)).toEqual({ action: 'skip', why: 'legacy' });
    expect(rejudge(rp, longer, end)).toEqual({ action: 'skip', why: 'expired' });
  });

  test('pinned: listed live with no expiry, untouched by policy changes; unpinned, judged under the policy then in force', () => {
    const now = T0 + DAY_MS;
    const rps = storedDay();
    const i = 16_000; // 22:13:20 on the 24th, an RP kept an hour: alive at 22:45, expired at the end of the day
    const pinned = rps.map((rp, k) => (k === i ? pin(rp, T0 + i * 5000 + 60_000) : rp));
    expect(live(pinned, now)).toBe(813);
    const hourOnly: RetentionPolicy = { all: [{ windowSec: 3600, spacingSec: 0 }], app: [], rev: 1 };
    const after = change(pinned, hourOnly, now);
    expect(after.why.pinned).toBe(1);
    expect(after.rps[i].pinned).toBeDefined();
    expect(live(after.rps, now + 31 * DAY_MS)).toBe(1); // only the pin, a month on
    // Unpinned at the end of the day under the hour policy: its hour is over, expired at once.
    const unpinned = judgeStored(after.rps[i], hourOnly, now);
    expect(unpinned).toMatchObject({ keep: false, reason: 'expired', expiresAtSec: s(T0 + i * 5000) + 3600, policyRev: 1 });
    // Unpinned within its hour under the policy it was made with: it lives to its old end.
    expect(judgeStored(after.rps[i], DEFAULT_RETENTION, T0 + i * 5000 + 600_000)).toMatchObject({ keep: true, reason: 'tier', expiresAtSec: rps[i].expiresAtSec, keptBy: rps[i].keptBy });
  });
});
