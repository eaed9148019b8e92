// Faults at the edge of the local stack's services, for the fault campaign: a request the
// server refuses before doing anything, as S3 answers 503 SlowDown and DynamoDB answers
// ProvisionedThroughputExceededException under load. Every client of the stack meets them
// (the agent, the apply and compaction Lambdas in their processes, the CLI), through its
// SDK's own retries first, as in AWS. Off (rate 0) unless a campaign turns it on.

import type { IncomingMessage, ServerResponse } from 'node:http';

export type EdgeService = 's3' | 'dynamodb';

export class EdgeFaults {
  private readonly rates: Record<EdgeService, number> = { s3: 0, dynamodb: 0 };
  private readonly counts: Record<EdgeService, number> = { s3: 0, dynamodb: 0 };

  /** The share of requests (0–1) each service refuses from now on. */
  set(rates: Partial<Record<EdgeService, number>>): void {
    for (const [s, r] of Object.entries(rates) as [EdgeService, number][]) {
      if (!(r >= 0 && r <= 1)) throw new RangeError(`edge fault rate for ${s} must be within 0–1, not ${r}`);
      this.rates[s] = r;
    }
  }

  /** Requests refused so far, by service. */
  injected(): Record<EdgeService, number> {
    return { ...this.counts };
  }

  /** Whether to refuse this request (counted when so). */
  refuse(service: EdgeService): boolean {
    if (this.rates[service] === 0 || Math.random() >= this.rates[service]) return false;
    this.counts[service]++;
    return true;
  }
}

/** The answer each service gives a refused request: AWS's throttling errors, which SDKs retry with backoff. */
const REFUSAL: Record<EdgeService, { status: number; type: string; body: string }> = {
  s3: {
    status: 503,
    type: 'application/xml',
    body: '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>',
  },
  dynamodb: {
    status: 400,
    type: 'application/x-amz-json-1.0',
    body: JSON.stringify({ __type: 'com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException', message: 'The level of configured provisioned throughput for the table was exceeded (injected).' }),
  },
};

/** Answers the request with the service's refusal once its body has been read (the connection stays usable). */
export function refuseRequest(service: EdgeService, req: IncomingMessage, res: ServerResponse): void {
  const { status, type, body } = REFUSAL[service];
  req.resume();
  req.once('end', () => {
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
}
