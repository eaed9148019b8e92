// PairOperations on the pair's partition of the livesync table (docs/design.md, "DynamoDB
// items"): `OPERATION` (the operation in progress, with a revision every transition moves)
// and `EVENT#{atMs:15}#{nonce}` (each transition). A transition is ONE transaction: the
// OPERATION item IF at the revision read, and the event.

import { randomBytes } from 'node:crypto';
import { TransactionCanceledException, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand, TransactWriteCommand } from '@aws-sdk/lib-dynamodb';
import type { PairEvent, PairOperation, PairOperations } from '../replica/ports';
import { dynamoClient } from './aws-clients';
import { documentClient, pairPk, queryAll } from './dynamo-table';

const OPERATION_SK = 'OPERATION';
const EVENT_PREFIX = 'EVENT#';

export class DynamoOperations implements PairOperations {
  private readonly doc: DynamoDBDocumentClient;

  constructor(
    readonly table: string,
    client: DynamoDBClient = dynamoClient(),
  ) {
    this.doc = documentClient(client);
  }

  async getOperation(pairId: string): Promise<{ operation?: PairOperation; rev: number }> {
    const out = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: pairPk(pairId), sk: OPERATION_SK }, ConsistentRead: true }));
    return { operation: out.Item?.operation as PairOperation | undefined, rev: (out.Item?.rev as number | undefined) ?? 0 };
  }

  async transition(pairId: string, rev: number, next: PairOperation | undefined, event: PairEvent): Promise<boolean> {
    const sk = `${EVENT_PREFIX}${String(event.atMs).padStart(15, '0')}#${randomBytes(4).toString('hex')}`;
    try {
      await this.doc.send(
        new TransactWriteCommand({
          TransactItems: [
            {
              Put: {
                TableName: this.table,
                Item: { pk: pairPk(pairId), sk: OPERATION_SK, kind: 'operation', rev: rev + 1, ...(next ? { operation: next } : {}) },
                ConditionExpression: rev === 0 ? 'attribute_not_exists(sk)' : 'rev = :rev',
                ...(rev === 0 ? {} : { ExpressionAttributeValues: { ':rev': rev } }),
              },
            },
            { Put: { TableName: this.table, Item: { pk: pairPk(pairId), sk, kind: 'event', ...event } } },
          ],
        }),
      );
      return true;
    } catch (err) {
      if (err instanceof TransactionCanceledException && err.CancellationReasons?.[0]?.Code === 'ConditionalCheckFailed') return false;
      throw err;
    }
  }

  async listEvents(pairId: string): Promise<PairEvent[]> {
    const items = await queryAll(this.doc, this.table, { KeyConditionExpression: 'pk = :pk AND begins_with(sk, :e)', ExpressionAttributeValues: { ':pk': pairPk(pairId), ':e': EVENT_PREFIX } });
    return items.map(({ pk: _pk, sk: _sk, kind: _kind, ...e }) => e as PairEvent);
  }
}
