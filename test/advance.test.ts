import { planAdvance } from '../core/advance';
import { BATCH_FLAGS } from '../core/batch-format';
import type { BatchRecord } from '../core/model';
import { DEFAULT_RETENTION } from '../core/retention';

const batch = (seq: number, cutMs: number, flags = 0, appTag?: string): BatchRecord => ({
  seq, key: `k${seq}`, sizeBytes: 1, objectCrc: seq, firstWriteMs: cutMs, cutMs, flags, appTag, extentCount: 0, dataBytes: 0, disks: ['d'], registeredMs: 0,
});
const base = { pairId: 'p', ccrpIntervalMs: 5000, retention: DEFAULT_RETENTION };

describe('planAdvance', () => {
  test('stops at a gap and makes crash RPs at the interval, ACRPs for marked batches', () => {
    const plan = planAdvance({
      ...base,
      progress: { watermark: 0 },
      pending: [batch(1, 1000), batch(2, 3000), batch(3, 6000), batch(4, 7000, BATCH_FLAGS.APP_CONSISTENT, 'app=db'), batch(5, 8000, BATCH_FLAGS.RP_REQUESTED), batch(7, 20000)],
    });
    expect(plan.progress.watermark).toBe(5);
    expect(plan.rps.map((r) => [r.seq, r.type, r.tag])).toEqual([[1, 'CRASH', undefined], [3, 'CRASH', undefined], [4, 'APP', 'app=db'], [5, 'CRASH', undefined]]);
    expect(plan.progress.lastAppRpMs).toBe(7000);
  });

  test('ignores batches at or below the watermark and does nothing across a gap', () => {
    expect(planAdvance({ ...base, progress: { watermark: 3 }, pending: [batch(3, 1), batch(5, 2)] }).applied).toEqual([]);
  });

  test('limits the RPs of one plan to what a transaction holds', () => {
    const pending = Array.from({ length: 30 }, (_, i) => batch(i + 1, i * 10_000));
    expect(planAdvance({ ...base, progress: { watermark: 0 }, pending, maxRps: 10 }).progress.watermark).toBe(10);
  });

  test('no RPs from a RESYNC batch until a RESYNC_END batch, which is one; the state follows', () => {
    const { RESYNC, RESYNC_END, APP_CONSISTENT, RP_REQUESTED } = BATCH_FLAGS;
    const enter = planAdvance({ ...base, progress: { watermark: 1, lastRpMs: 0 }, pending: [batch(2, 9000, RESYNC), batch(3, 9500, APP_CONSISTENT, 'app=db')] });
    expect(enter.rps).toEqual([]);
    expect(enter.state).toBe('RESYNCING');
    expect(enter.progress.resyncing).toBe(true);
    const leave = planAdvance({ ...base, progress: enter.progress, pending: [batch(4, 20_000, RP_REQUESTED), batch(5, 20_100, RESYNC_END), batch(6, 20_200)] });
    expect(leave.rps.map((r) => [r.seq, r.type])).toEqual([[5, 'CRASH']]); // 4 is inside the resync; 6 is not due
    expect(leave.state).toBe('REPLICATING');
    expect(planAdvance({ ...base, progress: leave.progress, pending: [batch(7, 20_300)] }).state).toBeUndefined();
    // A stray RESYNC_END outside a resync changes nothing.
    expect(planAdvance({ ...base, progress: leave.progress, pending: [batch(7, 20_300, RESYNC_END)] }).rps).toEqual([]);
  });

  test('the newest RP is recorded for the RP timer: its seq, and when it was written (the cloud clock)', () => {
    const plan = planAdvance({ ...base, nowMs: 99, progress: { watermark: 0, rpCheckDueMs: 7 }, pending: [batch(1, 1000), batch(2, 2000), batch(3, 7000), batch(4, 8000)] });
    expect(plan.progress).toMatchObject({ watermark: 4, lastRpSeq: 3, lastRpMs: 7000, rpMadeMs: 99, rpCheckDueMs: 7 });
    // No RP in the plan: the bookkeeping stays.
    const later = planAdvance({ ...base, nowMs: 200, progress: plan.progress, pending: [batch(5, 9000)] });
    expect(later.progress).toMatchObject({ watermark: 5, lastRpSeq: 3, rpMadeMs: 99 });
  });
});
