// The RP Store as configured by the environment: LIVESYNC_BUCKET / LIVESYNC_TABLE, and
// endpoints from AWS_ENDPOINT_URL* (set by `livesync local up`, LocalStack, or nothing in AWS).

import type { ObjectDeleter } from '../replica/ports';
import { DynamoHistory } from './dynamo-history';
import { DynamoIndex } from './dynamo-index';
import { S3ObjectStore } from './s3-object-store';

export interface RpStore {
  bucket: string;
  table: string;
  store: S3ObjectStore;
  index: DynamoIndex;
  /** The history's index: manifest pointer, leases, GC bookkeeping (same table). */
  history: DynamoHistory;
  /** Deletes objects: only the history's GC uses it (its role is the only one granted s3:DeleteObject). The same S3 client as `store`. */
  deleter: ObjectDeleter;
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
  const store = new S3ObjectStore(bucket);
  return { bucket, table, store, index: new DynamoIndex(table), history: new DynamoHistory(table), deleter: store };
}
