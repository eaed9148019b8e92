import { once } from 'node:events';
import type { ChildProcess } from 'node:child_process';

export default async function globalTeardown(): Promise<void> {
  const child = (globalThis as { __LIVESYNC_LOCAL__?: ChildProcess }).__LIVESYNC_LOCAL__;
  if (!child || child.exitCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  await exited;
}
