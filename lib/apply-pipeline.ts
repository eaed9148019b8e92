import * as path from 'node:path';
import { Aws, Duration } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { APPLY_QUEUE_URL_ENV } from '../lambdas/config';
import { LAMBDA_BUNDLING } from './bundling';
import { JOURNAL_SUFFIX, PAIRS_PREFIX } from './names';
import type { ReplicaStore } from './replica-store';

export const APPLY_ENTRY = path.join(__dirname, '../lambdas/apply.ts');

export interface ApplyPipelineProps {
  readonly store: ReplicaStore;
  /** @default Duration.seconds(60) */
  readonly applyTimeout?: Duration;
  /** Deliveries of one journal object before it is parked in the DLQ. @default 5 */
  readonly maxReceiveCount?: number;
  /** @default lambda.Architecture.ARM_64 */
  readonly architecture?: lambda.Architecture;
}

/** Journal object created under `pairs/` → SQS → apply Lambda (with a DLQ for poison batches). */
export class ApplyPipeline extends Construct {
  readonly queue: sqs.Queue;
  readonly deadLetterQueue: sqs.Queue;
  readonly applyFunction: nodejs.NodejsFunction;

  constructor(scope: Construct, id: string, props: ApplyPipelineProps) {
    super(scope, id);
    const applyTimeout = props.applyTimeout ?? Duration.seconds(60);

    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14), // the maximum: time for an operator to look
    });
    this.queue = new sqs.Queue(this, 'Queue', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      // AWS guidance for SQS event sources: ≥ 6 × function timeout, so retries and
      // batching windows never make a message visible while it is still being applied.
      visibilityTimeout: Duration.seconds(6 * applyTimeout.toSeconds()),
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount: props.maxReceiveCount ?? 5 },
    });

    this.notifyJournalObjects(props.store);

    const logGroup = new logs.LogGroup(this, 'ApplyLogs', { retention: logs.RetentionDays.ONE_MONTH });
    // An explicit role, so CDK does not attach the AWSLambdaBasicExecutionRole managed
    // policy (logs:* on every log group); this one may write only to its own log group.
    const role = new iam.Role(this, 'ApplyRole', { assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com') });
    logGroup.grantWrite(role);

    this.applyFunction = new nodejs.NodejsFunction(this, 'ApplyFunction', {
      entry: APPLY_ENTRY,
      handler: 'handler',
      runtime: lambda.Runtime.NODEJS_22_X,
      architecture: props.architecture ?? lambda.Architecture.ARM_64,
      memorySize: 1024,
      timeout: applyTimeout,
      role,
      logGroup,
      tracing: lambda.Tracing.ACTIVE,
      environment: { NODE_OPTIONS: '--enable-source-maps' },
      bundling: LAMBDA_BUNDLING,
    });
    props.store.grantApply(this.applyFunction);
    this.grantRpChecks(this.applyFunction);

    this.applyFunction.addEventSource(
      new SqsEventSource(this.queue, {
        batchSize: 10,
        reportBatchItemFailures: true, // one bad batch must not redeliver the other nine
        maxBatchingWindow: Duration.seconds(1),
      }),
    );
  }

  /**
   * S3 → SQS with resources CloudFormation creates natively (LocalStack community too): the
   * bucket's own NotificationConfiguration, not `bucket.addEventNotification`, whose
   * Lambda-backed Custom::S3BucketNotifications LocalStack community deploys as a no-op. S3
   * checks that it may send to the queue when the configuration is set, so the bucket waits
   * for the queue policy; the policy names the bucket by an ARN built from its name
   * (`store.bucketArnByName`), since a reference to the bucket would close a cycle.
   */
  private notifyJournalObjects(store: ReplicaStore): void {
    const { policyDependable } = this.queue.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('s3.amazonaws.com')],
        actions: ['sqs:SendMessage'],
        resources: [this.queue.queueArn],
        conditions: { ArnEquals: { 'aws:SourceArn': store.bucketArnByName }, StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID } },
      }),
    );
    const bucket = store.bucket.node.defaultChild as s3.CfnBucket;
    bucket.notificationConfiguration = {
      queueConfigurations: [
        {
          event: 's3:ObjectCreated:*',
          queue: this.queue.queueArn,
          filter: { s3Key: { rules: [{ name: 'prefix', value: PAIRS_PREFIX }, { name: 'suffix', value: JOURNAL_SUFFIX }] } },
        },
      ],
    };
    // The queue's one policy (TLS-only and this statement): a second would replace it.
    store.bucket.node.addDependency(policyDependable!);
  }

  /**
   * The RP timer's checks are delayed messages to this queue (core/rp-timer.ts): SendMessage
   * on it and nothing else (not GetQueueAttributes/GetQueueUrl, which grantSendMessages adds),
   * and its URL in the environment.
   */
  private grantRpChecks(fn: lambda.Function): void {
    fn.addToRolePolicy(new iam.PolicyStatement({ actions: ['sqs:SendMessage'], resources: [this.queue.queueArn] }));
    fn.addEnvironment(APPLY_QUEUE_URL_ENV, this.queue.queueUrl);
  }
}
