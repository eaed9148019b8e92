// The cloud's event path, locally: S3 ObjectCreated → SQS queue (with a dead-letter
// queue after maxReceiveCount) → an event source mapping that long-polls the queue and
// invokes the handler with SQS-shaped events, deleting only the messages it did not
// report as failed. Same shapes, same at-least-once redelivery as in AWS; a failed message
// may be made visible again sooner than the queue's visibility timeout (retryDelaySec).

import {
  ChangeMessageVisibilityBatchCommand,
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
} from '@aws-sdk/client-sqs';
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { sleep } from '../replica/concurrency';

export interface RunningSqs {
  endpoint: string;
  stop(): Promise<void>;
}

/** SQS emulator (fauxqs, in-process). */
export async function startSqsLocal(): Promise<RunningSqs> {
  const { startFauxqs } = (await import('fauxqs')) as { startFauxqs: (o: object) => Promise<{ address: string; stop(): Promise<void> }> };
  const server = await startFauxqs({ port: 0, host: '127.0.0.1', logger: false });
  return { endpoint: server.address.replace('localhost', '127.0.0.1'), stop: () => server.stop() };
}

export interface QueuePair {
  queueUrl: string;
  deadLetterUrl: string;
}

export async function createApplyQueues(sqs: SQSClient, endpoint: string, name: string, maxReceiveCount: number, visibilityTimeoutSec: number): Promise<QueuePair> {
  // fauxqs answers with virtual-host style URLs (sqs.REGION.HOST) that do not resolve here.
  const local = (url: string): string => url.replace(/^https?:\/\/[^/]+/, endpoint);
  const dlq = await sqs.send(new CreateQueueCommand({ QueueName: `${name}-dlq` }));
  dlq.QueueUrl = local(dlq.QueueUrl!);
  const dlqArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: dlq.QueueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn;
  const q = await sqs.send(
    new CreateQueueCommand({
      QueueName: name,
      Attributes: {
        VisibilityTimeout: String(visibilityTimeoutSec),
        RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount }),
      },
    }),
  );
  return { queueUrl: local(q.QueueUrl!), deadLetterUrl: dlq.QueueUrl };
}

/** Forwards S3 notifications matching the template's filter to the queue, as S3 does. */
export function forwardNotifications(
  sqs: SQSClient,
  queueUrl: string,
  filter: { prefix: string; suffix: string },
  onError: (err: unknown) => void,
): (event: { Records: any[] }) => void {
  return (event) => {
    for (const r of event.Records) {
      const key: string = r.s3?.object?.key ?? '';
      if (!String(r.eventName).startsWith('ObjectCreated:') || !key.startsWith(filter.prefix) || !key.endsWith(filter.suffix)) continue;
      const record = { ...r, eventVersion: '2.1', s3: { ...r.s3, object: { ...r.s3.object, key: encodeURIComponent(key).replace(/%2F/g, '/') } } };
      sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: JSON.stringify({ Records: [record] }) })).catch(onError);
    }
  };
}

export interface EventSourceMapping {
  /** Like UpdateEventSourceMapping's Enabled: while false no message is received (they wait in the queue). */
  setEnabled(enabled: boolean): void;
  stop(): Promise<void>;
}

/** Polls the queue like Lambda's SQS event source (batch size, concurrency, partial failures). */
export function startEventSourceMapping(
  sqs: SQSClient,
  queueUrl: string,
  handler: (event: SQSEvent) => Promise<SQSBatchResponse>,
  opts: {
    batchSize: number;
    concurrency: number;
    /** A failed message is received again after this many seconds (default: when the queue's visibility timeout ends). */
    retryDelaySec?: number;
    onError: (err: unknown) => void;
  },
): EventSourceMapping {
  let running = true;
  let enabled = true;
  const poller = async (): Promise<void> => {
    while (running) {
      if (!enabled) {
        await sleep(100);
        continue;
      }
      try {
        const out = await sqs.send(
          new ReceiveMessageCommand({ QueueUrl: queueUrl, MaxNumberOfMessages: opts.batchSize, WaitTimeSeconds: 1, MessageSystemAttributeNames: ['All'] }),
        );
        const messages = out.Messages ?? [];
        if (messages.length === 0) continue;
        const event: SQSEvent = {
          Records: messages.map((m) => ({
            messageId: m.MessageId!,
            receiptHandle: m.ReceiptHandle!,
            body: m.Body!,
            attributes: m.Attributes as any,
            messageAttributes: {},
            md5OfBody: m.MD5OfBody!,
            eventSource: 'aws:sqs',
            eventSourceARN: `arn:aws:sqs:us-east-1:000000000000:${queueUrl.split('/').pop()}`,
            awsRegion: 'us-east-1',
          })),
        };
        let failed: Set<string>;
        try {
          const res = await handler(event);
          failed = new Set((res?.batchItemFailures ?? []).map((f) => f.itemIdentifier));
        } catch (err) {
          opts.onError(err);
          failed = new Set(messages.map((m) => m.MessageId!)); // a thrown handler fails the whole batch
        }
        const done = messages.filter((m) => !failed.has(m.MessageId!));
        if (done.length) {
          await sqs.send(new DeleteMessageBatchCommand({ QueueUrl: queueUrl, Entries: done.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle! })) }));
        }
        const retry = messages.filter((m) => failed.has(m.MessageId!));
        if (retry.length && opts.retryDelaySec !== undefined) {
          const Entries = retry.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle!, VisibilityTimeout: opts.retryDelaySec }));
          await sqs.send(new ChangeMessageVisibilityBatchCommand({ QueueUrl: queueUrl, Entries }));
        }
      } catch (err) {
        if (!running) break;
        opts.onError(err);
        await sleep(1000); // as Lambda's poller does, back off instead of spinning
      }
    }
  };
  const pollers = Array.from({ length: opts.concurrency }, poller);
  return {
    setEnabled(on) {
      enabled = on;
    },
    async stop() {
      running = false;
      await Promise.all(pollers);
    },
  };
}
