// RecoveryRuns on the pair's partition of the livesync table (docs/design.md, "DynamoDB
// items"): `RECOVERY#{id}` (the run: target, lease, counters, status) and
// `RECOVERY#{id}#RANGE#{disk}#{index:6}` (a finished range). A range is recorded with ONE
// transaction: its item IF absent, and the run's counters ADDed, so a retried range counts once.

import { TransactionCanceledException, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand, PutCommand, TransactWriteCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import type { RecoveryRangeDone, RecoveryRun, RecoveryRuns } from '../replica/ports';
import { dynamoClient } from './aws-clients';
import { documentClient, pairPk, queryAll, sendConditional } from './dynamo-table';

const RUN_PREFIX = 'RECOVERY#';
const runSk = (id: string): string => `${RUN_PREFIX}${id}`;
const rangeSk = (id: string, disk: string, index: number): string => `${runSk(id)}#RANGE#${disk}#${String(index).padStart(6, '0')}`;

export class DynamoRecoveries implements RecoveryRuns {
  private readonly doc: DynamoDBDocumentClient;

  constructor(
    readonly table: string,
    client: DynamoDBClient = dynamoClient(),
  ) {
    this.doc = documentClient(client);
  }

  async createRecovery(run: RecoveryRun): Promise<boolean> {
    return sendConditional(this.doc, new PutCommand({ TableName: this.table, Item: { pk: pairPk(run.pairId), sk: runSk(run.id), kind: 'recovery', ...run }, ConditionExpression: 'attribute_not_exists(sk)' }));
  }

  async getRecovery(pairId: string, id: string): Promise<RecoveryRun | undefined> {
    const out = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: pairPk(pairId), sk: runSk(id) }, ConsistentRead: true }));
    return out.Item ? runOf(out.Item) : undefined;
  }

  async updateRecovery(pairId: string, id: string, fields: Partial<Omit<RecoveryRun, 'id' | 'pairId'>>): Promise<void> {
    const set = Object.entries({ updatedMs: Date.now(), ...fields }).filter(([, v]) => v !== undefined);
    await this.doc.send(
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: runSk(id) },
        UpdateExpression: `SET ${set.map((_, i) => `#f${i} = :v${i}`).join(', ')}`,
        ConditionExpression: 'attribute_exists(sk)',
        ExpressionAttributeNames: Object.fromEntries(set.map(([k], i) => [`#f${i}`, k])),
        ExpressionAttributeValues: Object.fromEntries(set.map(([, v], i) => [`:v${i}`, v])),
      }),
    );
  }

  async recordRange(pairId: string, id: string, range: RecoveryRangeDone, nowMs: number): Promise<boolean> {
    try {
      await this.doc.send(
        new TransactWriteCommand({
          TransactItems: [
            { Put: { TableName: this.table, Item: { pk: pairPk(pairId), sk: rangeSk(id, range.disk, range.index), kind: 'recovery-range', ...range, doneMs: nowMs }, ConditionExpression: 'attribute_not_exists(sk)' } },
            {
              Update: {
                TableName: this.table,
                Key: { pk: pairPk(pairId), sk: runSk(id) },
                UpdateExpression: 'ADD doneBytes :b, rangesDone :one SET updatedMs = :now',
                ConditionExpression: 'attribute_exists(sk)',
                ExpressionAttributeValues: { ':b': range.bytes, ':one': 1, ':now': nowMs },
              },
            },
          ],
        }),
      );
      return true;
    } catch (err) {
      const codes = err instanceof TransactionCanceledException ? (err.CancellationReasons ?? []).map((r) => r.Code) : [];
      if (codes[0] === 'ConditionalCheckFailed') return false;
      if (codes[1] === 'ConditionalCheckFailed') throw new Error(`pair '${pairId}' has no recovery run '${id}'`);
      throw err;
    }
  }

  async rangesDone(pairId: string, id: string): Promise<RecoveryRangeDone[]> {
    const items = await this.query(pairId, `${runSk(id)}#RANGE#`);
    return items.map((i) => ({
      disk: i.disk,
      index: i.index,
      bytes: i.bytes,
      dataBytes: i.dataBytes,
      ...(i.etag !== undefined ? { etag: i.etag } : {}),
      ...(i.blocksWritten !== undefined ? { blocksWritten: i.blocksWritten } : {}),
      ...(i.sumsKey !== undefined ? { sumsKey: i.sumsKey } : {}),
    }));
  }

  async listRecoveries(pairId: string): Promise<RecoveryRun[]> {
    const items = await this.query(pairId, RUN_PREFIX);
    return items.filter((i) => i.kind === 'recovery').map(runOf).sort((a, b) => b.startedMs - a.startedMs);
  }

  private query(pairId: string, prefix: string): Promise<Record<string, any>[]> {
    return queryAll(this.doc, this.table, { KeyConditionExpression: 'pk = :pk AND begins_with(sk, :p)', ExpressionAttributeValues: { ':pk': pairPk(pairId), ':p': prefix } });
  }
}

function runOf(i: Record<string, any>): RecoveryRun {
  const { pk: _pk, sk: _sk, kind: _kind, ...run } = i;
  return run as RecoveryRun;
}
