// The batch (L0 segment) object format. Byte layout: docs/design.md, "Batch format".
// A batch is immutable; every byte of it is covered by a checksum, and a decoder
// either returns exactly what the encoder was given or throws a BatchError.

import { promisify } from 'node:util';
import { zstdCompress, zstdCompressSync, zstdDecompressSync, constants as zlibConstants } from 'node:zlib';
import { crc32c, crc32cCombine } from './crc32c';
import type { CompressionGate } from './compression-gate';
import { BatchError } from './errors';

export const BLOCK_SIZE = 4096;
/** Longer data runs are split so one extent can be fetched and decompressed on its own. */
export const MAX_EXTENT_BLOCKS = 256;
/** A zero extent has no payload, so one entry may cover up to 2^32 − 1 blocks (16 TiB). */
export const MAX_ZERO_EXTENT_BLOCKS = 0xffffffff;
export const FORMAT_VERSION = 1;
/**
 * The most data (decompressed, zero extents aside) a batch may hold: 4 × the apply path's
 * 32 MiB object cap, and 4 × what a writer cuts at its default (its raw bound is 32 MiB). It
 * bounds the work a decoder does for one object, whatever its extents claim (1 MiB of zstd
 * can be ~30 bytes: a 32 MiB object could otherwise make it decompress ~1 TiB).
 */
export const MAX_BATCH_DATA_BYTES = 128 * 1024 * 1024;

export const BATCH_FLAGS = {
  /** The batch ends at an application-consistent point (an ACRP); the header carries its tag. */
  APP_CONSISTENT: 1 << 0,
  /** The source asks for a crash-consistent RP at this boundary, whatever the interval. */
  RP_REQUESTED: 1 << 1,
  /**
   * A resync begins (or goes on) with this batch: after a spool overflow, an unclean stop
   * or lost local state, the source resends regions rather than writes, so the replica is
   * a mix of old and new regions until the resync ends. No RP while it lasts.
   */
  RESYNC: 1 << 2,
  /** The resync is complete at the end of this batch: the replica is consistent again (an RP). */
  RESYNC_END: 1 << 3,
} as const;

export const EXTENT_FLAGS = {
  /** No payload: the blocks read as zeros (a TRIM, WRITE_ZEROES or all-zero write). */
  ZERO: 1 << 0,
  /** The payload is zstd-compressed; otherwise it is stored raw. */
  ZSTD: 1 << 1,
} as const;

const MAGIC = Buffer.from('LSB1', 'ascii');
const END_MAGIC = Buffer.from('LSBE', 'ascii');
const FIXED_HEADER = 64;
const INDEX_ENTRY = 32;
export const TRAILER_SIZE = 32;
const MAX_NAME = 255;
const KNOWN_BATCH_FLAGS = BATCH_FLAGS.APP_CONSISTENT | BATCH_FLAGS.RP_REQUESTED | BATCH_FLAGS.RESYNC | BATCH_FLAGS.RESYNC_END;
const KNOWN_EXTENT_FLAGS = EXTENT_FLAGS.ZERO | EXTENT_FLAGS.ZSTD;

export interface BatchHeader {
  pairId: string;
  seq: number;
  prevSeq: number;
  /** Source clock (ms since epoch) of the first write in the batch. */
  firstWriteMs: number;
  /** Source clock when the batch was cut: the crash-consistent boundary it ends at. */
  cutMs: number;
  flags: number;
  /** Tag of the quiesced application; present iff APP_CONSISTENT is set. */
  appTag?: string;
  /** Disk names; extents refer to them by position. */
  disks: string[];
}

/** One extent as given to the encoder: `data` (a multiple of 4 KiB) or a run of zeros. */
export interface ExtentInput {
  disk: number;
  blockIndex: number;
  data?: Buffer;
  zeroBlocks?: number;
}

/** One index entry as stored. Offsets are from the start of the object. */
export interface ExtentEntry {
  disk: number;
  flags: number;
  blockIndex: number;
  blockCount: number;
  payloadOffset: number;
  payloadLength: number;
  /** CRC-32C of the uncompressed blocks (0 for ZERO extents). */
  dataCrc: number;
}

export interface BatchTrailer {
  indexOffset: number;
  extentCount: number;
  indexCrc: number;
  seq: number;
  objectCrc: number;
}

export interface DecodedBatch {
  header: BatchHeader;
  extents: ExtentEntry[];
  trailer: BatchTrailer;
  /** Total uncompressed bytes the batch writes (zero extents included). */
  dataBytes: number;
}

/** An extent ready to be laid out: its payload, compressed or not. */
interface PackedExtent {
  e: ExtentInput;
  payload?: Buffer;
  zstd: boolean;
}

/**
 * Extents smaller than this are stored uncompressed: zstd gains little on a lone 4 KiB
 * block, and a call per block is what limits an agent under random writes.
 */
export const MIN_COMPRESS_BYTES = 16 * 1024;
const ZSTD_OPTIONS = { params: { [zlibConstants.ZSTD_c_compressionLevel]: 1 } };
/**
 * The async call with room for the whole output (zstd's compress bound) in one chunk: with
 * the default 16 KiB chunks a 1 MiB extent takes 64 trips between the pool and the event
 * loop (3.3 ms instead of 1.0 here, and far more on a busy loop).
 */
const zstdOptionsFor = (n: number) => ({ ...ZSTD_OPTIONS, chunkSize: n + (n >> 8) + 1024 });
const zstdCompressAsync = promisify(zstdCompress);

const pickSmaller = (e: ExtentInput, packed: Buffer | undefined): PackedExtent =>
  packed && packed.length < e.data!.length ? { e, payload: packed, zstd: true } : { e, payload: e.data, zstd: false };

export function encodeBatch(header: BatchHeader, extents: ExtentInput[]): Buffer {
  checkHeaderInput(header);
  const packed = splitAndSort(extents, header.disks.length).map((e) =>
    !e.data ? { e, zstd: false } : pickSmaller(e, e.data.length >= MIN_COMPRESS_BYTES ? zstdCompressSync(e.data, ZSTD_OPTIONS) : undefined),
  );
  return layOut(header, packed);
}

/**
 * Bytes of a body whose extents hold `dataBytes` of blocks, stored raw, one extent per block
 * at most, with a header of up to `headerBytes`: an upper bound for sizing reused bodies.
 */
export function batchBodyBound(dataBytes: number, headerBytes = 4096): number {
  return headerBytes + dataBytes + Math.ceil(dataBytes / BLOCK_SIZE) * INDEX_ENTRY + TRAILER_SIZE;
}

export interface EncodeOptions {
  /** Extents compressed at a time (default 4; each holds a zstd context). */
  concurrency?: number;
  /** Says when to store an extent raw without trying (data that has not been compressing). */
  gate?: CompressionGate;
  /** Gives the output buffer (default: a new one), e.g. a reused body. */
  alloc?: (size: number) => Buffer;
}

/** encodeBatch with compression on the thread pool: the caller's event loop stays free. */
export async function encodeBatchAsync(header: BatchHeader, extents: ExtentInput[], o: EncodeOptions = {}): Promise<Buffer> {
  const { concurrency = 4, gate, alloc } = o;
  checkHeaderInput(header);
  const sorted = splitAndSort(extents, header.disks.length);
  const packed: PackedExtent[] = new Array(sorted.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < sorted.length; i = next++) {
      const e = sorted[i];
      if (!e.data || e.data.length < MIN_COMPRESS_BYTES || gate?.shouldTry() === false) {
        packed[i] = { e, payload: e.data, zstd: false };
        continue;
      }
      const z = await zstdCompressAsync(e.data, zstdOptionsFor(e.data.length));
      gate?.record(e.data.length, z.length);
      packed[i] = pickSmaller(e, z);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  return layOut(header, packed, alloc);
}

/**
 * Writes the body in one pass into one buffer: header, payloads in index order, index,
 * trailer (no intermediate parts: an agent under random writes lays out ~1,000 extents a batch).
 */
function layOut(header: BatchHeader, packed: PackedExtent[], alloc: (size: number) => Buffer = Buffer.allocUnsafe): Buffer {
  const headerBuf = encodeHeader(header);
  let payloadBytes = 0;
  for (const p of packed) payloadBytes += p.payload?.length ?? 0;
  const indexOffset = headerBuf.length + payloadBytes;
  const indexBytes = packed.length * INDEX_ENTRY;
  const trailerAt = indexOffset + indexBytes;
  const out = alloc(trailerAt + TRAILER_SIZE);
  headerBuf.copy(out, 0);
  // The object checksum covers everything before its own field. It is combined from the
  // parts' checksums: a raw payload's is its extent's data checksum, so no byte is read twice.
  let objectCrc = crc32c(headerBuf);
  let offset = headerBuf.length;
  let entryAt = indexOffset;
  for (const { e, payload, zstd } of packed) {
    if (!payload) {
      writeEntry(out, entryAt, e.disk, EXTENT_FLAGS.ZERO, e.zeroBlocks!, e.blockIndex, offset, 0, 0);
    } else {
      const dataCrc = crc32c(e.data!);
      writeEntry(out, entryAt, e.disk, zstd ? EXTENT_FLAGS.ZSTD : 0, e.data!.length / BLOCK_SIZE, e.blockIndex, offset, payload.length, dataCrc);
      objectCrc = crc32cCombine(objectCrc, zstd ? crc32c(payload) : dataCrc, payload.length);
      offset += payload.copy(out, offset);
    }
    entryAt += INDEX_ENTRY;
  }
  const indexCrc = crc32c(out.subarray(indexOffset, trailerAt));
  writeU64(out, trailerAt, indexOffset);
  out.writeUInt32LE(packed.length, trailerAt + 8);
  out.writeUInt32LE(indexCrc, trailerAt + 12);
  writeU64(out, trailerAt + 16, header.seq);
  END_MAGIC.copy(out, trailerAt + 28);
  objectCrc = crc32c(out.subarray(trailerAt, trailerAt + 24), crc32cCombine(objectCrc, indexCrc, indexBytes));
  out.writeUInt32LE(objectCrc, trailerAt + 24);
  return out;
}

/**
 * CRC-32C of a whole batch object, continued from the object CRC in its trailer over the last
 * 8 bytes: O(1). Only for a body the encoder produced or decodeBatch checked; the store then
 * has S3 verify the upload against it (x-amz-checksum-crc32c).
 */
export function batchObjectCrc32c(body: Buffer): number {
  return crc32c(body.subarray(body.length - 8), body.readUInt32LE(body.length - 8));
}

/**
 * Decodes and fully verifies a whole batch object: every checksum, every extent. With
 * `payloads: false` everything but the extents' payloads (their decoding and data CRC-32C),
 * which the caller then checks elsewhere (apply: in a worker, judged with checkExtentData).
 */
export function decodeBatch(buf: Buffer, where: string, o: { payloads: boolean } = { payloads: true }): DecodedBatch {
  checkEnd(buf, buf.length, where);
  // The whole-object checksum first: after it, a bad field is a bug, not corruption.
  const objectCrc = crc32c(buf.subarray(0, buf.length - 8));
  const storedCrc = buf.readUInt32LE(buf.length - 8);
  if (objectCrc !== storedCrc) throw new BatchError('CHECKSUM_MISMATCH', where, `object checksum ${hex(objectCrc)} != stored ${hex(storedCrc)}`);
  const trailer = decodeTrailer(buf, buf.length, where);
  const header = decodeHeader(buf, where);
  if (header.seq !== trailer.seq) throw new BatchError('MALFORMED', where, `trailer seq ${trailer.seq} != header seq ${header.seq}`);
  const headerLen = buf.readUInt32LE(40);
  const indexEnd = buf.length - TRAILER_SIZE;
  if (trailer.indexOffset < headerLen || trailer.indexOffset + trailer.extentCount * INDEX_ENTRY !== indexEnd) {
    throw new BatchError('MALFORMED', where, `index at ${trailer.indexOffset} with ${trailer.extentCount} entries does not end at the trailer (${indexEnd})`);
  }
  const extents = decodeIndex(buf.subarray(trailer.indexOffset, indexEnd), trailer, header.disks.length, where);
  let claimed = 0;
  for (const e of extents) if (!(e.flags & EXTENT_FLAGS.ZERO)) claimed += e.blockCount * BLOCK_SIZE;
  if (claimed > MAX_BATCH_DATA_BYTES) throw new BatchError('MALFORMED', where, `extents hold ${claimed} bytes of data, over the limit of ${MAX_BATCH_DATA_BYTES}`);
  let expectedOffset = headerLen;
  let dataBytes = 0;
  for (const [i, e] of extents.entries()) {
    if (e.payloadOffset !== expectedOffset) throw new BatchError('MALFORMED', where, `extent ${i} payload at ${e.payloadOffset}, expected ${expectedOffset}`);
    expectedOffset += e.payloadLength;
    if (expectedOffset > trailer.indexOffset) throw new BatchError('MALFORMED', where, `extent ${i} payload runs into the index`);
    if (o.payloads && !(e.flags & EXTENT_FLAGS.ZERO)) decodeExtent(e, buf.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), `${where} extent ${i}`);
    dataBytes += e.blockCount * BLOCK_SIZE;
  }
  if (expectedOffset !== trailer.indexOffset) throw new BatchError('MALFORMED', where, `${trailer.indexOffset - expectedOffset} stray bytes before the index`);
  return { header, extents, trailer, dataBytes };
}

/** Reads the fixed-size trailer from the last TRAILER_SIZE bytes of an object of `objectSize` bytes. */
export function decodeTrailer(tail: Buffer, objectSize: number, where: string): BatchTrailer {
  checkEnd(tail, objectSize, where);
  const t = tail.subarray(tail.length - TRAILER_SIZE);
  return {
    indexOffset: readU64(t, 0, where),
    extentCount: t.readUInt32LE(8),
    indexCrc: t.readUInt32LE(12),
    seq: readU64(t, 16, where),
    objectCrc: t.readUInt32LE(24),
  };
}

function checkEnd(tail: Buffer, objectSize: number, where: string): void {
  if (objectSize < FIXED_HEADER + TRAILER_SIZE || tail.length < TRAILER_SIZE) {
    throw new BatchError('TRUNCATED', where, `${objectSize} bytes is shorter than an empty batch`);
  }
  if (!tail.subarray(tail.length - 4).equals(END_MAGIC)) throw new BatchError('TRUNCATED', where, 'end marker missing (object cut short or not a batch)');
}

/** Verifies and parses an index read on its own (e.g. by a ranged GET). */
export function decodeIndex(index: Buffer, trailer: BatchTrailer, diskCount: number, where: string): ExtentEntry[] {
  if (index.length !== trailer.extentCount * INDEX_ENTRY) throw new BatchError('TRUNCATED', where, `index is ${index.length} bytes, expected ${trailer.extentCount * INDEX_ENTRY}`);
  const crc = crc32c(index);
  if (crc !== trailer.indexCrc) throw new BatchError('CHECKSUM_MISMATCH', where, `index checksum ${hex(crc)} != stored ${hex(trailer.indexCrc)}`);
  const extents: ExtentEntry[] = [];
  for (let i = 0; i < trailer.extentCount; i++) {
    const e = readEntry(index, i * INDEX_ENTRY, where);
    const at = `${where} extent ${i}`;
    if (e.disk >= diskCount) throw new BatchError('MALFORMED', where, `extent ${i} names disk #${e.disk} of ${diskCount}`);
    if (e.flags & ~KNOWN_EXTENT_FLAGS) throw new BatchError('MALFORMED', at, `unknown flags ${hex(e.flags)}`);
    const max = e.flags & EXTENT_FLAGS.ZERO ? MAX_ZERO_EXTENT_BLOCKS : MAX_EXTENT_BLOCKS;
    if (e.blockCount < 1 || e.blockCount > max) throw new BatchError('MALFORMED', at, `block count ${e.blockCount} outside 1..${max}`);
    if (e.flags & EXTENT_FLAGS.ZERO && (e.payloadLength !== 0 || e.flags & EXTENT_FLAGS.ZSTD)) throw new BatchError('MALFORMED', at, 'zero extent with a payload');
    if (!(e.flags & EXTENT_FLAGS.ZERO) && !(e.flags & EXTENT_FLAGS.ZSTD) && e.payloadLength !== e.blockCount * BLOCK_SIZE) {
      throw new BatchError('MALFORMED', at, `raw payload of ${e.payloadLength} bytes for ${e.blockCount} blocks`);
    }
    const prev = extents[i - 1];
    if (prev && (prev.disk > e.disk || (prev.disk === e.disk && prev.blockIndex + prev.blockCount > e.blockIndex))) {
      throw new BatchError('MALFORMED', at, 'extents are not sorted by (disk, block) or overlap');
    }
    extents.push(e);
  }
  return extents;
}

/** Returns the verified, uncompressed blocks of one extent from its stored payload. */
export function decodeExtent(e: ExtentEntry, payload: Buffer, where: string): Buffer {
  const size = e.blockCount * BLOCK_SIZE;
  if (e.flags & EXTENT_FLAGS.ZERO) return Buffer.alloc(size);
  if (payload.length !== e.payloadLength) throw new BatchError('TRUNCATED', where, `payload is ${payload.length} bytes, expected ${e.payloadLength}`);
  let data: Buffer;
  if (e.flags & EXTENT_FLAGS.ZSTD) {
    try {
      data = zstdDecompressSync(payload, { maxOutputLength: size, chunkSize: Math.max(64, size) });
    } catch (err) {
      throw new BatchError('CHECKSUM_MISMATCH', where, `payload does not decompress: ${(err as Error).message}`);
    }
  } else {
    data = payload;
  }
  checkExtentData(e, { length: data.length, crc: crc32c(data) }, where);
  return data;
}

/**
 * Judges what a stored extent's payload turned into (decompressed here, or by recovery's
 * verifier thread) against its index entry: the length it must have and its CRC-32C.
 */
export function checkExtentData(e: ExtentEntry, got: { length: number; crc?: number } | { error: string }, where: string): void {
  if ('error' in got) throw new BatchError('CHECKSUM_MISMATCH', where, `payload does not decompress: ${got.error}`);
  const size = e.blockCount * BLOCK_SIZE;
  if (got.length !== size) throw new BatchError('MALFORMED', where, `payload holds ${got.length} bytes, expected ${size}`);
  if (got.crc !== e.dataCrc) throw new BatchError('CHECKSUM_MISMATCH', where, `data checksum ${hex(got.crc ?? 0)} != stored ${hex(e.dataCrc)}`);
}

export function decodeHeader(buf: Buffer, where: string): BatchHeader {
  if (buf.length < FIXED_HEADER) throw new BatchError('TRUNCATED', where, `header needs ${FIXED_HEADER} bytes, have ${buf.length}`);
  if (!buf.subarray(0, 4).equals(MAGIC)) throw new BatchError('BAD_MAGIC', where, `magic ${buf.subarray(0, 4).toString('hex')} is not ${MAGIC.toString('hex')}`);
  const version = buf.readUInt16LE(4);
  if (version !== FORMAT_VERSION) throw new BatchError('BAD_VERSION', where, `format version ${version}, this build reads ${FORMAT_VERSION}`);
  const headerLen = buf.readUInt32LE(40);
  if (headerLen < FIXED_HEADER || headerLen > buf.length) throw new BatchError('TRUNCATED', where, `header length ${headerLen} outside the object (${buf.length} bytes)`);
  const stored = buf.readUInt32LE(60);
  const copy = Buffer.from(buf.subarray(0, headerLen));
  copy.writeUInt32LE(0, 60);
  if (crc32c(copy) !== stored) throw new BatchError('CHECKSUM_MISMATCH', where, 'header checksum mismatch');
  const flags = buf.readUInt16LE(6);
  if (flags & ~KNOWN_BATCH_FLAGS) throw new BatchError('MALFORMED', where, `unknown batch flags ${hex(flags)}`);
  if (buf.subarray(50, 60).some((b) => b !== 0)) throw new BatchError('MALFORMED', where, 'reserved header bytes 50..59 are not zero');
  let at = FIXED_HEADER;
  const text = (len: number): string => {
    if (at + len > headerLen) throw new BatchError('MALFORMED', where, 'header strings overrun the header');
    const s = buf.toString('utf8', at, at + len);
    at += len;
    return s;
  };
  const pairId = text(buf.readUInt16LE(44));
  const tag = text(buf.readUInt16LE(46));
  const disks: string[] = [];
  for (let i = buf.readUInt16LE(48); i > 0; i--) {
    if (at + 1 > headerLen) throw new BatchError('MALFORMED', where, 'disk table overruns the header');
    const len = buf[at++];
    disks.push(text(len));
  }
  if (at !== headerLen) throw new BatchError('MALFORMED', where, `${headerLen - at} stray header bytes`);
  if (disks.length === 0 || new Set(disks).size !== disks.length) throw new BatchError('MALFORMED', where, `disk table [${disks.join(', ')}] is empty or names a disk twice`);
  const app = (flags & BATCH_FLAGS.APP_CONSISTENT) !== 0;
  if (app !== tag.length > 0) throw new BatchError('MALFORMED', where, app ? 'application-consistent batch without a tag' : 'tag on a batch that is not application-consistent');
  return {
    pairId,
    seq: readU64(buf, 8, where),
    prevSeq: readU64(buf, 16, where),
    firstWriteMs: readU64(buf, 24, where),
    cutMs: readU64(buf, 32, where),
    flags,
    appTag: app ? tag : undefined,
    disks,
  };
}

function encodeHeader(h: BatchHeader): Buffer {
  const pair = Buffer.from(h.pairId, 'utf8');
  const tag = Buffer.from(h.appTag ?? '', 'utf8');
  const names = h.disks.map((d) => Buffer.from(d, 'utf8'));
  const len = FIXED_HEADER + pair.length + tag.length + names.reduce((n, b) => n + 1 + b.length, 0);
  const buf = Buffer.alloc(len);
  MAGIC.copy(buf, 0);
  buf.writeUInt16LE(FORMAT_VERSION, 4);
  buf.writeUInt16LE(h.flags, 6);
  writeU64(buf, 8, h.seq);
  writeU64(buf, 16, h.prevSeq);
  writeU64(buf, 24, h.firstWriteMs);
  writeU64(buf, 32, h.cutMs);
  buf.writeUInt32LE(len, 40);
  buf.writeUInt16LE(pair.length, 44);
  buf.writeUInt16LE(tag.length, 46);
  buf.writeUInt16LE(names.length, 48);
  let at = FIXED_HEADER;
  at += pair.copy(buf, at);
  at += tag.copy(buf, at);
  for (const n of names) {
    buf[at++] = n.length;
    at += n.copy(buf, at);
  }
  buf.writeUInt32LE(crc32c(buf), 60);
  return buf;
}

function checkHeaderInput(h: BatchHeader): void {
  const where = `${h.pairId}/${h.seq}`;
  const app = (h.flags & BATCH_FLAGS.APP_CONSISTENT) !== 0;
  if (h.flags & ~KNOWN_BATCH_FLAGS) throw new BatchError('MALFORMED', where, `unknown batch flags ${hex(h.flags)}`);
  if (app !== Boolean(h.appTag)) throw new BatchError('MALFORMED', where, 'APP_CONSISTENT flag and tag must come together');
  if (Buffer.byteLength(h.appTag ?? '') > MAX_NAME || Buffer.byteLength(h.pairId) > MAX_NAME) throw new BatchError('MALFORMED', where, 'pair id or tag longer than 255 bytes');
  if (h.disks.length === 0 || h.disks.some((d) => d.length === 0 || Buffer.byteLength(d) > MAX_NAME)) throw new BatchError('MALFORMED', where, 'disk names must be 1..255 bytes');
  if (new Set(h.disks).size !== h.disks.length) throw new BatchError('MALFORMED', where, `disk table [${h.disks.join(', ')}] names a disk twice`);
}

/** Validates extents, splits long runs and returns them sorted by (disk, block). */
function splitAndSort(extents: ExtentInput[], diskCount: number): ExtentInput[] {
  // One pass checks every extent and whether they are laid out already (within the size
  // limits, sorted, disjoint), as the batch writer's are: those are returned as they are.
  let laidOut = true;
  let lastDisk = -1;
  let lastEnd = 0;
  for (const e of extents) {
    if (e.disk < 0 || e.disk >= diskCount) throw new RangeError(`extent names disk #${e.disk} of ${diskCount}`);
    const blocks = extentBlocks(e);
    if (!Number.isInteger(blocks) || blocks < 1) throw new RangeError(`extent at block ${e.blockIndex} is not a positive number of 4 KiB blocks`);
    if (blocks > (e.data ? MAX_EXTENT_BLOCKS : MAX_ZERO_EXTENT_BLOCKS) || e.disk < lastDisk || (e.disk === lastDisk && e.blockIndex < lastEnd)) laidOut = false;
    lastDisk = e.disk;
    lastEnd = e.blockIndex + blocks;
  }
  if (laidOut) return extents;
  const out: ExtentInput[] = [];
  for (const e of extents) {
    const blocks = extentBlocks(e);
    const max = e.data ? MAX_EXTENT_BLOCKS : MAX_ZERO_EXTENT_BLOCKS;
    for (let b = 0; b < blocks; b += max) {
      const n = Math.min(max, blocks - b);
      out.push(e.data
        ? { disk: e.disk, blockIndex: e.blockIndex + b, data: e.data.subarray(b * BLOCK_SIZE, (b + n) * BLOCK_SIZE) }
        : { disk: e.disk, blockIndex: e.blockIndex + b, zeroBlocks: n });
    }
  }
  out.sort((a, b) => a.disk - b.disk || a.blockIndex - b.blockIndex);
  for (let i = 1; i < out.length; i++) {
    const p = out[i - 1];
    if (p.disk === out[i].disk && p.blockIndex + extentBlocks(p) > out[i].blockIndex) throw new RangeError(`extents overlap at disk #${p.disk} block ${out[i].blockIndex}`);
  }
  return out;
}

const extentBlocks = (e: ExtentInput): number => (e.data ? e.data.length / BLOCK_SIZE : e.zeroBlocks ?? 0);

function writeEntry(buf: Buffer, at: number, disk: number, flags: number, blockCount: number, blockIndex: number, payloadOffset: number, payloadLength: number, dataCrc: number): void {
  buf.writeUInt16LE(disk, at);
  buf.writeUInt16LE(flags, at + 2);
  buf.writeUInt32LE(blockCount, at + 4);
  writeU64(buf, at + 8, blockIndex);
  writeU64(buf, at + 16, payloadOffset);
  buf.writeUInt32LE(payloadLength, at + 24);
  buf.writeUInt32LE(dataCrc, at + 28);
}

function readEntry(buf: Buffer, at: number, where: string): ExtentEntry {
  return {
    disk: buf.readUInt16LE(at),
    flags: buf.readUInt16LE(at + 2),
    blockCount: buf.readUInt32LE(at + 4),
    blockIndex: readU64(buf, at + 8, where),
    payloadOffset: readU64(buf, at + 16, where),
    payloadLength: buf.readUInt32LE(at + 24),
    dataCrc: buf.readUInt32LE(at + 28),
  };
}

/** A JS-safe non-negative integer as a little-endian u64 (two u32 halves: no BigInt per field). */
function writeU64(buf: Buffer, at: number, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${v} is not a u64 field value`);
  buf.writeUInt32LE(v % 2 ** 32, at);
  buf.writeUInt32LE(Math.floor(v / 2 ** 32), at + 4);
}

/** u64 fields hold JS-safe integers; anything larger is corruption, not data. */
function readU64(buf: Buffer, at: number, where: string): number {
  const high = buf.readUInt32LE(at + 4);
  if (high >= 2 ** 21) throw new BatchError('MALFORMED', where, `64-bit field at byte ${at} out of range`);
  return high * 2 ** 32 + buf.readUInt32LE(at);
}

const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;
