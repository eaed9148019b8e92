import * as path from 'node:path';
import { Duration } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import type { ReplicaStore } from './replica-store';
import { failOnError, retried, stepTask, workflowFunction, workflowStateMachine } from './workflow-function';

export const SEED_ENTRY = path.join(__dirname, '../lambdas/seed.ts');

/**
 * Errors that mean the backup or the request is wrong, or ranges were left undone
 * (SeedIncompleteError, from Finalize): retrying the task cannot help; a re-run can.
 */
export const PERMANENT_ERRORS = ['BackupError', 'InvalidArgumentError', 'UnknownPairError', 'SeedIncompleteError'];

export interface SeedWorkflowProps {
  readonly store: ReplicaStore;
  /** Buckets other than the replica bucket that backups and raw images may be read from. @default none */
  readonly backupBuckets?: s3.IBucket[];
  /** Ranges seeded at once (child executions of the Distributed Map). @default 32 */
  readonly maxConcurrency?: number;
  /** Between two checks of the journal while catching up. @default 10 s */
  readonly catchUpInterval?: Duration;
  /** @default lambda.Architecture.ARM_64 */
  readonly architecture?: lambda.Architecture;
}

/**
 * The seed workflow (docs/design.md, "Seeding"): validate (a Wait/Choice loop while the
 * agent's backup is not there yet) → plan → a Distributed Map over the ranges → finalize →
 * catch up (a Wait/Choice loop) → activate; any failure → fail
 * (SEED_FAILED with the reason). Kept to what Step Functions and the local runner
 * (aws-local-stepfunctions) both run: JSONPath, Lambda tasks, Retry/Catch, Choice, Wait,
 * a Map whose items come from the state (no ItemReader, no JSONata).
 */
export class SeedWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;
  readonly stepsFunction: nodejs.NodejsFunction;
  readonly rangeFunction: nodejs.NodejsFunction;

  constructor(scope: Construct, id: string, props: SeedWorkflowProps) {
    super(scope, id);
    const backupBuckets = props.backupBuckets ?? [];
    // validate HEADs every chunk of a backup: minutes for a multi-TiB one.
    const architecture = props.architecture ?? lambda.Architecture.ARM_64;
    this.stepsFunction = this.seedFunction('Steps', 'steps', Duration.minutes(15), 1024, architecture);
    // A range moves ≥ 16 chunks of 4 MiB, 8 at once, decoded and checked.
    this.rangeFunction = this.seedFunction('Range', 'range', Duration.minutes(5), 2048, architecture);
    for (const fn of [this.stepsFunction, this.rangeFunction]) props.store.grantSeed(fn, backupBuckets);

    const step = (name: string, stepName: string, input: Record<string, unknown> | string, resultPath?: string): tasks.LambdaInvoke =>
      stepTask(this, name, this.stepsFunction, stepName, input, PERMANENT_ERRORS, resultPath);
    const run = { pairId: sfn.JsonPath.stringAt('$.pairId'), seedId: sfn.JsonPath.stringAt('$.seedId') };

    const validate = step('Validate', 'validate', '$');
    const plan = step('Plan', 'plan', '$', '$.plan');
    const seedRange = this.retried(
      new tasks.LambdaInvoke(this, 'SeedRange', {
        lambdaFunction: this.rangeFunction,
        payloadResponseOnly: true,
        taskTimeout: sfn.Timeout.duration(Duration.minutes(5)),
      }),
    );
    const ranges = new sfn.DistributedMap(this, 'SeedRanges', {
      itemsPath: '$.plan.items',
      maxConcurrency: props.maxConcurrency ?? 32,
      // The items' results are counters already on the pair: keep the state small.
      resultPath: sfn.JsonPath.DISCARD,
      mapExecutionType: sfn.StateMachineType.STANDARD,
    });
    ranges.itemProcessor(seedRange);
    const finalize = step('Finalize', 'finalize', { ...run, ranges: sfn.JsonPath.numberAt('$.plan.ranges') });
    const catchUp = step('CatchUp', 'catchUp', '$');
    const activate = step('Activate', 'activate', '$');
    const poll = sfn.WaitTime.duration(props.catchUpInterval ?? Duration.seconds(10));
    const waitForJournal = new sfn.Wait(this, 'WaitForJournal', { time: poll });
    const waitForBackup = new sfn.Wait(this, 'WaitForBackup', { time: poll });

    failOnError(this, this.stepsFunction, run, 'SeedFailed', [validate, plan, ranges, finalize, catchUp, activate]);

    // validate ⟲ until the backup is there (one the agent is taking), … catchUp ⟲ until the journal reaches the first RP.
    const seeding = plan.next(ranges).next(finalize).next(catchUp).next(
      new sfn.Choice(this, 'CaughtUp').when(sfn.Condition.booleanEquals('$.caughtUp', true), activate.next(new sfn.Succeed(this, 'Seeded'))).otherwise(waitForJournal.next(catchUp)),
    );
    const definition = validate.next(new sfn.Choice(this, 'BackupReady').when(sfn.Condition.booleanEquals('$.ready', true), seeding).otherwise(waitForBackup.next(validate)));

    // Catch-up gives up after 24 h (replica/seeding.ts); a run never outlives this.
    this.stateMachine = workflowStateMachine(this, definition, Duration.days(2));
  }

  /** Lets an operator (the CLI's role) start runs and follow them. */
  grantStart(grantee: iam.IGrantable): iam.Grant[] {
    return [this.stateMachine.grantStartExecution(grantee), this.stateMachine.grantRead(grantee)];
  }

  private seedFunction(id: string, handler: string, timeout: Duration, memorySize: number, architecture: lambda.Architecture): nodejs.NodejsFunction {
    return workflowFunction(this, id, { entry: SEED_ENTRY, handler, timeout, memorySize, architecture });
  }

  /** A bad backup fails at once; anything else (throttling, a killed Lambda) is retried with backoff. */
  private retried<T extends tasks.LambdaInvoke>(task: T): T {
    return retried(task, PERMANENT_ERRORS);
  }
}
