// A small HTTP proxy on 127.0.0.1 in front of a local AWS-compatible server (DynamoDB Local,
// the SQS emulator): it forwards every request as is and counts it by operation (the
// X-Amz-Target header of the JSON protocols, e.g. `DynamoDB_20120810.PutItem` → `PutItem`),
// so a benchmark can say how many requests the RP Store's code made, whichever client sent them.

import { Agent, createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { refuseRequest, type EdgeFaults } from './edge-faults';

/** Requests by operation, plus what `detail` adds (e.g. `TransactWriteItems.items`). */
export type RequestCounts = Record<string, number>;

export interface CountingProxy {
  endpoint: string;
  /** A snapshot of the counts so far. */
  counts(): RequestCounts;
  close(): Promise<void>;
}

/**
 * Extra counts for one request, from its operation, request body and answer body (both
 * whole; only requested for the operations in `detailed`).
 */
export type Detail = (op: string, request: Buffer, answer: Buffer) => Record<string, number>;

/** `faults`: requests it refuses (as DynamoDB throttles) instead of forwarding, for the fault campaign. */
export async function startCountingProxy(target: string, opts: { detailed?: string[]; detail?: Detail; faults?: EdgeFaults } = {}): Promise<CountingProxy> {
  const { hostname, port } = new URL(target);
  const counts: RequestCounts = {};
  const add = (key: string, n = 1): void => void (counts[key] = (counts[key] ?? 0) + n);
  const detailed = new Set(opts.detailed ?? []);
  const agent = new Agent({ keepAlive: true });
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (opts.faults?.refuse('dynamodb')) return refuseRequest('dynamodb', req, res);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const op = String(req.headers['x-amz-target'] ?? 'unknown').split('.').pop()!;
      add(op);
      const up = request({ host: hostname, port, method: req.method, path: req.url, headers: req.headers, agent }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        if (!detailed.has(op) || !opts.detail) return void answer.pipe(res);
        const parts: Buffer[] = [];
        answer.on('data', (c: Buffer) => {
          parts.push(c);
          res.write(c);
        });
        answer.on('end', () => {
          res.end();
          for (const [k, n] of Object.entries(opts.detail!(op, body, Buffer.concat(parts)))) add(k, n);
        });
      });
      up.on('error', (err) => {
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`counting proxy: ${err.message}`);
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
    counts: () => ({ ...counts }),
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      agent.destroy();
    },
  };
}

/** Parses a JSON body, or undefined (the server, not the proxy, judges malformed input). */
export function jsonOf(body: Buffer): any {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}
