// The RP Store as configured by the environment: LIVESYNC_BUCKET / LIVESYNC_TABLE, and
// endpoints from AWS_ENDPOINT_URL* (set by `livesync local up`, LocalStack, or nothing in AWS).

import { DynamoIndex } from './dynamo-index';
import { S3ObjectStore } from './s3-object-store';

export interface RpStore {
  bucket: string;
  table: string;
  store: S3ObjectStore;
  index: DynamoIndex;
}

/**
 * Whether an RP Store outside this host is configured: an endpoint (AWS_ENDPOINT_URL for
 * LocalStack, or per service), or AWS itself with LIVESYNC_TARGET=aws.
 */
export function usesExternalStack(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env.AWS_ENDPOINT_URL || env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL_DYNAMODB || env.LIVESYNC_TARGET === 'aws');
}

export function rpStoreFromEnv(env: NodeJS.ProcessEnv = process.env): RpStore {
  const bucket = env.LIVESYNC_BUCKET;
  const table = env.LIVESYNC_TABLE;
  if (!bucket || !table) {
    throw new Error('LIVESYNC_BUCKET and LIVESYNC_TABLE must be set (the stack outputs BucketName and TableName; `livesync local up` prints them)');
  }
  return { bucket, table, store: new S3ObjectStore(bucket), index: new DynamoIndex(table) };
}
