// One Lambda function of the template run locally in a Node process of its own, as AWS runs
// it on compute of its own: its CPU and its requests do not come out of the caller's process.
// The local stack runs the compaction function this way, at a lower CPU priority, so that on
// a shared core (benchmarks pin the whole stack to one) a compaction unit cannot starve the
// apply path, which in AWS it could not either. The process starts at the first invocation
// (with the environment of that moment: the stack's endpoints and names) and is started
// again after it dies, like a new sandbox; an invocation in flight when it dies fails.
// Payloads and results cross as JSON (through IPC), as a Lambda's do; an error keeps its
// name, which the state machines' Retry and Catch rules match.

import { fork, type ChildProcess } from 'node:child_process';
import { setPriority } from 'node:os';
import { join } from 'node:path';
import type { TaskHandler } from './stepfunctions-local';

export interface LambdaProcessOptions {
  /** Added to the process's niceness (0–19; default 0). */
  nice?: number;
  log?: (msg: string) => void;
}

export interface LambdaProcess {
  /** One invoker per export name, each running that export in the process. */
  handlers: Record<string, TaskHandler>;
  /** Ends the process; invocations in flight fail. */
  stop(): Promise<void>;
}

type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: { name: string; message: string; stack?: string } };

/** Runs the exports `names` of the handler module `modulePath` (absolute) in a process of their own. */
export function lambdaProcess(modulePath: string, names: readonly string[], opts: LambdaProcessOptions = {}): LambdaProcess {
  let child: ChildProcess | undefined;
  let stopped = false;
  let nextId = 1;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  const start = (): ChildProcess => {
    const c = fork(join(__dirname, 'lambda-runner.ts'), [modulePath], {
      execArgv: ['--no-warnings=ExperimentalWarning', '--import', require.resolve('tsx')],
      env: process.env,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    if (opts.nice && c.pid !== undefined) {
      try {
        setPriority(c.pid, opts.nice);
      } catch (err) {
        opts.log?.(`local Lambda ${modulePath}: could not lower its priority (${String(err)}); it runs at the caller's`);
      }
    }
    c.on('message', (m: Reply) => {
      const call = pending.get(m.id);
      if (!call) return;
      pending.delete(m.id);
      if (m.ok) call.resolve(m.result);
      else call.reject(Object.assign(new Error(m.error.message), { name: m.error.name, stack: m.error.stack }));
    });
    c.on('exit', (code, signal) => {
      if (child === c) child = undefined;
      const why = new Error(`local Lambda process of ${modulePath} exited (${signal ?? `code ${code}`}) during the invocation`);
      for (const [id, call] of pending) {
        pending.delete(id);
        call.reject(why);
      }
    });
    c.on('error', (err) => opts.log?.(`local Lambda ${modulePath}: ${String(err)}`));
    return c;
  };

  const invoke = (name: string, input: unknown): Promise<unknown> => {
    if (stopped) return Promise.reject(new Error(`local Lambda ${modulePath} is stopped`));
    child ??= start();
    const id = nextId++;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      child!.send({ id, name, input }, (err) => {
        if (!err) return;
        pending.delete(id);
        reject(err);
      });
    });
  };

  return {
    handlers: Object.fromEntries(names.map((name) => [name, (input: unknown) => invoke(name, input)])),
    async stop() {
      stopped = true;
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.kill('SIGTERM');
      await exited;
    },
  };
}
