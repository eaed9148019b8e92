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
  /**
   * Kills the process now with `signal` (a sandbox dying under its invocations: they fail, and
   * the next invocation starts a new process). Returns how many invocations were in flight; -1
   * when no process was running.
   */
  kill(signal?: NodeJS.Signals): number;
  /** Invocations the running process has in flight (0 when none runs). */
  inFlight(): number;
  /** Ends the process; invocations in flight fail. */
  stop(): Promise<void>;
}

type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: { name: string; message: string; stack?: string } };

/** Runs the exports `names` of the handler module `modulePath` (absolute) in a process of their own. */
export function lambdaProcess(modulePath: string, names: readonly string[], opts: LambdaProcessOptions = {}): LambdaProcess {
  /** The running process and the invocations it has in flight (each process its own: a killed one fails only its own). */
  let child: { proc: ChildProcess; pending: Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }> } | undefined;
  let stopped = false;
  let nextId = 1;

  const start = (): NonNullable<typeof child> => {
    const c = fork(join(__dirname, 'lambda-runner.ts'), [modulePath], {
      execArgv: ['--no-warnings=ExperimentalWarning', '--import', require.resolve('tsx')],
      env: process.env,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const self: NonNullable<typeof child> = { proc: c, pending: new Map() };
    const { pending } = self;
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
      if (child === self) child = undefined;
      const why = new Error(`local Lambda process of ${modulePath} exited (${signal ?? `code ${code}`}) during the invocation`);
      for (const [id, call] of pending) {
        pending.delete(id);
        call.reject(why);
      }
    });
    c.on('error', (err) => opts.log?.(`local Lambda ${modulePath}: ${String(err)}`));
    return self;
  };

  const invoke = (name: string, input: unknown): Promise<unknown> => {
    if (stopped) return Promise.reject(new Error(`local Lambda ${modulePath} is stopped`));
    const self = (child ??= start());
    const id = nextId++;
    return new Promise((resolve, reject) => {
      self.pending.set(id, { resolve, reject });
      self.proc.send({ id, name, input }, (err) => {
        if (!err) return;
        self.pending.delete(id);
        reject(err);
      });
    });
  };

  return {
    handlers: Object.fromEntries(names.map((name) => [name, (input: unknown) => invoke(name, input)])),
    kill(signal = 'SIGKILL') {
      const self = child;
      if (!self || self.proc.exitCode !== null || self.proc.signalCode !== null) return -1;
      child = undefined; // the next invocation starts a new process, as Lambda starts a new sandbox
      self.proc.kill(signal);
      return self.pending.size;
    },
    inFlight: () => child?.pending.size ?? 0,
    async stop() {
      stopped = true;
      const c = child?.proc;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.kill('SIGTERM');
      await exited;
    },
  };
}
