import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';

export default async function globalTeardown(): Promise<void> {
  const g = globalThis as { __LIVESYNC_LOCAL__?: ChildProcess; __LIVESYNC_SUMMARY__?: string };
  const child = g.__LIVESYNC_LOCAL__;
  if (child && child.exitCode === null) {
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    await exited;
  }
  // Set by test/summary-reporter.js; printed here, after jest's own summary.
  setImmediate(() => g.__LIVESYNC_SUMMARY__ && process.stderr.write(`${g.__LIVESYNC_SUMMARY__}\n`));
}
