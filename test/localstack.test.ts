// `npm run test:localstack`'s checks before it deploys (local/localstack.ts): a clear error
// when AWS_ENDPOINT_URL is unset, unreachable, not LocalStack or lacking a service; the
// environment cdklocal deploys with; the stack outputs as the tests' environment.

import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cdklocalEnv, checkLocalStack, envFromOutputs, LOCALSTACK_SERVICES, localStackEndpoint, LocalStackError } from '../local/localstack';

const outputs = { BucketName: 'livesync-1234', TableName: 't', ApplyQueueUrl: 'http://q/apply', DeadLetterQueueUrl: 'http://q/dlq', SeedStateMachineArn: 'arn:aws:states:us-east-1:000000000000:stateMachine:Seed' };

test('the stack outputs become the variables the tests read; a missing one is named', () => {
  expect(envFromOutputs({ Livesync: outputs }, 'Livesync')).toEqual({
    LIVESYNC_BUCKET: 'livesync-1234',
    LIVESYNC_TABLE: 't',
    LIVESYNC_APPLY_QUEUE_URL: 'http://q/apply',
    LIVESYNC_DLQ_URL: 'http://q/dlq',
    LIVESYNC_SEED_STATE_MACHINE_ARN: 'arn:aws:states:us-east-1:000000000000:stateMachine:Seed',
  });
  const { SeedStateMachineArn: _, ...older } = outputs;
  expect(() => envFromOutputs({ Livesync: older }, 'Livesync')).toThrow("stack 'Livesync' lacks the outputs SeedStateMachineArn");
  expect(() => envFromOutputs({ Other: outputs }, 'Livesync')).toThrow("the outputs file has no stack 'Livesync' (has: Other)");
});

test('AWS_ENDPOINT_URL unset or not an http URL: a clear error', () => {
  expect(() => localStackEndpoint({})).toThrow(LocalStackError);
  expect(() => localStackEndpoint({})).toThrow(/AWS_ENDPOINT_URL is not set/);
  expect(() => localStackEndpoint({ AWS_ENDPOINT_URL: 'localstack' })).toThrow('AWS_ENDPOINT_URL=localstack is not a URL');
  expect(localStackEndpoint({ AWS_ENDPOINT_URL: 'http://localhost:4566' }).port).toBe('4566');
});

describe('checkLocalStack', () => {
  let server: Server;
  let answer: { status: number; body: unknown };
  let url: URL;
  beforeAll(async () => {
    server = createServer((req, res) => {
      const { status, body } = req.url === '/_localstack/health' ? answer : { status: 404, body: {} };
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = new URL(`http://localhost:${(server.address() as AddressInfo).port}`);
  });
  afterAll(() => new Promise((r) => server.close(r)));
  const services = (over: Record<string, string> = {}): Record<string, string> => ({ ...Object.fromEntries(LOCALSTACK_SERVICES.map((s) => [s, 'available'])), ...over });

  test('a LocalStack with every service the stack uses', async () => {
    answer = { status: 200, body: { services: services({ s3: 'running' }), edition: 'community', version: '4.8.1' } };
    await expect(checkLocalStack(url)).resolves.toBe('LocalStack 4.8.1 community');
  });

  test('a service disabled or missing is named', async () => {
    const { stepfunctions: _, ...rest } = services({ lambda: 'disabled' });
    answer = { status: 200, body: { services: rest } };
    await expect(checkLocalStack(url)).rejects.toThrow(`LocalStack at ${url.origin} lacks services the stack uses: lambda (disabled), stepfunctions (missing)`);
  });

  test('not a LocalStack, or nothing listening: named, within the timeout', async () => {
    answer = { status: 404, body: {} };
    await expect(checkLocalStack(url)).rejects.toThrow(/answered HTTP 404: is http:\/\/localhost:\d+ a LocalStack\?/);
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const t0 = Date.now();
    await expect(checkLocalStack(new URL(`http://127.0.0.1:${port}`), 2000)).rejects.toThrow(`LocalStack at http://127.0.0.1:${port} is unreachable (ECONNREFUSED)`);
    expect(Date.now() - t0).toBeLessThan(2500);
  });
});

test('cdklocal deploys through the same endpoint, S3 path-style, keeping the region', () => {
  const env = cdklocalEnv({ AWS_REGION: 'eu-west-1', AWS_PROFILE: 'prod' }, new URL('http://localhost:4566'));
  expect(env).toMatchObject({
    AWS_ENDPOINT_URL: 'http://localhost:4566',
    AWS_ENDPOINT_URL_S3: 'http://localhost:4566',
    AWS_S3_FORCE_PATH_STYLE: '1',
    AWS_REGION: 'eu-west-1',
    AWS_DEFAULT_REGION: 'eu-west-1',
    AWS_ENVAR_ALLOWLIST: 'AWS_REGION,AWS_DEFAULT_REGION',
  });
});
