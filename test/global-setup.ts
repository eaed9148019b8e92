// Starts the embedded local stack for the test run, unless an endpoint is configured:
// with AWS_ENDPOINT_URL (LocalStack) or per-service endpoints, or none in AWS with
// LIVESYNC_TARGET=aws, the same tests run against the deployed stack (its outputs in
// LIVESYNC_BUCKET, LIVESYNC_TABLE, LIVESYNC_APPLY_QUEUE_URL, LIVESYNC_SEED_STATE_MACHINE_ARN;
// `npm run test:localstack` sets them). Either way the stack is checked once before any test
// (test/preflight.ts): a stack without a working event path fails here, in seconds, naming
// what is missing, instead of every test waiting out its timeout.

import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { usesExternalStack } from '../adapters/from-env';
import globalTeardown from './global-teardown';
import { preflight } from './preflight';

export default async function globalSetup(): Promise<void> {
  if (usesExternalStack()) {
    const probe = await preflight(process.env);
    console.error(`preflight: probe pair ${probe.probePair} applied ${probe.ms} ms after its PUT`);
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
  try {
    await preflight(process.env);
  } catch (err) {
    // Jest runs no teardown after a failed setup: stop the stack here.
    await globalTeardown();
    throw err;
  }
}
