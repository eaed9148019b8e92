// HistoryIndex on the pair's partition of the livesync table. Items (docs/design.md,
// "DynamoDB items"): `HISTORY` (the manifest pointer and GC's horizon), `VERSION#{v:20}` (what
// each publish stopped referencing: GC's work list), `LEASE#compactor` (fencing gen), and
// `LEASE#{id}` (reader leases, with the table's TTL attribute so abandoned ones vanish).
// A publish is ONE TransactWriteItems: lease check, HISTORY if at the version, VERSION# put,
// the PAIR item's compactedThrough (never its `rev`: appliers are not disturbed).

import { randomUUID } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { ConditionalCheckFailedException, TransactionCanceledException, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { BatchWriteCommand, DeleteCommand, DynamoDBDocumentClient, GetCommand, PutCommand, TransactWriteCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { CorruptHistoryError } from '../core/errors';
import { seqKey } from '../core/keys';
import { sleep } from '../replica/concurrency';
import type { CompactionFailure, CompactorLease, HistoryHead, HistoryIndex, ReaderLease, VersionRecord } from '../replica/ports';
import { dynamoClient } from './aws-clients';
import { batchSk, documentClient, pairPk, PAIR_SK, queryAll, sendConditional } from './dynamo-table';
import { checkAdvanceGc, checkPublish, checkReaderLease, COMPACTOR_LEASE_ID, FrontierBackwardsError } from './history-rules';

const HISTORY_SK = 'HISTORY';
const LEASE_PREFIX = 'LEASE#';
const COMPACTOR_SK = `${LEASE_PREFIX}${COMPACTOR_LEASE_ID}`;
const versionSk = (v: number): string => `VERSION#${seqKey(v)}`;
/** BatchWriteItem's limit. */
const BATCH_WRITE_ITEMS = 25;
/** A publish that meets another transaction on the PAIR item (an applier's advance) is tried again, this many times in all. */
const PUBLISH_ATTEMPTS = 6;
/** DynamoDB's item size limit: a VERSION# item over it cannot be written (the unit must drop less at once). */
const MAX_ITEM_BYTES = 400 * 1024;
/** A failure's reason is cut to this many characters (an item stays small). */
const MAX_FAILURE_REASON = 2000;

export class DynamoHistory implements HistoryIndex {
  private readonly doc: DynamoDBDocumentClient;

  constructor(
    readonly table: string,
    client: DynamoDBClient = dynamoClient(),
  ) {
    this.doc = documentClient(client);
  }

  async getHistory(pairId: string): Promise<HistoryHead> {
    const out = await this.doc.send(new GetCommand({ TableName: this.table, Key: { pk: pairPk(pairId), sk: HISTORY_SK }, ConsistentRead: true }));
    const i = out.Item;
    if (!i) return { version: 0, frontierSeq: 0, publishedMs: 0, gcVersion: 0 };
    return {
      version: i.version ?? 0,
      ...(i.manifestKey !== undefined ? { manifestKey: i.manifestKey } : {}),
      frontierSeq: i.frontierSeq ?? 0,
      publishedMs: i.publishedMs ?? 0,
      gcVersion: i.gcVersion ?? 0,
      ...(i.lastFailure !== undefined ? { lastFailure: i.lastFailure } : {}),
    };
  }

  async recordFailure(pairId: string, failure: CompactionFailure): Promise<void> {
    // Creates HISTORY if no version was ever published (a first unit that failed); version stays absent then.
    await this.doc.send(
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: HISTORY_SK },
        UpdateExpression: 'SET kind = :kind, lastFailure = :f',
        ExpressionAttributeValues: { ':kind': 'history', ':f': { reason: failure.reason.slice(0, MAX_FAILURE_REASON), atMs: failure.atMs } },
      }),
    );
  }

  async acquireCompactor(pairId: string, holder: string, nowMs: number, ttlMs: number): Promise<CompactorLease | undefined> {
    try {
      const out = await this.doc.send(
        new UpdateCommand({
          TableName: this.table,
          Key: { pk: pairPk(pairId), sk: COMPACTOR_SK },
          UpdateExpression: 'SET kind = :kind, holder = :h, expiresMs = :e, gen = if_not_exists(gen, :zero) + :one',
          ConditionExpression: 'attribute_not_exists(pk) OR expiresMs <= :now',
          ExpressionAttributeValues: { ':kind': 'compactor-lease', ':h': holder, ':e': nowMs + ttlMs, ':zero': 0, ':one': 1, ':now': nowMs },
          ReturnValues: 'ALL_NEW',
        }),
      );
      const a = out.Attributes!;
      return { holder: a.holder, gen: a.gen, expiresMs: a.expiresMs };
    } catch (err) {
      if (err instanceof ConditionalCheckFailedException) return undefined;
      throw err;
    }
  }

  async renewCompactor(pairId: string, lease: CompactorLease, nowMs: number, ttlMs: number): Promise<boolean> {
    return this.ifHeld(pairId, lease, nowMs + ttlMs);
  }

  /** Expires the lease but keeps the item: the next acquire must still move gen past this one. */
  async releaseCompactor(pairId: string, lease: CompactorLease): Promise<void> {
    await this.ifHeld(pairId, lease, 0);
  }

  private ifHeld(pairId: string, lease: CompactorLease, expiresMs: number): Promise<boolean> {
    return sendConditional(
      this.doc,
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: COMPACTOR_SK },
        UpdateExpression: 'SET expiresMs = :e',
        ConditionExpression: 'gen = :g',
        ExpressionAttributeValues: { ':e': expiresMs, ':g': lease.gen },
      }),
    );
  }

  async publish(pairId: string, lease: CompactorLease, fromVersion: number, record: VersionRecord, frontierSeq: number, nowMs: number): Promise<boolean> {
    checkPublish(pairId, fromVersion, record, frontierSeq);
    const item = versionItem(pairId, record);
    const size = itemBytes(item);
    if (size > MAX_ITEM_BYTES) throw new Error(`pair '${pairId}': VERSION#${record.version} would be ${size} bytes, over DynamoDB's ${MAX_ITEM_BYTES} (${record.removedKeys.length} removed keys)`);
    const history = {
      TableName: this.table,
      Key: { pk: pairPk(pairId), sk: HISTORY_SK },
      UpdateExpression: 'SET kind = :kind, version = :v, manifestKey = :m, frontierSeq = :f, publishedMs = :p, generation = :g, gcVersion = if_not_exists(gcVersion, :zero) REMOVE lastFailure',
      ConditionExpression: fromVersion === 0 ? 'attribute_not_exists(version) OR version = :from' : 'version = :from',
      ExpressionAttributeValues: { ':kind': 'history', ':v': record.version, ':m': record.manifestKey, ':f': frontierSeq, ':p': record.publishedMs, ':g': lease.gen, ':zero': 0, ':from': fromVersion },
    };
    const input = {
      TransactItems: [
        {
          ConditionCheck: {
            TableName: this.table,
            Key: { pk: pairPk(pairId), sk: COMPACTOR_SK },
            ConditionExpression: 'gen = :g AND expiresMs > :now',
            ExpressionAttributeValues: { ':g': lease.gen, ':now': nowMs },
          },
        },
        { Update: history },
        { Put: { TableName: this.table, Item: item, ConditionExpression: 'attribute_not_exists(pk)' } },
        {
          Update: {
            TableName: this.table,
            Key: { pk: pairPk(pairId), sk: PAIR_SK },
            UpdateExpression: 'SET compactedThrough = :f',
            ConditionExpression: 'attribute_exists(pk) AND (attribute_not_exists(compactedThrough) OR compactedThrough <= :f)',
            ExpressionAttributeValues: { ':f': frontierSeq },
            ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const,
          },
        },
      ],
    };
    for (let attempt = 1; ; attempt++) {
      try {
        // One token per attempt: the SDK's own retry of a request whose answer was lost then
        // returns the first outcome instead of failing its version condition. A new one after
        // a cancellation, whose token DynamoDB may hold to its outcome for 10 minutes.
        await this.doc.send(new TransactWriteCommand({ ...input, ClientRequestToken: randomUUID() }));
        return true;
      } catch (err) {
        if (!(err instanceof TransactionCanceledException)) throw err;
        const codes = (err.CancellationReasons ?? []).map((r) => r.Code);
        // The lease or the version moved: another unit's turn. Nothing was written.
        if (codes[0] === 'ConditionalCheckFailed' || codes[1] === 'ConditionalCheckFailed') return false;
        if (codes[2] === 'ConditionalCheckFailed') throw new Error(`pair '${pairId}': VERSION#${record.version} exists while HISTORY is at ${fromVersion}`);
        if (codes[3] === 'ConditionalCheckFailed') {
          const old = err.CancellationReasons![3].Item;
          throw new FrontierBackwardsError(pairId, frontierSeq, old ? Number(old.compactedThrough?.N ?? -1) : undefined);
        }
        // A concurrent transaction on one of the items (the apply path writes the PAIR item at every batch).
        if (codes.includes('TransactionConflict') && attempt < PUBLISH_ATTEMPTS) {
          await sleep(20 * 2 ** attempt * Math.random());
          continue;
        }
        throw err;
      }
    }
  }

  async putReaderLease(pairId: string, lease: ReaderLease): Promise<void> {
    const { id, kind, seq, manifestVersion, expiresMs } = checkReaderLease(pairId, lease);
    await this.doc.send(
      new PutCommand({
        TableName: this.table,
        // expiresAt: the table's TTL attribute (seconds), so a reader that died leaves nothing for long.
        Item: { pk: pairPk(pairId), sk: `${LEASE_PREFIX}${id}`, kind: 'reader-lease', id, leaseKind: kind, seq, manifestVersion, expiresMs, expiresAt: Math.ceil(expiresMs / 1000) },
      }),
    );
  }

  async renewReaderLease(pairId: string, id: string, expiresMs: number, nowMs: number): Promise<boolean> {
    try {
      await this.doc.send(
        new UpdateCommand({
          TableName: this.table,
          Key: { pk: pairPk(pairId), sk: `${LEASE_PREFIX}${id}` },
          UpdateExpression: 'SET expiresMs = :e, expiresAt = :s',
          ConditionExpression: 'kind = :reader AND expiresMs > :now',
          ExpressionAttributeValues: { ':e': expiresMs, ':s': Math.ceil(expiresMs / 1000), ':reader': 'reader-lease', ':now': nowMs },
        }),
      );
      return true;
    } catch (err) {
      if (err instanceof ConditionalCheckFailedException) return false;
      throw err;
    }
  }

  async releaseReaderLease(pairId: string, id: string, nowMs: number): Promise<void> {
    // A renewal to now, on the same conditions: it never creates an item nor revives a lapsed lease.
    await this.renewReaderLease(pairId, id, nowMs, nowMs);
  }

  async listReaderLeases(pairId: string, nowMs: number): Promise<ReaderLease[]> {
    // TTL deletes late (days in AWS): expiry is judged here, in milliseconds.
    const items = await this.query({
      KeyConditionExpression: 'pk = :pk AND begins_with(sk, :lease)',
      FilterExpression: 'kind = :reader AND expiresMs > :now',
      ExpressionAttributeValues: { ':pk': pairPk(pairId), ':lease': LEASE_PREFIX, ':reader': 'reader-lease', ':now': nowMs },
    });
    return items.map((i) => ({ id: i.id as string, kind: i.leaseKind as ReaderLease['kind'], seq: i.seq as number, manifestVersion: i.manifestVersion as number, expiresMs: i.expiresMs as number }));
  }

  async versionsAfter(pairId: string, afterVersion: number, limit: number): Promise<VersionRecord[]> {
    const items = await this.query(
      {
        KeyConditionExpression: 'pk = :pk AND sk BETWEEN :from AND :to',
        ExpressionAttributeValues: { ':pk': pairPk(pairId), ':from': versionSk(afterVersion + 1), ':to': versionSk(Number.MAX_SAFE_INTEGER) },
      },
      limit,
    );
    return items.map(fromVersionItem);
  }

  async deleteBatchItems(pairId: string, given: number[]): Promise<void> {
    const seqs = [...new Set(given)]; // BatchWriteItem refuses a request naming one key twice
    for (let i = 0; i < seqs.length; i += BATCH_WRITE_ITEMS) {
      let requests: { DeleteRequest: { Key: Record<string, unknown> } }[] = seqs.slice(i, i + BATCH_WRITE_ITEMS).map((s) => ({ DeleteRequest: { Key: { pk: pairPk(pairId), sk: batchSk(s) } } }));
      for (let attempt = 0; requests.length > 0; attempt++) {
        if (attempt > 0) await sleep(Math.min(2000, 50 * 2 ** attempt));
        const out = await this.doc.send(new BatchWriteCommand({ RequestItems: { [this.table]: requests } }));
        requests = (out.UnprocessedItems?.[this.table] ?? []) as typeof requests;
        if (requests.length > 0 && attempt >= 8) throw new Error(`pair '${pairId}': ${requests.length} BATCH# deletes still unprocessed after ${attempt + 1} attempts`);
      }
    }
  }

  async advanceGc(pairId: string, fromVersion: number, toVersion: number): Promise<boolean> {
    checkAdvanceGc(pairId, fromVersion, toVersion);
    return sendConditional(
      this.doc,
      new UpdateCommand({
        TableName: this.table,
        Key: { pk: pairPk(pairId), sk: HISTORY_SK },
        UpdateExpression: 'SET gcVersion = :to',
        ConditionExpression: 'gcVersion = :from AND version >= :to',
        ExpressionAttributeValues: { ':from': fromVersion, ':to': toVersion },
      }),
    );
  }


  async deleteVersionRecord(pairId: string, version: number): Promise<void> {
    await this.doc.send(new DeleteCommand({ TableName: this.table, Key: { pk: pairPk(pairId), sk: versionSk(version) } }));
  }

  private query(input: { KeyConditionExpression: string; FilterExpression?: string; ExpressionAttributeValues: Record<string, unknown> }, limit = Infinity): Promise<Record<string, any>[]> {
    return queryAll(this.doc, this.table, input, limit);
  }
}

/**
 * A VERSION# item. Its lists can be long (a unit that folds a day of batches drops thousands
 * of journal keys): `removedKeys` is stored gzipped (JSON array; keys share long prefixes, so
 * ~15 bytes a key instead of ~70), folded seqs as ascending [lo, hi] runs.
 */
function versionItem(pairId: string, r: VersionRecord): Record<string, unknown> {
  return {
    pk: pairPk(pairId),
    sk: versionSk(r.version),
    kind: 'version',
    version: r.version,
    manifestKey: r.manifestKey,
    publishedMs: r.publishedMs,
    removedCount: r.removedKeys.length,
    removedKeysGz: gzipSync(JSON.stringify(r.removedKeys)),
    foldedSeqRuns: toRuns(r.foldedSeqs),
  };
}

function fromVersionItem(i: Record<string, any>): VersionRecord {
  const where = `DynamoDB item ${i.pk}/${i.sk}`;
  let removedKeys: unknown;
  try {
    removedKeys = JSON.parse(gunzipSync(i.removedKeysGz as Uint8Array).toString('utf8'));
  } catch (err) {
    throw new CorruptHistoryError(where, `removedKeysGz is not gzipped JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(removedKeys) || removedKeys.some((k) => typeof k !== 'string')) throw new CorruptHistoryError(where, 'removedKeysGz is not a list of keys');
  if (removedKeys.length !== i.removedCount) throw new CorruptHistoryError(where, `holds ${removedKeys.length} removed keys, removedCount says ${i.removedCount}`);
  return { version: i.version, manifestKey: i.manifestKey, publishedMs: i.publishedMs, removedKeys, foldedSeqs: fromRuns(i.foldedSeqRuns as [number, number][]) };
}

/** Seqs as [lo, hi] runs, in the order given (a record's seqs ascend; any order round-trips). */
export function toRuns(seqs: number[]): [number, number][] {
  const runs: [number, number][] = [];
  for (const s of seqs) {
    const last = runs[runs.length - 1];
    if (last && s === last[1] + 1) last[1] = s;
    else runs.push([s, s]);
  }
  return runs;
}

export function fromRuns(runs: [number, number][]): number[] {
  const out: number[] = [];
  for (const [lo, hi] of runs) for (let s = lo; s <= hi; s++) out.push(s);
  return out;
}

/** An item's size as DynamoDB counts it, near enough: attribute names and values (strings UTF-8, binary raw, numbers ~ their digits). */
function itemBytes(item: Record<string, unknown>): number {
  const size = (v: unknown): number =>
    typeof v === 'string' ? Buffer.byteLength(v) : Buffer.isBuffer(v) ? v.length : Array.isArray(v) ? 3 + v.reduce((n: number, x) => n + 1 + size(x), 0) : typeof v === 'number' ? 21 : 1;
  return Object.entries(item).reduce((n, [k, v]) => n + Buffer.byteLength(k) + size(v), 0);
}
