// Apply handler: S3 ObjectCreated notifications for journal objects, and the RP timer's
// own check messages (core/rp-timer.ts), delivered through SQS. The journal objects of one
// invocation are applied together (each pair advanced once); failed messages are reported
// back (ReportBatchItemFailures) so SQS redelivers only those, and after maxReceiveCount
// moves them to the dead-letter queue.

import type { S3Event, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { SqsRpChecks } from '../adapters/sqs-rp-checks';
import { compactionLauncherFromEnv } from '../adapters/sfn-compaction-launcher';
import { parseRpCheck } from '../core/rp-timer';
import { ApplyService } from '../replica/apply';
import { jsonLogger, readConfig, type HandlerConfig } from './config';

/** Journal objects read and registered at a time within one invocation: all of them, as before (the event source's batch size is 10). */
const APPLY_CONCURRENCY = 10;

// Read once per cold start, at the first call: an embedded host (the local stack) may set
// the environment after importing this module.
let config: HandlerConfig | undefined;
let service: ApplyService | undefined;
const configured = (): HandlerConfig => (config ??= readConfig());
const applier = (): ApplyService => {
  if (service) return service;
  const c = readConfig(process.env, { applyQueue: true });
  return (service = new ApplyService(new S3ObjectStore(c.bucket), new DynamoIndex(c.table), jsonLogger, Date.now, undefined, new SqsRpChecks(c.applyQueueUrl!), compactionLauncherFromEnv()));
};

export const handler = async (event: SQSEvent): Promise<SQSBatchResponse> => {
  const failed = new Set<string>();
  const fail = (messageId: string, err: unknown): void => {
    jsonLogger.warn('apply failed; message will be retried', { messageId, error: String(err) });
    failed.add(messageId);
  };
  // The journal objects of all the messages are applied together: each pair is advanced
  // once for the invocation (ApplyService.applyObjects), not once per object.
  const objects: { key: string; messageId: string }[] = [];
  await Promise.all(
    event.Records.map(async (message) => {
      try {
        const check = parseRpCheck(message.body);
        if (check) await applier().checkRp(check);
        else for (const key of journalKeys(message.body)) objects.push({ key, messageId: message.messageId });
      } catch (err) {
        fail(message.messageId, err);
      }
    }),
  );
  const results = await applier().applyObjects(objects.map((o) => o.key), APPLY_CONCURRENCY);
  results.forEach((r, i) => {
    if ('error' in r) fail(objects[i].messageId, r.error);
  });
  return { batchItemFailures: [...failed].map((itemIdentifier) => ({ itemIdentifier })) };
};

/** Object keys of an S3 notification body (URL-encoded there, '+' for spaces). */
export function journalKeys(body: string): string[] {
  const event = JSON.parse(body) as Partial<S3Event> & { Event?: string };
  if (event.Event === 's3:TestEvent') return [];
  return (event.Records ?? [])
    .filter((r) => r.eventName?.startsWith('ObjectCreated:') && r.s3.bucket.name === configured().bucket)
    .map((r) => decodeURIComponent(r.s3.object.key.replace(/\+/g, ' ')));
}
