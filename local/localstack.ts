// What `npm run test:localstack` (scripts/test-localstack.ts) needs besides running
// commands: the LocalStack to use (AWS_ENDPOINT_URL, reachable, the services up), the
// environment cdklocal deploys with, and the stack outputs as the environment the tests read.

import { InvalidArgumentError } from '../core/errors';

/** Stack output → the variable the tests, the CLI and the agent read it from. */
export const OUTPUT_ENV: Record<string, string> = {
  BucketName: 'LIVESYNC_BUCKET',
  TableName: 'LIVESYNC_TABLE',
  ApplyQueueUrl: 'LIVESYNC_APPLY_QUEUE_URL',
  DeadLetterQueueUrl: 'LIVESYNC_DLQ_URL',
  SeedStateMachineArn: 'LIVESYNC_SEED_STATE_MACHINE_ARN',
};

/** Services the stack and the tests use, as LocalStack's health endpoint names them. */
export const LOCALSTACK_SERVICES = ['cloudformation', 's3', 'sqs', 'dynamodb', 'lambda', 'stepfunctions', 'iam', 'sts', 'logs', 'ssm'];

export class LocalStackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LocalStackError';
  }
}

/** `cdk deploy --outputs-file`'s `{stack: {Output: value}}` as environment variables; every output must be there. */
export function envFromOutputs(outputs: Record<string, Record<string, string>>, stackName: string): Record<string, string> {
  const stack = outputs[stackName];
  if (!stack) throw new LocalStackError(`the outputs file has no stack '${stackName}' (has: ${Object.keys(outputs).join(', ') || 'none'})`);
  const missing = Object.keys(OUTPUT_ENV).filter((k) => !stack[k]);
  if (missing.length) throw new LocalStackError(`stack '${stackName}' lacks the outputs ${missing.join(', ')} (deployed from an older template?)`);
  return Object.fromEntries(Object.entries(OUTPUT_ENV).map(([output, name]) => [name, stack[output]]));
}

/** The endpoint: AWS_ENDPOINT_URL, which must be set and an http(s) URL. */
export function localStackEndpoint(env: NodeJS.ProcessEnv): URL {
  const value = env.AWS_ENDPOINT_URL;
  if (!value) {
    throw new LocalStackError('AWS_ENDPOINT_URL is not set: start LocalStack (e.g. `localstack start`, or its Docker image with -p 4566:4566) and set AWS_ENDPOINT_URL=http://localhost:4566');
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`AWS_ENDPOINT_URL=${value} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError(`AWS_ENDPOINT_URL=${value}: expected http:// or https://`);
  return url;
}

/**
 * Checks LocalStack answers at `endpoint` (its `/_localstack/health`) with every service the
 * stack uses; returns its version line. Throws LocalStackError naming what is wrong.
 */
export async function checkLocalStack(endpoint: URL, timeoutMs = 5000): Promise<string> {
  const health = new URL('/_localstack/health', endpoint);
  let res: Response;
  try {
    res = await fetch(health, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (err) {
    const cause = errorCode(err);
    throw new LocalStackError(`LocalStack at ${endpoint.origin} is unreachable (${cause}): is it running, and is AWS_ENDPOINT_URL its address?`);
  }
  if (!res.ok) throw new LocalStackError(`${health} answered HTTP ${res.status}: is ${endpoint.origin} a LocalStack?`);
  const body = (await res.json().catch(() => undefined)) as { services?: Record<string, string>; edition?: string; version?: string } | undefined;
  if (!body?.services) throw new LocalStackError(`${health} did not answer LocalStack's health JSON: is ${endpoint.origin} a LocalStack?`);
  const down = LOCALSTACK_SERVICES.filter((s) => !['available', 'running'].includes(body.services![s] ?? 'missing')).map((s) => `${s} (${body.services![s] ?? 'missing'})`);
  if (down.length) throw new LocalStackError(`LocalStack at ${endpoint.origin} lacks services the stack uses: ${down.join(', ')} (check its SERVICES setting)`);
  return `LocalStack ${body.version ?? '?'} ${body.edition ?? ''}`.trim();
}

/**
 * The environment cdklocal deploys with. cdklocal (for aws-cdk ≥ 2.177) insists on
 * AWS_ENDPOINT_URL_S3 beside AWS_ENDPOINT_URL and keeps only allow-listed AWS_* variables:
 * S3 goes to the same endpoint, path-style (AWS_S3_FORCE_PATH_STYLE, which cdklocal honours),
 * so no `*.localhost.localstack.cloud` name needs to resolve; the region is kept.
 */
export function cdklocalEnv(env: NodeJS.ProcessEnv, endpoint: URL): NodeJS.ProcessEnv {
  const region = env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1';
  const endpointUrl = endpoint.origin;
  return {
    ...env,
    AWS_ENDPOINT_URL: endpointUrl,
    AWS_ENDPOINT_URL_S3: env.AWS_ENDPOINT_URL_S3 ?? endpointUrl,
    AWS_S3_FORCE_PATH_STYLE: '1',
    AWS_REGION: region,
    AWS_DEFAULT_REGION: region,
    AWS_ENVAR_ALLOWLIST: [env.AWS_ENVAR_ALLOWLIST, 'AWS_REGION', 'AWS_DEFAULT_REGION'].filter(Boolean).join(','),
  };
}

/** The system error code under a fetch failure (`ECONNREFUSED`, `ENOTFOUND`, …), else its message. */
function errorCode(err: unknown): string {
  const e = err as { cause?: { code?: string; errors?: { code?: string }[]; message?: string }; name?: string; message?: string };
  return e.cause?.code ?? e.cause?.errors?.find((x) => x.code)?.code ?? e.cause?.message ?? e.message ?? String(err);
}
