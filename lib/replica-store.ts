import { Aws, Duration, Fn, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import type { ObjectLockOption } from './object-lock';
import { ACRP_INDEX, ACRP_KEYS, ENV, PAIRS_INDEX, PAIRS_KEYS, PAIRS_PREFIX, RECOVERIES_PREFIX, TABLE_KEYS, TTL_ATTRIBUTE } from './names';

export interface ReplicaStoreProps {
  /** Applies to both buckets and the table. @default RemovalPolicy.RETAIN (replicas are the product) */
  readonly removalPolicy?: RemovalPolicy;
  /** S3 Object Lock on the replica bucket (lib/object-lock.ts). @default none */
  readonly objectLock?: ObjectLockOption;
}

/**
 * The RP Store's storage: a bucket for journal batches and block data under `pairs/`,
 * and one DynamoDB table (single-table design) for pairs, batches and recovery points.
 */
export class ReplicaStore extends Construct {
  readonly bucket: s3.Bucket;
  /**
   * The replica bucket's ARN built from its name, not a reference to the bucket: for the
   * policies the bucket itself must wait for (the apply queue's, which S3 checks when the
   * bucket's notification is created). A reference would make a cycle.
   */
  readonly bucketArnByName: string;
  readonly accessLogBucket: s3.Bucket;
  readonly table: dynamodb.Table;

  constructor(scope: Construct, id: string, props: ReplicaStoreProps = {}) {
    super(scope, id);
    const removalPolicy = props.removalPolicy ?? RemovalPolicy.RETAIN;
    const lock = props.objectLock;
    // Grant S3 log delivery through the log bucket's policy, not the legacy ACL
    // (what AWS recommends), whatever the app's cdk.json says; scoped to this construct.
    this.node.setContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy', true);

    this.accessLogBucket = new s3.Bucket(this, 'AccessLogBucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      // Log delivery is granted by bucket policy; ACLs stay disabled.
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      removalPolicy,
    });

    // Named from the stack's id (the UUID CloudFormation gives each stack), so the name is
    // known without referring to the bucket, unique per stack, and new if a stack is
    // deleted (its bucket retained) and deployed again: `livesync-` + 36 characters.
    const bucketName = Fn.join('-', ['livesync', Fn.select(2, Fn.split('/', Aws.STACK_ID))]);
    this.bucketArnByName = `arn:${Stack.of(this).partition}:s3:::${bucketName}`;
    this.bucket = new s3.Bucket(this, 'Bucket', {
      bucketName,
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      // Pruning must really free storage; noncurrent versions would keep pruned data alive.
      // Object Lock needs versioning: a deleted object's version goes a day after its retention.
      versioned: props.objectLock !== undefined,
      objectLockDefaultRetention: lock && (lock.mode === 'COMPLIANCE' ? s3.ObjectLockRetention.compliance(Duration.days(lock.days)) : s3.ObjectLockRetention.governance(Duration.days(lock.days))),
      lifecycleRules: [
        { id: 'abort-incomplete-multipart', abortIncompleteMultipartUploadAfter: Duration.days(7) },
        ...(lock ? [{ id: 'pruned-versions', noncurrentVersionExpiration: Duration.days(1), expiredObjectDeleteMarker: true }] : []),
      ],
      serverAccessLogsBucket: this.accessLogBucket,
      serverAccessLogsPrefix: 'replica-bucket/',
      removalPolicy,
    });

    this.table = new dynamodb.Table(this, 'Table', {
      partitionKey: { name: TABLE_KEYS.pk, type: dynamodb.AttributeType.STRING },
      sortKey: { name: TABLE_KEYS.sk, type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      timeToLiveAttribute: TTL_ATTRIBUTE,
      stream: dynamodb.StreamViewType.NEW_AND_OLD_IMAGES,
      removalPolicy,
    });
    this.table.addGlobalSecondaryIndex({
      indexName: ACRP_INDEX,
      partitionKey: { name: ACRP_KEYS.pk, type: dynamodb.AttributeType.STRING },
      sortKey: { name: ACRP_KEYS.sk, type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.ALL,
    });
    this.table.addGlobalSecondaryIndex({
      indexName: PAIRS_INDEX,
      partitionKey: { name: PAIRS_KEYS.pk, type: dynamodb.AttributeType.STRING },
      sortKey: { name: PAIRS_KEYS.sk, type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.KEYS_ONLY,
    });
  }

  /**
   * The bucket policy that keeps stored history out of reach of any principal's own grants
   * (docs/design.md, "Trust boundaries"):
   * - what the source writes (`journal/`, `backups/` of every pair) is created only with
   *   `If-None-Match: *`, so it can never be overwritten, whoever asks;
   * - nothing under `pairs/` is deleted by anyone but `deleter`, the GC's role.
   */
  protectHistory(deleter: iam.IRole): void {
    const sourceWritten = [this.bucket.arnForObjects(`${PAIRS_PREFIX}*/journal/*`), this.bucket.arnForObjects(`${PAIRS_PREFIX}*/backups/*`)];
    this.bucket.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'CreateOnlySourceWrites',
        effect: iam.Effect.DENY,
        principals: [new iam.AnyPrincipal()],
        actions: ['s3:PutObject'],
        resources: sourceWritten,
        conditions: { Null: { 's3:if-none-match': 'true' } },
      }),
    );
    this.bucket.addToResourcePolicy(
      new iam.PolicyStatement({
        sid: 'OnlyGcDeletes',
        effect: iam.Effect.DENY,
        principals: [new iam.AnyPrincipal()],
        actions: ['s3:DeleteObject', 's3:DeleteObjectVersion'],
        resources: [this.pairsObjectsArn],
        conditions: { ArnNotEquals: { 'aws:PrincipalArn': deleter.roleArn } },
      }),
    );
  }

  /** The object ARN pattern for everything the replication writes (`pairs/*`). */
  get pairsObjectsArn(): string {
    return this.bucket.arnForObjects(`${PAIRS_PREFIX}*`);
  }

  /**
   * Least privilege for the apply handler: it only reads batches and records their
   * effect with conditional writes. It never deletes items (pruning is TTL's job) nor scans.
   */
  grantApply(fn: lambda.IFunction): iam.Grant[] {
    const grants = [
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:GetObject'], resourceArns: [this.pairsObjectsArn] }),
      // The handler must tell "gone" (ignore) from "denied" (retry).
      this.grantListPairs(fn),
      iam.Grant.addToPrincipal({
        grantee: fn,
        // ConditionCheckItem: TransactWriteItems has no action of its own and needs it per condition.
        actions: ['GetItem', 'PutItem', 'UpdateItem', 'Query', 'ConditionCheckItem'].map((a) => `dynamodb:${a}`),
        // The one GSI by name rather than `index/*`: no wildcard to justify.
        resourceArns: [this.table.tableArn, `${this.table.tableArn}/index/${ACRP_INDEX}`],
      }),
    ];
    this.setEnvironment(fn);
    return grants;
  }

  /**
   * Least privilege for the source agent of one pair: write that pair's journal objects and
   * backups (create-only, which the bucket policy enforces); read that pair's objects and
   * items, which start-up and the comparison with the replica need (docs/design.md,
   * "Agent"). Nothing of other pairs, no deletes, no index writes. `pairId` is a pair, or
   * AGENT_PAIR (the policy variable the deployed agent role uses: the pair from the session's
   * principal tag, lib/agent-access.ts).
   */
  grantAgent(grantee: iam.IGrantable, pairId: string): iam.Grant[] {
    const pairPrefix = `${PAIRS_PREFIX}${pairId}/`;
    return [
      // Journal batches, and the backups `livesync backup` takes (the seed workflow reads them).
      iam.Grant.addToPrincipal({ grantee, actions: ['s3:PutObject'], resourceArns: [this.bucket.arnForObjects(`${pairPrefix}journal/*`), this.bucket.arnForObjects(`${pairPrefix}backups/*`)] }),
      iam.Grant.addToPrincipal({ grantee, actions: ['s3:GetObject'], resourceArns: [this.bucket.arnForObjects(`${pairPrefix}*`)] }),
      // Its start-up lists the journal past the watermark (uploads of the last run not registered yet).
      iam.Grant.addToPrincipal({ grantee, actions: ['s3:ListBucket'], resourceArns: [this.bucket.bucketArn], conditions: { StringLike: { 's3:prefix': [`${pairPrefix}*`] } } }),
      iam.Grant.addToPrincipal({
        grantee,
        actions: ['dynamodb:GetItem', 'dynamodb:Query'],
        resourceArns: [this.table.tableArn],
        // Only the pair's own items: they all share the partition key PAIR#{pair}.
        conditions: { 'ForAllValues:StringEquals': { 'dynamodb:LeadingKeys': [`PAIR#${pairId}`] } },
      }),
    ];
  }

  /**
   * Least privilege for the seed workflow's functions: read backups (in the replica bucket
   * under `pairs/` — a pair's own `backups/`, which replica/seeding.ts checks before reading —
   * or in the given buckets), write base chunks (`base/`) and seed work objects (`seed/`),
   * update the pair and write its first RP. No deletes, no scans, no journal or history writes.
   */
  grantSeed(fn: lambda.IFunction, backupBuckets: s3.IBucket[]): iam.Grant[] {
    const grants = [
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:GetObject'], resourceArns: [this.pairsObjectsArn] }),
      // It writes base chunks and manifests and its work objects; never journal/, history/ or backups/.
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:PutObject'], resourceArns: [this.bucket.arnForObjects(`${PAIRS_PREFIX}*/base/*`), this.bucket.arnForObjects(`${PAIRS_PREFIX}*/seed/*`)] }),
      // A missing chunk must read as MISSING_CHUNK, not as access denied.
      this.grantListPairs(fn),
      this.grantItems(fn, ['GetItem', 'PutItem', 'UpdateItem', 'Query']),
    ];
    for (const b of backupBuckets) {
      grants.push(
        iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:GetObject'], resourceArns: [b.arnForObjects('*')] }),
        iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:ListBucket'], resourceArns: [b.bucketArn] }),
      );
    }
    this.setEnvironment(fn);
    return grants;
  }

  /**
   * Least privilege for a compaction unit (docs/design.md, "History"): read the pair's
   * objects (journal, base, history), write new history objects, and take the lease and
   * publish with conditional writes. It deletes nothing: an object it stops referencing is
   * GC's to delete, after the grace period.
   */
  grantCompact(fn: lambda.IFunction): iam.Grant[] {
    const grants = [
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:GetObject'], resourceArns: [this.pairsObjectsArn] }),
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:PutObject'], resourceArns: [this.bucket.arnForObjects(`${PAIRS_PREFIX}*/history/*`)] }),
      this.grantListPairs(fn),
      this.grantItems(fn, ['GetItem', 'PutItem', 'UpdateItem', 'Query', 'ConditionCheckItem']),
    ];
    this.setEnvironment(fn);
    return grants;
  }

  /**
   * The only principal that deletes: GC removes folded journal batches and history objects
   * no manifest version still held references (their index entries first), and lists the
   * history for the orphan sweep. Nothing else under `pairs/` (base chunks, backups, seed
   * objects) is deletable by it.
   */
  grantGc(fn: lambda.IFunction): iam.Grant[] {
    const grants = [
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:GetObject'], resourceArns: [this.pairsObjectsArn] }),
      iam.Grant.addToPrincipal({
        grantee: fn,
        actions: ['s3:DeleteObject'],
        resourceArns: [this.bucket.arnForObjects(`${PAIRS_PREFIX}*/journal/*`), this.bucket.arnForObjects(`${PAIRS_PREFIX}*/history/*`)],
      }),
      this.grantListPairs(fn),
      this.grantItems(fn, ['GetItem', 'Query', 'UpdateItem', 'DeleteItem', 'BatchWriteItem']),
    ];
    this.setEnvironment(fn);
    return grants;
  }

  /**
   * The recovery workflow's functions: read the pair's objects (journal, base, history),
   * write under each pair's `recoveries/` (range sums, snapshot records), write raw images under
   * the bucket's `recoveries/` prefix and in the deployer's target buckets (multipart:
   * PutObject, AbortMultipartUpload; HEAD to check the result), keep run and range items
   * and the reader lease (released by letting it lapse). It never writes journal or history
   * objects and deletes nothing, index items included.
   */
  grantRecover(fn: lambda.IFunction, targetBuckets: s3.IBucket[]): iam.Grant[] {
    const images = [this.bucket.arnForObjects(`${RECOVERIES_PREFIX}*`), ...targetBuckets.map((b) => b.arnForObjects('*'))];
    const grants = [
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:GetObject'], resourceArns: [this.pairsObjectsArn, ...images] }),
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:PutObject'], resourceArns: [this.bucket.arnForObjects(`${PAIRS_PREFIX}*/recoveries/*`), ...images] }),
      iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:AbortMultipartUpload'], resourceArns: images }),
      iam.Grant.addToPrincipal({
        grantee: fn,
        actions: ['s3:ListBucket'],
        resourceArns: [this.bucket.bucketArn],
        conditions: { StringLike: { 's3:prefix': [`${PAIRS_PREFIX}*`, `${RECOVERIES_PREFIX}*`] } },
      }),
      ...targetBuckets.map((b) => iam.Grant.addToPrincipal({ grantee: fn, actions: ['s3:ListBucket'], resourceArns: [b.bucketArn] })),
      // No ConditionCheckItem: its transaction (a range done) is a conditional Put and Update.
      this.grantItems(fn, ['GetItem', 'PutItem', 'UpdateItem', 'Query']),
    ];
    this.setEnvironment(fn);
    return grants;
  }

  /** The schedule's sweep: list pairs (the sparse `pairs` index, keys only) and nothing else. */
  grantSweep(fn: lambda.IFunction): iam.Grant[] {
    const grants = [iam.Grant.addToPrincipal({ grantee: fn, actions: ['dynamodb:Query'], resourceArns: [`${this.table.tableArn}/index/${PAIRS_INDEX}`] })];
    this.setEnvironment(fn);
    return grants;
  }

  /** DynamoDB item actions (`GetItem`, …) on the table. */
  private grantItems(fn: lambda.IFunction, actions: string[]): iam.Grant {
    return iam.Grant.addToPrincipal({ grantee: fn, actions: actions.map((a) => `dynamodb:${a}`), resourceArns: [this.table.tableArn] });
  }

  /** Without ListBucket S3 answers a missing key with 403 instead of 404. Limited to the pairs/ prefix. */
  private grantListPairs(fn: lambda.IFunction): iam.Grant {
    return iam.Grant.addToPrincipal({
      grantee: fn,
      actions: ['s3:ListBucket'],
      resourceArns: [this.bucket.bucketArn],
      conditions: { StringLike: { 's3:prefix': [`${PAIRS_PREFIX}*`] } },
    });
  }

  /** The handler's resource names (lambdas/config.ts reads them). */
  private setEnvironment(fn: lambda.IFunction): void {
    if (fn instanceof lambda.Function) {
      fn.addEnvironment(ENV.bucket, this.bucket.bucketName);
      fn.addEnvironment(ENV.table, this.table.tableName);
    }
  }

  /** For the operator's role (lib/operator-access.ts; never a Lambda): reads of `pairs/*`, its recoveries' records, and the items. */
  grantOperator(grantee: iam.IGrantable): iam.Grant[] {
    return [
      // Reads of every pair; writes only of what the CLI records (a recovery's snapshot sums); never a delete.
      iam.Grant.addToPrincipal({ grantee, actions: ['s3:GetObject'], resourceArns: [this.bucket.arnForObjects(`${PAIRS_PREFIX}*`)] }),
      iam.Grant.addToPrincipal({ grantee, actions: ['s3:PutObject'], resourceArns: [this.bucket.arnForObjects(`${PAIRS_PREFIX}*/recoveries/ebs/*`)] }),
      iam.Grant.addToPrincipal({ grantee, actions: ['s3:ListBucket'], resourceArns: [this.bucket.bucketArn], conditions: { StringLike: { 's3:prefix': [`${PAIRS_PREFIX}*`] } } }),
      // Items: pairs, RPs, pins, operations, recovery runs, its reader leases (released by
      // expiring them: the table's TTL removes them). No delete (GC's) and no scan.
      iam.Grant.addToPrincipal({
        grantee,
        actions: ['dynamodb:GetItem', 'dynamodb:BatchGetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:ConditionCheckItem'],
        resourceArns: [this.table.tableArn, `${this.table.tableArn}/index/*`],
      }),
    ];
  }
}
