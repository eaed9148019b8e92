import fc from 'fast-check';
import { DEFAULT_RETENTION, applyPolicy, expiryFor, checkPolicy, type RpFacts } from '../core/retention';

const T0 = Date.UTC(2026, 10, 24, 12, 0, 0); // on a 15-minute, hour and day boundary
const s = (ms: number): number => Math.ceil(ms / 1000);
const MIN = 60_000;

describe('retention expiry (default tiers)', () => {
  test.each([
    ['first RP ever: kept by every tier', { atMs: T0, app: false }, s(T0) + 7 * 86400],
    ['same 15-min bucket as previous: hour window only', { atMs: T0 + 5 * MIN, prevRpMs: T0, app: false }, s(T0 + 5 * MIN) + 3600],
    ['first in a new 15-min bucket, same hour: day window', { atMs: T0 + 16 * MIN, prevRpMs: T0 + 5 * MIN, app: false }, s(T0 + 16 * MIN) + 86400],
    ['first in a new hour: week window', { atMs: T0 + 61 * MIN, prevRpMs: T0 + 59 * MIN, app: false }, s(T0 + 61 * MIN) + 7 * 86400],
    ['ACRP first of its day: 30 days', { atMs: T0 + 5 * MIN, prevRpMs: T0, prevAppMs: T0 - 86400_000, app: true }, s(T0 + 5 * MIN) + 30 * 86400],
    ['second ACRP of the day: general tiers only', { atMs: T0 + 5 * MIN, prevRpMs: T0, prevAppMs: T0, app: true }, s(T0 + 5 * MIN) + 3600],
  ])('%s', (_name, times, want) => {
    const e = expiryFor(times, DEFAULT_RETENTION);
    expect(e.expiresAtSec).toBe(want);
    expect(e.keptBy.length).toBeGreaterThan(0);
  });

  test('policies with a spacing wider than their window are refused', () => {
    expect(() => checkPolicy({ all: [{ windowSec: 60, spacingSec: 120 }], app: [] })).toThrow(/spacing/);
    expect(() => checkPolicy({ all: [], app: [] })).toThrow(/at least one/);
  });
});

describe('applyPolicy (default tiers): golden tables', () => {
  // A day of crash RPs every 5 s from T0 (12:00 UTC), the one on each hour an ACRP instead:
  // each RP carries the times of the RP and the ACRP before it, as it was created with.
  const DAY_MS = 86_400_000;
  const day = (pinned: number[] = []): RpFacts[] => {
    const out: RpFacts[] = [];
    let prevRpMs: number | undefined;
    let prevAppMs: number | undefined;
    for (let i = 0; i < 17_280; i++) {
      const atMs = T0 + i * 5000;
      const app = i % 720 === 0;
      out.push({ seq: i + 1, atMs, prevRpMs, prevAppMs, app, pinned: pinned.includes(i + 1) });
      prevRpMs = atMs;
      if (app) prevAppMs = atMs;
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
    const rp = { seq: 7, atMs: T0 + 1000, prevRpMs: T0, app: false }; // same 15-min bucket: the hour tier only
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
        const t = { atMs: f.atMs, prevRpMs: f.back === undefined ? undefined : f.atMs - f.back, prevAppMs: f.appBack === undefined ? undefined : f.atMs - f.appBack, app: f.app };
        const e = expiryFor(t, DEFAULT_RETENTION);
        const [d] = applyPolicy([{ ...t, seq: 1 }], DEFAULT_RETENTION, f.atMs + f.nowAfter);
        expect(d.expiresAtSec).toBe(e.expiresAtSec);
        expect(d.keptBy).toEqual(e.keptBy);
        expect(d.keep).toBe(f.atMs + f.nowAfter < e.expiresAtSec * 1000);
      }),
    );
  });
});
