// The global setup's preflight (test/preflight.ts): it names every missing setting at once,
// passes on the suite's stack, and fails within seconds, naming the missing hop, on a stack
// built from a template whose bucket has no notification (what LocalStack community made of
// the Custom::S3BucketNotifications the stack used to deploy).

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { synthTemplate } from '../lib/synth';
import { preflight, PreflightError } from './preflight';

test('names every missing setting and the stack output it comes from, before touching anything', async () => {
  const t0 = Date.now();
  const err = await preflight({ LIVESYNC_BUCKET: 'b', AWS_ENDPOINT_URL: 'http://localhost:4566' }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(PreflightError);
  expect((err as Error).message).toBe(
    'preflight: missing LIVESYNC_TABLE (stack output TableName), LIVESYNC_APPLY_QUEUE_URL (stack output ApplyQueueUrl), LIVESYNC_SEED_STATE_MACHINE_ARN (stack output SeedStateMachineArn), AWS_REGION (the region the stack is in)',
  );
  expect(Date.now() - t0).toBeLessThan(100);
});

test('passes on the stack under test: the probe batch is applied within seconds', async () => {
  const probe = await preflight(process.env, { timeoutMs: 5000 });
  expect(probe.ms).toBeLessThan(5000);
  await expect((await import('./helpers')).cloud().index.getPair(probe.probePair)).resolves.toMatchObject({ watermark: 1 });
});

// A second embedded stack (`livesync local up --template`), built from the stack's template
// with the bucket's NotificationConfiguration removed.
(process.env.LIVESYNC_EMBEDDED_STACK === '1' ? test : test.skip)('fails within seconds, naming the missing notification, when the bucket has none', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'livesync-preflight-'));
  const template = synthTemplate();
  for (const r of Object.values<any>(template.Resources)) if (r.Type === 'AWS::S3::Bucket') delete r.Properties.NotificationConfiguration;
  writeFileSync(join(dir, 'template.json'), JSON.stringify(template));
  const root = join(__dirname, '..');
  const child = spawn(join(root, 'node_modules/.bin/tsx'), ['cli/livesync.ts', 'local', 'up', '--json', '--until-stdin-closes', '--template', join(dir, 'template.json')], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, LIVESYNC_LOCAL_DIR: dir },
  });
  // Its last words, for the error if it dies before answering.
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
  const exited = once(child, 'exit');
  try {
    const env = JSON.parse(await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`local up exited with ${code}: ${stderr}`)));
    })) as Record<string, string>;
    const t0 = Date.now();
    const err = await preflight(env, { timeoutMs: 3000 }).catch((e: unknown) => e);
    const ms = Date.now() - t0;
    expect(err).toBeInstanceOf(PreflightError);
    expect((err as Error).message).toMatch(/did not reach the apply handler within 3000 ms: no message reached the apply queue: the bucket has no S3 → SQS notification for pairs\/\*\.batch/);
    expect(ms).toBeLessThan(6000);
  } finally {
    // Listened for from the start: a child that already exited must not leave this waiting.
    child.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
});
