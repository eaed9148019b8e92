// The RP timer's rules (core/rp-timer.ts), as tables: when an advance schedules a check,
// what a received check does, and the message format.

import { InvalidArgumentError } from '../core/errors';
import { checkAfterAdvance, decideRpCheck, encodeRpCheck, parseRpCheck, schedule } from '../core/rp-timer';
import type { PairProgress } from '../core/model';
import { DEFAULT_RETENTION } from '../core/retention';

const NOW = 1_800_000_000_000;
const ctx = { nowMs: NOW, ccrpIntervalMs: 5000, offersRps: true };
/** Watermark 6 (source time 900 ms after RP 1), RP 1 written 2 s ago on the cloud clock. */
const quiet: PairProgress = { watermark: 6, watermarkMs: 10_900, lastRpMs: 10_000, lastRpSeq: 1, rpMadeMs: NOW - 2000 };

describe('checkAfterAdvance: a watermark left without an RP schedules one check', () => {
  test.each<[string, PairProgress, Partial<typeof ctx>, ReturnType<typeof checkAfterAdvance>]>([
    ['due 3 s from now: a 3 s delay', quiet, {}, { dueMs: NOW + 3000, delaySec: 3 }],
    ['the delay rounds down to whole seconds (may act up to 1 s early)', { ...quiet, rpMadeMs: NOW - 2500 }, {}, { dueMs: NOW + 2000, delaySec: 2 }],
    ['the newest RP is older than the interval: at once', { ...quiet, rpMadeMs: NOW - 60_000 }, {}, { dueMs: NOW, delaySec: 0 }],
    ['no RP written yet by this rule (older item): at once', { ...quiet, rpMadeMs: undefined }, {}, { dueMs: NOW, delaySec: 0 }],
    ['an interval over 900 s: the delay is clamped (the check re-arms)', quiet, { ccrpIntervalMs: 3_600_000 }, { dueMs: NOW + 900_000, delaySec: 900 }],
    ['the watermark is an RP: nothing', { ...quiet, lastRpSeq: 6 }, {}, undefined],
    ['nothing applied: nothing', { watermark: 0 }, {}, undefined],
    ['a check is pending: nothing (one per pair)', { ...quiet, rpCheckDueMs: NOW + 1000 }, {}, undefined],
    ['a pending check 60 s overdue is still waited for', { ...quiet, rpCheckDueMs: NOW - 60_000 }, {}, undefined],
    ['a pending check more than 60 s overdue counts as lost: another', { ...quiet, rpCheckDueMs: NOW - 60_001 }, {}, { dueMs: NOW + 3000, delaySec: 3 }],
    ['resyncing: no RP, no check', { ...quiet, resyncing: true }, {}, undefined],
    ['being seeded: no RP, no check', quiet, { offersRps: false }, undefined],
    ['older item without lastRpSeq, RP at the watermark (same time): nothing', { ...quiet, lastRpSeq: undefined, lastRpMs: 10_900 }, {}, undefined],
    ['older item without lastRpSeq, RP before: a check', { ...quiet, lastRpSeq: undefined }, {}, { dueMs: NOW + 3000, delaySec: 3 }],
  ])('%s', (_, p, over, want) => {
    expect(checkAfterAdvance(p, { ...ctx, ...over })).toEqual(want);
  });
});

describe('decideRpCheck: what a received check does', () => {
  const mine = { kind: 'rp-check' as const, pairId: 'p', dueMs: NOW };
  const pending = { ...quiet, rpMadeMs: NOW - 5000, rpCheckDueMs: NOW };
  test.each<[string, PairProgress, Partial<typeof ctx> & { dueMs?: number }, string]>([
    ['due: the watermark becomes an RP', pending, {}, 'rp'],
    ['up to 1 s early (whole-second delays): still an RP', { ...pending, rpMadeMs: NOW - 4000 }, {}, 'rp'],
    ['more than 1 s early (an RP was written since it was sent): re-arm', { ...pending, rpMadeMs: NOW - 3999 }, {}, 'rearm'],
    ['the watermark is an RP already: clear', { ...pending, lastRpSeq: 6 }, {}, 'clear'],
    ['resyncing: clear, no RP', { ...pending, resyncing: true }, {}, 'clear'],
    ['being seeded: clear, no RP', pending, { offersRps: false }, 'clear'],
    ['a copy of a check that was superseded (a later one pending): ignore', { ...pending, rpCheckDueMs: NOW + 4000 }, {}, 'ignore'],
    ['delivered before the commit that records it (an earlier one still marked): act', { ...pending, rpCheckDueMs: NOW - 3000 }, {}, 'rp'],
    ['no check pending (sender crashed before its commit): act', { ...pending, rpCheckDueMs: undefined }, {}, 'rp'],
    ['the pending one is stale: act', { ...pending, rpCheckDueMs: NOW - 61_000 }, {}, 'rp'],
    ['a duplicate after the RP was made: clear, nothing new', { ...pending, lastRpSeq: 6, rpMadeMs: NOW, rpCheckDueMs: undefined }, {}, 'clear'],
  ])('%s', (_, p, over, want) => {
    expect(decideRpCheck(p, { ...mine, dueMs: over.dueMs ?? mine.dueMs }, { ...ctx, ...over, retention: DEFAULT_RETENTION }).action).toBe(want);
  });

  test('the RP: CRASH at the watermark, at its source time, with the expiry of any RP; the bookkeeping follows', () => {
    const d = decideRpCheck({ ...quiet, rpMadeMs: NOW - 5000, rpCheckDueMs: NOW }, mine, { ...ctx, retention: DEFAULT_RETENTION });
    expect(d).toEqual({
      action: 'rp',
      // Second RP in the same 15-min and 1-h buckets as RP 1: kept by the 'every' tier only.
      // It keeps the previous RP's time and the policy's revision: the facts a later applyPolicy judges it by.
      rp: { pairId: 'p', seq: 6, type: 'CRASH', atMs: 10_900, prevAtMs: 10_000, expiresAtSec: 11 + 3600, keptBy: ['all:every for 3600s'], policyRev: 0 },
      progress: { lastRpMs: 10_900, lastRpSeq: 6, rpMadeMs: NOW },
    });
  });

  test('a clamped wait re-arms for the rest, again clamped', () => {
    const d = decideRpCheck({ ...quiet, rpMadeMs: NOW - 900_000, rpCheckDueMs: NOW }, mine, { ...ctx, ccrpIntervalMs: 3_600_000, retention: DEFAULT_RETENTION });
    expect(d).toEqual({ action: 'rearm', next: { dueMs: NOW + 900_000, delaySec: 900 } });
    expect(schedule(NOW + 2_700_000 - 900_000, NOW)).toEqual({ dueMs: NOW + 900_000, delaySec: 900 });
  });
});

describe('the check message', () => {
  test('round-trips; an S3 notification or other JSON is not a check', () => {
    const check = { kind: 'rp-check' as const, pairId: 'db01', dueMs: NOW };
    expect(encodeRpCheck(check)).toBe(`{"kind":"rp-check","pairId":"db01","dueMs":${NOW}}`);
    expect(parseRpCheck(encodeRpCheck(check))).toEqual(check);
    expect(parseRpCheck('{"Records":[]}')).toBeUndefined();
    expect(parseRpCheck('not json')).toBeUndefined();
    expect(parseRpCheck('null')).toBeUndefined();
  });

  test.each([
    ['{"kind":"rp-check","dueMs":1}', /pairId undefined/],
    ['{"kind":"rp-check","pairId":"p","dueMs":"soon"}', /pair 'p': dueMs "soon"/],
    ['{"kind":"rp-check","pairId":"p","dueMs":-5}', /dueMs -5/],
  ])('a malformed check %s throws a typed error naming the field', (body, msg) => {
    expect(() => parseRpCheck(body)).toThrow(InvalidArgumentError);
    expect(() => parseRpCheck(body)).toThrow(msg);
  });
});
