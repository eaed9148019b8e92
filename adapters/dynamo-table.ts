// What DynamoIndex and DynamoHistory share on the one table: the keys of a pair's items
// (docs/design.md, "DynamoDB items"), the document client as both configure it, and a
// conditional write's outcome as a boolean.

import { ConditionalCheckFailedException, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, QueryCommand, type PutCommand, type QueryCommandInput, type UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { seqKey } from '../core/keys';
import { dynamoClient } from './aws-clients';

/** Every item of a pair shares this partition key. */
export const pairPk = (pairId: string): string => `PAIR#${pairId}`;
export const PAIR_SK = 'PAIR';
export const batchSk = (seq: number): string => `BATCH#${seqKey(seq)}`;

/** A document client that leaves undefined fields out of the items it writes. */
export const documentClient = (client: DynamoDBClient = dynamoClient()): DynamoDBDocumentClient =>
  DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });

/** Sends a conditional write: false if its condition failed (nothing written). */
export async function sendConditional(doc: DynamoDBDocumentClient, cmd: UpdateCommand | PutCommand): Promise<boolean> {
  try {
    await doc.send(cmd as UpdateCommand);
    return true;
  } catch (err) {
    if (err instanceof ConditionalCheckFailedException) return false;
    throw err;
  }
}

/** Every item a Query finds, page after page, up to `limit`: strongly consistent on the table (an index cannot be). */
export async function queryAll(doc: DynamoDBDocumentClient, table: string, input: Omit<QueryCommandInput, 'TableName'>, limit = Infinity): Promise<Record<string, any>[]> {
  const out: Record<string, any>[] = [];
  let start: Record<string, unknown> | undefined;
  do {
    const page = await doc.send(
      new QueryCommand({
        TableName: table,
        ...input,
        ConsistentRead: input.IndexName ? undefined : true,
        ExclusiveStartKey: start,
        Limit: Number.isFinite(limit) ? limit - out.length : undefined,
      }),
    );
    out.push(...(page.Items ?? []));
    start = page.LastEvaluatedKey;
  } while (start && out.length < limit);
  return out;
}
