// The HistoryIndex port's contract, one suite run against each adapter: MemoryHistory (what
// the compactor, reader and GC tests use) and DynamoHistory over the test stack's DynamoDB.
// Conditions as DynamoDB evaluates them: a publish whose lease or version moved writes
// nothing; the compactor lease is taken only when free or expired, fenced by gen.

import { TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, QueryCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { dynamoClient } from '../adapters/aws-clients';
import { DynamoHistory } from '../adapters/dynamo-history';
import { FrontierBackwardsError } from '../adapters/history-rules';
import { MemoryHistory } from '../adapters/memory-history';
import { CorruptHistoryError, InvalidArgumentError } from '../core/errors';
import { createPair } from '../replica/pairs';
import type { CompactorLease, HistoryIndex, VersionRecord } from '../replica/ports';
import { cloud, newPairId } from './helpers';

/** One adapter under test, with probes for what lives outside the history items (the PAIR item, BATCH# items). */
interface Subject {
  history: HistoryIndex;
  /** A pair the adapter can publish for (DynamoDB: its PAIR item exists), with batches 1..batches registered. */
  newPair(batches?: number): Promise<string>;
  compactedThrough(pairId: string): Promise<number | undefined>;
  /** Seqs among 1..n whose BATCH# item is still there. */
  batchesLeft(pairId: string, n: number): Promise<number[]>;
  /** The PAIR item's rev (publish must not move it); undefined where there is none. */
  rev(pairId: string): Promise<number | undefined>;
}

function memorySubject(): Subject {
  const history = new MemoryHistory();
  const batches = new Map<string, number>();
  let n = 0;
  return {
    history,
    newPair: async (count = 0) => {
      const id = `mem-${++n}`;
      batches.set(id, count);
      return id;
    },
    compactedThrough: async (pairId) => history.compactedThrough(pairId),
    batchesLeft: async (pairId, count) => {
      const gone = history.deletedBatchSeqs(pairId);
      return Array.from({ length: Math.min(count, batches.get(pairId) ?? 0) }, (_, i) => i + 1).filter((s) => !gone.has(s));
    },
    rev: async () => undefined,
  };
}

function dynamoSubject(): Subject {
  const { table, index } = cloud();
  const history = new DynamoHistory(table);
  return {
    history,
    newPair: async (count = 0) => {
      const pairId = newPairId('hist');
      await createPair(index, { pairId, disks: [{ name: 'disk0', sizeBytes: 1 << 20 }] });
      for (let seq = 1; seq <= count; seq++) {
        await index.registerBatch(pairId, { seq, key: `pairs/${pairId}/journal/${seq}`, sizeBytes: 1, objectCrc: seq, firstWriteMs: 0, cutMs: 0, flags: 0, extentCount: 0, dataBytes: 0, disks: ['disk0'], registeredMs: 0 });
      }
      return pairId;
    },
    compactedThrough: async (pairId) => (await index.getPair(pairId))?.compactedThrough,
    batchesLeft: async (pairId, count) => (await index.batchesAfter(pairId, 0, count + 1)).map((b) => b.seq).filter((s) => s <= count),
    rev: async (pairId) => (await index.getPair(pairId))?.rev,
  };
}

const subjects: [string, () => Subject][] = [
  ['MemoryHistory', memorySubject],
  ['DynamoHistory', dynamoSubject],
];

const record = (version: number, extra: Partial<VersionRecord> = {}): VersionRecord => ({
  version,
  manifestKey: `pairs/p/history/${String(version).padStart(20, '0')}-0123456789abcdef/manifest.json`,
  publishedMs: 1000 * version,
  removedKeys: [`old-${version}-a`, `old-${version}-b`],
  foldedSeqs: [version * 10 - 1, version * 10],
  ...extra,
});

describe.each(subjects)('%s', (_name, make) => {
  let s: Subject;
  let h: HistoryIndex;
  beforeAll(() => {
    s = make();
    h = s.history;
  });

  test('a pair never compacted is at version 0 with nothing to collect', async () => {
    const p = await s.newPair();
    expect(await h.getHistory(p)).toEqual({ version: 0, frontierSeq: 0, publishedMs: 0, gcVersion: 0 });
    expect(await h.versionsAfter(p, 0, 10)).toEqual([]);
    expect(await h.listReaderLeases(p, 0)).toEqual([]);
  });

  test('the compactor lease: taken only when free or expired (expiresMs <= now), each take bumps gen', async () => {
    const p = await s.newPair();
    const a = await h.acquireCompactor(p, 'a', 1000, 500);
    expect(a).toEqual({ holder: 'a', gen: 1, expiresMs: 1500 });
    expect(await h.acquireCompactor(p, 'b', 1499, 500)).toBeUndefined();
    const b = await h.acquireCompactor(p, 'b', 1500, 500);
    expect(b).toEqual({ holder: 'b', gen: 2, expiresMs: 2000 });
    // a's renew fails: b took over; b's extends its own.
    expect(await h.renewCompactor(p, a!, 1600, 500)).toBe(false);
    expect(await h.renewCompactor(p, b!, 1900, 1000)).toBe(true);
    expect(await h.acquireCompactor(p, 'c', 2500, 500)).toBeUndefined();
    // Release by a stale holder does nothing; by the holder it frees the lease but keeps gen.
    await h.releaseCompactor(p, a!);
    expect(await h.acquireCompactor(p, 'c', 2500, 500)).toBeUndefined();
    await h.releaseCompactor(p, b!);
    expect(await h.acquireCompactor(p, 'c', 2500, 500)).toEqual({ holder: 'c', gen: 3, expiresMs: 3000 });
  });

  test('publish moves HISTORY, puts the VERSION# record and raises compactedThrough, without moving the pair rev', async () => {
    const p = await s.newPair();
    const rev = await s.rev(p);
    const lease = (await h.acquireCompactor(p, 'a', 1000, 10_000))!;
    expect(await h.publish(p, lease, 0, record(1), 20, 1000)).toBe(true);
    expect(await h.getHistory(p)).toEqual({ version: 1, manifestKey: record(1).manifestKey, frontierSeq: 20, publishedMs: 1000, gcVersion: 0 });
    expect(await s.compactedThrough(p)).toBe(20);
    expect(await s.rev(p)).toBe(rev);
    // A unit that only merges keeps the frontier: allowed.
    expect(await h.publish(p, lease, 1, record(2), 20, 2000)).toBe(true);
    expect(await h.publish(p, lease, 2, record(3), 35, 3000)).toBe(true);
    expect(await s.compactedThrough(p)).toBe(35);
    expect(await h.versionsAfter(p, 0, 10)).toEqual([record(1), record(2), record(3)]);
    expect(await h.versionsAfter(p, 1, 1)).toEqual([record(2)]);
  });

  test('a failure is recorded on HISTORY (also before any publish) and the next publish clears it', async () => {
    const p = await s.newPair();
    await h.recordFailure(p, { reason: 'CorruptHistoryError: run-0000.run@0: piece CRC mismatch', atMs: 500 });
    expect(await h.getHistory(p)).toEqual({ version: 0, frontierSeq: 0, publishedMs: 0, gcVersion: 0, lastFailure: { reason: 'CorruptHistoryError: run-0000.run@0: piece CRC mismatch', atMs: 500 } });
    const lease = (await h.acquireCompactor(p, 'a', 1000, 10_000))!;
    expect(await h.publish(p, lease, 0, record(1), 20, 1000)).toBe(true);
    expect(await h.getHistory(p)).toEqual({ version: 1, manifestKey: record(1).manifestKey, frontierSeq: 20, publishedMs: 1000, gcVersion: 0 });
    await h.recordFailure(p, { reason: 'x'.repeat(5000), atMs: 2000 });
    expect((await h.getHistory(p)).lastFailure).toEqual({ reason: 'x'.repeat(2000), atMs: 2000 });
    expect((await h.getHistory(p)).version).toBe(1);
  });

  describe('a publish that loses a condition writes nothing and returns false', () => {
    async function published(): Promise<{ p: string; lease: CompactorLease }> {
      const p = await s.newPair();
      const lease = (await h.acquireCompactor(p, 'a', 1000, 1000))!;
      expect(await h.publish(p, lease, 0, record(1), 10, 1000)).toBe(true);
      return { p, lease };
    }
    async function unchanged(p: string): Promise<void> {
      expect(await h.getHistory(p)).toEqual({ version: 1, manifestKey: record(1).manifestKey, frontierSeq: 10, publishedMs: 1000, gcVersion: 0 });
      expect((await h.versionsAfter(p, 0, 10)).map((r) => r.version)).toEqual([1]);
      expect(await s.compactedThrough(p)).toBe(10);
    }

    test('the version moved', async () => {
      const { p, lease } = await published();
      expect(await h.publish(p, lease, 0, record(1, { manifestKey: 'other' }), 30, 1100)).toBe(false);
      await unchanged(p);
    });
    test('the lease expired (now = expiresMs)', async () => {
      const { p, lease } = await published();
      expect(await h.publish(p, lease, 1, record(2), 30, 2000)).toBe(false);
      await unchanged(p);
    });
    test('a stalled compactor whose lease was retaken', async () => {
      const { p, lease } = await published();
      const b = (await h.acquireCompactor(p, 'b', 2000, 1000))!;
      expect(await h.publish(p, lease, 1, record(2), 30, 1500)).toBe(false);
      await unchanged(p);
      expect(await h.publish(p, b, 1, record(2), 30, 2100)).toBe(true);
    });
    test('no lease at all', async () => {
      const p = await s.newPair();
      expect(await h.publish(p, { holder: 'x', gen: 1, expiresMs: 9e12 }, 0, record(1), 10, 1000)).toBe(false);
      expect((await h.getHistory(p)).version).toBe(0);
      expect(await h.versionsAfter(p, 0, 10)).toEqual([]);
      expect(await s.compactedThrough(p)).toBeUndefined();
    });
  });

  test('bad publish arguments are refused before anything is written', async () => {
    const p = await s.newPair();
    const lease = (await h.acquireCompactor(p, 'a', 1000, 10_000))!;
    await expect(h.publish(p, lease, 0, record(2), 10, 1000)).rejects.toThrow(InvalidArgumentError);
    expect(await h.publish(p, lease, 0, record(1), 10, 1000)).toBe(true);
    await expect(h.publish(p, lease, 1, record(2), 9, 1000)).rejects.toThrow(FrontierBackwardsError);
    expect(await h.getHistory(p)).toMatchObject({ version: 1, frontierSeq: 10 });
    expect(await h.versionsAfter(p, 1, 10)).toEqual([]);
    expect(await s.compactedThrough(p)).toBe(10);
  });

  test('reader leases: put, overwrite by id, listed while unexpired (expiresMs > now), released (expired now, never revived or created)', async () => {
    const p = await s.newPair();
    await h.putReaderLease(p, { id: 'r1', kind: 'recovery', seq: 5, manifestVersion: 0, expiresMs: 2000 });
    await h.putReaderLease(p, { id: 'r2', kind: 'digests', seq: 7, manifestVersion: 0, expiresMs: 3000 });
    await h.putReaderLease(p, { id: 'r1', kind: 'recovery', seq: 5, manifestVersion: 1, expiresMs: 2500 });
    expect(await h.listReaderLeases(p, 1000)).toEqual([
      { id: 'r1', kind: 'recovery', seq: 5, manifestVersion: 1, expiresMs: 2500 },
      { id: 'r2', kind: 'digests', seq: 7, manifestVersion: 0, expiresMs: 3000 },
    ]);
    expect((await h.listReaderLeases(p, 2500)).map((l) => l.id)).toEqual(['r2']);
    // The compactor's lease is not a reader's.
    await h.acquireCompactor(p, 'a', 1000, 10_000);
    await h.releaseReaderLease(p, 'r2', 1000);
    await h.releaseReaderLease(p, 'r2', 1200); // lapsed already: left as it is
    await h.releaseReaderLease(p, 'nobody', 1000); // no such lease: nothing is created
    expect((await h.listReaderLeases(p, 1000)).map((l) => l.id)).toEqual(['r1']);
    expect(await h.listReaderLeases(p, 999)).toEqual([expect.objectContaining({ id: 'r1' }), expect.objectContaining({ id: 'r2', expiresMs: 1000 })]);
    await expect(h.putReaderLease(p, { id: 'compactor', kind: 'recovery', seq: 1, manifestVersion: 0, expiresMs: 2000 })).rejects.toThrow(InvalidArgumentError);
    await expect(h.putReaderLease(p, { id: 'a/b', kind: 'recovery', seq: 1, manifestVersion: 0, expiresMs: 2000 })).rejects.toThrow(/reader lease id 'a\/b'/);
  });

  test('GC bookkeeping: the horizon moves only forward, from where it is, over published versions', async () => {
    const p = await s.newPair(25);
    const lease = (await h.acquireCompactor(p, 'a', 1000, 10_000))!;
    expect(await h.publish(p, lease, 0, record(1), 10, 1000)).toBe(true);
    expect(await h.publish(p, lease, 1, record(2), 20, 1000)).toBe(true);
    expect(await h.advanceGc(p, 1, 2)).toBe(false);
    expect(await h.advanceGc(p, 0, 3)).toBe(false);
    await expect(h.advanceGc(p, 1, 1)).rejects.toThrow(InvalidArgumentError);
    expect(await h.advanceGc(p, 0, 1)).toBe(true);
    expect(await h.advanceGc(p, 0, 1)).toBe(false);
    expect((await h.getHistory(p)).gcVersion).toBe(1);
    await h.deleteVersionRecord(p, 1);
    await h.deleteVersionRecord(p, 1);
    expect((await h.versionsAfter(p, 0, 10)).map((r) => r.version)).toEqual([2]);
    await h.deleteBatchItems(p, [9, 10, 19, 20]);
    await h.deleteBatchItems(p, [9, 10, 9]);
    expect(await s.batchesLeft(p, 25)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16, 17, 18, 21, 22, 23, 24, 25]);
  });

  test('a record with thousands of keys round-trips', async () => {
    const p = await s.newPair();
    const lease = (await h.acquireCompactor(p, 'a', 1000, 10_000))!;
    const keys = Array.from({ length: 5000 }, (_, i) => `pairs/${p}/journal/${String(i).padStart(20, '0')}-${(i * 2654435761).toString(16).padStart(16, '0').slice(0, 16)}.batch`);
    const big = record(1, { removedKeys: keys, foldedSeqs: Array.from({ length: 5000 }, (_, i) => i + 1) });
    expect(await h.publish(p, lease, 0, big, 5000, 1000)).toBe(true);
    expect(await h.versionsAfter(p, 0, 1)).toEqual([big]);
  });
});

describe('DynamoHistory items', () => {
  test("a reader lease carries the table's TTL attribute (seconds, rounded up); the compactor lease none", async () => {
    const { table } = cloud();
    const doc = DynamoDBDocumentClient.from(dynamoClient());
    const s = dynamoSubject();
    const p = await s.newPair();
    await s.history.putReaderLease(p, { id: 'r1', kind: 'export', seq: 3, manifestVersion: 0, expiresMs: 1_795_521_760_001 });
    await s.history.acquireCompactor(p, 'a', 1000, 1000);
    const items = (await doc.send(new QueryCommand({ TableName: table, KeyConditionExpression: 'pk = :pk AND begins_with(sk, :l)', ExpressionAttributeValues: { ':pk': `PAIR#${p}`, ':l': 'LEASE#' } }))).Items!;
    expect(items.find((i) => i.sk === 'LEASE#r1')).toEqual({ pk: `PAIR#${p}`, sk: 'LEASE#r1', kind: 'reader-lease', id: 'r1', leaseKind: 'export', seq: 3, manifestVersion: 0, expiresMs: 1_795_521_760_001, expiresAt: 1_795_521_761 });
    expect(items.find((i) => i.sk === 'LEASE#compactor')).toEqual({ pk: `PAIR#${p}`, sk: 'LEASE#compactor', kind: 'compactor-lease', holder: 'a', gen: 1, expiresMs: 2000 });
  });

  test('a VERSION# item whose removed keys do not match its count is refused on read, naming the item', async () => {
    const { table } = cloud();
    const s = dynamoSubject();
    const p = await s.newPair();
    const lease = (await s.history.acquireCompactor(p, 'a', 1000, 1000))!;
    expect(await s.history.publish(p, lease, 0, record(1), 10, 1000)).toBe(true);
    await DynamoDBDocumentClient.from(dynamoClient()).send(new UpdateCommand({ TableName: table, Key: { pk: `PAIR#${p}`, sk: 'VERSION#00000000000000000001' }, UpdateExpression: 'SET removedCount = :n', ExpressionAttributeValues: { ':n': 3 } }));
    await expect(s.history.versionsAfter(p, 0, 10)).rejects.toThrow(new CorruptHistoryError(`DynamoDB item PAIR#${p}/VERSION#00000000000000000001`, 'holds 2 removed keys, removedCount says 3'));
  });

  test('a publish for a pair without its PAIR item writes nothing', async () => {
    const h = new DynamoHistory(cloud().table);
    const p = newPairId('nopair');
    const lease = (await h.acquireCompactor(p, 'a', 1000, 1000))!;
    await expect(h.publish(p, lease, 0, record(1), 10, 1000)).rejects.toThrow(`pair '${p}': publish with frontier 10 refused: the pair does not exist`);
    expect((await h.getHistory(p)).version).toBe(0);
    expect(await h.versionsAfter(p, 0, 10)).toEqual([]);
  });

  test('a publish that meets a transaction on the PAIR item (TransactionConflict) is sent again', async () => {
    let sent = 0;
    const client = dynamoClient({ region: 'us-east-1', endpoint: 'http://127.0.0.1:1', credentials: { accessKeyId: 'a', secretAccessKey: 'b' } });
    // Answers in place of DynamoDB: twice a conflict on the PAIR item, then success.
    client.middlewareStack.add(
      () => async () => {
        if (++sent < 3) throw new TransactionCanceledException({ message: 'conflict', $metadata: {}, CancellationReasons: [{ Code: 'None' }, { Code: 'None' }, { Code: 'None' }, { Code: 'TransactionConflict' }] });
        return { output: { $metadata: {} }, response: {} };
      },
      { step: 'initialize', name: 'fakeDynamo' },
    );
    expect(await new DynamoHistory('t', client).publish('p', { holder: 'a', gen: 1, expiresMs: 2000 }, 0, record(1), 10, 1000)).toBe(true);
    expect(sent).toBe(3);
  });
});
