import { Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { ReplicaStore } from './replica-store';

export interface OperatorAccessProps {
  readonly store: ReplicaStore;
  /** The workflows an operator starts and watches (seed, compaction, recovery). */
  readonly workflows: sfn.IStateMachine[];
  /**
   * Who may take the role (ARNs of users or roles).
   * @default this account: its IAM policies then say which of its principals may
   */
  readonly principalArns?: string[];
}

/**
 * The credentials of the operator's CLI: pairs, retention, pins, recoveries, exports,
 * failover. Separate from the agents' role (one pair's journal each) and from the workflows'
 * roles; it deletes no object (the bucket policy would refuse it anyway: only GC deletes) and
 * writes only the records of its own recoveries into the bucket.
 */
export class OperatorAccess extends Construct {
  readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: OperatorAccessProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const principals = props.principalArns?.length ? props.principalArns.map((a) => new iam.ArnPrincipal(a)) : [new iam.AccountRootPrincipal()];
    this.role = new iam.Role(this, 'Role', {
      description: 'livesync operators: pairs, retention, recovery, export and failover through the CLI',
      assumedBy: new iam.CompositePrincipal(...principals),
      maxSessionDuration: Duration.hours(1),
    });
    props.store.grantOperator(this.role);
    for (const w of props.workflows) {
      w.grantStartExecution(this.role);
      w.grantExecution(this.role, 'states:DescribeExecution'); // the CLI follows its runs
    }
    // `recover --to ebs` writes the snapshot from the CLI through the EBS direct APIs (its
    // id is known only once started) and can make it a volume or an image.
    const snapshots = `arn:${stack.partition}:ec2:${stack.region}::snapshot/*`;
    this.role.addToPolicy(
      new iam.PolicyStatement({
        actions: ['ebs:StartSnapshot', 'ebs:PutSnapshotBlock', 'ebs:CompleteSnapshot', 'ebs:ListSnapshotBlocks', 'ebs:ListChangedBlocks', 'ebs:GetSnapshotBlock'],
        resources: [snapshots],
      }),
    );
    this.role.addToPolicy(new iam.PolicyStatement({ actions: ['ec2:CreateTags'], resources: [snapshots, stack.formatArn({ service: 'ec2', resource: 'volume', resourceName: '*' })], conditions: { StringEquals: { 'ec2:CreateAction': ['StartSnapshot', 'CreateVolume'] } } }));
    this.role.addToPolicy(new iam.PolicyStatement({ actions: ['ec2:CreateVolume'], resources: [snapshots, stack.formatArn({ service: 'ec2', resource: 'volume', resourceName: '*' })] }));
    this.role.addToPolicy(new iam.PolicyStatement({ actions: ['ec2:RegisterImage'], resources: [snapshots, `arn:${stack.partition}:ec2:${stack.region}::image/*`] }));
  }
}
