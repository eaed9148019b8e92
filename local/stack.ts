// The embedded local default: DynamoDB Local + an S3-compatible server + SQS + the EBS
// direct APIs (local/ebs-local.ts) + EC2's CreateVolume/RegisterImage (local/ec2-local.ts) on 127.0.0.1, the bucket, table and queues derived from
// the synthesized CDK template, and the apply handler fed through the same S3 → SQS → Lambda
// event path as in AWS; the workflows (seed, compaction, recovery) on the local Step Functions, compaction's function in a
// process of its own (local/lambda-process.ts).
// The requests each service received are counted (LocalStack.requests) for benchmarks.

import { mkdir, rm, writeFile, readFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { CreateTableCommand, UpdateTimeToLiveCommand } from '@aws-sdk/client-dynamodb';
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { dynamoClient, sqsClient } from '../adapters/aws-clients';
import { synthTemplate } from '../lib/synth';
import { COMPACTION_STATE_MACHINE_ENV, RECOVERY_STATE_MACHINE_ENV } from '../lib/names';
import { lambdaProcess } from './lambda-process';
import { EdgeFaults } from './edge-faults';
import { jsonOf, startCountingProxy, type RequestCounts } from './counting-proxy';
import { startDynamoLocal, type RunningDynamo } from './dynamodb-local';
import { startEbsLocal, type RunningEbs } from './ebs-local';
import { startEc2Local, type RunningEc2 } from './ec2-local';
import { createApplyQueues, forwardNotifications, startEventSourceMapping, startSqsLocal, type RunningSqs } from './event-source';
import { startS3Local, type RunningS3, type S3RequestCounts } from './s3-local';
import { schemaFromTemplate, type LocalSchema } from './schema';
import { machinesFromTemplate, startStepFunctionsLocal, type RunningStepFunctions } from './stepfunctions-local';

export const LOCAL_BUCKET = 'livesync-local';
export const LOCAL_TABLE = 'livesync-local';
/**
 * Locally a failed message is retried after 2 s, not when the visibility timeout (6 × the
 * Lambda timeout) ends as in AWS; a message being handled stays invisible for that timeout, as
 * in AWS, however long a CPU-starved local handler takes.
 */
const LOCAL_RETRY_DELAY_SEC = 2;
/** Locally a Wait state (the seed workflow's catch-up poll) lasts 1 s, not 10 s. */
const LOCAL_WAIT_MS = 1000;
/** The compaction function's process runs this much nicer than the stack (see provision). */
const COMPACTION_NICE = 10;

export interface LocalStack {
  /** Environment for SDK clients and handlers (endpoints, region, names). */
  env: Record<string, string>;
  deadLetterUrl: string;
  /** Turns the apply handler's event source on or off (batches queue meanwhile); no-op without the event path. */
  setEventPathEnabled(enabled: boolean): void;
  /** What each service has received so far (a snapshot; subtract two to count a window); undefined when the stack is not ours to count. */
  requests(): StackRequests | undefined;
  /** Resolves when every workflow execution started so far (compaction, seeding) has stopped. */
  workflowsIdle(): Promise<void>;
  /** Processes of the stack other than this one (DynamoDB Local's Java), e.g. to pin them to a core. */
  pids: number[];
  /** DynamoDB Local's own endpoint, past the counting proxy: for a benchmark's observers, whose requests are not the RP Store's work. */
  uncountedDynamoEndpoint?: string;
  /** Requests S3 and DynamoDB refuse as throttled (off until set; the fault campaign). */
  faults: EdgeFaults;
  /**
   * SIGKILLs the process of a function the stack runs in one (`compaction`; `apply` with
   * `applyProcess`), as a sandbox dying mid-invocation: returns how many invocations it had in
   * flight, -1 when none was running. The next invocation starts a new process.
   */
  kill(fn: 'apply' | 'compaction'): number;
  /** Invocations that process has in flight now (0 when it runs none, or runs in this process). */
  inFlight(fn: 'apply' | 'compaction'): number;
  stop(): Promise<void>;
}

export interface StackRequests {
  s3: S3RequestCounts;
  dynamodb: RequestCounts;
  /** By SQS action, whoever sent it; `ReceiveMessage.empty` counts the receives that returned no message. */
  sqs: RequestCounts;
  /** Invocations of the apply handler by the event source mapping. */
  lambdaInvocations: number;
}

/** `after − before`, key by key (a window's requests from two snapshots). */
export function requestsBetween(before: StackRequests, after: StackRequests): StackRequests {
  const diff = (a: Record<string, number>, b: Record<string, number>): Record<string, number> =>
    Object.fromEntries(Object.entries(b).map(([k, n]) => [k, n - (a[k] ?? 0)]).filter(([, n]) => n !== 0));
  return { s3: diff(before.s3, after.s3), dynamodb: diff(before.dynamodb, after.dynamodb), sqs: diff(before.sqs, after.sqs), lambdaInvocations: after.lambdaInvocations - before.lambdaInvocations };
}

export interface LocalStackOptions {
  /** Working directory for S3 objects and pid files (default .livesync/local). */
  dir?: string;
  log?: (msg: string) => void;
  /** Run the S3 → SQS → apply handler path (default true; benchmarks drive apply themselves). */
  eventPath?: boolean;
  /**
   * The CloudFormation template the resources come from (default: the synthesized stack).
   * S3 notifications follow its bucket's NotificationConfiguration only, as LocalStack
   * community does: a template without one (e.g. a custom resource's) gets no event path.
   */
  template?: { Resources: Record<string, any> };
  /** Run the apply handler in a process of its own, which `kill` can kill (default: in this process). */
  applyProcess?: boolean;
}

export async function startLocalStack(opts: LocalStackOptions = {}): Promise<LocalStack> {
  const dir = opts.dir ?? process.env.LIVESYNC_LOCAL_DIR ?? join(process.cwd(), '.livesync', 'local');
  await mkdir(dir, { recursive: true });
  await killStaleDynamo(dir);
  const template = opts.template ?? synthTemplate();
  const schema = schemaFromTemplate(template, LOCAL_TABLE);
  const s3dir = join(dir, 's3');
  await rm(s3dir, { recursive: true, force: true });

  const faults = new EdgeFaults();
  const started = await Promise.allSettled([startDynamoLocal(await freePort(), faults), startS3Local(s3dir, LOCAL_BUCKET, faults), startSqsLocal().then(countedSqs), startEbsLocal()] as const);
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    // Never leave a half-started stack (an orphan Java process) behind.
    await Promise.allSettled(started.map((s) => (s.status === 'fulfilled' ? s.value.stop() : undefined)));
    throw (failed as PromiseRejectedResult).reason;
  }
  const [dynamo, s3, sqs, ebs] = started.map((s) => (s as PromiseFulfilledResult<unknown>).value) as [RunningDynamo, RunningS3, CountedSqs, RunningEbs];
  const ec2 = await startEc2Local(ebs.snapshotInfo); // in memory, on a free port: it does not fail once the others started
  await writeFile(join(dir, 'dynamodb.pid'), String(dynamo.pid));
  const stopServers = async (): Promise<void> => {
    await Promise.allSettled([dynamo.stop(), s3.stop(), sqs.stop(), ebs.stop(), ec2.stop()]);
    await rm(join(dir, 'dynamodb.pid'), { force: true });
  };
  try {
    return await provision(schema, template, { dynamo, s3, sqs, ebs, ec2, faults }, stopServers, opts);
  } catch (err) {
    await stopServers(); // a failure after the servers started must not leave them running
    throw err;
  }
}

/** Creates the resources and the event path on the started servers. */
async function provision(
  schema: LocalSchema,
  template: unknown,
  servers: { dynamo: RunningDynamo; s3: RunningS3; sqs: CountedSqs; ebs: RunningEbs; ec2: RunningEc2; faults: EdgeFaults },
  stopServers: () => Promise<void>,
  opts: LocalStackOptions,
): Promise<LocalStack> {
  const { dynamo, s3, sqs: sqsServer, ebs, ec2, faults } = servers;
  const log = opts.log ?? (() => {});
  const env: Record<string, string> = {
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    AWS_ENDPOINT_URL_S3: s3.endpoint,
    AWS_ENDPOINT_URL_DYNAMODB: dynamo.endpoint,
    AWS_ENDPOINT_URL_DYNAMODB_STREAMS: dynamo.endpoint,
    AWS_ENDPOINT_URL_SQS: sqsServer.endpoint,
    AWS_ENDPOINT_URL_EBS: ebs.endpoint,
    AWS_ENDPOINT_URL_EC2: ec2.endpoint,
    AWS_REQUEST_CHECKSUM_CALCULATION: 'WHEN_REQUIRED',
    AWS_RESPONSE_CHECKSUM_VALIDATION: 'WHEN_REQUIRED',
    LIVESYNC_BUCKET: LOCAL_BUCKET,
    LIVESYNC_TABLE: LOCAL_TABLE,
  };
  // The handler reads its configuration from the process environment at import.
  Object.assign(process.env, env);

  const ddb = dynamoClient();
  await ddb.send(new CreateTableCommand(schema.table));
  if (schema.ttlAttribute) {
    await ddb.send(new UpdateTimeToLiveCommand({ TableName: LOCAL_TABLE, TimeToLiveSpecification: { Enabled: true, AttributeName: schema.ttlAttribute } }));
  }
  ddb.destroy();

  const sqs = sqsClient();
  let lambdaInvocations = 0;
  const queues = await createApplyQueues(sqs, sqsServer.endpoint, 'livesync-apply', schema.maxReceiveCount, schema.visibilityTimeoutSec);
  env.LIVESYNC_APPLY_QUEUE_URL = queues.queueUrl;
  env.LIVESYNC_DLQ_URL = queues.deadLetterUrl;
  const onError = (err: unknown): void => log(`event path: ${String(err)}`);
  if (schema.notification) s3.onEvent(forwardNotifications(sqs, queues.queueUrl, schema.notification, onError));
  else log('event path: the template\'s bucket has no queue notification; uploads reach no queue');
  // In this process by default; in one of its own (started at the first invocation, with the
  // environment of then) when a campaign is to kill it.
  const applyProcess = opts.applyProcess ? lambdaProcess(require.resolve('../lambdas/apply'), ['handler'], { log }) : undefined;
  const apply = applyProcess ? (applyProcess.handlers.handler as (e: SQSEvent) => Promise<SQSBatchResponse>) : (await import('../lambdas/apply')).handler;
  const invoke = (event: SQSEvent): Promise<SQSBatchResponse> => {
    lambdaInvocations++;
    return apply(event);
  };
  const mapping = opts.eventPath === false ? undefined : startEventSourceMapping(sqs, queues.queueUrl, invoke, { batchSize: 10, concurrency: 4, retryDelaySec: LOCAL_RETRY_DELAY_SEC, onError });

  // The workflows: the template's state machines. The seed workflow's tasks run in this
  // process; the compaction function's in a process of its own at a lower priority (it is a
  // separate Lambda in AWS: however busy it is, the apply path does not wait for its CPU).
  const compaction = lambdaProcess(require.resolve('../lambdas/compact'), ['unit', 'gc', 'sweep'], { nice: COMPACTION_NICE, log });
  let stepFunctions: RunningStepFunctions | undefined;
  try {
    const seedHandlers = await import('../lambdas/seed');
    const recoveryHandlers = await import('../lambdas/recover');
    stepFunctions = await startStepFunctionsLocal(
      machinesFromTemplate(template),
      { steps: seedHandlers.steps, range: seedHandlers.range, recoveryStep: recoveryHandlers.recoveryStep, recoveryRange: recoveryHandlers.recoveryRange, ...compaction.handlers },
      { waitMs: LOCAL_WAIT_MS },
    );
  } catch (err) {
    await compaction.stop();
    await mapping?.stop();
    await applyProcess?.stop();
    throw err;
  }
  env.AWS_ENDPOINT_URL_SFN = stepFunctions.endpoint;
  env.LIVESYNC_SEED_STATE_MACHINE_ARN = stepFunctions.machines.find((m) => m.id.startsWith('Seed'))!.arn;
  env[COMPACTION_STATE_MACHINE_ENV] = stepFunctions.machines.find((m) => m.id.startsWith('Compaction'))!.arn;
  env[RECOVERY_STATE_MACHINE_ENV] = stepFunctions.machines.find((m) => m.id.startsWith('Recovery'))!.arn;
  Object.assign(process.env, env);

  let stopped = false;
  return {
    env,
    deadLetterUrl: queues.deadLetterUrl,
    setEventPathEnabled: (on) => mapping?.setEnabled(on),
    workflowsIdle: () => stepFunctions.idle(),
    requests: () => ({ s3: s3.requests(), dynamodb: dynamo.requests(), sqs: sqsServer.requests(), lambdaInvocations }),
    pids: [dynamo.pid],
    uncountedDynamoEndpoint: dynamo.directEndpoint,
    faults,
    kill: (fn) => (fn === 'compaction' ? compaction.kill() : applyProcess ? applyProcess.kill() : -1),
    inFlight: (fn) => (fn === 'compaction' ? compaction.inFlight() : (applyProcess?.inFlight() ?? 0)),
    async stop() {
      if (stopped) return;
      stopped = true;
      await stepFunctions.stop();
      await compaction.stop();
      await mapping?.stop();
      await applyProcess?.stop();
      sqs.destroy();
      await stopServers();
    },
  };
}

interface CountedSqs extends RunningSqs {
  requests(): RequestCounts;
}

/** The SQS emulator behind a counting proxy, whose endpoint is the one handed out (queue URLs included). */
async function countedSqs(sqs: RunningSqs): Promise<CountedSqs> {
  try {
    const proxy = await startCountingProxy(sqs.endpoint, {
      detailed: ['ReceiveMessage'],
      detail: (_op, _request, answer) => ({ 'ReceiveMessage.empty': (jsonOf(answer) as { Messages?: unknown[] } | undefined)?.Messages?.length ? 0 : 1 }),
    });
    return {
      endpoint: proxy.endpoint,
      requests: () => proxy.counts(),
      async stop() {
        await proxy.close();
        await sqs.stop();
      },
    };
  } catch (err) {
    await sqs.stop();
    throw err;
  }
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

/** A previous run killed with SIGKILL cannot stop its Java child; this one does. */
async function killStaleDynamo(dir: string): Promise<void> {
  const pidFile = join(dir, 'dynamodb.pid');
  const pid = Number(await readFile(pidFile, 'utf8').catch(() => ''));
  if (!pid) return;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (cmdline.includes('DynamoDBLocal')) process.kill(pid, 'SIGKILL');
  await rm(pidFile, { force: true });
}
