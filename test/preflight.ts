// The check global setup runs once before any test, against whatever stack the tests will
// use (the embedded one, LocalStack, or AWS): every setting the tests read is there, and a
// journal object reaches the apply handler within seconds. Without it, a missing event path
// showed up as every replication test waiting out its timeout (25+ minutes on LocalStack).
//
// The probe: a pair of its own (`preflight-{hex}`, one 4 KiB disk, no backup) and one empty
// batch at seq 1 under its journal prefix. The apply handler registers it and moves the
// pair's watermark to 1: an effect on that pair alone, observed with one GetItem. No real
// pair is touched (tests make pairs of their own the same way).

import { randomBytes } from 'node:crypto';
import { GetQueueAttributesCommand } from '@aws-sdk/client-sqs';
import { dynamoClient, endpointFor, s3Client, sqsClient } from '../adapters/aws-clients';
import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { batchObjectCrc32c, BLOCK_SIZE, encodeBatch } from '../core/batch-format';
import { journalKey } from '../core/keys';
import { sleep } from '../replica/concurrency';
import { createPair } from '../replica/pairs';

/** What the tests read, and the stack output each comes from. */
export const REQUIRED_SETTINGS: Record<string, string> = {
  LIVESYNC_BUCKET: 'stack output BucketName',
  LIVESYNC_TABLE: 'stack output TableName',
  LIVESYNC_APPLY_QUEUE_URL: 'stack output ApplyQueueUrl',
  LIVESYNC_SEED_STATE_MACHINE_ARN: 'stack output SeedStateMachineArn',
};

/** How long the probe may take by default; LIVESYNC_PREFLIGHT_TIMEOUT_MS overrides it (a cold LocalStack Lambda may need more). */
export const PREFLIGHT_TIMEOUT_MS = 10_000;

export class PreflightError extends Error {
  constructor(message: string) {
    super(`preflight: ${message}`);
    this.name = 'PreflightError';
  }
}

export interface PreflightResult {
  probePair: string;
  /** From the probe's PUT to the watermark seen at 1. */
  ms: number;
}

export async function preflight(env: NodeJS.ProcessEnv = process.env, opts: { timeoutMs?: number } = {}): Promise<PreflightResult> {
  const missing = Object.keys(REQUIRED_SETTINGS).filter((k) => !env[k]);
  const s3Endpoint = endpointFor('S3', env);
  const ddbEndpoint = endpointFor('DYNAMODB', env);
  if ((s3Endpoint || ddbEndpoint) && !env.AWS_REGION && !env.AWS_DEFAULT_REGION) missing.push('AWS_REGION');
  if (missing.length) {
    throw new PreflightError(`missing ${missing.map((k) => `${k} (${REQUIRED_SETTINGS[k] ?? 'the region the stack is in'})`).join(', ')}`);
  }
  const timeoutMs = opts.timeoutMs ?? (Number(env.LIVESYNC_PREFLIGHT_TIMEOUT_MS) || PREFLIGHT_TIMEOUT_MS);
  const s3 = s3Client({ ...clientConfig(env), endpoint: s3Endpoint }, env);
  const ddb = dynamoClient({ ...clientConfig(env), endpoint: ddbEndpoint });
  const index = new DynamoIndex(env.LIVESYNC_TABLE!, ddb);
  const store = new S3ObjectStore(env.LIVESYNC_BUCKET!, s3);
  const pairId = `preflight-${randomBytes(4).toString('hex')}`;
  try {
    await step(`DynamoDB table ${env.LIVESYNC_TABLE} at ${ddbEndpoint ?? 'AWS'}`, () => createPair(index, { pairId, disks: [{ name: 'probe', sizeBytes: BLOCK_SIZE }] }));
    const now = Date.now();
    const body = encodeBatch({ pairId, seq: 1, prevSeq: 0, firstWriteMs: now, cutMs: now, flags: 0, disks: ['probe'] }, []);
    const key = journalKey(pairId, 1);
    const t0 = Date.now();
    await step(`S3 bucket ${env.LIVESYNC_BUCKET} at ${s3Endpoint ?? 'AWS'}`, () => store.put(key, body, { crc32c: batchObjectCrc32c(body) }));
    for (;;) {
      const pair = await index.getPair(pairId);
      if (pair && pair.watermark >= 1) return { probePair: pairId, ms: Date.now() - t0 };
      if (Date.now() - t0 > timeoutMs) throw new PreflightError(`the probe journal object s3://${env.LIVESYNC_BUCKET}/${key} did not reach the apply handler within ${timeoutMs} ms: ${await whereItStopped(env, index, pairId)}`);
      await sleep(100);
    }
  } finally {
    s3.destroy();
    ddb.destroy();
  }
}

/** Region and keys from `env` (not necessarily this process's environment); else the SDK's defaults. */
function clientConfig(env: NodeJS.ProcessEnv): { region?: string; credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string } } {
  const region = env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  const { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey, AWS_SESSION_TOKEN: sessionToken } = env;
  return { ...(region ? { region } : {}), ...(accessKeyId && secretAccessKey ? { credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) } } : {}) };
}

async function step<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw new PreflightError(`${what}: ${(err as Error).name}: ${(err as Error).message}`);
  }
}

/** Which hop of S3 → SQS → apply handler the probe did not pass. */
async function whereItStopped(env: NodeJS.ProcessEnv, index: DynamoIndex, pairId: string): Promise<string> {
  if ((await index.batchesAfter(pairId, 0, 1)).length) return 'the handler registered the batch but the watermark did not move (see the apply handler\'s log)';
  const sqs = sqsClient({ ...clientConfig(env), endpoint: endpointFor('SQS', env) });
  try {
    const out = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: env.LIVESYNC_APPLY_QUEUE_URL, AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'] }));
    const waiting = Number(out.Attributes?.ApproximateNumberOfMessages ?? 0);
    const inFlight = Number(out.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0);
    if (waiting > 0) {
      return `the apply queue holds ${waiting} waiting messages (${inFlight} in flight): the apply Lambda is not consuming it (its event source mapping, or a function that cannot start: on an x86 Docker host arm64 functions need LocalStack's LAMBDA_IGNORE_ARCHITECTURE=1)`;
    }
    if (inFlight > 0) {
      return `the apply queue has ${inFlight} messages in flight: the apply Lambda took the probe's notification but has not applied it (still starting, slow, or failing: see its log; a cold LocalStack Lambda may need a longer LIVESYNC_PREFLIGHT_TIMEOUT_MS)`;
    }
    return 'no message reached the apply queue: the bucket has no S3 → SQS notification for pairs/*.batch (deploy the current template: the notification must be the bucket\'s own NotificationConfiguration, not a custom resource, which LocalStack community ignores)';
  } catch (err) {
    return `the apply queue ${env.LIVESYNC_APPLY_QUEUE_URL} could not be read (${(err as Error).name}: ${(err as Error).message})`;
  } finally {
    sqs.destroy();
  }
}
