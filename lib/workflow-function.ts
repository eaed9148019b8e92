import { Duration } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import type { Construct } from 'constructs';
import { LAMBDA_BUNDLING } from './bundling';

export interface WorkflowFunctionProps {
  entry: string;
  handler: string;
  timeout: Duration;
  memorySize: number;
  architecture: lambda.Architecture;
}

/**
 * A workflow's Lambda function (`{id}Function`), with an explicit role (`{id}Role`) that
 * writes only to its own log group (`{id}Logs`): no AWSLambdaBasicExecutionRole.
 */
export function workflowFunction(scope: Construct, id: string, p: WorkflowFunctionProps): nodejs.NodejsFunction {
  const logGroup = new logs.LogGroup(scope, `${id}Logs`, { retention: logs.RetentionDays.ONE_MONTH });
  const role = new iam.Role(scope, `${id}Role`, { assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com') });
  logGroup.grantWrite(role);
  return new nodejs.NodejsFunction(scope, `${id}Function`, {
    entry: p.entry,
    handler: p.handler,
    runtime: lambda.Runtime.NODEJS_22_X,
    architecture: p.architecture,
    memorySize: p.memorySize,
    timeout: p.timeout,
    role,
    logGroup,
    tracing: lambda.Tracing.ACTIVE,
    environment: { NODE_OPTIONS: '--enable-source-maps' },
    bundling: LAMBDA_BUNDLING,
  });
}

/** Errors that retrying cannot help fail at once; anything else (throttling, a killed Lambda) is retried with backoff. */
export function retried<T extends tasks.LambdaInvoke>(task: T, permanentErrors: string[]): T {
  task.addRetry({ errors: permanentErrors, maxAttempts: 0 });
  task.addRetry({ errors: [sfn.Errors.ALL], interval: Duration.seconds(2), maxAttempts: 3, backoffRate: 2, maxDelay: Duration.seconds(30) });
  return task;
}

/**
 * A task of a workflow's steps function: `{"step": stepName, "input": …}` (`input` a JSONPath
 * of the state, or an object of fields), its result at `resultPath`, retried as `retried` says.
 */
export function stepTask(scope: Construct, name: string, fn: lambda.IFunction, stepName: string, input: Record<string, unknown> | string, permanentErrors: string[], resultPath?: string): tasks.LambdaInvoke {
  return retried(
    new tasks.LambdaInvoke(scope, name, {
      lambdaFunction: fn,
      payload: sfn.TaskInput.fromObject({ step: stepName, input: typeof input === 'string' ? sfn.JsonPath.objectAt(input) : input }),
      payloadResponseOnly: true,
      resultPath,
      taskTimeout: sfn.Timeout.duration(Duration.minutes(15)),
    }),
    permanentErrors,
  );
}

/**
 * Where every state of `catching` goes on any error (the error at `$.error`): the `fail` step
 * with the run's fields and that error (it records why; retried 5 times), then a Fail state
 * `failedState` whose cause is the step's `reason`.
 */
export function failOnError(scope: Construct, fn: lambda.IFunction, run: Record<string, unknown>, failedState: string, catching: (tasks.LambdaInvoke | sfn.DistributedMap)[]): void {
  const fail = new tasks.LambdaInvoke(scope, 'Fail', {
    lambdaFunction: fn,
    payload: sfn.TaskInput.fromObject({ step: 'fail', input: { ...run, error: sfn.JsonPath.objectAt('$.error') } }),
    payloadResponseOnly: true,
  }).addRetry({ errors: [sfn.Errors.ALL], interval: Duration.seconds(2), maxAttempts: 5, backoffRate: 2 });
  fail.next(new sfn.Fail(scope, failedState, { error: failedState, causePath: '$.reason' }));
  for (const s of catching) s.addCatch(fail, { errors: [sfn.Errors.ALL], resultPath: '$.error' });
}

/** A workflow's state machine (`StateMachine`): traced, every event logged to its own group (`ExecutionLogs`, a month); inputs and outputs (ids and counters) are left out of the logs anyway. */
export function workflowStateMachine(scope: Construct, definition: sfn.IChainable, timeout: Duration): sfn.StateMachine {
  return new sfn.StateMachine(scope, 'StateMachine', {
    definitionBody: sfn.DefinitionBody.fromChainable(definition),
    timeout,
    tracingEnabled: true,
    logs: {
      destination: new logs.LogGroup(scope, 'ExecutionLogs', { retention: logs.RetentionDays.ONE_MONTH }),
      level: sfn.LogLevel.ALL,
      includeExecutionData: false,
    },
  });
}
