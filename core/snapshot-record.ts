// What an EBS snapshot made by a recovery holds, so that the next recovery of the pair's disk
// into EBS can be incremental from it (ParentSnapshotId) and ship only the 512 KiB blocks that
// differ. One object per snapshot, written once after CompleteSnapshot succeeded:
//   pairs/{pair}/recoveries/ebs/{disk}/{seq:20}-{snapshotId}.sums
// Bytes: one line of JSON (UTF-8, ending in "\n") — {"format":1,"pairId","disk","seq",
// "snapshotId","sizeBytes","blockBytes":524288,"blocks":N} — then N × 32 bytes: block i's
// SHA-256 digest, or 32 zero bytes for a block the snapshot does not hold (it reads zeros).
// Decoding checks every field and the length; a record that does not decode is not used.

import { seqKey } from './keys';

export const SNAPSHOT_RECORD_FORMAT = 1;
export const SNAPSHOT_BLOCK_BYTES = 512 * 1024;
const DIGEST = 32;
/** The sum of a block the snapshot does not hold. */
export const NO_BLOCK = Buffer.alloc(DIGEST);

export interface SnapshotRecord {
  pairId: string;
  disk: string;
  seq: number;
  snapshotId: string;
  sizeBytes: number;
  /** blocks × 32 bytes. */
  sums: Buffer;
}

export const snapshotRecordPrefix = (pair: string, disk: string): string => `pairs/${pair}/recoveries/ebs/${disk}/`;
export const snapshotRecordKey = (r: Pick<SnapshotRecord, 'pairId' | 'disk' | 'seq' | 'snapshotId'>): string => `${snapshotRecordPrefix(r.pairId, r.disk)}${seqKey(r.seq)}-${r.snapshotId}.sums`;
export const blocksOf = (sizeBytes: number): number => Math.ceil(sizeBytes / SNAPSHOT_BLOCK_BYTES);

export function encodeSnapshotRecord(r: SnapshotRecord): Buffer {
  const blocks = blocksOf(r.sizeBytes);
  if (r.sums.length !== blocks * DIGEST) throw new RangeError(`a record of ${blocks} blocks needs ${blocks * DIGEST} bytes of sums, not ${r.sums.length}`);
  const head = { format: SNAPSHOT_RECORD_FORMAT, pairId: r.pairId, disk: r.disk, seq: r.seq, snapshotId: r.snapshotId, sizeBytes: r.sizeBytes, blockBytes: SNAPSHOT_BLOCK_BYTES, blocks };
  return Buffer.concat([Buffer.from(`${JSON.stringify(head)}\n`), r.sums]);
}

/** A record's header line, checked, and where its sums start (the byte after the line). */
export interface SnapshotRecordHeader extends Omit<SnapshotRecord, 'sums'> {
  blocks: number;
  sumsOffset: number;
}

/**
 * The header of the record that starts with `head` (stored at `where`; the whole record or
 * only its first bytes, which must hold the header line); throws an Error naming `where` and
 * the field that is wrong.
 */
export function decodeSnapshotRecordHeader(head: Buffer, where: string): SnapshotRecordHeader {
  const nl = head.indexOf(0x0a);
  const bad = (what: string): Error => new Error(`snapshot record ${where}: ${what}`);
  if (nl < 0) throw bad('no header line');
  let h: Record<string, unknown>;
  try {
    h = JSON.parse(head.subarray(0, nl).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('the header is not JSON');
  }
  if (h.format !== SNAPSHOT_RECORD_FORMAT) throw bad(`format ${String(h.format)}, expected ${SNAPSHOT_RECORD_FORMAT}`);
  for (const f of ['pairId', 'disk', 'snapshotId'] as const) if (typeof h[f] !== 'string' || !h[f]) throw bad(`${f} is not a string`);
  for (const f of ['seq', 'sizeBytes', 'blocks'] as const) if (!Number.isSafeInteger(h[f]) || (h[f] as number) < 0) throw bad(`${f} is not a whole number`);
  if (h.blockBytes !== SNAPSHOT_BLOCK_BYTES) throw bad(`blockBytes ${String(h.blockBytes)}, expected ${SNAPSHOT_BLOCK_BYTES}`);
  if (h.blocks !== blocksOf(h.sizeBytes as number)) throw bad(`${String(h.blocks)} blocks for ${String(h.sizeBytes)} bytes`);
  return { pairId: h.pairId as string, disk: h.disk as string, seq: h.seq as number, snapshotId: h.snapshotId as string, sizeBytes: h.sizeBytes as number, blocks: h.blocks as number, sumsOffset: nl + 1 };
}

/** The record in `body` (stored at `where`); throws an Error naming `where` and the field that is wrong. */
export function decodeSnapshotRecord(body: Buffer, where: string): SnapshotRecord {
  const { blocks, sumsOffset, ...record } = decodeSnapshotRecordHeader(body, where);
  const sums = body.subarray(sumsOffset);
  if (sums.length !== blocks * DIGEST) throw new Error(`snapshot record ${where}: ${sums.length} bytes of sums for ${blocks} blocks`);
  return { ...record, sums: Buffer.from(sums) };
}

/** The length of a whole record with this header. */
export const snapshotRecordBytes = (h: SnapshotRecordHeader): number => h.sumsOffset + h.blocks * DIGEST;

/**
 * What a snapshot started from `parent` must do with block `index` whose new sum is `sum`
 * (NO_BLOCK for zeros): nothing where the parent holds the same; write zeros where the parent
 * holds data and the block is now zeros (a child reads its parent's block otherwise); else
 * write the data. Without a parent only data is written.
 */
export function blockAction(sum: Buffer, parentSums: Buffer | undefined, index: number): 'skip' | 'put' | 'put-zeros' {
  const parent = parentSums && index * DIGEST < parentSums.length ? parentSums.subarray(index * DIGEST, (index + 1) * DIGEST) : NO_BLOCK;
  if (sum.equals(parent)) return 'skip';
  return sum.equals(NO_BLOCK) ? 'put-zeros' : 'put';
}
