// The handler's event parsing on the sample event in events/ (the shape S3 → SQS → Lambda delivers).

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { journalKey } from '../core/keys';
import { encodeRpCheck } from '../core/rp-timer';
import { MAX_BATCH_OBJECT_BYTES } from '../replica/apply';
import { createPair } from '../replica/pairs';
import { cloud, journalBatches, newPairId } from './helpers';

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

  test('one invocation, several pairs: a malformed message and an oversized object fail or quarantine only themselves; the other pair\'s batch applies', async () => {
    const c = cloud();
    const disks = [{ name: 'd0', sizeBytes: 1024 * 1024 }];
    const good = newPairId('hgood');
    const other = newPairId('hbig');
    await createPair(c.index, { pairId: good, disks });
    await createPair(c.index, { pairId: other, disks });
    const [key] = await journalBatches(c.store, good, disks, 1);
    const big = journalKey(other, 1);
    await c.store.put(big, Buffer.alloc(MAX_BATCH_OBJECT_BYTES + 1), { createOnly: true });
    const s3Message = (messageId: string, k: string) => {
      const record = JSON.parse(sample.Records[0].body).Records[0];
      record.s3.object.key = encodeURIComponent(k).replace(/%2F/g, '/');
      record.s3.bucket.name = c.bucket;
      return { ...sample.Records[0], messageId, body: JSON.stringify({ Records: [record] }) };
    };
    const out = await handler({ Records: [{ ...sample.Records[0], messageId: 'garbled', body: 'not json' }, s3Message('oversized', big), s3Message('good', key)] });
    expect(out.batchItemFailures).toEqual([{ itemIdentifier: 'garbled' }]);
    expect((await c.index.getPair(good))?.watermark).toBe(1);
    expect((await c.index.listQuarantine(other)).map((q) => ({ key: q.key, code: q.code }))).toEqual([{ key: big, code: 'MALFORMED' }]);
  });
});
