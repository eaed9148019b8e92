// The S3 client's HTTP handler. A GET's response body is read from the socket straight into
// the buffer that the caller gets (`onread`: each read of the socket fills the body where it
// left off). Node's HTTP client does that in 64 KiB chunks: each is copied by its parser into
// a buffer of its own and goes through a stream's events, and the caller copies it again.
// Measured on this machine (docs/design.md, "Reading objects"): for 448 MiB of
// 8 MiB GETs, 16 at once, the client's CPU went from ~620 ms to ~305 ms.
//
// Only GETs without a body are served here, over HTTP/1.1 on keep-alive connections of this
// handler (plain or TLS, as the endpoint says). Everything else (PUT, POST, HEAD, DELETE)
// goes to the SDK's own NodeHttpHandler, with the same options. A response is framed as
// HTTP/1.1 frames it: by Content-Length (read straight into the body), chunked, or until the
// server closes. What the SDK does with a response (retries, errors, checksums) is unchanged:
// it gets an HttpResponse whose body is a stream, as from its own handler.
//
// Faults: an idle connection the server closed fails the next request on it before any byte
// of the answer; that request is sent once more on a new connection (a GET is idempotent).
// A connection closed before or during an answer fails with ECONNRESET (as Node's client
// does: the SDK retries it), a connection or socket timeout with a TimeoutError, an abort
// (also while waiting for a connection) with an AbortError; a connection that breaks mid-body
// errors the body stream. A connection is reused only after a complete, well-framed answer
// without `Connection: close`, and closed otherwise. A body's reader that wants no more stops
// the socket's reads; over TLS what was decrypted is still delivered after that, so reads are
// resumed when the reader wants more or the exchange ends, never left stopped on a pooled
// connection.

import { isIP, connect as netConnect, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { HttpResponse, buildQueryString, type HttpHandler, type HttpHandlerOptions, type HttpRequest } from '@smithy/core/protocols';
import { NodeHttpHandler } from '@smithy/node-http-handler';

/** A body of up to this many bytes arrives as one buffer; a longer one in pieces of this size. */
export const BODY_PIECE_BYTES = 16 * 1024 * 1024;
/** The response head (status line and headers) must fit in this; S3's take under 2 KiB. */
const HEAD_MAX = 64 * 1024;
/** An idle connection is closed after this: below servers' keep-alive timeouts (Node's 5 s, S3's ~20 s). */
const IDLE_MS = 4000;
/** Connections to one endpoint at most (the SDK's own handler's default), and requests beyond wait. */
const DEFAULT_MAX_SOCKETS = 50;

export interface S3GetHandlerOptions {
  /** Milliseconds to connect (0: no limit), as the SDK's handler. */
  connectionTimeout?: number;
  /** Milliseconds a socket may be idle while a request waits on it (0: no limit). */
  requestTimeout?: number;
  socketTimeout?: number;
  maxSockets?: number;
  /** Certificate authorities to trust for https endpoints besides Node's (as an https agent's `ca`). */
  ca?: string | Buffer;
}

/** An error the SDK retries as transient (its name), with the endpoint in the message. */
function named(name: 'TimeoutError' | 'AbortError', message: string): Error {
  const err = new Error(message);
  err.name = name;
  return err;
}

/**
 * The connection ended (the server closed it, or it closed): the end of a body framed by it,
 * else a failure, with the code Node's own client gives it (ECONNRESET: the SDK retries it).
 */
class Closed extends Error {
  readonly code = 'ECONNRESET';
}

/**
 * A response body. As Node's own response does, an error is emitted only to a listener: one
 * destroyed without a reader just closes (a reader that comes later sees it destroyed).
 */
class BodyStream extends Readable {
  constructor(private readonly wanted: () => void) {
    super();
  }

  override _read(): void {
    this.wanted();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    cb(err && this.listenerCount('error') > 0 ? err : null);
  }
}

/** A parsed response head: status, headers (lower-case names; repeats joined with ", "), and how its body is framed. */
interface Head {
  statusCode: number;
  reason: string;
  headers: Record<string, string>;
  keepAlive: boolean;
  /** Bytes of body by Content-Length; 'chunked'; or 'close' (until the server closes). */
  framing: number | 'chunked' | 'close';
}

/** Parses `text` (the head without its final CRLFCRLF); throws naming `origin` if it is not HTTP/1.x. */
export function parseHead(text: string, origin: string, method: string): Head {
  const lines = text.split('\r\n');
  const status = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (!status) throw new Error(`${origin}: not an HTTP/1.x status line: ${JSON.stringify(lines[0].slice(0, 80))}`);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`${origin}: malformed header line ${JSON.stringify(line.slice(0, 80))}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  const statusCode = Number(status[2]);
  const connection = (headers.connection ?? '').toLowerCase();
  let framing: Head['framing'];
  if (method === 'HEAD' || statusCode === 204 || statusCode === 304 || (statusCode >= 100 && statusCode < 200)) framing = 0;
  else if (headers['transfer-encoding'] !== undefined) {
    if (!/(^|,)\s*chunked\s*$/i.test(headers['transfer-encoding'])) throw new Error(`${origin}: unsupported Transfer-Encoding '${headers['transfer-encoding']}'`);
    framing = 'chunked';
  } else if (headers['content-length'] !== undefined) {
    if (!/^\d{1,15}$/.test(headers['content-length'])) throw new Error(`${origin}: bad Content-Length '${headers['content-length']}'`);
    framing = Number(headers['content-length']);
  } else framing = 'close';
  const keepAlive = status[1] === '1' ? !/(^|,)\s*close\s*(,|$)/.test(connection) : /(^|,)\s*keep-alive\s*(,|$)/.test(connection);
  return { statusCode, reason: status[3] ?? '', headers, keepAlive: keepAlive && framing !== 'close', framing };
}

/** Decodes a chunked body as its bytes arrive; `data` gets each run of body bytes (a view, valid during the call). */
class ChunkedDecoder {
  private state: 'size' | 'data' | 'data-end' | 'trailer' | 'done' = 'size';
  private line = '';
  private left = 0;

  constructor(private readonly where: string) {}

  /** Takes `bytes`; returns how many were the body's (the rest is past its end), or throws on a malformed body. */
  push(bytes: Buffer, data: (b: Buffer) => void): number {
    let i = 0;
    while (i < bytes.length && this.state !== 'done') {
      if (this.state === 'data') {
        const n = Math.min(this.left, bytes.length - i);
        data(bytes.subarray(i, i + n));
        i += n;
        this.left -= n;
        if (this.left === 0) this.state = 'data-end';
        continue;
      }
      const nl = bytes.indexOf(10, i);
      const end = nl < 0 ? bytes.length : nl + 1;
      this.line += bytes.toString('latin1', i, end);
      i = end;
      if (this.line.length > 4096) throw new Error(`${this.where}: chunked body line over 4 KiB`);
      if (nl < 0) continue;
      const line = this.line.replace(/\r?\n$/, '');
      this.line = '';
      if (this.state === 'data-end') {
        if (line !== '') throw new Error(`${this.where}: chunk not followed by CRLF`);
        this.state = 'size';
      } else if (this.state === 'size') {
        const size = /^([0-9a-fA-F]{1,12})(;.*)?$/.exec(line);
        if (!size) throw new Error(`${this.where}: bad chunk size line ${JSON.stringify(line.slice(0, 40))}`);
        this.left = parseInt(size[1], 16);
        this.state = this.left === 0 ? 'trailer' : 'data';
      } else if (line === '') this.state = 'done'; // the trailer's end
    }
    return i;
  }

  get done(): boolean {
    return this.state === 'done';
  }
}

/** One keep-alive connection of the pool, and the exchange on it now. */
class Connection {
  readonly socket: Socket;
  /** Where the next read of the socket goes: the body's remainder, or the scratch buffer. */
  private into: Buffer;
  private readonly scratch = Buffer.allocUnsafe(HEAD_MAX);
  private onRead: (n: number, buf: Buffer) => boolean = () => this.fail(new Error(`${this.origin}: bytes from the server while no request was open`));
  private onGone: (err: Error) => void = () => {};
  /**
   * A read callback returned false, so Node stopped reading (over TLS, callbacks for what was
   * already decrypted may still follow): reading resumes only through resumeReading().
   */
  private stopped = false;
  /** Requests it has answered. */
  answered = 0;
  idleTimer?: NodeJS.Timeout;
  dead = false;

  constructor(readonly origin: string, request: HttpRequest, o: S3GetHandlerOptions) {
    this.into = this.scratch;
    const host = request.hostname;
    const port = Number(request.port) || (request.protocol === 'https:' ? 443 : 80);
    const onread = {
      buffer: () => this.into,
      callback: (n: number, buf: Buffer): boolean => {
        const more = this.onRead(n, buf);
        if (!more) this.stopped = true;
        return more;
      },
    };
    this.socket =
      request.protocol === 'https:'
        ? tlsConnect({ host, port, servername: isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'], ...(o.ca ? { ca: o.ca } : {}), onread } as unknown as ConnectionOptions)
        : netConnect({ host, port, onread });
    this.socket.setNoDelay(true);
    if (o.connectionTimeout) {
      const timer = setTimeout(() => this.fail(named('TimeoutError', `${this.origin}: no connection within ${o.connectionTimeout} ms`)), o.connectionTimeout);
      this.socket.once(request.protocol === 'https:' ? 'secureConnect' : 'connect', () => clearTimeout(timer));
      this.socket.once('close', () => clearTimeout(timer));
    }
    const idle = o.socketTimeout ?? o.requestTimeout;
    if (idle) this.socket.setTimeout(idle, () => this.fail(named('TimeoutError', `${this.origin}: socket idle for ${idle} ms`)));
    this.socket.on('error', (err) => this.fail(err));
    this.socket.on('end', () => this.fail(new Closed(`${this.origin}: the server closed the connection`)));
    this.socket.on('close', () => this.fail(new Closed(`${this.origin}: the connection closed`)));
  }

  /** Reads again if a callback stopped them (a body's reader wants more; an exchange ended). */
  resumeReading(): void {
    if (!this.stopped || this.dead) return;
    this.stopped = false;
    this.socket.resume();
  }

  /** Destroys the socket, once. */
  private close(): void {
    if (this.dead) return;
    this.dead = true;
    clearTimeout(this.idleTimer);
    this.socket.destroy();
  }

  /** Destroys the connection; the exchange on it (if any) fails with `err`. false: for a read callback (no more reads). */
  fail(err: Error): false {
    this.close();
    const gone = this.onGone;
    this.onGone = () => {};
    gone(err);
    return false;
  }

  /**
   * Sends `head` and reads the answer: resolves with the response once its head is in, its
   * body streaming; `done(reusable)` is called once the exchange is over (the body read, or
   * the connection failed). `heard()` tells whether any byte of the answer came.
   */
  exchange(head: string, method: string, done: (reusable: boolean) => void): { response: Promise<HttpResponse>; heard: () => boolean } {
    let heard = false;
    let filled = 0;
    let body: Readable | undefined;
    let finished = false;
    const finish = (reusable: boolean): void => {
      if (finished) return;
      finished = true;
      this.into = this.scratch;
      this.onRead = () => this.fail(new Error(`${this.origin}: bytes from the server while no request was open`));
      this.onGone = () => {};
      this.answered++;
      // Complete but not to be reused (Connection: close, HTTP/1.0): closed now, as Node's client does.
      if (!reusable) this.close();
      this.resumeReading(); // a reused connection must read its next answer
      done(reusable && !this.dead);
    };
    const response = new Promise<HttpResponse>((resolve, reject) => {
      /** A failure once the response is out errors its body, a turn later: the SDK attaches its reader first. */
      const failBody = (err: Error): void => {
        const b = body!;
        setImmediate(() => b.destroy(err));
      };
      this.onGone = (err) => {
        if (body) failBody(err);
        else reject(err);
        finish(false);
      };
      /** Hands the response on; false if its body's reader wants no more for now. */
      const startBody = (h: Head, rest: Buffer): boolean => {
        body = new BodyStream(() => {
          if (!finished) this.resumeReading(); // not once the connection carries another answer
        });
        body.once('close', () => {
          if (!finished) this.fail(new Error(`${this.origin}: the body was abandoned before its end`));
        });
        const push = (chunk: Buffer | null): boolean => body!.push(chunk);
        resolve(new HttpResponse({ statusCode: h.statusCode, reason: h.reason, headers: h.headers, body }));
        const end = (): void => {
          push(null);
          finish(h.keepAlive);
        };
        if (h.framing === 0) {
          end();
          return true;
        }
        if (typeof h.framing === 'number') {
          // Straight into pieces of the body: the head's read may hold its first bytes.
          let left = h.framing;
          let piece = Buffer.allocUnsafe(Math.min(left, BODY_PIECE_BYTES));
          let at = 0;
          const took = (n: number): boolean => {
            at += n;
            left -= n;
            if (at < piece.length) return true;
            const more = push(piece);
            if (left === 0) {
              end();
              return true;
            }
            piece = Buffer.allocUnsafe(Math.min(left, BODY_PIECE_BYTES));
            at = 0;
            this.into = piece;
            return more;
          };
          rest.copy(piece);
          const more = rest.length > 0 ? took(rest.length) : true;
          if (left === 0) return true;
          this.into = piece.subarray(at);
          this.onRead = (n, buf) => {
            if (buf !== this.into) return this.fail(new Error(`${this.origin}: a read went to the wrong buffer`));
            const go = took(n);
            if (left > 0) this.into = piece.subarray(at);
            return go;
          };
          return more;
        }
        // Chunked, or until the server closes: through the scratch buffer, copied out.
        const chunked = h.framing === 'chunked' ? new ChunkedDecoder(this.origin) : undefined;
        const take = (bytes: Buffer): boolean => {
          let more = true;
          if (!chunked) more = push(Buffer.from(bytes));
          else {
            const used = chunked.push(bytes, (b) => void (more = push(Buffer.from(b)) && more));
            if (chunked.done) {
              if (used < bytes.length) return this.fail(new Error(`${this.origin}: bytes past the chunked body's end`));
              end();
              return true;
            }
          }
          return more;
        };
        if (!chunked) {
          // Until the server closes: its end is the body's.
          this.onGone = (err) => {
            if (err instanceof Closed) push(null);
            else failBody(err);
            finish(false);
          };
        }
        const feed = (bytes: Buffer): boolean => {
          try {
            return take(bytes);
          } catch (err) {
            return this.fail(err as Error);
          }
        };
        const more = rest.length > 0 ? feed(rest) : true;
        if (!finished) this.onRead = (n, buf) => feed(buf.subarray(0, n));
        return more;
      };
      this.onRead = (n) => {
        heard = true;
        filled += n;
        for (;;) {
          const end = this.scratch.subarray(0, filled).indexOf('\r\n\r\n');
          if (end < 0) {
            if (filled === HEAD_MAX) return this.fail(new Error(`${this.origin}: response head over ${HEAD_MAX} bytes`));
            this.into = this.scratch.subarray(filled);
            return true;
          }
          let h: Head;
          try {
            h = parseHead(this.scratch.toString('latin1', 0, end), this.origin, method);
          } catch (err) {
            return this.fail(err as Error);
          }
          const rest = Buffer.from(this.scratch.subarray(end + 4, filled)); // a copy: the scratch is read into again
          if (h.statusCode >= 100 && h.statusCode < 200) {
            // An interim answer (100 Continue): the real one follows.
            rest.copy(this.scratch);
            filled = rest.length;
            continue;
          }
          if (typeof h.framing === 'number' && rest.length > h.framing) return this.fail(new Error(`${this.origin}: ${rest.length - h.framing} bytes past the body's ${h.framing}`));
          this.into = this.scratch;
          return startBody(h, rest) && !this.dead;
        }
      };
    });
    this.socket.write(head);
    return { response, heard: () => heard };
  }
}

/**
 * An HttpHandler for S3 clients: GETs without a body on its own connections, their bodies read
 * straight into the buffers the caller gets; anything else through the SDK's NodeHttpHandler.
 */
export class S3GetHandler implements HttpHandler<S3GetHandlerOptions> {
  private readonly fallback: NodeHttpHandler;
  private readonly idle = new Map<string, Connection[]>();
  private readonly active = new Map<string, number>();
  private readonly waiting = new Map<string, (() => void)[]>();
  private options: S3GetHandlerOptions;
  /** GETs this handler sent itself (the rest went to the SDK's handler). */
  gets = 0;

  constructor(options: S3GetHandlerOptions = {}) {
    this.options = { ...options };
    const { ca, maxSockets = DEFAULT_MAX_SOCKETS, ...timeouts } = options;
    this.fallback = new NodeHttpHandler({ ...timeouts, httpAgent: { keepAlive: true, maxSockets }, httpsAgent: { keepAlive: true, maxSockets, ...(ca ? { ca } : {}) } });
  }

  async handle(request: HttpRequest, options: HttpHandlerOptions = {}): Promise<{ response: HttpResponse }> {
    if (request.method !== 'GET' || request.body !== undefined || (request.protocol !== 'http:' && request.protocol !== 'https:')) return this.fallback.handle(request, options);
    const signal = options.abortSignal;
    const origin = `${request.protocol}//${request.hostname}${request.port ? `:${request.port}` : ''}`;
    const aborted = (): Error => named('AbortError', `GET ${origin}${request.path}: aborted`);
    if (signal?.aborted) throw aborted();
    const head = requestHead(request);
    await this.slot(origin, signal as EventTarget & { aborted?: boolean }, aborted);
    this.gets++;
    let conn: Connection | undefined;
    let settled = false;
    const onAbort = (): void => void conn?.fail(aborted());
    /** The exchange is over: the slot back, and the connection idle if `reusable`. */
    const settle = (reusable: Connection | undefined): void => {
      if (settled) return;
      settled = true;
      (signal as EventTarget | undefined)?.removeEventListener?.('abort', onAbort);
      this.release(origin, reusable);
    };
    (signal as EventTarget | undefined)?.addEventListener?.('abort', onAbort, { once: true });
    try {
      // A reused connection the server closed fails before any byte of the answer: once more on a new one.
      for (let attempt = 0; ; attempt++) {
        const c = (attempt === 0 ? this.take(origin) : undefined) ?? new Connection(origin, request, this.options);
        conn = c;
        const retriable = attempt === 0 && c.answered > 0;
        const again = (): boolean => retriable && !sent.heard() && !signal?.aborted;
        const sent = c.exchange(head, 'GET', (reusable) => {
          if (!reusable && again()) return; // sent again on a new connection: the slot stays this request's
          settle(reusable ? c : undefined);
        });
        try {
          return { response: await sent.response };
        } catch (err) {
          if (again()) continue;
          throw err;
        }
      }
    } catch (err) {
      settle(undefined);
      throw err;
    }
  }

  /** Waits for a connection slot of `origin` (at most maxSockets in use); an abort meanwhile rejects with `aborted()`. */
  private async slot(origin: string, signal: (EventTarget & { aborted?: boolean }) | undefined, aborted: () => Error): Promise<void> {
    const max = this.options.maxSockets ?? DEFAULT_MAX_SOCKETS;
    while ((this.active.get(origin) ?? 0) >= max) {
      await new Promise<void>((resolve, reject) => {
        const queue = this.waiting.get(origin) ?? [];
        this.waiting.set(origin, queue);
        const onAbort = (): void => {
          const at = queue.indexOf(wake);
          if (at >= 0) queue.splice(at, 1);
          reject(aborted());
        };
        const wake = (): void => {
          signal?.removeEventListener?.('abort', onAbort);
          resolve();
        };
        queue.push(wake);
        signal?.addEventListener?.('abort', onAbort, { once: true });
      });
    }
    if (signal?.aborted) throw aborted();
    this.active.set(origin, (this.active.get(origin) ?? 0) + 1);
  }

  /** An idle live connection of `origin`, if any (the most recently used). */
  private take(origin: string): Connection | undefined {
    const list = this.idle.get(origin) ?? [];
    for (let c = list.pop(); c; c = list.pop()) {
      clearTimeout(c.idleTimer);
      if (!c.dead) {
        c.socket.ref();
        return c;
      }
    }
    return undefined;
  }

  /** Gives back a slot; `conn` (if given) goes idle, closed after IDLE_MS unused. */
  private release(origin: string, conn: Connection | undefined): void {
    this.active.set(origin, (this.active.get(origin) ?? 1) - 1);
    if (conn && !conn.dead) {
      conn.socket.unref();
      const list = this.idle.get(origin) ?? [];
      list.push(conn);
      this.idle.set(origin, list);
      conn.idleTimer = setTimeout(() => {
        conn.fail(new Error(`${origin}: idle`));
        const at = list.indexOf(conn);
        if (at >= 0) list.splice(at, 1);
      }, IDLE_MS);
      conn.idleTimer.unref();
    }
    this.waiting.get(origin)?.shift()?.();
  }

  updateHttpClientConfig(key: keyof S3GetHandlerOptions, value: number): void {
    this.options = { ...this.options, [key]: value };
    this.fallback.updateHttpClientConfig(key as never, value as never);
  }

  httpHandlerConfigs(): S3GetHandlerOptions {
    return { ...this.fallback.httpHandlerConfigs(), ...this.options } as S3GetHandlerOptions;
  }

  destroy(): void {
    for (const list of this.idle.values()) for (const c of list) c.fail(new Error('handler destroyed'));
    this.idle.clear();
    this.fallback.destroy();
  }
}

/** The request line and headers of a GET, as the SDK signed them (its own query-string builder). */
function requestHead(request: HttpRequest): string {
  const query = request.query ? buildQueryString(request.query) : '';
  const target = `${request.path}${query ? `?${query}` : ''}`;
  const headers = { ...request.headers };
  if (!Object.keys(headers).some((k) => k.toLowerCase() === 'host')) headers.host = `${request.hostname}${request.port ? `:${request.port}` : ''}`;
  const lines = [`GET ${target} HTTP/1.1`];
  for (const [name, value] of Object.entries(headers)) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(String(value))) throw new Error(`header ${JSON.stringify(name)} holds a line break`);
    lines.push(`${name}: ${value}`);
  }
  if (/[\s]/.test(target)) throw new Error(`request target ${JSON.stringify(target)} holds white space`);
  return `${lines.join('\r\n')}\r\n\r\n`;
}
