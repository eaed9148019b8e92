import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { LivesyncStack } from './livesync-stack';

/**
 * The stack's CloudFormation template, synthesized in-process without bundling the
 * Lambda (fast, offline). Local tooling derives e.g. the DynamoDB table from it, so the
 * local schema is the deployed one.
 */
export function synthTemplate(): any {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LivesyncStack(app, 'Livesync');
  return Template.fromStack(stack).toJSON();
}
