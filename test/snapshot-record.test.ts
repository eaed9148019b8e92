// core/snapshot-record.ts: the record of a recovery's EBS snapshot, byte for byte, and which
// blocks an incremental snapshot writes.

import { createHash } from 'node:crypto';
import { blockAction, decodeSnapshotRecord, decodeSnapshotRecordHeader, encodeSnapshotRecord, NO_BLOCK, snapshotRecordBytes, snapshotRecordKey, type SnapshotRecord } from '../core/snapshot-record';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
const record: SnapshotRecord = { pairId: 'web01', disk: 'sda', seq: 42, snapshotId: 'snap-0a1b', sizeBytes: 3 * 512 * 1024 + 1, sums: Buffer.concat([digest('a'), NO_BLOCK, digest('c'), digest('d')]) };

test('encodes as one JSON line and the sums, decodes to the same, under a key sorted by seq', () => {
  const body = encodeSnapshotRecord(record);
  const nl = body.indexOf(0x0a);
  expect(JSON.parse(body.subarray(0, nl).toString())).toEqual({ format: 1, pairId: 'web01', disk: 'sda', seq: 42, snapshotId: 'snap-0a1b', sizeBytes: record.sizeBytes, blockBytes: 524288, blocks: 4 });
  expect(body.length).toBe(nl + 1 + 4 * 32);
  expect(decodeSnapshotRecord(body, 'k')).toEqual(record);
  expect(snapshotRecordKey(record)).toBe('pairs/web01/recoveries/ebs/sda/00000000000000000042-snap-0a1b.sums');
  expect(() => encodeSnapshotRecord({ ...record, sums: record.sums.subarray(32) })).toThrow(/needs 128 bytes/);
});

test("the header alone decodes from the record's first bytes (the workflow's ranged read), saying where the sums start and how long the record is", () => {
  const body = encodeSnapshotRecord(record);
  const h = decodeSnapshotRecordHeader(body.subarray(0, body.indexOf(0x0a) + 1), 'k');
  const { sums: _sums, ...rest } = record;
  expect(h).toEqual({ ...rest, blocks: 4, sumsOffset: body.indexOf(0x0a) + 1 });
  expect(snapshotRecordBytes(h)).toBe(body.length);
  expect(body.subarray(h.sumsOffset).equals(record.sums)).toBe(true);
});

test.each([
  ['no header line', Buffer.from('{}')],
  ['the header is not JSON', Buffer.from('nope\n')],
  ['format 2, expected 1', (() => { const b = encodeSnapshotRecord(record); return Buffer.concat([Buffer.from(b.toString('latin1').replace('"format":1', '"format":2'), 'latin1')]); })()],
  ['96 bytes of sums for 4 blocks', encodeSnapshotRecord(record).subarray(0, -32)],
  ['5 blocks for', Buffer.from(encodeSnapshotRecord(record).toString('latin1').replace('"blocks":4', '"blocks":5'), 'latin1')],
])('a record with %s is refused, naming where it is', (what, body) => {
  expect(() => decodeSnapshotRecord(body, 'pairs/p/recoveries/ebs/sda/x.sums')).toThrow(`snapshot record pairs/p/recoveries/ebs/sda/x.sums: ${what}`);
});

test.each([
  ['data, no parent', digest('x'), undefined, 'put'],
  ['zeros, no parent', NO_BLOCK, undefined, 'skip'],
  ['data the parent holds', digest('a'), record.sums, 'skip'],
  ['other data than the parent', digest('z'), record.sums, 'put'],
  ['zeros where the parent holds data', NO_BLOCK, record.sums, 'put-zeros'],
] as const)('block 0: %s → %s', (_what, sum, parent, action) => {
  expect(blockAction(sum, parent, 0)).toBe(action);
});

test('a block past the parent\'s end is judged against zeros', () => {
  expect(blockAction(NO_BLOCK, record.sums, 9)).toBe('skip');
  expect(blockAction(digest('q'), record.sums, 9)).toBe('put');
  expect(blockAction(NO_BLOCK, record.sums, 1)).toBe('skip'); // the parent has no block 1 either
});
