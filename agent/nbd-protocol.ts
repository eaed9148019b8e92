// NBD wire constants (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md),
// fixed newstyle negotiation and the transmission phase. Big-endian on the wire.

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;

export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  /** The server requires TLS: the client must send STARTTLS first. */
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
} as const;

export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags. */
export const TFLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
} as const;

export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const CMD_FLAG = { FUA: 1 << 0, NO_HOLE: 1 << 1, DF: 1 << 2, REQ_ONE: 1 << 3 } as const;

export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: (1 << 15) + 1 } as const;

/** base:allocation states. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
export const BASE_ALLOCATION = 'base:allocation';

export const ERRNO = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** The largest request payload we accept (qemu and libnbd send at most 32 MiB). */
export const MAX_PAYLOAD = 32 * 1024 * 1024;

export function optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  return Buffer.concat([b, data]);
}

// Replies are small and one per request: allocUnsafe takes them from Node's shared pool (every
// byte is then written), where alloc would give each its own ArrayBuffer for the GC to track.

export function simpleReply(cookie: Buffer, error: number, data?: Buffer): Buffer {
  const b = Buffer.allocUnsafe(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return data ? Buffer.concat([b, data]) : b;
}

/** Bytes of the plain success reply: simple, or structured (NBD_REPLY_TYPE_NONE, DONE). */
export const okReplyBytes = (structured: boolean): number => (structured ? 20 : 16);

/**
 * Writes the plain success reply (simple, or structured NONE with DONE) to the request with
 * `cookie` at `at` of `out`; returns its length (okReplyBytes). Replies to writes under load
 * are written this way into a shared buffer, with no buffer of their own.
 */
export function writeOkReply(out: Buffer, at: number, cookie: Buffer, structured: boolean): number {
  if (structured) {
    out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
    out.writeUInt16BE(REPLY_FLAG_DONE, at + 4);
    out.writeUInt16BE(REPLY_TYPE.NONE, at + 6);
    cookie.copy(out, at + 8);
    out.writeUInt32BE(0, at + 16);
    return 20;
  }
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  out.writeUInt32BE(0, at + 4);
  cookie.copy(out, at + 8);
  return 16;
}

export function structuredReply(cookie: Buffer, type: number, flags: number, payload: Buffer[] = []): Buffer {
  const len = payload.reduce((n, p) => n + p.length, 0);
  const b = Buffer.allocUnsafe(20);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(len, 16);
  return payload.length ? Buffer.concat([b, ...payload]) : b;
}

export interface Request {
  flags: number;
  type: number;
  cookie: Buffer;
  offset: number;
  length: number;
}

export function parseRequest(b: Buffer): Request | { badMagic: number } {
  const magic = b.readUInt32BE(0);
  if (magic !== REQUEST_MAGIC) return { badMagic: magic };
  const high = b.readUInt32BE(16);
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    // A view: a request's header is never reused (a socket chunk, or its own joined copy).
    cookie: b.subarray(8, 16),
    // Offsets past 2^53 cannot be valid for any export; map them to an out-of-range number.
    offset: high >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : high * 2 ** 32 + b.readUInt32BE(20),
    length: b.readUInt32BE(24),
  };
}
