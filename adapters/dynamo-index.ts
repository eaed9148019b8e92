// ReplicaIndex on one DynamoDB table. Item shapes: docs/design.md, "DynamoDB items".

import { type DynamoDBClient, TransactionCanceledException, ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import {
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  TransactWriteCommand,
  UpdateCommand,
  type QueryCommandInput,
} from '@aws-sdk/lib-dynamodb';
import type { AdvancePlan } from '../core/advance';
import { dynamoClient } from './aws-clients';
import { batchSk, documentClient, pairPk, PAIR_SK, queryAll, sendConditional } from './dynamo-table';
import { seqKey } from '../core/keys';
import type { BatchRecord, Pair, PairError, PairState, QuarantineRecord, RecoveryPoint, RpPin, RpType } from '../core/model';
import type { RetentionPolicy } from '../core/retention';
import type { RegisterResult, ReplicaIndex, RpCheckChange, RpExpect, RpPage, RpRejudged, SeedUpdate } from '../replica/ports';
import { PAIRS_KEYS, PAIRS_PK } from '../lib/names';

export const ACRP_INDEX = 'acrp';

const rpSk = (seq: number): string => `RP#${seqKey(seq)}`;
/** One quarantine item per refused object: a redelivered event rewrites the same item. */
const quarantineSk = (seq: number, key: string): string => `QUAR#${seqKey(seq)}#${key.slice(key.lastIndexOf('/') + 1)}`;
/** DynamoDB's per-transaction item limit. */
const MAX_TRANSACTION_ITEMS = 100;

export class DynamoIndex implements ReplicaIndex {
  private readonly doc: DynamoDBDocumentClient;

  constructor(
    readonly table: string,
    client: DynamoDBClient = dynamoClient(),
  ) {
    this.doc = documentClient(client);
  }

  async createPair(pair: Pair): Promise<void> {
    try {
      await this.doc.send(
        new PutCommand({
          TableName: this.table,
          // pairsPk puts the item (alone of a pair's items) in the sparse `pairs` index: the compaction schedule's list.
          Item: { pk: pairPk(pair.pairId), sk: PAIR_SK, kind: 'pair', rev: 0, [PAIRS_KEYS.pk]: PAIRS_PK, ...pair },
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      );
    } catch (err) {
      if (err instanceof ConditionalCheckFailedException) throw new Error(`pair '${pair.pairId}' already exists`);
      throw err;
    }
  }

  async getPair(pairId: string): Promise<(Pair & { rev: number }) | undefined> {
    const out = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: pairPk(pairId), sk: PAIR_SK }, ConsistentRead: true }));
    if (!out.Item) return undefined;
    const { pk: _pk, sk: _sk, kind: _kind, [PAIRS_KEYS.pk]: _list, ...pair } = out.Item;
    return pair as Pair & { rev: number };
  }

  async registerBatch(pairId: string, batch: BatchRecord): Promise<RegisterResult> {
    try {
      await this.doc.send(
        new PutCommand({
          TableName: this.table,
          Item: { pk: pairPk(pairId), sk: batchSk(batch.seq), kind: 'batch', ...batch },
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      );
      return { registered: true };
    } catch (err) {
      if (!(err instanceof ConditionalCheckFailedException)) throw err;
      const out = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: pairPk(pairId), sk: batchSk(batch.seq) }, ConsistentRead: true }));
      return { registered: false, existing: strip(out.Item!) as unknown as BatchRecord };
    }
  }

  async batchesAfter(pairId: string, afterSeq: number, limit: number): Promise<BatchRecord[]> {
    return this.query<BatchRecord>(
      {
        KeyConditionExpression: 'pk = :pk AND sk BETWEEN :from AND :to',
        ExpressionAttributeValues: { ':pk': pairPk(pairId), ':from': batchSk(afterSeq + 1), ':to': batchSk(Number.MAX_SAFE_INTEGER) },
      },
      limit,
    );
  }

  async segmentsUpTo(pairId: string, uptoSeq: number): Promise<BatchRecord[]> {
    return this.query<BatchRecord>({
      KeyConditionExpression: 'pk = :pk AND sk BETWEEN :from AND :to',
      ExpressionAttributeValues: { ':pk': pairPk(pairId), ':from': batchSk(0), ':to': batchSk(uptoSeq) },
    });
  }

  async commitAdvance(pairId: string, rev: number, plan: AdvancePlan, error?: { next?: PairError }): Promise<boolean> {
    const items = [{ Update: this.advanceUpdate(pairId, rev, plan, error) }, ...plan.rps.map((rp) => ({ Put: { TableName: this.table, Item: rpItem(rp) } }))];
    if (items.length > MAX_TRANSACTION_ITEMS) throw new RangeError(`advance plan of ${items.length} items exceeds one transaction`);
    try {
      await this.doc.send(new TransactWriteCommand({ TransactItems: items }));
      return true;
    } catch (err) {
      if (lostRace(err)) return false;
      throw err;
    }
  }

  /** The pair item's update for an advance plan, conditional on `rev` (see commitAdvance for `error`). */
  private advanceUpdate(pairId: string, rev: number, plan: AdvancePlan, error?: { next?: PairError }) {
    const p = plan.progress;
    const now = Date.now();
    const set = ['watermark = :w', 'rev = :next', 'updatedMs = :now'];
    const values: Record<string, unknown> = { ':w': p.watermark, ':rev': rev, ':next': rev + 1, ':now': now };
    const fields = [
      ['watermarkMs', p.watermarkMs], ['lastRpMs', p.lastRpMs], ['lastAppRpMs', p.lastAppRpMs], ['resyncing', p.resyncing],
      ['lastRpSeq', p.lastRpSeq], ['rpMadeMs', p.rpMadeMs], ['rpCheckDueMs', p.rpCheckDueMs],
    ] as const;
    for (const [name, v] of fields) {
      if (v === undefined) continue;
      set.push(`${name} = :${name}`);
      values[`:${name}`] = v;
    }
    let update = `SET ${set.join(', ')}`;
    const names: Record<string, string> = {};
    if (error?.next) {
      update += ', #error = :error, stateChangedMs = :now';
      values[':error'] = error.next;
      names['#error'] = 'error';
    } else if (error) {
      update += ', #state = :state, stateChangedMs = :now REMOVE #error';
      values[':state'] = plan.state ?? 'REPLICATING';
      Object.assign(names, { '#state': 'state', '#error': 'error' });
    } else if (plan.state) {
      update += ', #state = :state, stateChangedMs = :now';
      values[':state'] = plan.state;
      names['#state'] = 'state';
    }
    return {
      TableName: this.table,
      Key: { pk: pairPk(pairId), sk: PAIR_SK },
      UpdateExpression: update,
      ConditionExpression: 'rev = :rev',
      ExpressionAttributeValues: values,
      ...(Object.keys(names).length ? { ExpressionAttributeNames: names } : {}),
    };
  }

  async commitRpCheck(pairId: string, rev: number, change: RpCheckChange): Promise<boolean> {
    const set = ['rev = :next', 'updatedMs = :now'];
    const values: Record<string, unknown> = { ':rev': rev, ':next': rev + 1, ':now': Date.now() };
    if (change.made) {
      set.push('lastRpMs = :lastRpMs', 'lastRpSeq = :lastRpSeq', 'rpMadeMs = :rpMadeMs');
      Object.assign(values, { ':lastRpMs': change.made.progress.lastRpMs, ':lastRpSeq': change.made.progress.lastRpSeq, ':rpMadeMs': change.made.progress.rpMadeMs });
    }
    if (change.rpCheckDueMs !== undefined) {
      set.push('rpCheckDueMs = :due');
      values[':due'] = change.rpCheckDueMs;
    }
    const update = {
      TableName: this.table,
      Key: { pk: pairPk(pairId), sk: PAIR_SK },
      UpdateExpression: `SET ${set.join(', ')}${change.rpCheckDueMs === undefined ? ' REMOVE rpCheckDueMs' : ''}`,
      ConditionExpression: 'rev = :rev',
      ExpressionAttributeValues: values,
    };
    try {
      if (!change.made) await this.doc.send(new UpdateCommand(update));
      else await this.doc.send(new TransactWriteCommand({ TransactItems: [{ Update: update }, { Put: { TableName: this.table, Item: rpItem(change.made.rp) } }] }));
      return true;
    } catch (err) {
      if (err instanceof ConditionalCheckFailedException || lostRace(err)) return false;
      throw err;
    }
  }

  async quarantine(r: QuarantineRecord, blocksWatermark: boolean): Promise<void> {
    await this.doc.send(new PutCommand({ TableName: this.table, Item: { pk: pairPk(r.pairId), sk: quarantineSk(r.seq, r.key), kind: 'quarantine', ...r } }));
    if (!blocksWatermark) return;
    try {
      // Only while the watermark is still below the seq (a good copy may have won meanwhile),
      // and the pair shows the lowest blocking seq: the one the operator must fix first.
      await this.doc.send(
        new UpdateCommand({
          TableName: this.table,
          Key: { pk: pairPk(r.pairId), sk: PAIR_SK },
          UpdateExpression: 'SET #error = :error, #state = :state, stateChangedMs = :now, rev = rev + :one',
          ConditionExpression: 'watermark < :seq AND (attribute_not_exists(#error) OR #error.seq >= :seq)',
          ExpressionAttributeNames: { '#error': 'error', '#state': 'state' },
          ExpressionAttributeValues: {
            ':error': { seq: r.seq, code: r.code, reason: r.reason, key: r.key, atMs: r.atMs },
            ':state': 'ERROR',
            ':now': r.atMs,
            ':one': 1,
            ':seq': r.seq,
          },
        }),
      );
    } catch (err) {
      if (!(err instanceof ConditionalCheckFailedException)) throw err;
      // A lower error stays shown, but bump `rev` anyway: an advance planned before this
      // quarantine then fails its condition and re-reads, and so sees this record when
      // it clears the lower error.
      await this.doc
        .send(
          new UpdateCommand({
            TableName: this.table,
            Key: { pk: pairPk(r.pairId), sk: PAIR_SK },
            UpdateExpression: 'SET rev = rev + :one',
            ConditionExpression: 'watermark < :seq',
            ExpressionAttributeValues: { ':one': 1, ':seq': r.seq },
          }),
        )
        .catch((e: unknown) => {
          if (!(e instanceof ConditionalCheckFailedException)) throw e;
        });
    }
  }

  async listQuarantine(pairId: string): Promise<QuarantineRecord[]> {
    return this.query<QuarantineRecord>({
      KeyConditionExpression: 'pk = :pk AND begins_with(sk, :q)',
      ExpressionAttributeValues: { ':pk': pairPk(pairId), ':q': 'QUAR#' },
    });
  }

  async listRecoveryPoints(pairId: string, nowSec: number, type?: RpType, page: RpPage = {}): Promise<RecoveryPoint[]> {
    // TTL deletion lags expiry (by up to days in AWS), so expired items are filtered here;
    // a pinned RP has no expiresAt and is always listed.
    const after = page.afterSeq;
    const live = 'expiresAt > :now OR attribute_exists(pinned)';
    const items =
      type === 'APP'
        ? await this.query(
            {
              IndexName: ACRP_INDEX,
              KeyConditionExpression: `acrpPk = :pk${after === undefined ? '' : ' AND acrpSk > :after'}`,
              FilterExpression: live,
              ExpressionAttributeValues: { ':pk': pairPk(pairId), ':now': nowSec, ...(after === undefined ? {} : { ':after': seqKey(after) }) },
            },
            page.limit,
          )
        : await this.query(
            {
              // Seq 0 is an RP too (a pair seeded from a backup taken before any batch).
              KeyConditionExpression: 'pk = :pk AND sk BETWEEN :from AND :to',
              FilterExpression: live,
              ExpressionAttributeValues: { ':pk': pairPk(pairId), ':from': rpSk(after === undefined ? 0 : after + 1), ':to': rpSk(Number.MAX_SAFE_INTEGER), ':now': nowSec },
            },
            page.limit,
          );
    return items.map(fromRpItem);
  }

  async getRecoveryPoint(pairId: string, seq: number): Promise<RecoveryPoint | undefined> {
    const out = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: pairPk(pairId), sk: rpSk(seq) }, ConsistentRead: true }));
    return out.Item ? fromRpItem(strip(out.Item)) : undefined;
  }

  async pinRecoveryPoint(pairId: string, seq: number, pin: RpPin, aboveSec: number): Promise<boolean> {
    return sendConditional(this.doc, 
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: rpSk(seq) },
        UpdateExpression: 'SET pinned = :pin REMOVE expiresAt',
        ConditionExpression: 'attribute_exists(sk) AND attribute_not_exists(pinned) AND expiresAt > :above',
        ExpressionAttributeValues: { ':pin': pin, ':above': aboveSec },
      }),
    );
  }

  async rejudgeRecoveryPoint(pairId: string, seq: number, expect: RpExpect, next: RpRejudged): Promise<boolean> {
    const values: Record<string, unknown> = { ':exp': next.expiresAtSec, ':kept': next.keptBy, ':rev': next.policyRev };
    let condition: string;
    if ('pinnedAtMs' in expect) {
      condition = 'pinned.atMs = :pinAt';
      values[':pinAt'] = expect.pinnedAtMs;
    } else {
      // As read, still live (> aboveSec), not pinned meanwhile, not judged under this policy or a later one.
      condition = 'expiresAt = :was AND expiresAt > :above AND attribute_not_exists(pinned) AND policyRev < :rev';
      Object.assign(values, { ':was': expect.expiresAtSec, ':above': expect.aboveSec });
    }
    return sendConditional(this.doc, 
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: rpSk(seq) },
        UpdateExpression: `SET expiresAt = :exp, keptBy = :kept, policyRev = :rev${'pinnedAtMs' in expect ? ' REMOVE pinned' : ''}`,
        ConditionExpression: `attribute_exists(sk) AND ${condition}`,
        ExpressionAttributeValues: values,
      }),
    );
  }

  async setRetention(pairId: string, policy: RetentionPolicy): Promise<boolean> {
    const rev = policy.rev ?? 0;
    if (rev < 1) throw new RangeError(`setRetention of pair '${pairId}': the new policy's rev ${rev} must be ≥ 1`);
    const { condition, values } = policyRevCondition(rev - 1);
    return sendConditional(this.doc, 
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: PAIR_SK },
        // rev moves on too: an advance or RP check planned under the old policy fails its
        // condition and plans again under this one, so no RP is written with the old one.
        UpdateExpression: 'SET retention = :policy, rev = rev + :one, updatedMs = :now',
        ConditionExpression: `attribute_exists(pk) AND ${condition}`,
        ExpressionAttributeValues: { ...values, ':policy': policy, ':one': 1, ':now': Date.now() },
      }),
    );
  }

  async updateSeed(pairId: string, seedId: string, u: SeedUpdate): Promise<boolean> {
    const set = ['rev = rev + :one', 'updatedMs = :now'];
    const add: string[] = [];
    const names: Record<string, string> = { '#seed': 'seed' };
    if (u.state || u.fromStates) names['#state'] = 'state';
    const values: Record<string, unknown> = { ':one': 1, ':now': Date.now(), ':id': seedId };
    for (const [k, v] of Object.entries(u.seed ?? {})) {
      if (v === undefined) continue;
      names[`#s_${k}`] = k;
      values[`:s_${k}`] = v;
      set.push(`#seed.#s_${k} = :s_${k}`);
    }
    for (const [k, v] of Object.entries(u.add ?? {})) {
      names[`#s_${k}`] = k;
      values[`:a_${k}`] = v;
      add.push(`#seed.#s_${k} :a_${k}`);
    }
    const remove = (u.clear ?? []).map((k) => {
      names[`#c_${k}`] = k;
      return `#seed.#c_${k}`;
    });
    if (u.state) {
      set.push('#state = :state', 'stateChangedMs = :now');
      values[':state'] = u.state;
    }
    if (u.base) {
      set.push('#base = :base');
      names['#base'] = 'base';
      values[':base'] = u.base;
    }
    let condition = '#seed.seedId = :id';
    if (u.fromStates) {
      condition += ` AND #state IN (${u.fromStates.map((_, i) => `:from${i}`).join(', ')})`;
      u.fromStates.forEach((st, i) => (values[`:from${i}`] = st));
    }
    return sendConditional(
      this.doc,
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: PAIR_SK },
        UpdateExpression: `SET ${set.join(', ')}${add.length ? ` ADD ${add.join(', ')}` : ''}${remove.length ? ` REMOVE ${remove.join(', ')}` : ''}`,
        ConditionExpression: condition,
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
      }),
    );
  }

  async activateSeed(pairId: string, seedId: string, state: PairState, rps: RecoveryPoint[], watermark: number): Promise<boolean> {
    const now = Date.now();
    const last = rps[rps.length - 1];
    const lastApp = rps.filter((r) => r.type === 'APP').pop();
    const values: Record<string, unknown> = { ':state': state, ':now': now, ':one': 1, ':done': 'DONE', ':running': 'RUNNING', ':at': last.atMs, ':id': seedId, ':seq': last.seq, ':wm': watermark };
    // The RP timer counts from here (rpMadeMs), and knows which seq is the newest RP.
    if (lastApp) values[':app'] = lastApp.atMs;
    const revGuard = policyRevCondition(rps[0].policyRev ?? 0);
    Object.assign(values, revGuard.values);
    try {
      await this.doc.send(
        new TransactWriteCommand({
          TransactItems: [
            {
              Update: {
                TableName: this.table,
                Key: { pk: pairPk(pairId), sk: PAIR_SK },
                UpdateExpression: `SET #state = :state, stateChangedMs = :now, updatedMs = :now, rev = rev + :one, #seed.#status = :done, #seed.finishedMs = :now, lastRpMs = :at, lastRpSeq = :seq, rpMadeMs = :now${lastApp ? ', lastAppRpMs = :app' : ''}`,
                // And the policy the RPs were judged under is still the pair's (set-retention moves it).
                ConditionExpression: `#seed.seedId = :id AND #seed.#status = :running AND watermark = :wm AND ${revGuard.condition}`,
                ExpressionAttributeNames: { '#state': 'state', '#seed': 'seed', '#status': 'status' },
                ExpressionAttributeValues: values,
              },
            },
            ...rps.map((rp) => ({ Put: { TableName: this.table, Item: rpItem(rp) } })),
          ],
        }),
      );
      return true;
    } catch (err) {
      if (err instanceof TransactionCanceledException && err.CancellationReasons?.[0]?.Code === 'ConditionalCheckFailed') return false;
      throw err;
    }
  }

  private async query<T = Record<string, unknown>>(input: Omit<QueryCommandInput, 'TableName'>, limit = Infinity): Promise<T[]> {
    return (await queryAll(this.doc, this.table, input, limit)).map(strip) as T[];
  }
}

/**
 * A conditional pair write that lost to another writer: its condition on `rev` failed, or
 * DynamoDB refused it while another transaction held the pair item (TransactionConflict, which
 * AWS reports under concurrent transactions on one item). Nothing was written; re-read, retry.
 */
function lostRace(err: unknown): boolean {
  if ((err as { name?: string })?.name === 'TransactionConflictException') return true;
  if (!(err instanceof TransactionCanceledException)) return false;
  const codes = (err.CancellationReasons ?? []).map((r) => r.Code);
  return codes[0] === 'ConditionalCheckFailed' || codes.includes('TransactionConflict');
}

/** The pair's retention policy is at revision `rev` (absent counts as 0). */
function policyRevCondition(rev: number): { condition: string; values: Record<string, unknown> } {
  const condition = rev === 0 ? '(attribute_not_exists(retention.rev) OR retention.rev = :policyRev)' : 'retention.rev = :policyRev';
  return { condition, values: { ':policyRev': rev } };
}

function rpItem(rp: RecoveryPoint): Record<string, unknown> {
  const { expiresAtSec, ...rest } = rp;
  return {
    pk: pairPk(rp.pairId),
    sk: rpSk(rp.seq),
    kind: 'rp',
    ...rest,
    // Absent while pinned: TTL never deletes it.
    ...(expiresAtSec !== undefined ? { expiresAt: expiresAtSec } : {}),
    // Sparse GSI: only ACRPs carry the index keys.
    ...(rp.type === 'APP' ? { acrpPk: pairPk(rp.pairId), acrpSk: seqKey(rp.seq) } : {}),
  };
}

function fromRpItem(item: Record<string, unknown>): RecoveryPoint {
  const { expiresAt, acrpPk: _a, acrpSk: _b, ...rest } = item;
  return { ...(rest as Omit<RecoveryPoint, 'expiresAtSec'>), ...(expiresAt !== undefined ? { expiresAtSec: expiresAt as number } : {}) };
}

function strip(item: Record<string, unknown>): Record<string, unknown> {
  const { pk: _pk, sk: _sk, kind: _kind, ...rest } = item;
  return rest;
}
