// An NBD server (fixed newstyle) for the agent's exports: negotiation, then requests
// served concurrently per connection. What an export does with writes (pass-through and
// capture) lives behind BlockExport.

import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import { BodyPool } from '../source/body-pool';
import { listenOwnerOnly } from './owner-socket';
import {
  BASE_ALLOCATION, CMD, CMD_FLAG, ERRNO, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO, MAX_PAYLOAD, NBDMAGIC, OPT,
  REP, REPLY_FLAG_DONE, REPLY_TYPE, TFLAG, okReplyBytes, optionReply, parseRequest, simpleReply, structuredReply, writeOkReply, type Request,
} from './nbd-protocol';

export interface Extent {
  length: number;
  /** base:allocation state bits (STATE_HOLE, STATE_ZERO). */
  state: number;
}

/** One exported disk. Errors thrown become EIO replies; the connection stays up. */
export interface BlockExport {
  readonly name: string;
  readonly size: number;
  /** Advertised READ_ONLY; writes, trims and zeroes are answered EPERM (an RP export). */
  readonly readOnly?: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /**
   * A write done at once, when nothing need be waited for; false: nothing was done, use
   * `write`. Most small writes under load take this path: no promise per request.
   */
  writeNow?(offset: number, data: Buffer): boolean;
  /** TRIM (`punch` true) or WRITE_ZEROES: the range reads as zeros afterwards. */
  zero(offset: number, length: number, fua: boolean): Promise<void>;
  /** Everything acknowledged before is durable when this resolves. */
  flush(): Promise<void>;
  allocation(offset: number, length: number): Promise<Extent[]>;
}

export interface NbdServer {
  /** The TCP port listened on (0 on a Unix socket). */
  port: number;
  /** The Unix socket listened on, if one. */
  path?: string;
  close(): Promise<void>;
}

/**
 * Serves the `served` exports on TCP `host`:`port`, or on the Unix socket `host.path` (mode 0600: only
 * this user may connect; the path must not exist; it is removed at close).
 */
export async function startNbdServer(
  served: BlockExport[],
  host: string | { path: string } = '127.0.0.1',
  port = 10809,
  log: (m: string) => void = () => {},
  limits: { maxConnections?: number; handshakeMs?: number; tls?: NbdTls } = {},
): Promise<NbdServer> {
  const maxConnections = limits.maxConnections ?? MAX_CONNECTIONS;
  const byName = new Map(served.map((e) => [e.name, e]));
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    if (sockets.size >= maxConnections) {
      log(`nbd: refused a connection: ${maxConnections} are open`);
      sock.destroy();
      return;
    }
    sockets.add(sock);
    sock.setNoDelay(true);
    sock.on('close', () => sockets.delete(sock));
    serve(sock, byName, limits.handshakeMs, limits.tls).catch((err: Error) => {
      log(`nbd connection: ${err.message}`);
      sock.destroy();
    });
  });
  if (typeof host !== 'string') await listenOwnerOnly(server, host.path);
  else {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
  }
  return {
    port: typeof host === 'string' ? (server.address() as AddressInfo).port : 0,
    path: typeof host === 'string' ? undefined : host.path,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Bytes a connection reads ahead of the request being parsed. */
const HIGH_WATER = 4 * 1024 * 1024;

/** Exact-length reads from a socket, with backpressure. */
class SocketReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiting?: { n: number; into?: BodyPool; resolve: (b: Buffer) => void; reject: (e: Error) => void };
  private done?: Error;

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private readonly listeners: [string, (...a: any[]) => void][];

  constructor(private readonly sock: Socket) {
    const end = (): void => {
      this.done ??= new Error('client closed the connection');
      this.pump();
    };
    this.listeners = [
      ['data', (c: Buffer) => {
        this.chunks.push(c);
        this.have += c.length;
        this.pump();
      }],
      ['end', end],
      ['close', end],
      ['error', (e: Error) => {
        this.done ??= e;
        this.pump();
      }],
    ];
    for (const [event, fn] of this.listeners) sock.on(event, fn);
  }

  /**
   * Lets go of the socket (STARTTLS: the TLS layer reads it from here on). Nothing may be
   * buffered: a client sends nothing after STARTTLS until the server's reply.
   */
  detach(): void {
    if (this.have > 0) throw new Error('bytes after STARTTLS before its reply');
    for (const [event, fn] of this.listeners) this.sock.off(event, fn);
    if (this.sock.isPaused()) this.sock.resume();
  }

  /** `n` bytes; `into` gives the buffer they are joined in when they span socket chunks. */
  read(n: number, into?: BodyPool): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.waiting = { n, into, resolve, reject };
      this.pump();
    });
  }

  /** `n` bytes if they have arrived already (no promise), else undefined: then `read`. */
  readNow(n: number, into?: BodyPool): Buffer | undefined {
    if (this.waiting || this.have < n) return undefined;
    const out = this.take(n, into);
    this.flow();
    return out;
  }

  private take(n: number, into?: BodyPool): Buffer {
    // Join only the chunks this read needs: a 28-byte header must not copy a queued payload.
    let k = 0;
    for (let got = 0; got < n; k++) got += this.chunks[k].length;
    if (k > 1 && into) return this.takeInto(n, k, into);
    const head = k === 1 ? this.chunks[0] : Buffer.concat(this.chunks.slice(0, k));
    const rest = head.subarray(n);
    if (k === 1 && rest.length) this.chunks[0] = rest;
    else this.chunks = rest.length ? [rest, ...this.chunks.slice(k)] : this.chunks.slice(k);
    this.have -= n;
    return head.subarray(0, n);
  }

  /** take() for `n` bytes over `k` chunks, copied into a body from `into` (the rest of the last chunk stays a view of it). */
  private takeInto(n: number, k: number, into: BodyPool): Buffer {
    const out = into.take(n);
    let at = 0;
    for (let i = 0; i < k - 1; i++) at += this.chunks[i].copy(out, at);
    const last = this.chunks[k - 1];
    last.copy(out, at, 0, n - at);
    const rest = last.subarray(n - at);
    this.chunks = rest.length ? [rest, ...this.chunks.slice(k)] : this.chunks.slice(k);
    this.have -= n;
    return out;
  }

  private pump(): void {
    const w = this.waiting;
    if (!w) return;
    if (this.have >= w.n) {
      this.waiting = undefined;
      w.resolve(this.take(w.n, w.into));
    } else if (this.done) {
      this.waiting = undefined;
      w.reject(this.done);
    }
    this.flow();
  }

  /** Reads ahead at most HIGH_WATER bytes, or what the pending read needs. */
  private flow(): void {
    const limit = Math.max(HIGH_WATER, this.waiting?.n ?? 0);
    if (this.have > limit && !this.sock.isPaused()) this.sock.pause();
    else if (this.have <= limit && this.sock.isPaused()) this.sock.resume();
  }
}

const write = (sock: Socket, b: Buffer): Promise<void> =>
  new Promise((resolve, reject) => {
    if (sock.write(b, (err) => (err ? reject(err) : undefined))) return resolve();
    void drained(sock).then(resolve);
  });

const drained = (sock: Socket): Promise<void> =>
  new Promise((resolve) => {
    const done = (): void => {
      sock.off('drain', done);
      sock.off('close', done);
      resolve();
    };
    sock.once('drain', done);
    sock.once('close', done); // a dead client must not leave this connection's loop waiting
  });

interface Session {
  exp: BlockExport;
  structured: boolean;
  /** Context id of base:allocation, if the client selected it. */
  allocationContext?: number;
}

/** A client must finish the handshake (reach transmission) within this long, or is hung up on. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** Connections a server serves at once; more are closed as they arrive. */
export const MAX_CONNECTIONS = 64;

/** TLS on a server: every client must STARTTLS before anything else (TLS-only mode). */
export interface NbdTls {
  context: SecureContext;
  /** Clients must present a certificate the context's CA signed. */
  requireClientCert?: boolean;
}

/** A connection's socket and reader: the TCP or Unix socket, or, after STARTTLS, its TLS layer. */
interface Conn {
  sock: Socket;
  r: SocketReader;
}

async function serve(raw: Socket, served: Map<string, BlockExport>, handshakeMs = HANDSHAKE_TIMEOUT_MS, tlsOptions?: NbdTls): Promise<void> {
  const conn: Conn = { sock: raw, r: new SocketReader(raw) };
  // A client that connects and says nothing (or negotiates forever) holds no slot for long.
  const timer = setTimeout(() => raw.destroy(new Error(`handshake not done within ${handshakeMs} ms`)), handshakeMs);
  let negotiated: { session: Session; conn: Conn } | undefined;
  try {
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    await write(raw, hello);
    const clientFlags = (await conn.r.read(4)).readUInt32BE(0);
    negotiated = await negotiate(conn, served, (clientFlags & FLAG_NO_ZEROES) !== 0, tlsOptions);
  } finally {
    clearTimeout(timer);
  }
  // Over the connection as negotiation left it: the TLS layer after STARTTLS.
  if (negotiated) await transmit(negotiated.conn.sock, negotiated.conn.r, negotiated.session);
}

/** NBD_OPT_STARTTLS acknowledged: the TLS handshake over the connection, then a reader of it. */
async function startTls(conn: Conn, t: NbdTls): Promise<Conn> {
  conn.r.detach();
  const secure = new TLSSocket(conn.sock, { isServer: true, secureContext: t.context, requestCert: t.requireClientCert === true, rejectUnauthorized: t.requireClientCert === true });
  await new Promise<void>((resolve, reject) => {
    secure.once('secure', resolve);
    secure.once('error', reject);
    secure.once('close', () => reject(new Error('client closed the connection during the TLS handshake')));
  });
  return { sock: secure, r: new SocketReader(secure) };
}

function transmissionFlags(structured: boolean, exp: BlockExport): number {
  return (
    TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES | TFLAG.CAN_MULTI_CONN | (structured ? TFLAG.SEND_DF : 0) | (exp.readOnly ? TFLAG.READ_ONLY : 0)
  );
}

async function negotiate(conn: Conn, served: Map<string, BlockExport>, noZeroes: boolean, t?: NbdTls): Promise<{ session: Session; conn: Conn } | undefined> {
  let structured = false;
  let allocationContext: number | undefined;
  let secured = false;
  for (;;) {
    const { sock, r } = conn;
    const head = await r.read(16);
    if (head.readBigUInt64BE(0) !== IHAVEOPT) throw new Error('bad option magic');
    const opt = head.readUInt32BE(8);
    const len = head.readUInt32BE(12);
    if (len > 64 * 1024) throw new Error(`option ${opt} payload of ${len} bytes`);
    const data = await r.read(len);
    const reply = (type: number, payload?: Buffer): Promise<void> => write(sock, optionReply(opt, type, payload));
    if (t && !secured && opt !== OPT.STARTTLS && opt !== OPT.ABORT) {
      // TLS-only: nothing but STARTTLS (or ABORT) before TLS; EXPORT_NAME has no error reply.
      if (opt === OPT.EXPORT_NAME) throw new Error('EXPORT_NAME before STARTTLS on a TLS-only server');
      await reply(REP.ERR_TLS_REQD, Buffer.from('this server requires TLS: STARTTLS first'));
      continue;
    }
    switch (opt) {
      case OPT.STARTTLS:
        if (!t) {
          await reply(REP.ERR_UNSUP);
          break;
        }
        if (secured || len !== 0) {
          await reply(REP.ERR_INVALID);
          break;
        }
        await reply(REP.ACK);
        conn = await startTls(conn, t);
        secured = true;
        break;
      case OPT.EXPORT_NAME: {
        const exp = exportNamed(served, data.toString('utf8'));
        if (!exp) throw new Error(noSuchExport(served, data.toString('utf8'))); // the protocol's only answer: hang up
        const b = Buffer.alloc(noZeroes ? 10 : 134);
        b.writeBigUInt64BE(BigInt(exp.size), 0);
        b.writeUInt16BE(transmissionFlags(structured, exp), 8);
        await write(sock, b);
        return { session: { exp, structured, allocationContext }, conn };
      }
      case OPT.ABORT:
        await reply(REP.ACK);
        sock.end();
        return undefined;
      case OPT.LIST:
        if (len !== 0) {
          await reply(REP.ERR_INVALID);
          break;
        }
        for (const name of served.keys()) {
          const n = Buffer.from(name, 'utf8');
          const p = Buffer.alloc(4 + n.length);
          p.writeUInt32BE(n.length, 0);
          n.copy(p, 4);
          await reply(REP.SERVER, p);
        }
        await reply(REP.ACK);
        break;
      case OPT.INFO:
      case OPT.GO: {
        const nameLen = data.length >= 4 ? data.readUInt32BE(0) : -1;
        if (nameLen < 0 || 4 + nameLen + 2 > data.length) {
          await reply(REP.ERR_INVALID);
          break;
        }
        const name = data.toString('utf8', 4, 4 + nameLen);
        const exp = exportNamed(served, name);
        if (!exp) {
          await reply(REP.ERR_UNKNOWN, Buffer.from(noSuchExport(served, name)));
          break;
        }
        const info = Buffer.alloc(12);
        info.writeUInt16BE(INFO.EXPORT, 0);
        info.writeBigUInt64BE(BigInt(exp.size), 2);
        info.writeUInt16BE(transmissionFlags(structured, exp), 10);
        await reply(REP.INFO, info);
        const sizes = Buffer.alloc(14);
        sizes.writeUInt16BE(INFO.BLOCK_SIZE, 0);
        sizes.writeUInt32BE(1, 2); // any alignment works (partial blocks are merged)
        sizes.writeUInt32BE(4096, 6);
        sizes.writeUInt32BE(MAX_PAYLOAD, 10);
        await reply(REP.INFO, sizes);
        await reply(REP.ACK);
        if (opt === OPT.GO) return { session: { exp, structured, allocationContext }, conn };
        break;
      }
      case OPT.STRUCTURED_REPLY:
        if (len !== 0 || structured) {
          await reply(REP.ERR_INVALID);
          break;
        }
        structured = true;
        await reply(REP.ACK);
        break;
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT: {
        const queries = parseMetaContext(data);
        if (!queries || (opt === OPT.SET_META_CONTEXT && !structured)) {
          await reply(REP.ERR_INVALID);
          break;
        }
        const wanted = opt === OPT.LIST_META_CONTEXT && queries.length === 0 ? [BASE_ALLOCATION] : queries;
        if (opt === OPT.SET_META_CONTEXT) allocationContext = undefined;
        for (const q of wanted) {
          if (q !== BASE_ALLOCATION && !(opt === OPT.LIST_META_CONTEXT && q === 'base:')) continue;
          const name = Buffer.from(BASE_ALLOCATION);
          const p = Buffer.alloc(4 + name.length);
          p.writeUInt32BE(1, 0);
          name.copy(p, 4);
          await reply(REP.META_CONTEXT, p);
          if (opt === OPT.SET_META_CONTEXT) allocationContext = 1;
        }
        await reply(REP.ACK);
        break;
      }
      default:
        await reply(REP.ERR_UNSUP);
    }
  }
}

/**
 * The export a client names; the empty name is the default export, which a server with one
 * disk answers with it (as qemu-nbd and nbdkit do: `-drive file=nbd://host:port` names none).
 */
function exportNamed(served: Map<string, BlockExport>, name: string): BlockExport | undefined {
  return served.get(name) ?? (name === '' && served.size === 1 ? served.values().next().value : undefined);
}

function noSuchExport(served: Map<string, BlockExport>, name: string): string {
  const names = [...served.keys()].map((n) => `'${n}'`).join(', ');
  return name === '' ? `no default export: this server has ${served.size} exports (${names}); name one` : `no export named '${name}' (exports: ${names})`;
}

function parseMetaContext(data: Buffer): string[] | undefined {
  if (data.length < 8) return undefined;
  let at = 4 + data.readUInt32BE(0);
  if (at + 4 > data.length) return undefined;
  const n = data.readUInt32BE(at);
  at += 4;
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    if (at + 4 > data.length) return undefined;
    const len = data.readUInt32BE(at);
    if (at + 4 + len > data.length) return undefined;
    out.push(data.toString('utf8', at + 4, at + 4 + len));
    at += 4 + len;
  }
  return out;
}

/** Requests, and bytes of write payload, a connection may have in flight before the server stops reading more. */
const MAX_IN_FLIGHT = 64;
const MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
/**
 * Bytes of READ replies a connection may have in flight (read, or waiting for the client to
 * take them): a client that never reads its replies pins at most this much, not 64 × 32 MiB.
 */
export const MAX_READ_BYTES_IN_FLIGHT = 64 * 1024 * 1024;

/**
 * Write payloads of more than half this size that span socket chunks are joined in reused
 * buffers of this size (larger ones in a buffer of their own): at 100 MiB/s of 1 MiB writes,
 * a fresh buffer each was as much memory again waiting for the GC. The in-flight byte limit
 * keeps at most 2 × MAX_IN_FLIGHT_BYTES / PAYLOAD_BUFFER of them out.
 */
const PAYLOAD_BUFFER = 1024 * 1024;

/** Replies up to this size are copied into the turn's reply buffer; larger ones (reads) are written as they are. */
const COPIED_REPLY = 1024;
const REPLY_STAGING = 64 * 1024;

/**
 * The replies completed in one turn of the event loop, sent in one socket write: a stream
 * write and a syscall per reply is what limits small random writes otherwise. The success
 * reply of a write is written straight from its request's header, with no buffer of its own.
 */
class ReplyQueue {
  private readonly staging = Buffer.allocUnsafe(REPLY_STAGING);
  private used = 0;
  private scheduled = false;
  private readonly sendNow = (): void => {
    this.scheduled = false;
    this.send();
  };

  constructor(
    private readonly sock: Socket,
    private readonly structured: boolean,
  ) {}

  /** Queues the plain success reply to the request with `cookie`; false once the client is behind on reading replies. */
  ok(cookie: Buffer): boolean {
    if (this.used + okReplyBytes(this.structured) > REPLY_STAGING) this.send();
    this.used += writeOkReply(this.staging, this.used, cookie, this.structured);
    return this.queued();
  }

  /** Queues any reply, after those queued before it; false as for `ok`. */
  push(b: Buffer): boolean {
    if (b.length > COPIED_REPLY || this.used + b.length > REPLY_STAGING) {
      this.send();
      if (b.length > COPIED_REPLY) return this.sock.write(b);
    }
    this.used += b.copy(this.staging, this.used);
    return this.queued();
  }

  /** Writes what is queued now (before the connection ends). */
  send(): void {
    if (this.used === 0 || this.sock.destroyed || this.sock.writableEnded) return void (this.used = 0);
    // A copy the socket owns until it is written: the staging buffer is reused at once.
    const out = Buffer.allocUnsafe(this.used);
    this.staging.copy(out, 0, 0, this.used);
    this.used = 0;
    this.sock.write(out);
  }

  private queued(): boolean {
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.sendNow);
    }
    return !this.sock.writableNeedDrain;
  }
}

/**
 * Requests are dispatched in arrival order and run concurrently; each reply goes out when
 * its request completes (replies may overtake each other, as the protocol allows), with the
 * others of the same loop turn. Exports order overlapping requests themselves.
 */
async function transmit(sock: Socket, r: SocketReader, s: Session): Promise<void> {
  // Each reply waiting for the socket to drain listens for it once: up to a connection's requests.
  sock.setMaxListeners(MAX_IN_FLIGHT + 16);
  const inFlight = new Set<Promise<void>>();
  let inFlightBytes = 0;
  let readBytes = 0;
  // A payload goes back once its write is done: the image and the capture hold copies.
  const payloads = new BodyPool(PAYLOAD_BUFFER, MAX_IN_FLIGHT_BYTES / PAYLOAD_BUFFER + 1);
  const replies = new ReplyQueue(sock, s.structured);
  const reply = (b: Buffer): Promise<void> => (replies.push(b) ? Promise.resolve() : drained(sock));
  for (;;) {
    while (inFlight.size >= MAX_IN_FLIGHT) await Promise.race(inFlight);
    while (inFlightBytes > MAX_IN_FLIGHT_BYTES || readBytes > MAX_READ_BYTES_IN_FLIGHT) await Promise.race(inFlight);
    const req = parseRequest(r.readNow(28) ?? (await r.read(28)));
    if ('badMagic' in req) throw new Error(`bad request magic 0x${req.badMagic.toString(16)}`);
    // A WRITE's payload is consumed whatever happens to the request.
    let payload: Buffer | undefined;
    let into: BodyPool | undefined; // where a large payload is joined, and goes back after its write
    if (req.type === CMD.WRITE) {
      if (req.length > MAX_PAYLOAD) throw new Error(`write of ${req.length} bytes exceeds the advertised maximum`);
      into = req.length > PAYLOAD_BUFFER / 2 ? payloads : undefined;
      payload = r.readNow(req.length, into) ?? (await r.read(req.length, into));
      if (req.flags === 0 && writtenNow(s, req, payload)) {
        into?.give(payload);
        // A client that does not read its replies stops this loop, as waiting replies would.
        if (!replies.ok(req.cookie)) await drained(sock);
        continue;
      }
    }
    if (req.type === CMD.DISC) {
      await Promise.all(inFlight);
      await s.exp.flush().catch(() => {});
      replies.send();
      sock.end();
      return;
    }
    const bytes = payload?.length ?? 0;
    // A READ's reply counts until the socket took it (`reply` waits for a drain).
    const reads = req.type === CMD.READ ? Math.min(req.length, MAX_PAYLOAD) : 0;
    inFlightBytes += bytes;
    readBytes += reads;
    const done: Promise<void> = handle(s, req, payload)
      .then(reply)
      .catch(() => void sock.destroy())
      .finally(() => {
        inFlight.delete(done);
        inFlightBytes -= bytes;
        readBytes -= reads;
        if (into && payload) into.give(payload);
      });
    inFlight.add(done);
  }
}

/** The fast path: an in-range write the export did at once (an error leaves it to `handle`, which replies EIO). */
function writtenNow(s: Session, req: Request, payload: Buffer): boolean {
  if (!s.exp.writeNow || s.exp.readOnly || req.offset + req.length > s.exp.size) return false;
  try {
    return s.exp.writeNow(req.offset, payload);
  } catch {
    return false;
  }
}

const okReply = (s: Session, req: Request): Buffer => {
  const b = Buffer.allocUnsafe(okReplyBytes(s.structured));
  writeOkReply(b, 0, req.cookie, s.structured);
  return b;
};

async function handle(s: Session, req: Request, payload: Buffer | undefined): Promise<Buffer> {
  const fail = (errno: number): Buffer =>
    s.structured
      ? structuredReply(req.cookie, REPLY_TYPE.ERROR, REPLY_FLAG_DONE, [errorPayload(errno)])
      : simpleReply(req.cookie, errno);
  const ok = (): Buffer => okReply(s, req);
  const inRange = req.offset + req.length <= s.exp.size;
  const fua = (req.flags & CMD_FLAG.FUA) !== 0;
  // Unknown command flags are refused, as the protocol asks.
  if (req.flags & ~(CMD_FLAG.FUA | CMD_FLAG.NO_HOLE | CMD_FLAG.DF | CMD_FLAG.REQ_ONE)) return fail(ERRNO.EINVAL);
  if (s.exp.readOnly && (req.type === CMD.WRITE || req.type === CMD.TRIM || req.type === CMD.WRITE_ZEROES)) return fail(ERRNO.EPERM);
  try {
    switch (req.type) {
      case CMD.READ: {
        if (!inRange || req.length > MAX_PAYLOAD) return fail(ERRNO.EINVAL);
        // A structured chunk must describe at least one byte: an empty read is a plain success.
        if (req.length === 0) return ok();
        const data = await s.exp.read(req.offset, req.length);
        if (!s.structured) return simpleReply(req.cookie, 0, data);
        const off = Buffer.alloc(8);
        off.writeBigUInt64BE(BigInt(req.offset));
        return structuredReply(req.cookie, REPLY_TYPE.OFFSET_DATA, REPLY_FLAG_DONE, [off, data]);
      }
      case CMD.WRITE:
        if (!inRange) return fail(ERRNO.ENOSPC);
        await s.exp.write(req.offset, payload!, fua);
        return ok();
      case CMD.FLUSH:
        await s.exp.flush();
        return ok();
      case CMD.TRIM:
      case CMD.WRITE_ZEROES:
        if (!inRange) return fail(req.type === CMD.TRIM ? ERRNO.EINVAL : ERRNO.ENOSPC);
        await s.exp.zero(req.offset, req.length, fua);
        return ok();
      case CMD.BLOCK_STATUS: {
        if (!s.structured || s.allocationContext === undefined) return fail(ERRNO.EINVAL);
        if (!inRange || req.length === 0) return fail(ERRNO.EINVAL);
        let extents = await s.exp.allocation(req.offset, req.length);
        if (req.flags & CMD_FLAG.REQ_ONE) extents = extents.slice(0, 1);
        const p = Buffer.alloc(4 + 8 * extents.length);
        p.writeUInt32BE(s.allocationContext, 0);
        extents.forEach((e, i) => {
          p.writeUInt32BE(e.length, 4 + 8 * i);
          p.writeUInt32BE(e.state, 8 + 8 * i);
        });
        return structuredReply(req.cookie, REPLY_TYPE.BLOCK_STATUS, REPLY_FLAG_DONE, [p]);
      }
      default:
        return fail(ERRNO.EINVAL);
    }
  } catch {
    return fail(ERRNO.EIO);
  }
}

function errorPayload(errno: number): Buffer {
  const p = Buffer.alloc(6);
  p.writeUInt32BE(errno, 0);
  p.writeUInt16BE(0, 4);
  return p;
}
