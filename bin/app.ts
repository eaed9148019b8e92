#!/usr/bin/env node
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { LivesyncStack } from '../lib/livesync-stack';

const app = new App();
// `cdk deploy -c backupBuckets=my-backups,other` lets the seed workflow read backups there;
// `-c recoveryBuckets=my-recoveries` lets the recovery workflow write raw images there;
// `-c agentTrustAnchors=arn:…:trust-anchor/…` limits the agent role to those IAM Roles Anywhere trust anchors;
// `-c operatorPrincipals=arn:…:role/…` names who may take the operator role (default: the account decides).
const backupBuckets = String(app.node.tryGetContext('backupBuckets') ?? '');
const recoveryBuckets = String(app.node.tryGetContext('recoveryBuckets') ?? '');
const names = (list: string): string[] => list.split(',').map((b) => b.trim()).filter(Boolean);
new LivesyncStack(app, 'Livesync', {
  env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
  backupBucketNames: names(backupBuckets),
  recoveryBucketNames: names(recoveryBuckets),
  agentTrustAnchorArns: names(String(app.node.tryGetContext('agentTrustAnchors') ?? '')),
  operatorPrincipalArns: names(String(app.node.tryGetContext('operatorPrincipals') ?? '')),
});
// cdk-nag 3 is a policy-validation plugin (not an Aspect): any unacknowledged finding fails
// synth. The acknowledgements are also written into the template as `cdk_nag` metadata.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true, writeSuppressionsToCloudFormation: true }));
