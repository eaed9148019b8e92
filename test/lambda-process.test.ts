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

  test('kill: SIGKILLs the process under its invocations, which fail, and says how many there were; a killed process fails only its own', async () => {
    const fn = lambdaProcess(FIXTURE, ['echo', 'slow']);
    try {
      expect(fn.kill()).toBe(-1); // none started yet
      const first = ((await fn.handlers.echo({})) as { pid: number }).pid;
      const running = [fn.handlers.slow({ ms: 60_000 }), fn.handlers.slow({ ms: 60_000 })];
      await new Promise((r) => setTimeout(r, 200));
      expect(fn.kill()).toBe(2);
      // The next invocation starts a new process at once, while the killed one may still be exiting.
      const next = fn.handlers.slow({ ms: 300 });
      for (const p of running) await expect(p).rejects.toThrow(/exited \(SIGKILL\) during the invocation/);
      const pid = (await next) as number;
      expect(pid).not.toBe(first);
      expect(fn.kill()).toBe(0);
    } finally {
      await fn.stop();
    }
  });
});
