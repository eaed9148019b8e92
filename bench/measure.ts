// Benchmark plumbing: request counters on SDK clients, timing, medians.

import { execFileSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

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

/**
 * A bench's main: runs `body`, logs the total time, and always runs `cleanup` after it — also
 * on SIGINT/SIGTERM (then exits 130), so no stack or server outlives an interrupted run.
 */
export async function runBench(log: (m: string) => void, cleanup: () => Promise<void>, body: () => Promise<void>): Promise<void> {
  const began = performance.now();
  // A Ctrl-C may arrive twice (from the terminal and relayed by tsx): the second must not end
  // the process with its default action while the first is still stopping the stack.
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await body();
    log(`done in ${round((performance.now() - began) / 1000, 1)} s`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

/** The parts a bench runs: `variable` (comma-separated) or all of `all`; an unknown name is refused. */
export function partsFromEnv<P extends string>(variable: string, all: readonly P[]): Set<P> {
  const parts = (process.env[variable] ?? all.join(',')).split(',');
  for (const p of parts) if (!(all as readonly string[]).includes(p)) throw new Error(`${variable}: unknown part '${p}' (parts: ${all.join(', ')})`);
  return new Set(parts as P[]);
}

/**
 * Lets the machine settle before a timed run, the same for every peer: the page cache's dirty
 * pages (the last run's image file) written back, and this process's garbage (the last check's
 * buffers) collected, so that neither lands on the next run's cores.
 */
export function settle(): void {
  execFileSync('sync');
  collectGarbage();
}

const collectGarbage: () => void = (() => {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

/** The CPUs this process may run on (taskset's list, expanded): `0-2,5` is [0, 1, 2, 5]. */
export function allowedCpus(pid = process.pid): number[] {
  const out = execFileSync('taskset', ['-p', '-c', String(pid)], { encoding: 'utf8' });
  const list = out.slice(out.lastIndexOf(':') + 1).trim();
  return list.split(',').flatMap((part) => {
    const [a, b] = part.split('-').map(Number);
    return Array.from({ length: (b ?? a) - a + 1 }, (_, i) => a + i);
  });
}

/** This process and every process it started (the local stack's: DynamoDB Local, Lambda processes), by pid. */
function processTree(root = process.pid): number[] {
  const children = new Map<number, number[]>();
  for (const line of execFileSync('ps', ['-e', '-o', 'pid=,ppid='], { encoding: 'utf8' }).trim().split('\n')) {
    const [pid, ppid] = line.trim().split(/\s+/).map(Number);
    children.set(ppid, [...(children.get(ppid) ?? []), pid]);
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) tree.push(...(children.get(tree[i]) ?? []));
  return tree;
}

/**
 * Where the parts of a run go: `stack` (this process, with the local S3 in it, and the
 * processes it started) and `peer` (each peer measured), as CPU lists for taskset. With two
 * CPUs or more, the first is the stack's and the others the peers' (the standard's placement:
 * what would not run on the measured host in AWS, S3 first, is kept off its cores, the same
 * for every peer); with one, or `{variable}=shared`, nothing is pinned.
 */
export function placement(variable: string): { stack: string; peer: string; all: string } | undefined {
  const mode = process.env[variable] ?? 'pinned';
  if (mode !== 'pinned' && mode !== 'shared') throw new Error(`${variable}: '${mode}' is neither 'pinned' nor 'shared'`);
  if (mode === 'shared') return undefined;
  const cpus = allowedCpus();
  if (cpus.length < 2) return undefined;
  return { stack: String(cpus[0]), peer: cpus.slice(1).join(','), all: cpus.join(',') };
}

/** Pins every thread of this process and of the processes it started to `cpus` (a taskset list); a process gone meanwhile is skipped. */
export function pinTree(cpus: string): void {
  for (const pid of processTree()) {
    try {
      execFileSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
    } catch {
      // exited since ps listed it
    }
  }
}

/** `cmd args` run on `cpus` (a taskset list), or as it is when there is no placement. */
export const onCpus = (cpus: string | undefined, cmd: string, args: string[]): [string, string[]] => (cpus ? ['taskset', ['-c', cpus, cmd, ...args]] : [cmd, args]);
