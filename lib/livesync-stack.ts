import { CfnOutput, Stack, StackProps, Token, Validations } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { InvalidArgumentError } from '../core/errors';
import { AgentAccess } from './agent-access';
import { OperatorAccess } from './operator-access';
import { ApplyPipeline } from './apply-pipeline';
import { CompactionWorkflow } from './compaction-workflow';
import { AGENT_PAIR_TAG, LAMBDA_ARCHITECTURE_CONTEXT, PAIRS_PREFIX, RECOVERIES_PREFIX } from './names';
import { parseObjectLock, type ObjectLockOption } from './object-lock';
import { RecoveryWorkflow } from './recovery-workflow';
import { ReplicaStore } from './replica-store';
import { SeedWorkflow } from './seed-workflow';

export interface LivesyncStackProps extends StackProps {
  /** Buckets (names) the seed workflow may read backups and raw images from, besides the replica bucket. */
  readonly backupBucketNames?: string[];
  /** Buckets (names) the recovery workflow may write raw images into, besides the replica bucket's `recoveries/` prefix. */
  readonly recoveryBucketNames?: string[];
  /**
   * The functions' architecture. @default the context value `lambdaArchitecture`
   * (`arm64` or `x86_64`: `cdk deploy -c lambdaArchitecture=x86_64`, e.g. for LocalStack on
   * an x86 Docker host that does not set LAMBDA_IGNORE_ARCHITECTURE=1), else arm64.
   */
  readonly lambdaArchitecture?: lambda.Architecture;
  /**
   * S3 Object Lock on the replica bucket. @default the context value `objectLock`
   * (`cdk deploy -c objectLock=governance:30`, lib/object-lock.ts), else none
   */
  readonly objectLock?: ObjectLockOption;
  /** IAM Roles Anywhere trust anchors whose host certificates may take the agent role. @default any of this account's */
  readonly agentTrustAnchorArns?: string[];
  /** Users or roles (ARNs) that may take the operator role. @default this account's (its IAM policies decide) */
  readonly operatorPrincipalArns?: string[];
}


export class LivesyncStack extends Stack {
  readonly store: ReplicaStore;
  readonly pipeline: ApplyPipeline;
  readonly seed: SeedWorkflow;
  readonly compaction: CompactionWorkflow;
  readonly recovery: RecoveryWorkflow;
  readonly agents: AgentAccess;
  readonly operators: OperatorAccess;

  constructor(scope: Construct, id: string, props: LivesyncStackProps = {}) {
    super(scope, id, props);
    this.store = new ReplicaStore(this, 'Store', { objectLock: props.objectLock ?? parseObjectLock(this.node.tryGetContext('objectLock')) });
    const architecture = props.lambdaArchitecture ?? architectureFromContext(this.node.tryGetContext(LAMBDA_ARCHITECTURE_CONTEXT));
    this.pipeline = new ApplyPipeline(this, 'Apply', { store: this.store, architecture });
    this.seed = new SeedWorkflow(this, 'Seed', {
      store: this.store,
      architecture,
      backupBuckets: (props.backupBucketNames ?? []).map((name, i) => s3.Bucket.fromBucketName(this, `BackupBucket${i}`, name)),
    });

    this.compaction = new CompactionWorkflow(this, 'Compaction', { store: this.store, architecture });
    // The apply path starts a pair's run when its L0 backlog crosses the threshold.
    this.compaction.grantStart(this.pipeline.applyFunction);

    this.recovery = new RecoveryWorkflow(this, 'Recovery', {
      store: this.store,
      architecture,
      targetBuckets: (props.recoveryBucketNames ?? []).map((name, i) => s3.Bucket.fromBucketName(this, `RecoveryBucket${i}`, name)),
    });

    // The source's writes are create-only and only GC deletes, whatever any role's grants say.
    this.store.protectHistory(this.compaction.gcFunction.role!);
    this.agents = new AgentAccess(this, 'Agents', { store: this.store, trustAnchorArns: props.agentTrustAnchorArns?.length ? props.agentTrustAnchorArns : undefined });
    this.operators = new OperatorAccess(this, 'Operators', {
      store: this.store,
      workflows: [this.seed.stateMachine, this.compaction.stateMachine, this.recovery.stateMachine],
      principalArns: props.operatorPrincipalArns,
    });

    new CfnOutput(this, 'BucketName', { value: this.store.bucket.bucketName });
    new CfnOutput(this, 'TableName', { value: this.store.table.tableName });
    new CfnOutput(this, 'ApplyQueueUrl', { value: this.pipeline.queue.queueUrl });
    new CfnOutput(this, 'DeadLetterQueueUrl', { value: this.pipeline.deadLetterQueue.queueUrl });
    new CfnOutput(this, 'SeedStateMachineArn', { value: this.seed.stateMachine.stateMachineArn });
    new CfnOutput(this, 'CompactionStateMachineArn', { value: this.compaction.stateMachine.stateMachineArn });
    new CfnOutput(this, 'RecoveryStateMachineArn', { value: this.recovery.stateMachine.stateMachineArn });
    new CfnOutput(this, 'AgentRoleArn', { value: this.agents.role.roleArn });
    new CfnOutput(this, 'AgentProfileArn', { value: this.agents.profile.attrProfileArn });
    new CfnOutput(this, 'OperatorRoleArn', { value: this.operators.role.roleArn });

    this.acknowledgeNagFindings(props.backupBucketNames ?? [], props.recoveryBucketNames ?? []);
  }

  /**
   * Every cdk-nag (AwsSolutions) finding we accept, each on the narrowest construct and
   * finding id (cdk-nag 3 uses CDK's Validations API; `Rule[Finding]` replaces v2 `appliesTo`).
   * Not needed: S1 on the access-log bucket and SQS3 on the DLQ; cdk-nag already recognises
   * a log-destination bucket and a queue that is some queue's DLQ.
   */
  private acknowledgeNagFindings(backupBucketNames: string[], recoveryBucketNames: string[]): void {
    const bucketId = this.getLogicalId(this.store.bucket.node.defaultChild as s3.CfnBucket);
    const pairsObjects = `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*]`;
    const xray = {
      id: 'AwsSolutions-IAM5[Resource::*]',
      reason: 'xray:PutTraceSegments and xray:PutTelemetryRecords (tracing ACTIVE) do not support resource-level permissions.',
    };
    const nodeRuntime = {
      id: 'AwsSolutions-L1',
      reason: 'The project targets nodejs22.x deliberately, matching the local Node 22 toolchain the handler is built and tested with.',
    };
    Validations.of(this.pipeline.applyFunction.role!).acknowledge(
      { id: pairsObjects, reason: `Read-only s3:GetObject: batches are per-pair keys under ${PAIRS_PREFIX} and pairs are created at run time, so the key set is unknown at deploy time.` },
      xray,
    );
    Validations.of(this.pipeline.applyFunction.node.defaultChild!).acknowledge(nodeRuntime);

    for (const fn of [this.seed.stepsFunction, this.seed.rangeFunction]) {
      Validations.of(fn.role!).acknowledge(
        { id: pairsObjects, reason: `Read-only s3:GetObject under ${PAIRS_PREFIX}: a pair's own backups, of pairs created at run time (replica/seeding.ts refuses any other pair's key before reading).` },
        { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*/base/*]`, reason: 'PutObject of base chunks and base manifests of pairs created at run time; never journal, history or backups.' },
        { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*/seed/*]`, reason: "PutObject of a seed run's work items and done markers, for pairs created at run time." },
        xray,
        ...backupBucketNames.map((name) => ({
          id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::${name}/*]`,
          reason: `Read-only s3:GetObject in backup bucket ${name}: backups are named by the operator when a pair is created.`,
        })),
      );
      Validations.of(fn.node.defaultChild!).acknowledge(nodeRuntime);
    }
    const compaction = this.compaction;
    Validations.of(compaction.unitFunction.role!).acknowledge(
      { id: pairsObjects, reason: `Read-only s3:GetObject under ${PAIRS_PREFIX}: a unit reads the batches, pieces and images of pairs created at run time.` },
      { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*/history/*]`, reason: 'PutObject of new history objects (runs, images, manifests) of pairs created at run time; never a delete.' },
      xray,
    );
    Validations.of(compaction.gcFunction.role!).acknowledge(
      { id: pairsObjects, reason: `Read-only s3:GetObject under ${PAIRS_PREFIX}: GC reads the manifests a lease holds.` },
      { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*/journal/*]`, reason: 'DeleteObject of folded journal batches, for pairs created at run time: GC is the only principal that deletes.' },
      { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*/history/*]`, reason: 'DeleteObject of history objects no held manifest references, for pairs created at run time.' },
      xray,
    );
    Validations.of(compaction.sweepFunction.role!).acknowledge(xray);
    for (const fn of [compaction.unitFunction, compaction.gcFunction, compaction.sweepFunction]) Validations.of(fn.node.defaultChild!).acknowledge(nodeRuntime);
    Validations.of(compaction.stateMachine.role).acknowledge(
      ...[compaction.unitFunction, compaction.gcFunction].map((fn) => ({
        id: `AwsSolutions-IAM5[Resource::<${this.getLogicalId(fn.node.defaultChild as lambda.CfnFunction)}.Arn>:*]`,
        reason: "lambda:InvokeFunction on the compaction functions' versions and aliases (qualified ARNs), as CDK grants for Lambda tasks.",
      })),
      { id: 'AwsSolutions-IAM5[Resource::*]', reason: 'X-Ray (tracing enabled) and CloudWatch Logs delivery (logs:CreateLogDelivery and friends) do not support resource-level permissions.' },
    );
    const recovery = this.recovery;
    for (const fn of [recovery.stepsFunction, recovery.rangeFunction]) {
      Validations.of(fn.role!).acknowledge(
        { id: pairsObjects, reason: `Read-only s3:GetObject under ${PAIRS_PREFIX}: a recovery reads the batches, pieces, images and base chunks of pairs created at run time.` },
        { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*/recoveries/*]`, reason: 'PutObject of range sums and EBS snapshot records of pairs created at run time; never journal or history.' },
        { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${RECOVERIES_PREFIX}*]`, reason: 'Raw images recovered into the replica bucket, named by the operator at run time, only under this prefix.' },
        ...recoveryBucketNames.map((name) => ({
          id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::${name}/*]`,
          reason: `Raw images recovered into bucket ${name}, which the deployer allowed; keys are named by the operator at run time.`,
        })),
        { id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:${Token.isUnresolved(this.region) ? '<AWS::Region>' : this.region}::snapshot/*]`, reason: 'EBS direct APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot) and tagging at StartSnapshot: snapshot ids are chosen by EBS at run time.' },
        xray,
      );
      Validations.of(fn.node.defaultChild!).acknowledge(nodeRuntime);
    }
    Validations.of(recovery.stateMachine.role).acknowledge(
      ...[recovery.stepsFunction, recovery.rangeFunction].map((fn) => ({
        id: `AwsSolutions-IAM5[Resource::<${this.getLogicalId(fn.node.defaultChild as lambda.CfnFunction)}.Arn>:*]`,
        reason: "lambda:InvokeFunction on the recovery functions' versions and aliases (qualified ARNs), as CDK grants for Lambda tasks.",
      })),
      { id: 'AwsSolutions-IAM5[Resource::*]', reason: 'X-Ray (tracing enabled) and CloudWatch Logs delivery (logs:CreateLogDelivery and friends) do not support resource-level permissions.' },
    );
    this.acknowledgeMapPolicy(recovery.stateMachine);
    const agentObjects = (suffix: string): string => `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}<aws:PrincipalTag/${AGENT_PAIR_TAG}>/${suffix}]`;
    Validations.of(this.agents.role).acknowledge(
      { id: agentObjects('journal/*'), reason: "PutObject of the agent's own pair's batches (the pair is its certificate's CN), create-only by the bucket policy; batch keys carry the seq." },
      { id: agentObjects('backups/*'), reason: "PutObject of the agent's own pair's backups (the pair is its certificate's CN), create-only by the bucket policy." },
      { id: agentObjects('*'), reason: "Read-only s3:GetObject of the agent's own pair's objects (start-up and the comparison with the replica read its journal and history)." },
    );
    const region = Token.isUnresolved(this.region) ? '<AWS::Region>' : this.region;
    const account = Token.isUnresolved(this.account) ? '<AWS::AccountId>' : this.account;
    const tableId = this.getLogicalId(this.store.table.node.defaultChild as dynamodb.CfnTable);
    Validations.of(this.operators.role).acknowledge(
      { id: pairsObjects, reason: `Read-only s3:GetObject under ${PAIRS_PREFIX}: recovery and export read the history of any pair, and pairs are created at run time.` },
      { id: `AwsSolutions-IAM5[Resource::<${bucketId}.Arn>/${PAIRS_PREFIX}*/recoveries/ebs/*]`, reason: "PutObject of the records of the CLI's own EBS recoveries (the next one starts from them), for pairs created at run time." },
      { id: `AwsSolutions-IAM5[Resource::<${tableId}.Arn>/index/*]`, reason: 'Queries of the table\'s indexes (ACRPs by tag, pairs), which CDK names by wildcard.' },
      ...[this.seed.stateMachine, this.compaction.stateMachine, this.recovery.stateMachine].map((m) => ({
        id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:states:${region}:${account}:execution:{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"${this.getLogicalId(m.node.defaultChild as sfn.CfnStateMachine)}"}]}]}:*]`,
        reason: 'DescribeExecution of the runs the CLI started, named at run time.',
      })),
      { id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:${region}::snapshot/*]`, reason: '`recover --to ebs` from the CLI: the EBS direct APIs on the snapshot it starts, whose id EBS chooses at run time; CreateVolume and RegisterImage from it.' },
      { id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:${region}:${account}:volume/*]`, reason: 'CreateVolume (and its tags at creation) from a recovered snapshot, for an operator who asks; the volume id is chosen at run time.' },
      { id: `AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ec2:${region}::image/*]`, reason: 'RegisterImage from a recovered snapshot, for an operator who asks; the image id is chosen at run time.' },
    );
    const machine = this.seed.stateMachine;
    Validations.of(machine.role).acknowledge(
      ...[this.seed.stepsFunction, this.seed.rangeFunction].map((fn) => ({
        id: `AwsSolutions-IAM5[Resource::<${this.getLogicalId(fn.node.defaultChild as lambda.CfnFunction)}.Arn>:*]`,
        reason: 'lambda:InvokeFunction on the seed functions\' versions and aliases (qualified ARNs), as CDK grants for Lambda tasks.',
      })),
      { id: 'AwsSolutions-IAM5[Resource::*]', reason: 'X-Ray (tracing enabled) and CloudWatch Logs delivery (logs:CreateLogDelivery and friends) do not support resource-level permissions.' },
    );
    this.acknowledgeMapPolicy(machine);
  }

  /** A Distributed Map's policy: it describes and stops its own child executions, named at run time. */
  private acknowledgeMapPolicy(machine: sfn.StateMachine): void {
    // cdk-nag writes concrete values where the stack's env has them, else the pseudo-parameter.
    const region = Token.isUnresolved(this.region) ? '<AWS::Region>' : this.region;
    const account = Token.isUnresolved(this.account) ? '<AWS::AccountId>' : this.account;
    const executions = `arn:<AWS::Partition>:states:${region}:${account}:execution:{"Fn::Select":[6,{"Fn::Split":[":",{"Ref":"${this.getLogicalId(machine.node.defaultChild as sfn.CfnStateMachine)}"}]}]}`;
    const mapPolicy = machine.node.tryFindChild('DistributedMapPolicy');
    if (mapPolicy) {
      Validations.of(mapPolicy).acknowledge(
        { id: `AwsSolutions-IAM5[Resource::${executions}:*]`, reason: 'The Distributed Map describes and stops its own child executions, whose names Step Functions chooses at run time.' },
        { id: `AwsSolutions-IAM5[Resource::${executions}/*:*]`, reason: 'The Distributed Map\'s map runs and their executions, named by Step Functions at run time.' },
      );
    }
  }
}

function architectureFromContext(value: unknown): lambda.Architecture {
  if (value === undefined || value === 'arm64') return lambda.Architecture.ARM_64;
  if (value === 'x86_64') return lambda.Architecture.X86_64;
  throw new InvalidArgumentError(`context ${LAMBDA_ARCHITECTURE_CONTEXT}=${String(value)}: expected arm64 or x86_64`);
}
