/**
 * Runs `fn` over `items` with at most `limit` in flight; rejects on the first failure, and
 * starts no item after it (those in flight run on to their end).
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (next < items.length && !failed) {
      const i = next++;
      try {
        out[i] = await fn(items[i], i);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Runs tasks with at most `n` at once, in the order they were given; after stop() refuses new ones. */
export function limiter(n: number): (<T>(task: () => Promise<T>) => Promise<T>) & { stop(): void } {
  let active = 0;
  let stopped = false;
  const queue: (() => void)[] = [];
  const run = async <T>(task: () => Promise<T>): Promise<T> => {
    if (active >= n) await new Promise<void>((resolve) => queue.push(resolve));
    else active++;
    try {
      if (stopped) throw new Error('stopped: no new tasks');
      return await task();
    } finally {
      const next = queue.shift();
      if (next) next(); // the slot passes on
      else active--;
    }
  };
  return Object.assign(run, { stop: () => void (stopped = true) });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
