// Orders overlapping requests of an export in arrival order while letting the rest run
// concurrently: a request waits for every earlier overlapping request that conflicts with
// it (reads share; writes are exclusive). Concurrent fs writes may complete out of order,
// so without this two overlapping in-flight writes could land in either order.

interface Held {
  start: number;
  end: number;
  shared: boolean;
  done: Promise<void>;
}

export class RangeLock {
  private readonly held = new Set<Held>();

  /**
   * Queues [start, end) now (the caller's arrival order) and resolves when every earlier
   * conflicting holder has released. Call the returned function to release.
   */
  acquire(start: number, end: number, shared = false): Promise<() => void> {
    const waits: Promise<void>[] = [];
    for (const h of this.held) if (h.start < end && start < h.end && !(shared && h.shared)) waits.push(h.done);
    let release!: () => void;
    const me: Held = { start, end, shared, done: new Promise<void>((r) => (release = r)) };
    this.held.add(me);
    const unlock = (): void => {
      this.held.delete(me);
      release();
    };
    return waits.length === 0 ? Promise.resolve(unlock) : Promise.all(waits).then(() => unlock);
  }

  /** Whether nothing holds or waits for any part of [start, end): a request there may run at once, unqueued. */
  isFree(start: number, end: number): boolean {
    for (const h of this.held) if (h.start < end && start < h.end) return false;
    return true;
  }

  /** Resolves once every request queued before this call has released. */
  async drain(): Promise<void> {
    await Promise.all([...this.held].map((h) => h.done));
  }
}
