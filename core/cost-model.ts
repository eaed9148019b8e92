// What the RP Store's requests cost per protected VM and month at AWS list prices
// (us-east-1, on-demand, no free tier: that is per account, not per VM). Sources and what is
// left out: docs/cost.md. Pure: request rates in, dollars out.

import { InvalidArgumentError } from './errors';

/** Requests per second one protected VM makes, averaged over the period priced. */
export interface RequestRates {
  /** S3 PUT, COPY, POST and LIST requests (one price class). */
  s3PutClass: number;
  /** S3 GET, HEAD and SELECT requests. */
  s3GetClass: number;
  /** DynamoDB on-demand write request units (a standard write of ≤ 1 KB: 1; transactional: 2 per item). */
  ddbWriteUnits: number;
  /** DynamoDB on-demand read request units (a strongly consistent read of ≤ 4 KB: 1). */
  ddbReadUnits: number;
  /** SQS standard queue requests (each 64 KB of a payload is one). */
  sqsRequests: number;
  /** Lambda invocations (requests; duration is not priced here). */
  lambdaInvocations: number;
}

/** US dollars per single request or request unit. */
export type UnitPrices = Record<keyof RequestRates, number>;

/** us-east-1 list prices (docs/cost.md cites the pages). */
export const US_EAST_1: UnitPrices = {
  s3PutClass: 0.005 / 1000,
  s3GetClass: 0.0004 / 1000,
  ddbWriteUnits: 0.625 / 1e6,
  ddbReadUnits: 0.125 / 1e6,
  sqsRequests: 0.4 / 1e6,
  lambdaInvocations: 0.2 / 1e6,
};

/**
 * Step Functions Standard workflows: $0.025 per 1,000 state transitions (us-east-1; docs/cost.md).
 * Not a rate of the write path: bench:history prices the compaction workflow's runs with it.
 */
export const SFN_STANDARD_TRANSITION_USD = 0.025 / 1000;

/** AWS bills a month as 730 hours. */
export const SECONDS_PER_MONTH = 730 * 3600;

export interface MonthlyCost {
  /** US dollars per month, by the kind of request. */
  byRequest: Record<keyof RequestRates, number>;
  totalUsd: number;
}

const KINDS = Object.keys(US_EAST_1) as (keyof RequestRates)[];

/** Prices request rates (per second, sustained) into US dollars per 730-hour month. */
export function monthlyCost(rates: RequestRates, prices: UnitPrices = US_EAST_1): MonthlyCost {
  const byRequest = {} as Record<keyof RequestRates, number>;
  let totalUsd = 0;
  for (const kind of KINDS) {
    const rate = rates[kind];
    if (typeof rate !== 'number' || !Number.isFinite(rate) || rate < 0) throw new InvalidArgumentError(`cost model: ${kind} must be a finite rate ≥ 0 per second, got ${String(rate)}`);
    byRequest[kind] = rate * SECONDS_PER_MONTH * prices[kind];
    totalUsd += byRequest[kind];
  }
  return { byRequest, totalUsd };
}

/** DynamoDB operations (by name, as counted per request) that are billed in write units. */
const SINGLE_WRITES = ['PutItem', 'UpdateItem', 'DeleteItem'];
/** Operations billed in read units, one per request for items ≤ 4 KB read strongly. */
const SINGLE_READS = ['GetItem', 'Query', 'Scan'];

/**
 * Write and read request units of a count of DynamoDB requests by operation, with
 * `TransactWriteItems.items` / `BatchWriteItem.items` the items those carried: a standard write
 * of an item ≤ 1 KB is 1 WRU, a transactional one 2 (the items here are all under 1 KB); reads
 * are counted as 1 RRU per request (a lower bound for a Query that returns more than 4 KB).
 * Streams requests (GetRecords, …) are left out: Lambda's reads of a stream are not billed.
 */
export function dynamoRequestUnits(counts: Record<string, number>): { writeUnits: number; readUnits: number; writeRequests: number } {
  const n = (op: string): number => counts[op] ?? 0;
  const writeRequests = SINGLE_WRITES.reduce((s, op) => s + n(op), 0) + n('TransactWriteItems') + n('BatchWriteItem');
  const writeUnits = SINGLE_WRITES.reduce((s, op) => s + n(op), 0) + 2 * n('TransactWriteItems.items') + n('BatchWriteItem.items');
  const readUnits = SINGLE_READS.reduce((s, op) => s + n(op), 0) + n('BatchGetItem') + 2 * n('TransactGetItems');
  return { writeUnits, readUnits, writeRequests };
}
