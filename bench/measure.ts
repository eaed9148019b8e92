// Benchmark plumbing: request counters on SDK clients, timing, medians.

import { performance } from 'node:perf_hooks';

export type Counts = Record<string, number>;

/** Counts requests by command name (DynamoDB transactions by item) on an SDK v3 client. */
export function countRequests(client: { middlewareStack: { add: (mw: any, opts: any) => void } }): Counts {
  const counts: Counts = {};
  client.middlewareStack.add(
    (next: (a: any) => Promise<any>, context: { commandName: string }) => async (args: any) => {
      const name = context.commandName.replace(/Command$/, '');
      counts[name] = (counts[name] ?? 0) + 1;
      if (name === 'TransactWriteItems') counts.TransactItems = (counts.TransactItems ?? 0) + (args.input.TransactItems?.length ?? 0);
      return next(args);
    },
    { step: 'initialize', name: 'livesyncRequestCounter' },
  );
  return counts;
}

export function reset(counts: Counts): void {
  for (const k of Object.keys(counts)) delete counts[k];
}

export async function timed<T>(fn: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  const t = performance.now();
  const value = await fn();
  return { seconds: (performance.now() - t) / 1000, value };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export const round = (x: number, digits = 2): number => Number(x.toFixed(digits));

/** The p-quantile (0..1) with linear interpolation between closest ranks. */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const at = (s.length - 1) * p;
  const lo = Math.floor(at);
  return lo + 1 < s.length ? s[lo] + (s[lo + 1] - s[lo]) * (at - lo) : s[lo];
}
