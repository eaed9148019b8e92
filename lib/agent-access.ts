import { Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as rolesanywhere from 'aws-cdk-lib/aws-rolesanywhere';
import { Construct } from 'constructs';
import { AGENT_PAIR, AGENT_PAIR_TAG } from './names';
import type { ReplicaStore } from './replica-store';

export interface AgentAccessProps {
  readonly store: ReplicaStore;
  /**
   * IAM Roles Anywhere trust anchors (ARNs) whose certificates may take the agent role.
   * @default any trust anchor of this account (the deployer controls which exist)
   */
  readonly trustAnchorArns?: string[];
}

/**
 * The credentials of source agents: one role for every pair, taken through IAM Roles
 * Anywhere with a certificate per source host whose Common Name is the host's pair id. The
 * role's policies name the pair only through that principal tag (attribute-based access), so
 * an agent reaches its own pair's keys and items and nothing else, however many pairs there
 * are. A Roles Anywhere profile offers the role (`aws_signing_helper credential-process
 * --profile-arn … --role-arn … --trust-anchor-arn …`, README "Agent credentials").
 */
export class AgentAccess extends Construct {
  readonly role: iam.Role;
  readonly profile: rolesanywhere.CfnProfile;

  constructor(scope: Construct, id: string, props: AgentAccessProps) {
    super(scope, id);
    const pairTag = `aws:PrincipalTag/${AGENT_PAIR_TAG}`;
    const anchors = props.trustAnchorArns ?? [];
    const source = anchors.length ? { ArnEquals: { 'aws:SourceArn': anchors } } : { StringEquals: { 'aws:SourceAccount': Stack.of(this).account } };
    this.role = new iam.Role(this, 'Role', {
      description: 'livesync source agents: one pair each, the pair being the Common Name of the host certificate',
      assumedBy: new RolesAnywherePrincipal({
        ...source,
        // A Common Name is a pair id: no wildcard or path character that would widen the
        // resources it is substituted into (`${*}` and `${?}` are IAM's literal * and ?).
        StringNotLike: { [pairTag]: ['*${*}*', '*${?}*', '*/*'] },
        Null: { [pairTag]: 'false' },
      }),
    });
    props.store.grantAgent(this.role, AGENT_PAIR);
    this.profile = new rolesanywhere.CfnProfile(this, 'Profile', {
      name: `${Stack.of(this).stackName}-agents`,
      roleArns: [this.role.roleArn],
      enabled: true,
      // Sessions are short: a lost host's credentials lapse within the hour.
      durationSeconds: 3600,
    });
  }
}

/** IAM Roles Anywhere as a role's principal: one trust statement with the three actions it needs. */
class RolesAnywherePrincipal extends iam.ServicePrincipal implements iam.IAssumeRolePrincipal {
  constructor(private readonly trustConditions: Record<string, unknown>) {
    super('rolesanywhere.amazonaws.com');
  }

  addToAssumeRolePolicy(document: iam.PolicyDocument): void {
    document.addStatements(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal(this.service)],
        // The certificate's fields become session tags (the pair), its CN the source identity CloudTrail shows.
        actions: ['sts:AssumeRole', 'sts:TagSession', 'sts:SetSourceIdentity'],
        conditions: this.trustConditions,
      }),
    );
  }
}
