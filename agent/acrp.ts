// Application-consistent recovery points: quiesce the application (pre-freeze hook), make
// everything written so far durable, mark the batch boundary with the tag, thaw (always).

import { spawn } from 'node:child_process';
import { checkAppTag } from '../core/keys';
import type { CutOptions } from '../source/batch-writer';

export interface AcrpHooks {
  /** Shell command run before the mark (e.g. `fsfreeze -f /mnt`, a database checkpoint). */
  preFreeze?: string;
  /** Shell command run after the mark, and after a failed freeze too. */
  postThaw?: string;
  timeoutMs: number;
}

export class HookError extends Error {
  constructor(readonly hook: 'pre-freeze' | 'post-thaw', reason: string) {
    super(`${hook} hook ${reason}`);
    this.name = 'HookError';
  }
}

/** Something the ACRP must settle before the mark: all disks' pending mutations, synced. */
export interface Settleable {
  settle(): Promise<void>;
}

/** Where the mark goes: cuts at this boundary once everything before it is stored. */
export interface Marker {
  cut(opts: CutOptions): Promise<number>;
}

/** Takes one ACRP; returns its seq. A failed or timed-out freeze gives no ACRP. */
export async function takeAcrp(marker: Marker, disks: Settleable[], tag: string, hooks: AcrpHooks): Promise<number> {
  checkAppTag(tag, 'ACRP tag'); // before any hook runs
  return inFreezeWindow(tag, hooks, async () => {
    for (const d of disks) await d.settle();
    return marker.cut({ appTag: tag });
  });
}

/** A disk whose new writes can be refused (a planned failover's fence). */
export interface Fenceable {
  fence(reason: string | undefined): void;
}

/**
 * The final ACRP of a planned failover: pre-freeze, then every disk refuses new writes, what
 * was acknowledged is settled, and the mark is cut: every write the guest was told is done is
 * below it, and none can follow. The application is not thawed (the source is going down;
 * the post-thaw hook runs only if this fails, when writes are allowed again).
 */
export async function takeFinalAcrp(marker: Marker, disks: (Settleable & Fenceable)[], tag: string, hooks: AcrpHooks): Promise<number> {
  checkAppTag(tag, 'failover tag');
  const env = { LIVESYNC_ACRP_TAG: tag };
  if (hooks.preFreeze) await runHook('pre-freeze', hooks.preFreeze, hooks.timeoutMs, env);
  try {
    for (const d of disks) d.fence(`the pair failed over at the ACRP tagged '${tag}'`);
    for (const d of disks) await d.settle();
    return await marker.cut({ appTag: tag });
  } catch (err) {
    for (const d of disks) d.fence(undefined);
    if (hooks.postThaw) await runHook('post-thaw', hooks.postThaw, hooks.timeoutMs, env).catch(() => {});
    throw err;
  }
}

/**
 * Runs `body` between the pre-freeze and the post-thaw hook (both with `LIVESYNC_ACRP_TAG`).
 * The post-thaw hook always runs, once: when `body` calls `thaw` (to end the window early),
 * or after `body` ends or fails, and also after a failed freeze. The first failure is thrown.
 */
export async function inFreezeWindow<T>(tag: string, hooks: AcrpHooks, body: (thaw: () => Promise<void>) => Promise<T>): Promise<T> {
  const env = { LIVESYNC_ACRP_TAG: tag };
  let thawed: Promise<void> | undefined;
  const thaw = (): Promise<void> => (thawed ??= hooks.postThaw ? runHook('post-thaw', hooks.postThaw, hooks.timeoutMs, env) : Promise.resolve());
  let result: T | undefined;
  let failure: unknown;
  try {
    if (hooks.preFreeze) await runHook('pre-freeze', hooks.preFreeze, hooks.timeoutMs, env);
    result = await body(thaw);
  } catch (err) {
    failure = err;
  }
  try {
    await thaw();
  } catch (err) {
    // A mark made inside the window stands: the application was quiesced at that point.
    failure ??= err;
  }
  if (failure !== undefined) throw failure;
  return result as T;
}

function runHook(hook: 'pre-freeze' | 'post-thaw', command: string, timeoutMs: number, env: Record<string, string>): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', command], { env: { ...hookEnvironment(process.env), ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-500)));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new HookError(hook, `'${command}' timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new HookError(hook, `'${command}' could not start: ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new HookError(hook, `'${command}' failed (${signal ?? `exit ${code}`})${stderr ? `: ${stderr.trim()}` : ''}`));
    });
  });
}

/**
 * The agent's environment without its AWS credentials and settings (every `AWS_*` variable:
 * keys, session token, profile, role and web-identity settings, container credentials): a
 * freeze hook is the application's script and gets no way into the pair's history.
 */
export function hookEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !/^AWS_/i.test(k)));
}
