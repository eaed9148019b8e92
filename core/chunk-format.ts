// Base chunks: the bottom level of the replica (docs/design.md, "Base chunks"). A disk is
// cut into chunks of CHUNK_BYTES at fixed offsets; a chunk that is all zeros is not stored.
// Each stored chunk is one object, named by the SHA-256 of its data (content-addressed:
// equal chunks are stored once), holding its data compressed or raw with its checksums.
//
//   offset size field
//   0      4    magic "LSCK"
//   4      2    version (1)
//   6      2    flags: bit 0 = payload is zstd
//   8      4    data length (bytes, a multiple of 4 KiB, ≤ CHUNK_BYTES)
//   12     4    CRC-32C of the data
//   16     32   SHA-256 of the data (the content address)
//   48     4    payload length
//   52     4    CRC-32C of bytes [0, 52)
//   56     …    payload

import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { constants as zlibConstants, zstdCompress, zstdDecompressSync } from 'node:zlib';
import { BLOCK_SIZE } from './batch-format';
import { crc32c } from './crc32c';
import { BackupError } from './errors';

export const CHUNK_BYTES = 4 * 1024 * 1024;
export const CHUNK_HEADER = 56;
const MAGIC = Buffer.from('LSCK');
const VERSION = 1;
const FLAG_ZSTD = 1;
const zstd = promisify(zstdCompress);

/** What a manifest records of a stored chunk. */
export interface ChunkRef {
  /** Chunk number within its disk: it covers [index·CHUNK_BYTES, +CHUNK_BYTES). */
  index: number;
  sha256: string;
  crc32c: number;
  /** Bytes of data (the last chunk of a disk may be shorter). */
  length: number;
}

export const sha256Hex = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

export function isAllZero(data: Buffer): boolean {
  // memcmp against zeros: ~5x faster than a word loop (a sparse 64 GiB disk is 16384 chunks).
  for (let at = 0; at < data.length; at += ZEROS.length) {
    const part = data.subarray(at, Math.min(data.length, at + ZEROS.length));
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}

const ZEROS = Buffer.alloc(CHUNK_BYTES);

/** Encodes one chunk (compressed when that is smaller); returns the object body and its ref. */
export async function encodeChunk(index: number, data: Buffer): Promise<{ body: Buffer; ref: ChunkRef }> {
  if (data.length === 0 || data.length % BLOCK_SIZE !== 0 || data.length > CHUNK_BYTES) {
    throw new RangeError(`chunk ${index}: ${data.length} bytes is not a positive multiple of ${BLOCK_SIZE} up to ${CHUNK_BYTES}`);
  }
  const packed = await zstd(data, { params: { [zlibConstants.ZSTD_c_compressionLevel]: 1 } });
  const zstdUsed = packed.length < data.length;
  const payload = zstdUsed ? packed : data;
  const ref: ChunkRef = { index, sha256: sha256Hex(data), crc32c: crc32c(data), length: data.length };
  const head = Buffer.alloc(CHUNK_HEADER);
  MAGIC.copy(head, 0);
  head.writeUInt16LE(VERSION, 4);
  head.writeUInt16LE(zstdUsed ? FLAG_ZSTD : 0, 6);
  head.writeUInt32LE(data.length, 8);
  head.writeUInt32LE(ref.crc32c, 12);
  Buffer.from(ref.sha256, 'hex').copy(head, 16);
  head.writeUInt32LE(payload.length, 48);
  head.writeUInt32LE(crc32c(head.subarray(0, 52)), 52);
  return { body: Buffer.concat([head, payload]), ref };
}

/**
 * Decodes a chunk object and verifies it end to end against what the manifest expects:
 * header checksum, length, CRC-32C and SHA-256 of the data. Throws BackupError naming `where`.
 */
export function decodeChunk(body: Buffer, expected: ChunkRef, where: string): Buffer {
  if (body.length < CHUNK_HEADER) throw new BackupError('TRUNCATED', where, `${body.length} bytes, shorter than the ${CHUNK_HEADER}-byte chunk header`);
  if (!body.subarray(0, 4).equals(MAGIC)) throw new BackupError('MALFORMED', where, 'not a chunk (bad magic)');
  if (crc32c(body.subarray(0, 52)) !== body.readUInt32LE(52)) throw new BackupError('CHECKSUM_MISMATCH', where, 'chunk header checksum mismatch');
  const version = body.readUInt16LE(4);
  if (version !== VERSION) throw new BackupError('MALFORMED', where, `chunk version ${version}, expected ${VERSION}`);
  const flags = body.readUInt16LE(6);
  const length = body.readUInt32LE(8);
  const payloadLength = body.readUInt32LE(48);
  if (body.length !== CHUNK_HEADER + payloadLength) throw new BackupError('TRUNCATED', where, `${body.length} bytes, header says ${CHUNK_HEADER + payloadLength}`);
  if (length !== expected.length) throw new BackupError('MISMATCH', where, `holds ${length} bytes of data, the manifest says ${expected.length}`);
  const sha = body.subarray(16, 48).toString('hex');
  if (sha !== expected.sha256) throw new BackupError('MISMATCH', where, `is chunk ${sha}, the manifest expects ${expected.sha256}`);
  const payload = body.subarray(CHUNK_HEADER);
  let data: Buffer;
  try {
    data = flags & FLAG_ZSTD ? zstdDecompressSync(payload, { maxOutputLength: length }) : payload;
  } catch (err) {
    throw new BackupError('CHECKSUM_MISMATCH', where, `payload does not decompress: ${(err as Error).message}`);
  }
  if (data.length !== length) throw new BackupError('CHECKSUM_MISMATCH', where, `payload gives ${data.length} bytes, expected ${length}`);
  const crc = crc32c(data);
  if (crc !== expected.crc32c || crc !== body.readUInt32LE(12)) throw new BackupError('CHECKSUM_MISMATCH', where, `data CRC-32C ${crc.toString(16)} != ${expected.crc32c.toString(16)}`);
  if (sha256Hex(data) !== expected.sha256) throw new BackupError('CHECKSUM_MISMATCH', where, 'data SHA-256 does not match its name');
  return data;
}
