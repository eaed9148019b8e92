// Apply handler: S3 ObjectCreated notifications for journal objects, and the RP timer's
// own check messages (core/rp-timer.ts), delivered through SQS. Each message is handled on
// its own; failed ones are reported back (ReportBatchItemFailures) so SQS redelivers only
// those, and after maxReceiveCount moves them to the dead-letter queue.

import type { S3Event, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { SqsRpChecks } from '../adapters/sqs-rp-checks';
import { compactionLauncherFromEnv } from '../adapters/sfn-compaction-launcher';
import { parseRpCheck } from '../core/rp-timer';
import { ApplyService } from '../replica/apply';
import { jsonLogger, readConfig, type HandlerConfig } from './config';

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
  const failures: SQSBatchResponse['batchItemFailures'] = [];
  await Promise.all(
    event.Records.map(async (message) => {
      try {
        const check = parseRpCheck(message.body);
        if (check) await applier().checkRp(check);
        else for (const key of journalKeys(message.body)) await applier().applyObject(key);
      } catch (err) {
        jsonLogger.warn('apply failed; message will be retried', { messageId: message.messageId, error: String(err) });
        failures.push({ itemIdentifier: message.messageId });
      }
    }),
  );
  return { batchItemFailures: failures };
};

/** Object keys of an S3 notification body (URL-encoded there, '+' for spaces). */
export function journalKeys(body: string): string[] {
  const event = JSON.parse(body) as Partial<S3Event> & { Event?: string };
  if (event.Event === 's3:TestEvent') return [];
  return (event.Records ?? [])
    .filter((r) => r.eventName?.startsWith('ObjectCreated:') && r.s3.bucket.name === configured().bucket)
    .map((r) => decodeURIComponent(r.s3.object.key.replace(/\+/g, ' ')));
}
