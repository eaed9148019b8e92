// The RP timer's check messages on the apply queue (SQS DelaySeconds). The endpoint comes
// from AWS_ENDPOINT_URL(_SQS) like every other client: AWS, LocalStack or the local stack.

import { SendMessageCommand } from '@aws-sdk/client-sqs';
import { encodeRpCheck, MAX_DELAY_SEC, type RpCheck } from '../core/rp-timer';
import type { RpCheckQueue } from '../replica/ports';
import { sqsClient } from './aws-clients';

export class SqsRpChecks implements RpCheckQueue {
  constructor(
    private readonly queueUrl: string,
    private readonly sqs = sqsClient(),
  ) {}

  async schedule(check: RpCheck, delaySec: number): Promise<void> {
    if (!Number.isInteger(delaySec) || delaySec < 0 || delaySec > MAX_DELAY_SEC) throw new RangeError(`rp-check for pair '${check.pairId}': delay ${delaySec} s is not 0..${MAX_DELAY_SEC}`);
    await this.sqs.send(new SendMessageCommand({ QueueUrl: this.queueUrl, MessageBody: encodeRpCheck(check), DelaySeconds: delaySec }));
  }
}
