// The cost model prices request rates at list prices: each kind alone against a figure worked
// out by hand, the sum of several, and bad input refused with the field named.

import { dynamoRequestUnits, monthlyCost, SECONDS_PER_MONTH, type RequestRates } from '../core/cost-model';
import { InvalidArgumentError } from '../core/errors';

const none: RequestRates = { s3PutClass: 0, s3GetClass: 0, ddbWriteUnits: 0, ddbReadUnits: 0, sqsRequests: 0, lambdaInvocations: 0 };

describe('monthlyCost', () => {
  // One request per second for a 730-hour month is 2,628,000 requests.
  test.each([
    ['s3PutClass', 1, 13.14], // 2,628 × $0.005
    ['s3GetClass', 1, 1.0512], // 2,628 × $0.0004
    ['ddbWriteUnits', 1, 1.6425], // 2.628 M × $0.625
    ['ddbReadUnits', 1, 0.3285], // 2.628 M × $0.125
    ['sqsRequests', 1, 1.0512], // 2.628 M × $0.40
    ['lambdaInvocations', 1, 0.5256], // 2.628 M × $0.20
    ['s3PutClass', 40, 525.6], // the 36-53 batches a second: ~$17.5 a day in PUTs
    ['s3PutClass', 0, 0],
  ] as [keyof RequestRates, number, number][])('%s at %d/s costs $%d a month', (kind, rate, usd) => {
    const cost = monthlyCost({ ...none, [kind]: rate });
    expect(cost.totalUsd).toBeCloseTo(usd, 6);
    expect(cost.byRequest[kind]).toBeCloseTo(usd, 6);
  });

  test('the total is the sum of the kinds', () => {
    const cost = monthlyCost({ s3PutClass: 1, s3GetClass: 1, ddbWriteUnits: 4, ddbReadUnits: 2, sqsRequests: 3, lambdaInvocations: 0.1 });
    expect(cost.totalUsd).toBeCloseTo(13.14 + 1.0512 + 4 * 1.6425 + 2 * 0.3285 + 3 * 1.0512 + 0.05256, 6);
    expect(SECONDS_PER_MONTH).toBe(2_628_000);
  });

  test.each([-1, NaN, Infinity, undefined])('a rate of %p is refused, naming the field', (bad) => {
    expect(() => monthlyCost({ ...none, sqsRequests: bad as number })).toThrow(InvalidArgumentError);
    expect(() => monthlyCost({ ...none, sqsRequests: bad as number })).toThrow(/sqsRequests/);
  });
});

describe('dynamoRequestUnits', () => {
  test.each([
    [{}, 0, 0, 0],
    [{ PutItem: 3, UpdateItem: 2, DeleteItem: 1 }, 6, 0, 6],
    [{ TransactWriteItems: 2, 'TransactWriteItems.items': 7 }, 14, 0, 2], // 2 WRU per transactional item
    [{ BatchWriteItem: 1, 'BatchWriteItem.items': 25 }, 25, 0, 1],
    [{ GetItem: 2, Query: 3, Scan: 1, GetRecords: 50, DescribeStream: 4 }, 0, 6, 0], // Streams reads not billed
  ])('%p → %d WRU, %d RRU, %d write requests', (counts, wru, rru, writes) => {
    expect(dynamoRequestUnits(counts as Record<string, number>)).toEqual({ writeUnits: wru, readUnits: rru, writeRequests: writes });
  });
});
