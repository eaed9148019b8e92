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

  test('resync batches are never RPs; the first batch after them is one and the state follows', () => {
    const R = BATCH_FLAGS.RESYNC;
    const enter = planAdvance({ ...base, progress: { watermark: 1, lastRpMs: 0 }, pending: [batch(2, 9000, R), batch(3, 9500, R | BATCH_FLAGS.APP_CONSISTENT, 'app=db')] });
    expect(enter.rps).toEqual([]);
    expect(enter.state).toBe('RESYNCING');
    expect(enter.progress.resyncing).toBe(true);
    const leave = planAdvance({ ...base, progress: enter.progress, pending: [batch(4, 9600, R), batch(5, 9700), batch(6, 9800)] });
    expect(leave.rps.map((r) => [r.seq, r.type])).toEqual([[5, 'CRASH']]); // interval not due, but the resync ended at 5
    expect(leave.state).toBe('REPLICATING');
    expect(planAdvance({ ...base, progress: leave.progress, pending: [batch(7, 9900)] }).state).toBeUndefined();
  });
});
