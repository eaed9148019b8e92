// Apply handler: S3 ObjectCreated notifications for journal objects, delivered through
// SQS. Each message is applied on its own; failed ones are reported back
// (ReportBatchItemFailures) so SQS redelivers only those, and after maxReceiveCount
// moves them to the dead-letter queue.

import type { S3Event, SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { ApplyService } from '../replica/apply';
import { jsonLogger, readConfig } from './config';

const config = readConfig();
const service = new ApplyService(new S3ObjectStore(config.bucket), new DynamoIndex(config.table), jsonLogger);

export const handler = async (event: SQSEvent): Promise<SQSBatchResponse> => {
  const failures: SQSBatchResponse['batchItemFailures'] = [];
  await Promise.all(
    event.Records.map(async (message) => {
      try {
        for (const key of journalKeys(message.body)) await service.applyObject(key);
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
    .filter((r) => r.eventName?.startsWith('ObjectCreated:') && r.s3.bucket.name === config.bucket)
    .map((r) => decodeURIComponent(r.s3.object.key.replace(/\+/g, ' ')));
}
