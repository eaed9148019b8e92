// Local resources derived from the synthesized CDK template, so the local schema is the
// deployed one: the DynamoDB table, the journal notification filter, the queue's redrive.

import type { CreateTableCommandInput } from '@aws-sdk/client-dynamodb';

type Resource = { Type: string; Properties: Record<string, any> };

export interface LocalSchema {
  table: CreateTableCommandInput;
  ttlAttribute?: string;
  /**
   * S3 notification filter for journal objects: the replica bucket's own
   * NotificationConfiguration. Undefined when the template has none, as a stack whose
   * notification came from a custom resource has none in LocalStack community.
   */
  notification?: { prefix: string; suffix: string };
  maxReceiveCount: number;
  /** The apply queue's visibility timeout (6 × the apply function's timeout). */
  visibilityTimeoutSec: number;
}

export function schemaFromTemplate(template: { Resources: Record<string, Resource> }, tableName: string): LocalSchema {
  const resources = Object.values(template.Resources);
  const one = (type: string, pick: (r: Resource) => boolean = () => true): Resource => {
    const found = resources.filter((r) => r.Type === type && pick(r));
    if (found.length !== 1) throw new Error(`template has ${found.length} ${type} resources, expected 1`);
    return found[0];
  };
  const t = one('AWS::DynamoDB::Table').Properties;
  const table: CreateTableCommandInput = {
    TableName: tableName,
    KeySchema: t.KeySchema,
    AttributeDefinitions: t.AttributeDefinitions,
    BillingMode: t.BillingMode ?? 'PAY_PER_REQUEST',
    GlobalSecondaryIndexes: t.GlobalSecondaryIndexes,
    StreamSpecification: t.StreamSpecification ? { StreamEnabled: true, StreamViewType: t.StreamSpecification.StreamViewType } : undefined,
  };
  const queueConfigs = resources.flatMap((r) => (r.Type === 'AWS::S3::Bucket' ? ((r.Properties.NotificationConfiguration?.QueueConfigurations ?? []) as any[]) : []));
  if (queueConfigs.length > 1) throw new Error(`expected at most one queue notification, found ${queueConfigs.length}`);
  const rules: { Name: string; Value: string }[] = queueConfigs[0]?.Filter?.S3Key?.Rules ?? [];
  const rule = (name: string): string => rules.find((r) => r.Name.toLowerCase() === name)?.Value ?? '';
  const queue = one('AWS::SQS::Queue', (r) => r.Properties.RedrivePolicy !== undefined).Properties;
  return {
    table,
    ttlAttribute: t.TimeToLiveSpecification?.Enabled ? t.TimeToLiveSpecification.AttributeName : undefined,
    notification: queueConfigs.length ? { prefix: rule('prefix'), suffix: rule('suffix') } : undefined,
    maxReceiveCount: queue.RedrivePolicy.maxReceiveCount,
    visibilityTimeoutSec: queue.VisibilityTimeout ?? 30,
  };
}
