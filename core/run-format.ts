// Pieces: the versions of one range over a seq span, self-contained bytes inside a run
// object (a run is pieces back to back; the manifest says where each is). Byte layout:
// docs/design.md, "History", "Piece format". A decoder returns exactly what the encoder was
// given or throws CorruptHistoryError naming the piece (key@offset) and the entry.

import { zstdCompressSync, constants as zlibConstants } from 'node:zlib';
import { BLOCK_SIZE, EXTENT_FLAGS, MIN_COMPRESS_BYTES, decodeExtent, type ExtentEntry } from './batch-format';
import { crc32c, crc32cCombine } from './crc32c';
import { BatchError, CorruptHistoryError } from './errors';
import { RANGE_BLOCKS } from './manifest';

/** Stored payload bytes of one piece at most; a longer span is cut into several pieces. */
export const MAX_PIECE_PAYLOAD = 16 * 1024 * 1024;
const MAGIC = Buffer.from('LSP1', 'ascii');
const FORMAT_VERSION = 1;
const FIXED_HEADER = 40;
const ENTRY = 32;
const TRAILER = 4;
const MAX_DISK_NAME = 63;
const KNOWN_FLAGS = EXTENT_FLAGS.ZERO | EXTENT_FLAGS.ZSTD;
const ZSTD_OPTIONS = { params: { [zlibConstants.ZSTD_c_compressionLevel]: 1 } };

/** One version as given to the encoder: `blockCount` blocks from `blockIndex` (within the range) as written by `seq`. */
export interface PieceVersionInput {
  seq: number;
  blockIndex: number;
  blockCount: number;
  /** blockCount × 4 KiB of data; absent iff `zero`. */
  data?: Buffer;
  zero?: true;
}

export interface PieceInput {
  disk: string;
  rangeIndex: number;
  seqLo: number;
  seqHi: number;
  versions: PieceVersionInput[];
}

/** One entry as stored. `payloadOffset` is from the piece's start. */
export interface PieceVersionEntry {
  seq: number;
  blockIndex: number;
  blockCount: number;
  flags: number;
  payloadOffset: number;
  payloadLength: number;
  /** CRC-32C of the uncompressed blocks (0 for ZERO). */
  dataCrc: number;
}

export interface DecodedPiece {
  disk: string;
  rangeIndex: number;
  seqLo: number;
  seqHi: number;
  entries: PieceVersionEntry[];
  /** Uncompressed bytes of its data versions (zero versions count 0): PieceEntry.dataBytes. */
  dataBytes: number;
  /** The piece's last 4 bytes, the CRC-32C of every byte before them: PieceEntry.crc32c. */
  crc32c: number;
}

const byBlockThenSeq = (a: { blockIndex: number; seq: number }, b: { blockIndex: number; seq: number }): number => a.blockIndex - b.blockIndex || a.seq - b.seq;

/** Encodes one piece: versions sorted by (blockIndex, seq), payloads zstd level 1 when ≥ 16 KiB and smaller. */
export function encodePiece(p: PieceInput): Buffer {
  const name = Buffer.from(p.disk, 'utf8');
  const where = `piece ${p.disk}:${p.rangeIndex} [${p.seqLo}, ${p.seqHi}]`;
  if (name.length < 1 || name.length > MAX_DISK_NAME) throw new RangeError(`${where}: disk name must be 1..${MAX_DISK_NAME} bytes`);
  if (!isU64(p.seqLo) || !isU64(p.seqHi) || p.seqLo > p.seqHi) throw new RangeError(`${where}: bad seq span`);
  if (!Number.isInteger(p.rangeIndex) || p.rangeIndex < 0 || p.rangeIndex > 0xffffffff) throw new RangeError(`${where}: bad range index`);
  const versions = [...p.versions].sort(byBlockThenSeq);
  const headerLen = FIXED_HEADER + pad8(name.length);
  let offset = headerLen + versions.length * ENTRY;
  const entries: PieceVersionEntry[] = [];
  const payloads: Buffer[] = [];
  for (const v of versions) {
    const data = v.zero ? undefined : v.data;
    if (v.zero && v.data) throw new RangeError(`${where}: version seq ${v.seq} block ${v.blockIndex} is both zero and data`);
    if (!v.zero && (!data || data.length !== v.blockCount * BLOCK_SIZE)) throw new RangeError(`${where}: version seq ${v.seq} block ${v.blockIndex} has ${data?.length ?? 0} bytes for ${v.blockCount} blocks`);
    const e: PieceVersionEntry = { seq: v.seq, blockIndex: v.blockIndex, blockCount: v.blockCount, flags: EXTENT_FLAGS.ZERO, payloadOffset: offset, payloadLength: 0, dataCrc: 0 };
    if (data) {
      const z = data.length >= MIN_COMPRESS_BYTES ? zstdCompressSync(data, ZSTD_OPTIONS) : undefined;
      const payload = z && z.length < data.length ? z : data;
      e.flags = payload === data ? 0 : EXTENT_FLAGS.ZSTD;
      e.payloadLength = payload.length;
      e.dataCrc = crc32c(data);
      payloads.push(payload);
      offset += payload.length;
    }
    entries.push(e);
  }
  const payloadBytes = offset - headerLen - versions.length * ENTRY;
  if (payloadBytes > MAX_PIECE_PAYLOAD) throw new RangeError(`${where}: ${payloadBytes} payload bytes, over MAX_PIECE_PAYLOAD (${MAX_PIECE_PAYLOAD})`);
  const total = offset + TRAILER;
  const buf = Buffer.alloc(total);
  MAGIC.copy(buf, 0);
  buf.writeUInt16LE(FORMAT_VERSION, 4);
  buf.writeUInt16LE(name.length, 6);
  buf.writeBigUInt64LE(BigInt(p.seqLo), 8);
  buf.writeBigUInt64LE(BigInt(p.seqHi), 16);
  buf.writeUInt32LE(p.rangeIndex, 24);
  buf.writeUInt32LE(entries.length, 28);
  buf.writeUInt32LE(total, 32);
  name.copy(buf, FIXED_HEADER);
  buf.writeUInt32LE(headerCrc(buf, name.length), 36);
  entries.forEach((e, i) => writeEntry(buf, headerLen + i * ENTRY, e));
  let at = headerLen + entries.length * ENTRY;
  for (const payload of payloads) at += payload.copy(buf, at);
  // Checks what it was given (overlaps, spans, bounds) by the decoder's own rules.
  buf.writeUInt32LE(crc32c(buf.subarray(0, total - TRAILER)), total - TRAILER);
  try {
    decodePiece(buf, where);
  } catch (err) {
    if (err instanceof CorruptHistoryError) throw new RangeError(err.message);
    throw err;
  }
  return buf;
}

/**
 * Decodes and checks one piece (its exact bytes, e.g. from a ranged GET): magic, version,
 * header CRC, whole-piece CRC (and `expectedCrc`, the manifest's PieceEntry.crc32c, when given), the entries'
 * order, bounds and seqs, payloads laid out without gaps. Payload data is checked by pieceVersionData.
 *
 * `rawByEntry` (a reader that checks the data of every version it uses against its entry's
 * data CRC before using it): the whole-piece CRC is checked without reading the raw payloads.
 * A raw payload's bytes are its version's data, so their CRC is the entry's data CRC: the
 * piece's CRC is combined from the CRC of its header and entries, those data CRCs, and the
 * CRCs of the compressed payloads (read). Header and entries are then as checked as before;
 * a damaged raw payload is found when its version is used, and only then does it matter.
 */
export function decodePiece(buf: Buffer, where: string, expectedCrc?: number, o: { rawByEntry?: boolean } = {}): DecodedPiece {
  const bad = (reason: string): CorruptHistoryError => new CorruptHistoryError(where, reason);
  if (buf.length < FIXED_HEADER + 8 + TRAILER) throw bad(`${buf.length} bytes is shorter than an empty piece`);
  if (!buf.subarray(0, 4).equals(MAGIC)) throw bad(`magic ${buf.subarray(0, 4).toString('hex')} is not ${MAGIC.toString('hex')}`);
  const version = buf.readUInt16LE(4);
  if (version !== FORMAT_VERSION) throw bad(`format version ${version}, this build reads ${FORMAT_VERSION}`);
  const nameLen = buf.readUInt16LE(6);
  if (nameLen < 1 || nameLen > MAX_DISK_NAME) throw bad(`disk name length ${nameLen} outside 1..${MAX_DISK_NAME}`);
  const storedHeaderCrc = buf.readUInt32LE(36);
  const gotHeaderCrc = headerCrc(buf, nameLen);
  if (gotHeaderCrc !== storedHeaderCrc) throw bad(`header checksum ${hex(gotHeaderCrc)} != stored ${hex(storedHeaderCrc)}`);
  const total = buf.readUInt32LE(32);
  if (total !== buf.length) throw bad(`piece length ${total} in the header, ${buf.length} bytes read`);
  const storedCrc = buf.readUInt32LE(total - TRAILER);
  if (!o.rawByEntry) {
    const gotCrc = crc32c(buf.subarray(0, total - TRAILER));
    if (gotCrc !== storedCrc) throw bad(`piece checksum ${hex(gotCrc)} != stored ${hex(storedCrc)}`);
  }
  if (expectedCrc !== undefined && storedCrc !== expectedCrc) throw bad(`piece checksum ${hex(storedCrc)} != the manifest's ${hex(expectedCrc)}`);
  const seqLo = readU64(buf, 8, bad);
  const seqHi = readU64(buf, 16, bad);
  if (seqLo > seqHi) throw bad(`seq span [${seqLo}, ${seqHi}] is empty`);
  const rangeIndex = buf.readUInt32LE(24);
  const count = buf.readUInt32LE(28);
  const disk = buf.toString('utf8', FIXED_HEADER, FIXED_HEADER + nameLen);
  const headerLen = FIXED_HEADER + pad8(nameLen);
  if (buf.subarray(FIXED_HEADER + nameLen, headerLen).some((b) => b !== 0)) throw bad('disk name padding is not zero');
  const payloadStart = headerLen + count * ENTRY;
  if (payloadStart > total - TRAILER) throw bad(`${count} entries run past the piece's end`);
  const entries: PieceVersionEntry[] = [];
  /** Per seq, the end of its last version so far: versions of one seq must not overlap. */
  const seqEnd = new Map<number, number>();
  let expectedOffset = payloadStart;
  let dataBytes = 0;
  for (let i = 0; i < count; i++) {
    const at = headerLen + i * ENTRY;
    const e: PieceVersionEntry = {
      seq: readU64(buf, at, bad),
      blockIndex: buf.readUInt32LE(at + 8),
      blockCount: buf.readUInt16LE(at + 12),
      flags: buf.readUInt16LE(at + 14),
      payloadOffset: buf.readUInt32LE(at + 16),
      payloadLength: buf.readUInt32LE(at + 20),
      dataCrc: buf.readUInt32LE(at + 24),
    };
    const entryBad = (reason: string): CorruptHistoryError => new CorruptHistoryError(`${where} entry ${i} (seq ${e.seq}, block ${e.blockIndex})`, reason);
    if (buf.readUInt32LE(at + 28) !== 0) throw entryBad('reserved field is not zero');
    if (e.flags & ~KNOWN_FLAGS) throw entryBad(`unknown flags ${hex(e.flags)}`);
    if (e.seq < seqLo || e.seq > seqHi) throw entryBad(`seq outside the piece's span [${seqLo}, ${seqHi}]`);
    if (e.blockCount < 1 || e.blockIndex + e.blockCount > RANGE_BLOCKS) throw entryBad(`${e.blockCount} blocks from block ${e.blockIndex} are not inside the range (${RANGE_BLOCKS} blocks)`);
    const prev = entries[i - 1];
    if (prev && byBlockThenSeq(prev, e) >= 0) throw entryBad(`not after entry ${i - 1} (seq ${prev.seq}, block ${prev.blockIndex}) in (block, seq) order`);
    if ((seqEnd.get(e.seq) ?? 0) > e.blockIndex) throw entryBad(`overlaps an earlier version of seq ${e.seq}`);
    seqEnd.set(e.seq, e.blockIndex + e.blockCount);
    if (e.payloadOffset !== expectedOffset) throw entryBad(`payload at ${e.payloadOffset}, expected ${expectedOffset}`);
    const zero = (e.flags & EXTENT_FLAGS.ZERO) !== 0;
    if (zero && (e.payloadLength !== 0 || e.flags & EXTENT_FLAGS.ZSTD || e.dataCrc !== 0)) throw entryBad('zero version with a payload or a data checksum');
    if (!zero && !(e.flags & EXTENT_FLAGS.ZSTD) && e.payloadLength !== e.blockCount * BLOCK_SIZE) throw entryBad(`raw payload of ${e.payloadLength} bytes for ${e.blockCount} blocks`);
    if (!zero && e.payloadLength === 0) throw entryBad('data version without a payload');
    expectedOffset += e.payloadLength;
    if (expectedOffset > total - TRAILER) throw entryBad(`payload runs past the piece's end (${total - TRAILER})`);
    if (!zero) dataBytes += e.blockCount * BLOCK_SIZE;
    entries.push(e);
  }
  if (expectedOffset !== total - TRAILER) throw bad(`${total - TRAILER - expectedOffset} stray bytes after the payloads`);
  if (expectedOffset - payloadStart > MAX_PIECE_PAYLOAD) throw bad(`${expectedOffset - payloadStart} payload bytes, over ${MAX_PIECE_PAYLOAD}`);
  if (o.rawByEntry) {
    let gotCrc = crc32c(buf.subarray(0, payloadStart));
    for (const e of entries) {
      if (e.payloadLength === 0) continue;
      const payloadCrc = e.flags & EXTENT_FLAGS.ZSTD ? crc32c(buf.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength)) : e.dataCrc;
      gotCrc = crc32cCombine(gotCrc, payloadCrc, e.payloadLength);
    }
    if (gotCrc !== storedCrc) throw bad(`piece checksum ${hex(gotCrc)} != stored ${hex(storedCrc)} (raw payloads taken by their entries' data checksums)`);
  }
  return { disk, rangeIndex, seqLo, seqHi, entries, dataBytes, crc32c: storedCrc };
}

/** The verified, uncompressed blocks of one entry of a decoded piece (zeros for ZERO). */
export function pieceVersionData(buf: Buffer, e: PieceVersionEntry, where: string): Buffer {
  const at = `${where} entry (seq ${e.seq}, block ${e.blockIndex})`;
  if (e.payloadOffset + e.payloadLength > buf.length) throw new CorruptHistoryError(at, `payload [${e.payloadOffset}, +${e.payloadLength}) runs past the piece's end (${buf.length})`);
  const extent: ExtentEntry = { disk: 0, ...e };
  try {
    return decodeExtent(extent, buf.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), at);
  } catch (err) {
    if (err instanceof BatchError) throw new CorruptHistoryError(at, err.reason);
    throw err;
  }
}

/** PieceEntry.blocks: base64 of a RANGE_BLOCKS-bit bitmap, bit i (byte i>>3, bit i&7) set iff some entry covers block i. */
export function pieceBlocksBitmap(entries: readonly { blockIndex: number; blockCount: number }[]): string {
  const bits = Buffer.alloc(RANGE_BLOCKS / 8);
  for (const e of entries) for (let b = e.blockIndex; b < e.blockIndex + e.blockCount; b++) bits[b >> 3] |= 1 << (b & 7);
  return bits.toString('base64');
}

function headerCrc(buf: Buffer, nameLen: number): number {
  return crc32c(buf.subarray(FIXED_HEADER, FIXED_HEADER + nameLen), crc32c(buf.subarray(0, 36)));
}

function writeEntry(buf: Buffer, at: number, e: PieceVersionEntry): void {
  buf.writeBigUInt64LE(BigInt(e.seq), at);
  buf.writeUInt32LE(e.blockIndex, at + 8);
  buf.writeUInt16LE(e.blockCount, at + 12);
  buf.writeUInt16LE(e.flags, at + 14);
  buf.writeUInt32LE(e.payloadOffset, at + 16);
  buf.writeUInt32LE(e.payloadLength, at + 20);
  buf.writeUInt32LE(e.dataCrc, at + 24);
}

function readU64(buf: Buffer, at: number, bad: (reason: string) => Error): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`64-bit field at byte ${at} out of range`);
  return Number(v);
}

const isU64 = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;
const pad8 = (n: number): number => (n + 7) & ~7;
const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;
