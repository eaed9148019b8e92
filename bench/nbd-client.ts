// A minimal NBD client for benchmarks: fixed newstyle handshake with NBD_OPT_GO, simple
// replies only, WRITE, READ and FLUSH. Requests are pipelined; replies are matched by cookie,
// so a server may answer out of order. A READ's reply carries its data after the header (the
// client knows its length from the request); an error reply to a READ ends the connection, as
// a simple reply cannot say whether data follows.

import { connect, type Socket } from 'node:net';
import { sleep } from '../replica/concurrency';
import { CMD, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO, NBDMAGIC, OPT, OPTION_REPLY_MAGIC, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from '../agent/nbd-protocol';

const REP_ERROR_BIT = 0x80000000;

/** Exact-length reads from the socket during the handshake. */
class Reader {
  private buf: Buffer = Buffer.alloc(0);
  private wake?: () => void;
  private err?: Error;

  constructor(sock: Socket) {
    sock.on('data', (c: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, c]) : c;
      this.wake?.();
    });
    const fail = (e: Error): void => {
      this.err ??= e;
      this.wake?.();
    };
    sock.on('error', fail);
    sock.on('close', () => fail(new Error('server closed the connection')));
  }

  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.err) throw this.err;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Bytes received past the handshake (the start of the first reply, if any). */
  rest(): Buffer {
    return this.buf;
  }
}

export class NbdClient {
  private nextCookie = 1n;
  private readonly waiting = new Map<bigint, { resolve: (data?: Buffer) => void; reject: (e: Error) => void; readLength?: number }>();
  private readonly pending = new Set<Promise<void | Buffer>>();
  private buf: Buffer = Buffer.alloc(0);
  private closed?: Error;

  private constructor(
    private readonly sock: Socket,
    /** Export size in bytes. */
    readonly size: number,
    /** Transmission flags the server sent. */
    readonly flags: number,
  ) {}

  /** Connects and negotiates `exportName` with NBD_OPT_GO. */
  static async connect(host: string, port: number, exportName: string): Promise<NbdClient> {
    const sock = connect({ host, port });
    sock.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    const r = new Reader(sock);
    try {
      const hello = await r.read(18);
      if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not a newstyle NBD server');
      const serverFlags = hello.readUInt16BE(16);
      if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new Error('server is not fixed newstyle');
      const clientFlags = Buffer.alloc(4);
      clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES));
      // NBD_OPT_GO: name length, name, no information requests.
      const name = Buffer.from(exportName, 'utf8');
      const opt = Buffer.alloc(16 + 4 + name.length + 2);
      opt.writeBigUInt64BE(IHAVEOPT, 0);
      opt.writeUInt32BE(OPT.GO, 8);
      opt.writeUInt32BE(4 + name.length + 2, 12);
      opt.writeUInt32BE(name.length, 16);
      name.copy(opt, 20);
      sock.write(Buffer.concat([clientFlags, opt]));
      let size: number | undefined;
      let flags = 0;
      for (;;) {
        const head = await r.read(20);
        if (head.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error('bad option reply magic');
        const type = head.readUInt32BE(12);
        const data = await r.read(head.readUInt32BE(16));
        if (type & REP_ERROR_BIT) throw new Error(`NBD_OPT_GO '${exportName}' refused (0x${type.toString(16)}): ${data.toString('utf8')}`);
        if (type === REP.INFO && data.readUInt16BE(0) === INFO.EXPORT) {
          size = Number(data.readBigUInt64BE(2));
          flags = data.readUInt16BE(10);
        }
        if (type === REP.ACK) break;
      }
      if (size === undefined) throw new Error('server sent no NBD_INFO_EXPORT');
      sock.removeAllListeners('data');
      sock.removeAllListeners('error');
      sock.removeAllListeners('close');
      const client = new NbdClient(sock, size, flags);
      client.listen(r.rest());
      return client;
    } catch (err) {
      sock.destroy();
      throw err;
    }
  }

  /** Resolves when the server acknowledges the write; rejects on an error reply. */
  async write(offset: number, data: Buffer): Promise<void> {
    await this.request(CMD.WRITE, offset, data.length, data);
  }

  /** The bytes at [offset, offset + length). */
  async read(offset: number, length: number): Promise<Buffer> {
    return (await this.request(CMD.READ, offset, length, undefined, length)) as Buffer;
  }

  /** Resolves when every write acknowledged before it was sent is durable on the server. */
  async flush(): Promise<void> {
    await this.request(CMD.FLUSH, 0, 0);
  }

  /** Requests in flight (sent, not yet answered). */
  get inFlight(): number {
    return this.waiting.size;
  }

  /** Waits for the answers in flight, sends NBD_CMD_DISC and closes. */
  async close(): Promise<void> {
    await Promise.allSettled(this.pending);
    if (!this.closed) {
      // The server answers NBD_CMD_DISC by closing; give it a moment to do so.
      const closed = new Promise<void>((r) => this.sock.once('close', () => r()));
      this.sock.end(header(CMD.DISC, this.nextCookie++, 0, 0));
      await Promise.race([closed, new Promise((r) => setTimeout(r, 5000).unref())]);
    }
    this.sock.destroy();
  }

  private request(type: number, offset: number, length: number, payload?: Buffer, readLength?: number): Promise<void | Buffer> {
    if (this.closed) return Promise.reject(this.closed);
    const cookie = this.nextCookie++;
    const answered = new Promise<void | Buffer>((resolve, reject) => {
      this.waiting.set(cookie, { resolve, reject, readLength });
      this.sock.write(payload ? Buffer.concat([header(type, cookie, offset, length), payload]) : header(type, cookie, offset, length));
    });
    this.pending.add(answered);
    const done = (): void => void this.pending.delete(answered);
    answered.then(done, done);
    return answered;
  }

  private listen(first: Buffer): void {
    const onData = (c: Buffer): void => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, c]) : c;
      while (this.buf.length >= 16) {
        const magic = this.buf.readUInt32BE(0);
        if (magic !== SIMPLE_REPLY_MAGIC) return this.fail(new Error(`unexpected reply magic 0x${magic.toString(16)}`));
        const error = this.buf.readUInt32BE(4);
        const cookie = this.buf.readBigUInt64BE(8);
        const w = this.waiting.get(cookie);
        if (!w) return this.fail(new Error(`reply for unknown cookie ${cookie}`));
        if (w.readLength !== undefined && error) return this.fail(new Error(`NBD error ${error} on a READ`));
        const data = w.readLength ?? 0;
        if (this.buf.length < 16 + data) return; // the READ's data is still coming
        const body = w.readLength !== undefined ? Buffer.from(this.buf.subarray(16, 16 + data)) : undefined;
        this.buf = this.buf.subarray(16 + data);
        this.waiting.delete(cookie);
        if (error) w.reject(new Error(`NBD error ${error}`));
        else w.resolve(body);
      }
    };
    this.sock.on('data', onData);
    this.sock.on('error', (e) => this.fail(e));
    this.sock.on('close', () => this.fail(new Error('server closed the connection')));
    if (first.length) onData(first);
  }

  private fail(err: Error): void {
    this.closed ??= err;
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
    this.sock.destroy();
  }
}

function header(type: number, cookie: bigint, offset: number, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(0, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

/**
 * Waits until an NBD handshake for `exportName` on 127.0.0.1:`port` succeeds (then
 * disconnects), for up to `timeoutMs`; `gone()` says why the server cannot come (it exited),
 * which ends the wait at once.
 */
export async function waitForNbd(port: number, exportName: string, name: string, gone: () => string | undefined = () => undefined, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = gone();
    if (why !== undefined) throw new Error(`${name} exited before serving: ${why}`);
    try {
      await (await NbdClient.connect('127.0.0.1', port, exportName)).close();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${name} does not serve on port ${port}: ${(err as Error).message}`);
      await sleep(100);
    }
  }
}
