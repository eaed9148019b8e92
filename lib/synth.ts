import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { LivesyncStack } from './livesync-stack';

/**
 * The stack's CloudFormation template, synthesized in-process without bundling the
 * Lambda (fast, offline). Local tooling derives e.g. the DynamoDB table from it, so the
 * local schema is the deployed one.
 */
export function synthTemplate(): any {
  // An output directory of our own, removed after: left to itself the App makes a cdk.out*
  // directory under the system's temp dir at every synth and never removes it.
  const outdir = mkdtempSync(join(tmpdir(), 'livesync-synth-'));
  try {
    const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
    const stack = new LivesyncStack(app, 'Livesync');
    return Template.fromStack(stack).toJSON();
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}
