import * as path from 'node:path';
import { Duration } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { COMPACTION_STATE_MACHINE_ENV, GC_GRACE_ENV } from './names';
import type { ReplicaStore } from './replica-store';
import { retried, workflowFunction, workflowStateMachine } from './workflow-function';

export const COMPACT_ENTRY = path.join(__dirname, '../lambdas/compact.ts');

/** Errors retrying cannot help: the stored history is wrong, or the pair is. */
export const COMPACTION_PERMANENT_ERRORS = ['CorruptHistoryError', 'CorruptExtentError', 'UnknownPairError', 'InvalidArgumentError'];

export interface CompactionWorkflowProps {
  readonly store: ReplicaStore;
  /** How often every pair is looked at (compaction due, GC past its grace). @default 15 minutes */
  readonly schedule?: Duration;
  /** GC deletes an object this long after the publish that stopped referencing it. @default 1 hour */
  readonly gcGrace?: Duration;
  /** @default lambda.Architecture.ARM_64 */
  readonly architecture?: lambda.Architecture;
}

/**
 * The compaction workflow of one pair (docs/design.md, "History"): units of compaction in a
 * loop while the pair's L0 backlog calls for them (each unit takes the pair's compactor
 * lease, so one runs at a time and a stalled one cannot publish), then GC. Started by the
 * apply path when a pair's backlog passes its threshold, and for every pair by a schedule.
 * Kept to what Step Functions and the local runner both run (JSONPath, Lambda tasks,
 * Retry/Catch, Choice).
 *
 * Roles: the compaction function writes history objects and never deletes; only the GC
 * function deletes (history objects and folded journal batches, their BATCH# items).
 */
export class CompactionWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;
  readonly unitFunction: nodejs.NodejsFunction;
  readonly gcFunction: nodejs.NodejsFunction;
  readonly sweepFunction: nodejs.NodejsFunction;

  constructor(scope: Construct, id: string, props: CompactionWorkflowProps) {
    super(scope, id);
    const architecture = props.architecture ?? lambda.Architecture.ARM_64;
    // A unit reads ≤ 8 batches and the pieces of the ranges they touch, and writes one run: seconds.
    this.unitFunction = this.compactFunction('Unit', 'unit', Duration.minutes(5), 2048, architecture);
    this.gcFunction = this.compactFunction('Gc', 'gc', Duration.minutes(5), 512, architecture);
    this.sweepFunction = this.compactFunction('Sweep', 'sweep', Duration.minutes(5), 512, architecture);
    props.store.grantCompact(this.unitFunction);
    props.store.grantGc(this.gcFunction);
    if (props.gcGrace) this.gcFunction.addEnvironment(GC_GRACE_ENV, String(props.gcGrace.toMilliseconds()));
    props.store.grantSweep(this.sweepFunction);

    const unit = this.retried(
      new tasks.LambdaInvoke(this, 'Unit', {
        lambdaFunction: this.unitFunction,
        payloadResponseOnly: true,
        taskTimeout: sfn.Timeout.duration(Duration.minutes(5)),
      }),
    );
    const gc = this.retried(
      new tasks.LambdaInvoke(this, 'Gc', {
        lambdaFunction: this.gcFunction,
        payloadResponseOnly: true,
        taskTimeout: sfn.Timeout.duration(Duration.minutes(5)),
      }),
    );
    const failed = new sfn.Fail(this, 'CompactionFailed', { error: 'CompactionFailed', causePath: '$.error.Cause' });
    for (const t of [unit, gc]) t.addCatch(failed, { errors: [sfn.Errors.ALL], resultPath: '$.error' });
    // Unit ⟲ while it says there is more (a bounded number of units per run), then GC unless the
    // run is the apply path's (`gc` false: the schedule's runs collect, and a state transition
    // is priced; docs/design.md, "The workflow").
    const compacted = new sfn.Succeed(this, 'Compacted');
    const definition = unit.next(
      new sfn.Choice(this, 'More')
        .when(sfn.Condition.booleanEquals('$.more', true), unit)
        .when(sfn.Condition.booleanEquals('$.gc', true), gc.next(compacted))
        .otherwise(compacted),
    );

    // A run does ≤ 32 units and at most one GC pass.
    this.stateMachine = workflowStateMachine(this, definition, Duration.hours(1));
    this.grantStart(this.sweepFunction);
    new events.Rule(this, 'Schedule', {
      schedule: events.Schedule.rate(props.schedule ?? Duration.minutes(15)),
      targets: [new targets.LambdaFunction(this.sweepFunction, { retryAttempts: 2 })],
    });
  }

  /** Lets a function (the apply handler, the sweep) start runs: StartExecution only, and the ARN in its environment. */
  grantStart(fn: lambda.Function): iam.Grant {
    fn.addEnvironment(COMPACTION_STATE_MACHINE_ENV, this.stateMachine.stateMachineArn);
    return this.stateMachine.grantStartExecution(fn);
  }

  private compactFunction(id: string, handler: string, timeout: Duration, memorySize: number, architecture: lambda.Architecture): nodejs.NodejsFunction {
    return workflowFunction(this, id, { entry: COMPACT_ENTRY, handler, timeout, memorySize, architecture });
  }

  /** A corrupt history fails at once; anything else (throttling, a lost race) is retried with backoff. */
  private retried<T extends tasks.LambdaInvoke>(task: T): T {
    return retried(task, COMPACTION_PERMANENT_ERRORS);
  }
}
