import { DEFAULT_RETENTION, expiryFor, checkPolicy } from '../core/retention';

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
