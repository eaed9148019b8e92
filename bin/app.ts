#!/usr/bin/env node
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { LivesyncStack } from '../lib/livesync-stack';

const app = new App();
new LivesyncStack(app, 'Livesync', {
  env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
});
// cdk-nag 3 is a policy-validation plugin (not an Aspect): any unacknowledged finding fails
// synth. The acknowledgements are also written into the template as `cdk_nag` metadata.
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true, writeSuppressionsToCloudFormation: true }));
