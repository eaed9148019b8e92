// The handler's event parsing on the sample event in events/ (the shape S3 → SQS → Lambda delivers).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { encodeRpCheck } from '../core/rp-timer';

describe('apply handler event parsing', () => {
  const sample = JSON.parse(readFileSync(join(__dirname, '../events/s3-journal-put.sqs.json'), 'utf8')) as SQSEvent;
  let journalKeys: (body: string) => string[];
  let handler: (event: SQSEvent) => Promise<SQSBatchResponse>;

  beforeAll(async () => {
    process.env.LIVESYNC_BUCKET ??= 'livesync-local';
    process.env.LIVESYNC_TABLE ??= 'livesync-local';
    ({ journalKeys, handler } = await import('../lambdas/apply'));
  });

  test('extracts the URL-decoded journal key of ObjectCreated records of our bucket', () => {
    const body = sample.Records[0].body.replace(/"name":"[^"]+"/, `"name":"${process.env.LIVESYNC_BUCKET}"`);
    expect(journalKeys(body)).toEqual(['pairs/demo/journal/00000000000000000001-0123456789abcdef.batch']);
    const spaced = body.replace('pairs/demo/journal/', 'pairs/demo/journal/a+b%3D');
    expect(journalKeys(spaced)).toEqual(['pairs/demo/journal/a b=00000000000000000001-0123456789abcdef.batch']);
  });

  test('ignores S3 test events, removals and other buckets', () => {
    expect(journalKeys(JSON.stringify({ Service: 'Amazon S3', Event: 's3:TestEvent' }))).toEqual([]);
    const body = JSON.parse(sample.Records[0].body);
    body.Records[0].eventName = 'ObjectRemoved:Delete';
    expect(journalKeys(JSON.stringify(body))).toEqual([]);
  });

  test('a malformed message body throws, so SQS retries and then dead-letters it', () => {
    expect(() => journalKeys('not json')).toThrow();
  });

  test('an RP timer check goes to the timer: for an unknown pair it is done (not retried); a malformed one is retried, then dead-lettered', async () => {
    process.env.LIVESYNC_APPLY_QUEUE_URL ??= 'http://127.0.0.1:9/unused'; // nothing is sent for an unknown pair
    const check = encodeRpCheck({ kind: 'rp-check', pairId: 'no-such-pair-0', dueMs: Date.now() });
    expect(journalKeys(check)).toEqual([]);
    const message = (messageId: string, body: string) => ({ ...sample.Records[0], messageId, body });
    const out = await handler({ Records: [message('ok', check), message('bad', '{"kind":"rp-check","pairId":"p"}')] });
    expect(out.batchItemFailures).toEqual([{ itemIdentifier: 'bad' }]);
  });
});
