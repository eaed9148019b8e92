import { Duration } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
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
