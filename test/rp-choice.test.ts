// core/rp-choice.ts: which live RP `recover --rp | --latest | --at | --acrp` means.

import type { RecoveryPoint } from '../core/model';
import { chooseRp, parseRpTime } from '../core/rp-choice';

const T = Date.UTC(2026, 11, 5, 10);
const rp = (seq: number, minutes: number, tag?: string): RecoveryPoint => ({ pairId: 'p', seq, type: tag ? 'APP' : 'CRASH', tag, atMs: T + minutes * 60_000, keptBy: [] });
const rps = [rp(3, 0), rp(7, 5, 'nightly'), rp(9, 10), rp(12, 15, 'pre-upgrade'), rp(15, 20, 'nightly'), rp(18, 25)];

test.each([
  [{ seq: 9 }, 9],
  [{ latest: true as const }, 18],
  [{ atMs: T + 12 * 60_000 }, 9], // the newest at or before the time
  [{ atMs: T + 15 * 60_000 }, 12], // an RP exactly at the time counts
  [{ atMs: T + 60 * 60_000 }, 18],
  [{ acrp: 'nightly' }, 15], // the newest with the tag
  [{ acrp: 'pre-upgrade' }, 12],
])('%j → seq %i', (choice, seq) => {
  expect(chooseRp(rps, choice, 'p')).toBe(seq);
});

test.each([
  [{ seq: 8 }, "pair 'p' has no live RP at seq 8 (live: 3…18, see rp list)"],
  [{ atMs: T - 1 }, "pair 'p' has no live RP at or before 2026-12-05T09:59:59.999Z (the oldest is at 2026-12-05T10:00:00.000Z)"],
  [{ acrp: 'weekly' }, "pair 'p' has no live application-consistent RP tagged 'weekly'"],
])('%j is refused: %s', (choice, message) => {
  expect(() => chooseRp(rps, choice, 'p')).toThrow(message);
});

test('a pair without live RPs has no latest', () => {
  expect(() => chooseRp([], { latest: true }, 'p')).toThrow("pair 'p' has no live RP");
});

test('--at takes ISO 8601 with a zone or epoch ms, nothing ambiguous', () => {
  expect(parseRpTime('2026-12-05T10:00:00Z')).toBe(T);
  expect(parseRpTime('2026-12-05T11:00:00+01:00')).toBe(T);
  expect(parseRpTime(String(T))).toBe(T);
  expect(() => parseRpTime('2026-12-05T10:00:00')).toThrow(/with its zone/); // local time: whose?
  expect(() => parseRpTime('soon')).toThrow(/with its zone/);
});
