// `npm run test:localstack [-- [--skip-deploy] [--lambda-architecture x86_64] [jest args…]]`:
// given a LocalStack at AWS_ENDPOINT_URL, bootstrap and deploy the stack with cdklocal,
// export its outputs into the environment the tests read, and run the suite against it
// (jest's global setup then checks the deployed event path before any test).
//
//   --skip-deploy               reuse the outputs of the last deploy (.livesync/localstack/outputs.json)
//   --lambda-architecture ARCH  arm64 (default) or x86_64: the functions' architecture
//                               (`-c lambdaArchitecture=…`); an x86 Docker host runs arm64
//                               functions only with LocalStack's LAMBDA_IGNORE_ARCHITECTURE=1
//   anything else               passed to jest (test files, -t PATTERN, …)

import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LAMBDA_ARCHITECTURE_CONTEXT } from '../lib/names';
import { cdklocalEnv, checkLocalStack, envFromOutputs, localStackEndpoint } from '../local/localstack';

const ROOT = join(__dirname, '..');
const STACK = 'Livesync';
const OUTPUTS = join(ROOT, '.livesync', 'localstack', 'outputs.json');
const bin = (name: string): string => join(ROOT, 'node_modules', '.bin', name);
/** The first invocation of a LocalStack Lambda may pull its runtime image and start a container. */
const COLD_PREFLIGHT_TIMEOUT_MS = 120_000;

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: 'inherit' });
    child.once('error', reject);
    child.once('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`${[cmd.replace(`${ROOT}/`, ''), ...args].join(' ')} failed (${signal ?? `exit ${code}`})`))));
  });
}

function parseArgs(argv: string[]): { skipDeploy: boolean; architecture?: string; jestArgs: string[] } {
  const jestArgs: string[] = [];
  let skipDeploy = false;
  let architecture: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--skip-deploy') skipDeploy = true;
    else if (a === '--lambda-architecture') architecture = argv[++i];
    else if (a.startsWith('--lambda-architecture=')) architecture = a.slice('--lambda-architecture='.length);
    else jestArgs.push(a);
  }
  if (architecture !== undefined && architecture !== 'arm64' && architecture !== 'x86_64') throw new Error(`--lambda-architecture ${architecture}: expected arm64 or x86_64`);
  return { skipDeploy, architecture, jestArgs };
}

const secs = (t0: number): string => `${((Date.now() - t0) / 1000).toFixed(0)} s`;

async function main(): Promise<void> {
  const { skipDeploy, architecture, jestArgs } = parseArgs(process.argv.slice(2));
  const endpoint = localStackEndpoint(process.env);
  console.error(`test:localstack: ${await checkLocalStack(endpoint)} at ${endpoint.origin}`);
  const local = ['localhost', '127.0.0.1', '::1', '[::1]'].includes(endpoint.hostname);
  if (local && process.arch === 'x64' && architecture !== 'x86_64') {
    console.error('test:localstack: arm64 functions on this x86_64 host: LocalStack must run with LAMBDA_IGNORE_ARCHITECTURE=1 (else pass --lambda-architecture x86_64)');
  }

  const t0 = Date.now();
  if (!skipDeploy) {
    const env = cdklocalEnv(process.env, endpoint);
    const context = architecture ? ['-c', `${LAMBDA_ARCHITECTURE_CONTEXT}=${architecture}`] : [];
    await mkdir(join(ROOT, '.livesync', 'localstack'), { recursive: true });
    await run(bin('cdklocal'), ['bootstrap', ...context], env);
    await run(bin('cdklocal'), ['deploy', STACK, '--require-approval', 'never', '--outputs-file', OUTPUTS, ...context], env);
    console.error(`test:localstack: bootstrap + deploy took ${secs(t0)}`);
  }
  let outputs: Record<string, Record<string, string>>;
  try {
    outputs = JSON.parse(await readFile(OUTPUTS, 'utf8')) as Record<string, Record<string, string>>;
  } catch (err) {
    throw new Error(`${OUTPUTS}: ${(err as Error).message}${skipDeploy ? ' (run once without --skip-deploy)' : ''}`);
  }
  const stackEnv = envFromOutputs(outputs, STACK);
  for (const [k, v] of Object.entries(stackEnv)) console.error(`  ${k}=${v}`);

  const t1 = Date.now();
  await run(bin('jest'), jestArgs, {
    ...process.env,
    AWS_ENDPOINT_URL: endpoint.origin,
    AWS_REGION: process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
    AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? 'test',
    AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? 'test',
    LIVESYNC_PREFLIGHT_TIMEOUT_MS: process.env.LIVESYNC_PREFLIGHT_TIMEOUT_MS ?? String(COLD_PREFLIGHT_TIMEOUT_MS),
    ...stackEnv,
  });
  console.error(`test:localstack: suite took ${secs(t1)} (deploy and suite ${secs(t0)})`);
}

main().catch((err: Error) => {
  console.error(`test:localstack: ${err.message}`);
  process.exit(err.name === 'LocalStackError' || err.name === 'InvalidArgumentError' ? 2 : 1);
});
