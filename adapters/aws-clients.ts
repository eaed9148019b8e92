// The one place AWS SDK clients are built (handlers, CLI, agent, local stack, benches, tests).
// Endpoints come from the environment (AWS_ENDPOINT_URL, or per service AWS_ENDPOINT_URL_S3 …),
// read by the SDK itself, or from an explicit `endpoint`: never hard-coded here.
//
// S3: whenever an endpoint is configured, buckets are addressed path-style
// (`http://host:port/bucket/key`). Virtual-hosted style (`bucket.host`) needs a DNS name per
// bucket: `bucket.localhost` does not resolve, so with LocalStack's documented default
// `http://localhost:4566` every call failed ENOTFOUND. AWS itself (no endpoint) keeps the
// SDK's default.

import { DynamoDBClient, type DynamoDBClientConfig } from '@aws-sdk/client-dynamodb';
import { EBSClient, type EBSClientConfig } from '@aws-sdk/client-ebs';
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { SFNClient, type SFNClientConfig } from '@aws-sdk/client-sfn';
import { SQSClient, type SQSClientConfig } from '@aws-sdk/client-sqs';
import { S3GetHandler } from './s3-get-handler';

/**
 * An S3 client; path-style whenever an endpoint is configured (unless `forcePathStyle` says
 * otherwise). Its GETs read their bodies straight into their buffers (S3GetHandler), unless
 * `config` brings a handler of its own or LIVESYNC_S3_NODE_HTTP=1 keeps the SDK's.
 */
export function s3Client(config: S3ClientConfig = {}, env: NodeJS.ProcessEnv = process.env): S3Client {
  const requestHandler = config.requestHandler ?? (env.LIVESYNC_S3_NODE_HTTP === '1' ? undefined : new S3GetHandler());
  return new S3Client({ ...config, requestHandler, forcePathStyle: config.forcePathStyle ?? Boolean(config.endpoint || endpointFor('S3', env)) });
}

export function dynamoClient(config: DynamoDBClientConfig = {}): DynamoDBClient {
  return new DynamoDBClient(config);
}

export function sqsClient(config: SQSClientConfig = {}): SQSClient {
  return new SQSClient(config);
}

export function sfnClient(config: SFNClientConfig = {}): SFNClient {
  return new SFNClient(config);
}

/** The EBS direct APIs (recovery into a snapshot). */
export function ebsClient(config: EBSClientConfig = {}): EBSClient {
  return new EBSClient(config);
}

/** The endpoint the SDK would use for a service (`S3`, `DYNAMODB`, `SQS`, `SFN`, `EBS`, `EC2`) under `env`: its own variable, else AWS_ENDPOINT_URL. */
export function endpointFor(service: 'S3' | 'DYNAMODB' | 'SQS' | 'SFN' | 'EBS' | 'EC2', env: NodeJS.ProcessEnv = process.env): string | undefined {
  return env[`AWS_ENDPOINT_URL_${service}`] || env.AWS_ENDPOINT_URL || undefined;
}
