// Starts the embedded local stack for the test run, unless an endpoint is configured:
// with AWS_ENDPOINT_URL (LocalStack) or per-service endpoints, or none in AWS with
// LIVESYNC_TARGET=aws, the same tests run against the deployed stack (LIVESYNC_BUCKET
// and LIVESYNC_TABLE from its outputs).

import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { usesExternalStack } from '../adapters/from-env';

export default async function globalSetup(): Promise<void> {
  if (usesExternalStack()) {
    if (!process.env.LIVESYNC_BUCKET || !process.env.LIVESYNC_TABLE) throw new Error('an external stack needs LIVESYNC_BUCKET and LIVESYNC_TABLE (the stack outputs)');
    return;
  }
  const root = join(__dirname, '..');
  const child = spawn(join(root, 'node_modules/.bin/tsx'), ['cli/livesync.ts', 'local', 'up', '--json', '--until-stdin-closes'], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, LIVESYNC_LOCAL_DIR: process.env.LIVESYNC_LOCAL_DIR ?? join(root, '.livesync', 'test-local') },
  });
  const firstLine = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`local stack exited with ${code} before it was up`)));
  });
  Object.assign(process.env, JSON.parse(firstLine), { LIVESYNC_EMBEDDED_STACK: '1' });
  (globalThis as { __LIVESYNC_LOCAL__?: ChildProcess }).__LIVESYNC_LOCAL__ = child;
}
