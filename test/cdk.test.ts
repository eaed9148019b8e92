import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, PolicyViolation, Stack, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { LivesyncStack, type LivesyncStackProps } from '../lib/livesync-stack';
import { ReplicaStore } from '../lib/replica-store';
import { synthTemplate } from '../lib/synth';
import { machinesFromTemplate } from '../local/stepfunctions-local';

// No esbuild bundling in tests: fast, and independent of the handler's code. Each app
// synthesizes under one temp directory removed at the end (an App without an outdir leaves a
// cdk.out* directory in the system's temp dir at every synth).
const outRoot = mkdtempSync(join(tmpdir(), 'livesync-cdk-test-'));
afterAll(() => rmSync(outRoot, { recursive: true, force: true }));
const newApp = (context: Record<string, unknown> = {}) => new App({ outdir: mkdtempSync(join(outRoot, 'app-')), context: { 'aws:cdk:bundling-stacks': [], ...context } });

describe('LivesyncStack', () => {
  const app = newApp();
  const stack = new LivesyncStack(app, 'Livesync');
  const template = Template.fromStack(stack);
  const ref = (c: { node: { defaultChild?: unknown } }) => stack.getLogicalId(c.node.defaultChild as any);
  const bucketId = ref(stack.store.bucket);
  const pairsArn = { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/pairs/*']] };

  test('buckets are encrypted, private and TLS-only', () => {
    template.resourceCountIs('AWS::S3::Bucket', 2);
    template.allResourcesProperties('AWS::S3::Bucket', {
      BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
    });
    const denyInsecure = Match.objectLike({ Effect: 'Deny', Action: 's3:*', Condition: { Bool: { 'aws:SecureTransport': 'false' } } });
    template.resourceCountIs('AWS::S3::BucketPolicy', 2);
    template.allResourcesProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([denyInsecure]) },
    });
  });

  test('replica bucket: unversioned, aborts stale multipart uploads, logs access', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      VersioningConfiguration: Match.absent(),
      LifecycleConfiguration: { Rules: [Match.objectLike({ AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 }, Status: 'Enabled' })] },
      LoggingConfiguration: { DestinationBucketName: { Ref: ref(stack.store.accessLogBucket) }, LogFilePrefix: Match.anyValue() },
    });
  });

  test('Object Lock as a deploy option: versioned, the default retention, pruned versions expire; a bad value is refused', () => {
    const locked = (value: string): Template => Template.fromStack(new LivesyncStack(newApp({ objectLock: value }), 'Locked'));
    const bucketWith = (t: Template): any => Object.values(t.findResources('AWS::S3::Bucket')).find((b: any) => b.Properties.BucketName)!;
    for (const [value, mode, days] of [['governance:30', 'GOVERNANCE', 30], ['7', 'GOVERNANCE', 7], ['compliance:365', 'COMPLIANCE', 365]] as const) {
      const b = bucketWith(locked(value)).Properties;
      expect(b.ObjectLockEnabled).toBe(true);
      expect(b.ObjectLockConfiguration).toEqual({ ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: mode, Days: days } } });
      expect(b.VersioningConfiguration).toEqual({ Status: 'Enabled' });
      expect(b.LifecycleConfiguration.Rules).toContainEqual(expect.objectContaining({ Id: 'pruned-versions', NoncurrentVersionExpiration: { NoncurrentDays: 1 }, ExpiredObjectDeleteMarker: true, Status: 'Enabled' }));
    }
    expect(bucketWith(template).Properties.ObjectLockEnabled).toBeUndefined();
    for (const bad of ['forever', 'governance:0', 'legal:30', 'governance:40000']) expect(() => locked(bad)).toThrow(`context objectLock=${bad}: expected [governance|compliance:]DAYS`);
  });

  test('table: keys, TTL, stream, GSIs acrp and pairs, PITR, SSE', () => {
    template.resourceCountIs('AWS::DynamoDB::Table', 1);
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }, { AttributeName: 'sk', KeyType: 'RANGE' }],
      BillingMode: 'PAY_PER_REQUEST',
      TimeToLiveSpecification: { AttributeName: 'expiresAt', Enabled: true },
      StreamSpecification: { StreamViewType: 'NEW_AND_OLD_IMAGES' },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      GlobalSecondaryIndexes: [{
        IndexName: 'acrp',
        KeySchema: [{ AttributeName: 'acrpPk', KeyType: 'HASH' }, { AttributeName: 'acrpSk', KeyType: 'RANGE' }],
        Projection: { ProjectionType: 'ALL' },
      }, {
        // Sparse: only pair items carry pairsPk; the compaction schedule lists pairs through it.
        IndexName: 'pairs',
        KeySchema: [{ AttributeName: 'pairsPk', KeyType: 'HASH' }, { AttributeName: 'pk', KeyType: 'RANGE' }],
        Projection: { ProjectionType: 'KEYS_ONLY' },
      }],
    });
  });

  test('apply Lambda: nodejs22.x on arm64, traced, env from the store', () => {
    template.hasResourceProperties('AWS::Lambda::Function', {
      Runtime: 'nodejs22.x',
      Architectures: ['arm64'],
      MemorySize: 1024,
      Timeout: 60,
      TracingConfig: { Mode: 'Active' },
      Environment: {
        Variables: {
          LIVESYNC_BUCKET: { Ref: bucketId },
          LIVESYNC_TABLE: { Ref: ref(stack.store.table) },
          LIVESYNC_APPLY_QUEUE_URL: { Ref: ref(stack.pipeline.queue) },
          NODE_OPTIONS: '--enable-source-maps',
        },
      },
    });
    template.hasResourceProperties('AWS::Logs::LogGroup', { RetentionInDays: 30 });
  });

  test('SQS event source reports partial batch failures', () => {
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      EventSourceArn: { 'Fn::GetAtt': [ref(stack.pipeline.queue), 'Arn'] },
      BatchSize: 10,
      MaximumBatchingWindowInSeconds: 1,
      FunctionResponseTypes: ['ReportBatchItemFailures'],
    });
  });

  test('queue redrives to the DLQ after 5 receives; visibility = 6 x timeout', () => {
    template.hasResourceProperties('AWS::SQS::Queue', {
      SqsManagedSseEnabled: true,
      VisibilityTimeout: 360,
      RedrivePolicy: { deadLetterTargetArn: { 'Fn::GetAtt': [ref(stack.pipeline.deadLetterQueue), 'Arn'] }, maxReceiveCount: 5 },
    });
    template.hasResourceProperties('AWS::SQS::Queue', { SqsManagedSseEnabled: true, MessageRetentionPeriod: 14 * 24 * 3600 });
    template.allResourcesProperties('AWS::SQS::QueuePolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]) },
    });
  });

  test('journal objects (pairs/*.batch) notify the queue through the bucket\'s own configuration, set after the queue policy', () => {
    const bucket = template.toJSON().Resources[bucketId];
    expect(bucket.Properties.NotificationConfiguration).toEqual({
      QueueConfigurations: [{
        Event: 's3:ObjectCreated:*',
        Filter: { S3Key: { Rules: [{ Name: 'prefix', Value: 'pairs/' }, { Name: 'suffix', Value: '.batch' }] } },
        Queue: { 'Fn::GetAtt': [ref(stack.pipeline.queue), 'Arn'] },
      }],
    });
    // S3 checks it may send when the configuration is set: the queue's policy must exist first.
    const policies = template.findResources('AWS::SQS::QueuePolicy', { Properties: { Queues: [{ Ref: ref(stack.pipeline.queue) }] } });
    expect(Object.keys(policies)).toHaveLength(1);
    const [policyId] = Object.keys(policies);
    expect(bucket.DependsOn).toContain(policyId);
    // S3 of this account, from this bucket only: the bucket's ARN built from its name (the stack's UUID), as the bucket is named.
    // (A reference to the bucket here would close a cycle; Template.fromStack refuses it as undeployable.)
    const bucketName = { 'Fn::Join': ['-', ['livesync', { 'Fn::Select': [2, { 'Fn::Split': ['/', { Ref: 'AWS::StackId' }] }] }]] };
    expect(bucket.Properties.BucketName).toEqual(bucketName);
    expect(policies[policyId].Properties.PolicyDocument.Statement).toContainEqual({
      Effect: 'Allow',
      Principal: { Service: 's3.amazonaws.com' },
      Action: 'sqs:SendMessage',
      Resource: { 'Fn::GetAtt': [ref(stack.pipeline.queue), 'Arn'] },
      Condition: {
        ArnEquals: { 'aws:SourceArn': { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':s3:::', bucketName]] } },
        StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } },
      },
    });
  });

  test('no custom resources: everything, the event path included, is a resource CloudFormation (and LocalStack community) creates natively', () => {
    const types = Object.values(template.toJSON().Resources).map((r: any) => r.Type as string);
    expect(types.filter((t) => t.startsWith('Custom::') || t === 'AWS::CloudFormation::CustomResource')).toEqual([]);
    // No deploy-time helper Lambda either (CDK's notification or auto-delete handlers): only the eight handlers.
    expect(Object.values(template.findResources('AWS::Lambda::Function')).map((f: any) => f.Properties.Handler).sort()).toEqual(['index.gc', 'index.handler', 'index.range', 'index.recoveryRange', 'index.recoveryStep', 'index.steps', 'index.sweep', 'index.unit']);
  });

  test('apply role: least privilege (no deletes/scans; S3 read and list of pairs/* only)', () => {
    const roleId = ref(stack.pipeline.applyFunction.role as iam.Role);
    const statements = Object.values(template.findResources('AWS::IAM::Policy'))
      .filter((p: any) => p.Properties.Roles.some((r: any) => r.Ref === roleId))
      .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
    const actionsOf = (s: any): string[] => [s.Action].flat();
    const actions = statements.flatMap(actionsOf);
    expect(actions).toEqual(expect.arrayContaining(['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:Query', 'dynamodb:ConditionCheckItem']));
    for (const denied of ['dynamodb:DeleteItem', 'dynamodb:Scan', 'dynamodb:BatchWriteItem', 'dynamodb:*']) expect(actions).not.toContain(denied);
    expect(statements.every((s: any) => s.Effect === 'Allow' && !s.NotAction && !s.NotResource)).toBe(true);

    const s3Statements = statements.filter((s: any) => actionsOf(s).some((a) => a.startsWith('s3:')));
    expect(s3Statements).toEqual([
      expect.objectContaining({ Action: 's3:GetObject', Resource: pairsArn }),
      // ListBucket only so a missing key reads as 404, and only under pairs/.
      expect.objectContaining({ Action: 's3:ListBucket', Condition: { StringLike: { 's3:prefix': ['pairs/*'] } } }),
    ]);
    // The RP timer's checks: SendMessage on the apply queue only, in a statement of its own.
    const sends = statements.filter((s: any) => actionsOf(s).some((a) => a === 'sqs:SendMessage' || a === 'sqs:*'));
    expect(sends).toEqual([expect.objectContaining({ Action: 'sqs:SendMessage', Resource: { 'Fn::GetAtt': [ref(stack.pipeline.queue), 'Arn'] } })]);
    // No managed policies (e.g. AWSLambdaBasicExecutionRole) on the apply role.
    expect(template.findResources('AWS::IAM::Role')[roleId].Properties.ManagedPolicyArns).toBeUndefined();
  });

  test('agent grant: one pair\'s journal and backups writable, its objects, keys and items readable, nothing else', () => {
    const app = newApp();
    const other = new Stack(app, 'AgentGrant');
    const store = new ReplicaStore(other, 'Store');
    const role = new iam.Role(other, 'Agent', { assumedBy: new iam.AccountRootPrincipal() });
    store.grantAgent(role, 'db01');
    const statements = Object.values(Template.fromStack(other).findResources('AWS::IAM::Policy')).flatMap((p: any) => p.Properties.PolicyDocument.Statement);
    const bucket = other.getLogicalId(store.bucket.node.defaultChild as s3.CfnBucket);
    const objects = (suffix: string): unknown => ({ 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucket, 'Arn'] }, `/pairs/db01/${suffix}`]] });
    expect(statements).toEqual([
      expect.objectContaining({ Action: 's3:PutObject', Resource: [objects('journal/*'), objects('backups/*')] }),
      expect.objectContaining({ Action: 's3:GetObject', Resource: objects('*') }),
      expect.objectContaining({ Action: 's3:ListBucket', Resource: { 'Fn::GetAtt': [bucket, 'Arn'] }, Condition: { StringLike: { 's3:prefix': ['pairs/db01/*'] } } }),
      expect.objectContaining({ Action: ['dynamodb:GetItem', 'dynamodb:Query'], Condition: { 'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': ['PAIR#db01'] } } }),
    ]);
  });

  test('functions are arm64 unless the context says lambdaArchitecture=x86_64 (LocalStack on an x86 host); another value is refused', () => {
    const archs = (context: Record<string, unknown>): string[][] => {
      const app = newApp(context);
      return Object.values(Template.fromStack(new LivesyncStack(app, 'Arch')).findResources('AWS::Lambda::Function')).map((f: any) => f.Properties.Architectures);
    };
    expect(archs({})).toEqual(Array(8).fill(['arm64']));
    expect(archs({ lambdaArchitecture: 'x86_64' })).toEqual(Array(8).fill(['x86_64']));
    expect(() => archs({ lambdaArchitecture: 'amd64' })).toThrow('context lambdaArchitecture=amd64: expected arm64 or x86_64');
  });

  test('outputs', () => {
    for (const name of ['BucketName', 'TableName', 'ApplyQueueUrl', 'DeadLetterQueueUrl', 'SeedStateMachineArn', 'CompactionStateMachineArn']) template.hasOutput(name, {});
  });

  test('seed state machine: traced, logs ALL, a Distributed Map with bounded concurrency, retries that skip bad backups', () => {
    template.hasResourceProperties('AWS::StepFunctions::StateMachine', {
      TracingConfiguration: { Enabled: true },
      LoggingConfiguration: Match.objectLike({ Level: 'ALL', IncludeExecutionData: false }),
    });
    const [machine] = machinesFromTemplate(template.toJSON());
    const states = machine.definition.States as Record<string, any>;
    expect(states.SeedRanges).toMatchObject({ Type: 'Map', MaxConcurrency: 32, ItemsPath: '$.plan.items', ResultPath: null, ItemProcessor: { ProcessorConfig: { Mode: 'DISTRIBUTED' } } });
    expect(states.SeedRanges.ItemProcessor.States.SeedRange.Retry).toEqual(expect.arrayContaining([
      { ErrorEquals: ['BackupError', 'InvalidArgumentError', 'UnknownPairError', 'SeedIncompleteError'], MaxAttempts: 0 },
      expect.objectContaining({ ErrorEquals: ['States.ALL'], MaxAttempts: 3 }),
    ]));
    // Finalize's missing done markers fail the run at once (a retry cannot make them appear).
    expect(states.Finalize.Retry).toContainEqual({ ErrorEquals: ['BackupError', 'InvalidArgumentError', 'UnknownPairError', 'SeedIncompleteError'], MaxAttempts: 0 });
    for (const name of ['Validate', 'Plan', 'SeedRanges', 'Finalize', 'CatchUp', 'Activate']) expect(states[name].Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.error', Next: 'Fail' }]);
    // Only what the local runner also runs: no JSONata, Assign, ItemReader or ResultWriter.
    const text = JSON.stringify(machine.definition);
    for (const unsupported of ['JSONata', '"Assign"', 'ItemReader', 'ResultWriter', 'ItemBatcher']) expect(text).not.toContain(unsupported);
    // Every task is a Lambda of this template, bound locally by its handler.
    expect(new Set(Object.values(machine.handlerOfState))).toEqual(new Set(['steps', 'range']));
  });

  test('seed roles: read/write pairs/*, no deletes, no scans; backup buckets read-only', () => {
    const app = newApp();
    const other = new LivesyncStack(app, 'WithBackups', { backupBucketNames: ['my-backups'] });
    const t = Template.fromStack(other);
    const roleId = other.getLogicalId(other.seed.rangeFunction.role!.node.defaultChild as iam.CfnRole);
    const statements = Object.values(t.findResources('AWS::IAM::Policy'))
      .filter((p: any) => p.Properties.Roles.some((r: any) => r.Ref === roleId))
      .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
    const actions = statements.flatMap((st: any) => [st.Action].flat());
    for (const denied of ['s3:DeleteObject', 'dynamodb:DeleteItem', 'dynamodb:Scan', 's3:*', 'dynamodb:*']) expect(actions).not.toContain(denied);
    expect(statements).toEqual(expect.arrayContaining([
      expect.objectContaining({ Action: 's3:GetObject', Resource: { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':s3:::my-backups/*']] } }),
    ]));
    // Its writes: base chunks and manifests, seed work objects; never journal/, history/ or backups/.
    const bucket = other.getLogicalId(other.store.bucket.node.defaultChild as s3.CfnBucket);
    const puts = statements.filter((st: any) => [st.Action].flat().includes('s3:PutObject'));
    expect(puts).toEqual([expect.objectContaining({ Resource: ['/pairs/*/base/*', '/pairs/*/seed/*'].map((s) => ({ 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucket, 'Arn'] }, s]] })) })]);
  });

  test('only the GC role deletes (journal and history objects, index items); compaction writes only history/; no principal may overwrite-by-delete elsewhere', () => {
    const statementsOf = (roleId: string): any[] =>
      Object.values(template.findResources('AWS::IAM::Policy'))
        .filter((p: any) => p.Properties.Roles.some((r: any) => r.Ref === roleId))
        .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
    const roleIds = Object.keys(template.findResources('AWS::IAM::Role'));
    const gcRole = ref(stack.compaction.gcFunction.role as iam.Role);
    const deletes = (a: string): boolean => /^s3:(DeleteObject|\*)|^dynamodb:(DeleteItem|BatchWriteItem|\*)$|^s3:\*$/.test(a);
    for (const id of roleIds.filter((r) => r !== gcRole)) {
      const actions = statementsOf(id).flatMap((st) => [st.Action].flat());
      expect({ role: id, deletes: actions.filter(deletes) }).toEqual({ role: id, deletes: [] });
    }
    const gcDeletes = statementsOf(gcRole).filter((st) => [st.Action].flat().includes('s3:DeleteObject'));
    expect(gcDeletes).toEqual([
      expect.objectContaining({
        Resource: [
          { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/pairs/*/journal/*']] },
          { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/pairs/*/history/*']] },
        ],
      }),
    ]);
    const unitPuts = statementsOf(ref(stack.compaction.unitFunction.role as iam.Role)).filter((st) => [st.Action].flat().includes('s3:PutObject'));
    expect(unitPuts).toEqual([expect.objectContaining({ Resource: { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/pairs/*/history/*']] } })]);
  });

  test('the bucket policy: what the source writes is create-only (If-None-Match) for every principal, and nobody but GC deletes under pairs/', () => {
    const policy = Object.values(template.findResources('AWS::S3::BucketPolicy')).find((p: any) => p.Properties.Bucket.Ref === bucketId) as any;
    const objects = (suffix: string): unknown => ({ 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, `/pairs/${suffix}`]] });
    expect(policy.Properties.PolicyDocument.Statement).toEqual(expect.arrayContaining([
      { Sid: 'CreateOnlySourceWrites', Effect: 'Deny', Principal: { AWS: '*' }, Action: 's3:PutObject', Resource: [objects('*/journal/*'), objects('*/backups/*')], Condition: { Null: { 's3:if-none-match': 'true' } } },
      {
        Sid: 'OnlyGcDeletes',
        Effect: 'Deny',
        Principal: { AWS: '*' },
        Action: ['s3:DeleteObject', 's3:DeleteObjectVersion'],
        Resource: objects('*'),
        Condition: { ArnNotEquals: { 'aws:PrincipalArn': { 'Fn::GetAtt': [ref(stack.compaction.gcFunction.role as iam.Role), 'Arn'] } } },
      },
    ]));
  });

  test('agent role: taken through IAM Roles Anywhere, one pair per certificate CN in every resource and leading key; create-only writes, no deletes', () => {
    const agentRole = ref(stack.agents.role);
    const role = template.findResources('AWS::IAM::Role')[agentRole] as any;
    const cn = '${aws:PrincipalTag/x509Subject/CN}';
    expect(role.Properties.AssumeRolePolicyDocument.Statement).toEqual([{
      Effect: 'Allow',
      Principal: { Service: 'rolesanywhere.amazonaws.com' },
      Action: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'],
      Condition: {
        StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } },
        StringNotLike: { 'aws:PrincipalTag/x509Subject/CN': ['*${*}*', '*${?}*', '*/*'] },
        Null: { 'aws:PrincipalTag/x509Subject/CN': 'false' },
      },
    }]);
    const statements = Object.values(template.findResources('AWS::IAM::Policy'))
      .filter((p: any) => p.Properties.Roles.some((r: any) => r.Ref === agentRole))
      .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
    const objects = (suffix: string): unknown => ({ 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, `/pairs/${cn}/${suffix}`]] });
    expect(statements).toEqual([
      expect.objectContaining({ Action: 's3:PutObject', Resource: [objects('journal/*'), objects('backups/*')] }),
      expect.objectContaining({ Action: 's3:GetObject', Resource: objects('*') }),
      expect.objectContaining({ Action: 's3:ListBucket', Condition: { StringLike: { 's3:prefix': [`pairs/${cn}/*`] } } }),
      expect.objectContaining({ Action: ['dynamodb:GetItem', 'dynamodb:Query'], Condition: { 'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': [`PAIR#${cn}`] } } }),
    ]);
    template.hasResourceProperties('AWS::RolesAnywhere::Profile', { RoleArns: [{ 'Fn::GetAtt': [agentRole, 'Arn'] }], Enabled: true, DurationSeconds: 3600 });
    template.hasOutput('AgentRoleArn', {});
    template.hasOutput('AgentProfileArn', {});
    // With trust anchors named at deploy time, only their certificates may take it.
    const anchored = new LivesyncStack(newApp(), 'Anchored', { agentTrustAnchorArns: ['arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/ta1'] });
    const trust = (Template.fromStack(anchored).findResources('AWS::IAM::Role')[anchored.getLogicalId(anchored.agents.role.node.defaultChild as iam.CfnRole)] as any).Properties.AssumeRolePolicyDocument.Statement[0];
    expect(trust.Condition.ArnEquals).toEqual({ 'aws:SourceArn': ['arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/ta1'] });
    expect(trust.Condition.StringEquals).toBeUndefined();
  });

  test('operator role: its own, taken by this account (or the principals named), reads every pair, writes only its recoveries\' records, deletes no object; starts and watches the workflows', () => {
    const operatorRole = ref(stack.operators.role);
    expect(operatorRole).not.toBe(ref(stack.agents.role));
    const role = template.findResources('AWS::IAM::Role')[operatorRole] as any;
    expect(role.Properties.MaxSessionDuration).toBe(3600);
    expect(role.Properties.AssumeRolePolicyDocument.Statement).toEqual([expect.objectContaining({ Action: 'sts:AssumeRole', Principal: { AWS: expect.objectContaining({ 'Fn::Join': expect.anything() }) } })]);
    const statements = Object.values(template.findResources('AWS::IAM::Policy'))
      .filter((p: any) => p.Properties.Roles.some((r: any) => r.Ref === operatorRole))
      .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
    const actions = statements.flatMap((st: any) => [st.Action].flat());
    expect(actions.filter((a: string) => a.startsWith('s3:')).sort()).toEqual(['s3:GetObject', 's3:ListBucket', 's3:PutObject']);
    const puts = statements.filter((st: any) => [st.Action].flat().includes('s3:PutObject')).flatMap((st: any) => [st.Resource].flat());
    expect(puts).toEqual([{ 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/pairs/*/recoveries/ebs/*']] }]);
    expect(actions).toEqual(expect.arrayContaining(['states:StartExecution', 'states:DescribeExecution', 'ebs:PutSnapshotBlock', 'ec2:CreateVolume', 'ec2:RegisterImage']));
    expect(actions.filter((a: string) => /^s3:Delete|^s3:\*|^s3:PutBucket|^iam:/.test(a))).toEqual([]);
    template.hasOutput('OperatorRoleArn', {});
    // Principals named at deploy time instead of the account.
    const named = new LivesyncStack(newApp(), 'Named', { operatorPrincipalArns: ['arn:aws:iam::111122223333:role/dr-team'] });
    const trust = (Template.fromStack(named).findResources('AWS::IAM::Role')[named.getLogicalId(named.operators.role.node.defaultChild as iam.CfnRole)] as any).Properties.AssumeRolePolicyDocument.Statement[0];
    expect(trust.Principal).toEqual({ AWS: 'arn:aws:iam::111122223333:role/dr-team' });
  });

  test('recovery: start → a Distributed Map over the ranges → finish, failures recorded; its roles write only recoveries (never journal or history), read pairs/*, and the EBS direct APIs', () => {
    const machine = machinesFromTemplate(template.toJSON()).find((m) => m.id.startsWith('Recovery'))!;
    expect(Object.keys(machine.definition.States).sort()).toEqual(['Fail', 'Finish', 'Ranges', 'Recovered', 'RecoveryFailed', 'Start']);
    expect(machine.handlerOfState).toEqual({ Start: 'recoveryStep', RecoverRange: 'recoveryRange', Finish: 'recoveryStep', Fail: 'recoveryStep' });
    const ranges = machine.definition.States.Ranges as any;
    expect(ranges).toMatchObject({ ItemsPath: '$.plan.ranges', MaxConcurrency: 16, ItemSelector: { 'range.$': '$$.Map.Item.Value' } });
    expect((machine.definition.States.Start as any).Retry).toContainEqual(expect.objectContaining({ ErrorEquals: expect.arrayContaining(['HistoryPrunedError', 'ReaderLeaseLostError']), MaxAttempts: 0 }));
    for (const fn of [stack.recovery.stepsFunction, stack.recovery.rangeFunction]) {
      const statements = Object.values(template.findResources('AWS::IAM::Policy'))
        .filter((p: any) => p.Properties.Roles.some((r: any) => r.Ref === ref(fn.role as iam.Role)))
        .flatMap((p: any) => p.Properties.PolicyDocument.Statement);
      const puts = statements.filter((st: any) => [st.Action].flat().includes('s3:PutObject')).flatMap((st: any) => [st.Resource].flat());
      expect(puts).toEqual([
        { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/pairs/*/recoveries/*']] },
        { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/recoveries/*']] },
      ]);
      const ebs = statements.find((st: any) => [st.Action].flat().includes('ebs:PutSnapshotBlock'));
      expect([ebs.Action].flat().sort()).toEqual(['ebs:CompleteSnapshot', 'ebs:PutSnapshotBlock', 'ebs:StartSnapshot', 'ec2:CreateTags']);
    }
  });

  test('compaction state machine: units in a loop, then GC; corrupt history is not retried; the schedule starts runs; the apply function may start them', () => {
    const machine = machinesFromTemplate(template.toJSON()).find((m) => m.id.startsWith('Compaction'))!;
    expect(Object.keys(machine.definition.States).sort()).toEqual(['Compacted', 'CompactionFailed', 'Gc', 'More', 'Unit']);
    expect(machine.handlerOfState).toEqual({ Unit: 'unit', Gc: 'gc' });
    expect((machine.definition.States.Unit as any).Retry).toContainEqual(expect.objectContaining({ ErrorEquals: expect.arrayContaining(['CorruptHistoryError']), MaxAttempts: 0 }));
    template.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(15 minutes)' });
    const applyRole = ref(stack.pipeline.applyFunction.role as iam.Role);
    const applyActions = Object.values(template.findResources('AWS::IAM::Policy'))
      .filter((p: any) => p.Properties.Roles.some((r: any) => r.Ref === applyRole))
      .flatMap((p: any) => p.Properties.PolicyDocument.Statement)
      .flatMap((st: any) => [st.Action].flat());
    expect(applyActions).toContain('states:StartExecution');
  });

  test('synthTemplate() is the same stack', () => {
    const synthesized = synthTemplate();
    expect(Object.keys(synthesized.Resources).sort()).toEqual(Object.keys(template.toJSON().Resources).sort());
    expect(Object.values(synthesized.Resources).filter((r: any) => r.Type === 'AWS::DynamoDB::Table')).toHaveLength(1);
  });
});

describe('cdk-nag AwsSolutions', () => {
  // cdk-nag 3 is a policy-validation plugin: findings are not Annotations, they are the
  // plugin's report (and fail synth). Acknowledgements are written to `cdk_nag` metadata.
  const nagged = (extra?: (stack: LivesyncStack) => void, props?: LivesyncStackProps) => {
    const app = newApp();
    const stack = new LivesyncStack(app, 'Livesync', props);
    extra?.(stack);
    const checks = new AwsSolutionsChecks(app, { verbose: true, writeSuppressionsToCloudFormation: true });
    Validations.of(app).addPlugins(checks);
    return { app, stack, checks };
  };
  const describeViolations = (vs: PolicyViolation[]) =>
    vs.map((v) => `${v.ruleName} @ ${v.violatingResources.map((r) => r.constructPath).join(', ')}`);

  test('no unacknowledged errors or warnings; synth passes validation', () => {
    const { app, stack, checks } = nagged();
    const template = Template.fromStack(stack); // runs the Aspect that writes cdk_nag metadata
    const { violations } = checks.validateScope(app);
    expect(describeViolations(violations.filter((v) => v.severity === 'error'))).toEqual([]);
    expect(describeViolations(violations.filter((v) => v.severity === 'warning'))).toEqual([]);
    expect(() => app.synth()).not.toThrow();

    const suppressions = Object.values(template.toJSON().Resources).flatMap(
      (r: any) => r.Metadata?.cdk_nag?.rules_to_suppress ?? [],
    ) as { id: string; reason: string }[];
    expect(suppressions.length).toBeGreaterThan(0);
    expect(suppressions.filter((s) => !(s.reason?.length >= 10))).toEqual([]);
  });

  test('also with a concrete account and region, and backup buckets (as `cdk deploy` synthesizes it)', () => {
    const { app, checks } = nagged(undefined, { env: { account: '123456789012', region: 'eu-west-1' }, backupBucketNames: ['my-backups'] });
    expect(describeViolations(checks.validateScope(app).violations)).toEqual([]);
  });

  test('the check is not vacuous: an unencrypted, DLQ-less queue fails synth', () => {
    const { app, checks } = nagged((stack) => new sqs.Queue(stack, 'Careless', { encryption: sqs.QueueEncryption.UNENCRYPTED }));
    expect(describeViolations(checks.validateScope(app).violations)).toEqual(
      expect.arrayContaining([expect.stringMatching(/^AwsSolutions-SQS2 @ Livesync\/Careless/), expect.stringMatching(/^AwsSolutions-SQS3 @ Livesync\/Careless/)]),
    );
    expect(() => app.synth()).toThrow(/AwsSolutions-SQS2/);
  });
});
