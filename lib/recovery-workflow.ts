import * as path from 'node:path';
import { Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import type { ReplicaStore } from './replica-store';
import { failOnError, retried, stepTask, workflowFunction, workflowStateMachine } from './workflow-function';

export const RECOVER_ENTRY = path.join(__dirname, '../lambdas/recover.ts');

/** Errors retrying cannot help: bad input, a history that is wrong or no longer holds the RP, a lease lost (the run must be resumed). */
export const RECOVERY_PERMANENT_ERRORS = ['InvalidArgumentError', 'UnknownPairError', 'CorruptHistoryError', 'CorruptExtentError', 'HistoryPrunedError', 'ReaderLeaseLostError'];

export interface RecoveryWorkflowProps {
  readonly store: ReplicaStore;
  /** Buckets a raw image may be recovered into, besides the replica bucket's `recoveries/` prefix. */
  readonly targetBuckets?: s3.IBucket[];
  /** Ranges recovered at once. @default 16 */
  readonly maxConcurrency?: number;
  /** @default lambda.Architecture.ARM_64 */
  readonly architecture?: lambda.Architecture;
}

/**
 * The recovery workflow (docs/design.md, "The recovery workflow"): start (plan a run or resume
 * one: ranges, the target's upload or snapshot per disk, a reader lease) → a Distributed Map
 * over the ranges still to do, one Lambda each writing its part → finish (complete the uploads
 * or snapshots, the snapshots' records) ; any failure → fail (FAILED with the reason on the
 * run; a later start with the same id resumes it). Kept to what Step Functions and the local
 * runner both run: JSONPath, Lambda tasks, Retry/Catch, a Map whose items come from the state.
 */
export class RecoveryWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;
  readonly stepsFunction: nodejs.NodejsFunction;
  readonly rangeFunction: nodejs.NodejsFunction;

  constructor(scope: Construct, id: string, props: RecoveryWorkflowProps) {
    super(scope, id);
    const architecture = props.architecture ?? lambda.Architecture.ARM_64;
    // finish reads every range's sums (EBS) and completes uploads: a minute for a large disk.
    this.stepsFunction = workflowFunction(this, 'Steps', { entry: RECOVER_ENTRY, handler: 'recoveryStep', timeout: Duration.minutes(15), memorySize: 1024, architecture });
    // A range is ≥ 64 MiB read with 8 GETs in flight, decoded on worker threads, streamed out.
    this.rangeFunction = workflowFunction(this, 'Range', { entry: RECOVER_ENTRY, handler: 'recoveryRange', timeout: Duration.minutes(15), memorySize: 2048, architecture });
    for (const fn of [this.stepsFunction, this.rangeFunction]) {
      props.store.grantRecover(fn, props.targetBuckets ?? []);
      grantEbsSnapshots(fn);
    }

    const step = (name: string, stepName: string, input: Record<string, unknown> | string, resultPath?: string): tasks.LambdaInvoke =>
      stepTask(this, name, this.stepsFunction, stepName, input, RECOVERY_PERMANENT_ERRORS, resultPath);
    const run = { pairId: sfn.JsonPath.stringAt('$.pairId'), recoveryId: sfn.JsonPath.stringAt('$.recoveryId') };
    const start = step('Start', 'start', '$', '$.plan');
    const range = retried(
      new tasks.LambdaInvoke(this, 'RecoverRange', {
        lambdaFunction: this.rangeFunction,
        payloadResponseOnly: true,
        taskTimeout: sfn.Timeout.duration(Duration.minutes(15)),
      }),
      RECOVERY_PERMANENT_ERRORS,
    );
    const ranges = new sfn.DistributedMap(this, 'Ranges', {
      itemsPath: '$.plan.ranges',
      itemSelector: { ...run, range: sfn.JsonPath.numberAt('$$.Map.Item.Value') },
      maxConcurrency: props.maxConcurrency ?? 16,
      // Each range's result is on the run's item already: keep the state small.
      resultPath: sfn.JsonPath.DISCARD,
      mapExecutionType: sfn.StateMachineType.STANDARD,
    });
    ranges.itemProcessor(range);
    const finish = step('Finish', 'finish', run, '$.result');
    failOnError(this, this.stepsFunction, run, 'RecoveryFailed', [start, ranges, finish]);

    this.stateMachine = workflowStateMachine(this, start.next(ranges).next(finish).next(new sfn.Succeed(this, 'Recovered')), Duration.hours(12));
  }

  /** Lets an operator (the CLI's role) start runs and follow them. */
  grantStart(grantee: iam.IGrantable): iam.Grant[] {
    return [this.stateMachine.grantStartExecution(grantee), this.stateMachine.grantRead(grantee)];
  }
}

/**
 * The EBS direct APIs a run uses to write snapshots (StartSnapshot, PutSnapshotBlock,
 * CompleteSnapshot) and to tag them at StartSnapshot (ec2:CreateTags). Snapshots have ids EBS
 * chooses, so the resource is every snapshot of the account and region.
 */
function grantEbsSnapshots(fn: lambda.IFunction): void {
  const snapshots = Stack.of(fn).formatArn({ service: 'ec2', account: '', resource: 'snapshot', resourceName: '*' });
  fn.addToRolePolicy(new iam.PolicyStatement({ actions: ['ebs:StartSnapshot', 'ebs:PutSnapshotBlock', 'ebs:CompleteSnapshot', 'ec2:CreateTags'], resources: [snapshots] }));
}
