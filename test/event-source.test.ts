// The local event source mapping (local/event-source.ts) over the local SQS emulator: a
// message being handled stays invisible for the queue's visibility timeout, as in AWS, however
// long the handler takes; a failed one comes back after the local retry delay. Only on the
// embedded stack: elsewhere the queue and the mapping are AWS's (or LocalStack's).

import { SendMessageCommand } from '@aws-sdk/client-sqs';
import type { SQSBatchResponse, SQSEvent } from 'aws-lambda';
import { endpointFor, sqsClient } from '../adapters/aws-clients';
import { createApplyQueues, startEventSourceMapping } from '../local/event-source';
import { sleep } from '../replica/concurrency';
import { eventually, newPairId } from './helpers';

(process.env.LIVESYNC_EMBEDDED_STACK ? describe : describe.skip)('local event source mapping', () => {
  test('a slow invocation is not redelivered while it runs; a failed message is received again after retryDelaySec', async () => {
    const sqs = sqsClient();
    const { queueUrl } = await createApplyQueues(sqs, endpointFor('SQS')!, newPairId('esm'), 5, 30);
    const received: { body: string; at: number }[] = [];
    const handler = async (event: SQSEvent): Promise<SQSBatchResponse> => {
      const failures: { itemIdentifier: string }[] = [];
      for (const r of event.Records) {
        received.push({ body: r.body, at: Date.now() });
        if (r.body === 'slow') await sleep(3500); // longer than the old 2 s local visibility timeout
        if (r.body === 'fail-once' && received.filter((x) => x.body === 'fail-once').length === 1) failures.push({ itemIdentifier: r.messageId });
      }
      return { batchItemFailures: failures };
    };
    const mapping = startEventSourceMapping(sqs, queueUrl, handler, { batchSize: 1, concurrency: 2, retryDelaySec: 1, onError: (err) => { throw err; } });
    try {
      await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: 'slow' }));
      await sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: 'fail-once' }));
      const twice = await eventually('the failed message received again', async () => {
        const got = received.filter((x) => x.body === 'fail-once');
        return got.length >= 2 ? got : undefined;
      });
      expect(twice[1].at - twice[0].at).toBeGreaterThanOrEqual(900);
      expect(twice[1].at - twice[0].at).toBeLessThan(4000);
      await sleep(4500); // the slow one has finished (and been deleted) by now
      expect(received.filter((x) => x.body === 'slow')).toHaveLength(1);
      expect(received.filter((x) => x.body === 'fail-once')).toHaveLength(2);
    } finally {
      await mapping.stop();
      sqs.destroy();
    }
  });
});
