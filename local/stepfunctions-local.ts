// Step Functions on 127.0.0.1: the state machines of the synthesized CDK template, run by
// aws-local-stepfunctions with every Lambda task bound to its handler in this process,
// behind the subset of the Step Functions API (AWS JSON 1.0) that livesync calls:
// StartExecution, DescribeExecution, ListExecutions, StopExecution. Clients reach it
// through AWS_ENDPOINT_URL_SFN, exactly as they reach LocalStack or AWS.

import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { StateMachine, type StateMachineDefinition } from 'aws-local-stepfunctions';

export type TaskHandler = (input: any) => Promise<unknown>;

export interface LocalMachine {
  arn: string;
  /** Logical id in the template. */
  id: string;
  definition: StateMachineDefinition;
  /** Task state name → the `Handler` export it invokes (`index.steps` → `steps`). */
  handlerOfState: Record<string, string>;
}

const REGION = 'us-east-1';
const ACCOUNT = '000000000000';

/** The template's state machines with their definitions resolved (Fn::Join, Fn::GetAtt, Ref). */
export function machinesFromTemplate(template: any): LocalMachine[] {
  const resources = template.Resources as Record<string, any>;
  const fnArn = (id: string): string => `arn:aws:lambda:${REGION}:${ACCOUNT}:function:${id}`;
  const resolve = (v: any): string => {
    if (typeof v === 'string') return v;
    if (v['Fn::Join']) return (v['Fn::Join'][1] as any[]).map(resolve).join(v['Fn::Join'][0]);
    if (v['Fn::GetAtt']?.[1] === 'Arn') return fnArn(v['Fn::GetAtt'][0]);
    if (v.Ref === 'AWS::Partition') return 'aws';
    if (v.Ref === 'AWS::Region') return REGION;
    if (v.Ref === 'AWS::AccountId') return ACCOUNT;
    if (typeof v.Ref === 'string') return v.Ref;
    throw new Error(`local Step Functions cannot resolve ${JSON.stringify(v)}`);
  };
  return Object.entries(resources)
    .filter(([, r]) => r.Type === 'AWS::StepFunctions::StateMachine')
    .map(([id, r]) => {
      const definition = JSON.parse(resolve(r.Properties.DefinitionString)) as StateMachineDefinition;
      const handlerOfState: Record<string, string> = {};
      forEachState(definition, (name, state) => {
        if (state.Type !== 'Task') return;
        const fnId = /:function:([^:]+)$/.exec(state.Resource)?.[1];
        const handler = fnId && resources[fnId]?.Properties?.Handler;
        if (!handler) throw new Error(`task '${name}' of ${id} calls ${state.Resource}, not a Lambda function of the template (use payloadResponseOnly tasks)`);
        handlerOfState[name] = String(handler).replace(/^index\./, '');
      });
      return { id, arn: `arn:aws:states:${REGION}:${ACCOUNT}:stateMachine:${id}`, definition, handlerOfState };
    });
}

function forEachState(def: { States: Record<string, any> }, fn: (name: string, state: any) => void): void {
  for (const [name, state] of Object.entries(def.States)) {
    fn(name, state);
    const inner = state.ItemProcessor ?? state.Iterator;
    if (inner) forEachState(inner, fn);
    for (const branch of state.Branches ?? []) forEachState(branch, fn);
  }
}

export interface RunOptions {
  /** Every Wait state lasts this long instead (a local run need not poll every 10 s). */
  waitMs?: number;
}

/** Runs one execution of `machine` in this process with its tasks bound to `handlers`. */
export function runLocal(machine: LocalMachine, handlers: Record<string, TaskHandler>, input: unknown, opts: RunOptions = {}): { result: Promise<unknown>; abort: () => void } {
  const taskResourceLocalHandlers: Record<string, (input: any) => Promise<any>> = {};
  for (const [state, handler] of Object.entries(machine.handlerOfState)) {
    const fn = handlers[handler];
    if (!fn) throw new Error(`no local handler '${handler}' for task '${state}'`);
    // A round trip through JSON, as a Lambda's payload and result take.
    taskResourceLocalHandlers[state] = async (i) => JSON.parse(JSON.stringify((await fn(JSON.parse(JSON.stringify(i)))) ?? null));
  }
  const waitTimeOverrides: Record<string, number> = {};
  if (opts.waitMs !== undefined) forEachState(machine.definition, (name, s) => s.Type === 'Wait' && (waitTimeOverrides[name] = opts.waitMs!));
  const execution = new StateMachine(machine.definition, { validationOptions: { checkArn: false } }).run(input as any, {
    overrides: { taskResourceLocalHandlers, waitTimeOverrides },
  });
  return { result: execution.result, abort: execution.abort };
}

interface Execution {
  executionArn: string;
  stateMachineArn: string;
  name: string;
  input: string;
  status: 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'ABORTED';
  startDate: number;
  stopDate?: number;
  output?: string;
  error?: string;
  cause?: string;
  abort: () => void;
}

export interface RunningStepFunctions {
  endpoint: string;
  machines: LocalMachine[];
  /** Resolves when every execution started so far has stopped. */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

/** Serves the machines' executions on 127.0.0.1; tasks run `handlers` in this process. */
export async function startStepFunctionsLocal(machines: LocalMachine[], handlers: Record<string, TaskHandler>, opts: RunOptions = {}): Promise<RunningStepFunctions> {
  const executions = new Map<string, Execution>();
  const running = new Set<Promise<unknown>>();

  const ops: Record<string, (req: any) => unknown> = {
    StartExecution(req: { stateMachineArn: string; name?: string; input?: string }) {
      const machine = machines.find((m) => m.arn === req.stateMachineArn);
      if (!machine) throw new ApiError('StateMachineDoesNotExist', `State Machine Does Not Exist: '${req.stateMachineArn}'`);
      const name = req.name ?? randomUUID();
      const executionArn = `arn:aws:states:${REGION}:${ACCOUNT}:execution:${machine.id}:${name}`;
      const input = req.input ?? '{}';
      const existing = executions.get(executionArn);
      if (existing) {
        // StartExecution is idempotent for the same name and input while it runs.
        if (existing.input === input && existing.status === 'RUNNING') return { executionArn, startDate: existing.startDate };
        throw new ApiError('ExecutionAlreadyExists', `Execution Already Exists: '${executionArn}'`);
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(input);
      } catch {
        throw new ApiError('InvalidExecutionInput', 'Invalid State Machine Execution Input: not JSON');
      }
      const { result, abort } = runLocal(machine, handlers, parsed, opts);
      const ex: Execution = { executionArn, stateMachineArn: machine.arn, name, input, status: 'RUNNING', startDate: Date.now() / 1000, abort };
      executions.set(executionArn, ex);
      const done = result.then(
        (out) => Object.assign(ex, { status: 'SUCCEEDED', output: JSON.stringify(out) }),
        (err: Error & { cause?: { name?: string; message?: string } }) => {
          // aws-local-stepfunctions wraps the state's error; its name/message are Error/Cause.
          const inner = err.cause ?? err;
          if (ex.status === 'RUNNING') Object.assign(ex, { status: err.name === 'ExecutionAbortedError' ? 'ABORTED' : 'FAILED', error: inner.name, cause: inner.message });
        },
      );
      const tracked = done.finally(() => {
        ex.stopDate = Date.now() / 1000;
        running.delete(tracked);
      });
      running.add(tracked);
      return { executionArn, startDate: ex.startDate };
    },
    DescribeExecution(req: { executionArn: string }) {
      const ex = executions.get(req.executionArn);
      if (!ex) throw new ApiError('ExecutionDoesNotExist', `Execution Does Not Exist: '${req.executionArn}'`);
      const { abort: _abort, ...shown } = ex;
      return shown;
    },
    ListExecutions(req: { stateMachineArn: string; statusFilter?: string }) {
      const list = [...executions.values()].filter((e) => e.stateMachineArn === req.stateMachineArn && (!req.statusFilter || e.status === req.statusFilter));
      return { executions: list.map(({ executionArn, stateMachineArn, name, status, startDate, stopDate }) => ({ executionArn, stateMachineArn, name, status, startDate, stopDate })) };
    },
    StopExecution(req: { executionArn: string; error?: string; cause?: string }) {
      const ex = executions.get(req.executionArn);
      if (!ex) throw new ApiError('ExecutionDoesNotExist', `Execution Does Not Exist: '${req.executionArn}'`);
      if (ex.status === 'RUNNING') {
        Object.assign(ex, { status: 'ABORTED', error: req.error, cause: req.cause });
        ex.abort();
      }
      return { stopDate: Date.now() / 1000 };
    },
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const target = String(req.headers['x-amz-target'] ?? '');
      const op = ops[target.replace(/^AWSStepFunctions\./, '')];
      const reply = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/x-amz-json-1.0' });
        res.end(JSON.stringify(body));
      };
      try {
        if (!op) throw new ApiError('UnknownOperationException', `operation '${target}' is not served locally`);
        reply(200, op(JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}')));
      } catch (err) {
        const e = err instanceof ApiError ? err : new ApiError('ValidationException', String(err));
        reply(400, { __type: e.type, message: e.message });
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    machines,
    idle: async () => {
      while (running.size) await Promise.allSettled([...running]);
    },
    async stop() {
      for (const ex of executions.values()) if (ex.status === 'RUNNING') ex.abort();
      await Promise.allSettled([...running]);
      await new Promise((r) => server.close(r));
    },
  };
}

class ApiError extends Error {
  constructor(readonly type: string, message: string) {
    super(message);
  }
}
