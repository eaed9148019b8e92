// local/lambda-process.ts: a Lambda function of the local stack in a process of its own (the
// compaction function runs so, niced, so that it cannot starve the apply path on a shared core).

import { join } from 'node:path';
import { getPriority } from 'node:os';
import { lambdaProcess } from '../local/lambda-process';

const FIXTURE = join(__dirname, 'lambda-fixture.ts');

describe('lambdaProcess', () => {
  test('runs each export in one process of its own, started at the first invocation with the environment of that moment, niced, payloads as JSON', async () => {
    const fn = lambdaProcess(FIXTURE, ['echo', 'niceness'], { nice: 7 });
    try {
      process.env.LAMBDA_FIXTURE_MARK = 'set before the first invocation';
      const a = (await fn.handlers.echo({ n: 1, at: new Date(0) })) as { input: unknown; pid: number; env: string };
      expect(a.input).toEqual({ n: 1, at: '1970-01-01T00:00:00.000Z' });
      expect(a.env).toBe('set before the first invocation');
      expect(a.pid).not.toBe(process.pid);
      const b = (await fn.handlers.echo(null)) as { pid: number };
      expect(b.pid).toBe(a.pid); // one warm process
      expect(await fn.handlers.niceness({})).toBe(Math.min(19, getPriority() + 7));
    } finally {
      delete process.env.LAMBDA_FIXTURE_MARK;
      await fn.stop();
    }
  });

  test('an error keeps its name (what a state machine\'s Retry and Catch match); a process that dies fails its invocation and the next one gets a new process', async () => {
    const fn = lambdaProcess(FIXTURE, ['echo', 'fail', 'die']);
    try {
      await expect(fn.handlers.fail({})).rejects.toMatchObject({ name: 'FixtureError', message: 'the fixture failed on purpose' });
      const before = ((await fn.handlers.echo({})) as { pid: number }).pid;
      await expect(fn.handlers.die({})).rejects.toThrow(/exited \(code 3\) during the invocation/);
      const after = ((await fn.handlers.echo({})) as { pid: number }).pid;
      expect(after).not.toBe(before);
    } finally {
      await fn.stop();
    }
    await expect(fn.handlers.echo({})).rejects.toThrow(/stopped/);
  });
});
