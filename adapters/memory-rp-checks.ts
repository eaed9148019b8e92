// In-memory RpCheckQueue: for tests of the apply service that deliver the checks themselves.

import type { RpCheck } from '../core/rp-timer';
import type { RpCheckQueue } from '../replica/ports';

interface Scheduled {
  check: RpCheck;
  delaySec: number;
  /** When (on the queue's clock) it becomes visible. */
  visibleMs: number;
}

export class MemoryRpChecks implements RpCheckQueue {
  /** Every check scheduled, in order (taken ones included). */
  readonly scheduled: Scheduled[] = [];
  private readonly waiting: Scheduled[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  async schedule(check: RpCheck, delaySec: number): Promise<void> {
    const s = { check, delaySec, visibleMs: this.now() + delaySec * 1000 };
    this.scheduled.push(s);
    this.waiting.push(s);
  }

  /** Removes and returns the checks visible at `nowMs`. */
  take(nowMs: number): RpCheck[] {
    const ready = this.waiting.filter((s) => s.visibleMs <= nowMs);
    for (const r of ready) this.waiting.splice(this.waiting.indexOf(r), 1);
    return ready.map((r) => r.check);
  }
}
