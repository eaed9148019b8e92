// adapters/s3-get-handler.ts: a GET's body, however the server frames and splits it, arrives
// as the bytes sent (in one buffer up to BODY_PIECE_BYTES); connections are reused, and a
// reused one the server closed is replaced without failing the request; broken, slow, aborted
// and malformed answers fail with errors naming the endpoint. Against scripted servers (plain
// and TLS) and the local S3 through the SDK.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { HttpRequest } from '@smithy/core/protocols';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import fc from 'fast-check';
import { s3Client } from '../adapters/aws-clients';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { BODY_PIECE_BYTES, S3GetHandler, parseHead } from '../adapters/s3-get-handler';
import { startS3Local } from '../local/s3-local';

/** What a scripted server does with each request head it reads: answer on the socket. */
type Script = (socket: Socket, request: string, n: number, onConnection: number) => void | Promise<void>;

interface Scripted {
  port: number;
  /** Connections accepted, and requests read (their heads). */
  connections: number;
  requests: string[];
  open: number;
  maxOpen: number;
  close(): Promise<void>;
}

/** A server that reads request heads and answers each with `script` (plain TCP, or TLS with `tls`). */
async function scripted(script: Script, tls?: { key: Buffer; cert: Buffer }): Promise<Scripted> {
  const state = { connections: 0, requests: [] as string[], open: 0, maxOpen: 0 };
  const sockets = new Set<Socket>();
  const onConnection = (socket: Socket): void => {
    state.connections++;
    state.open++;
    state.maxOpen = Math.max(state.maxOpen, state.open);
    sockets.add(socket);
    socket.on('close', () => {
      state.open--;
      sockets.delete(socket);
    });
    socket.on('error', () => {});
    let pending = '';
    let mine = 0;
    socket.on('data', (d: Buffer) => {
      pending += d.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        const request = pending.slice(0, end);
        pending = pending.slice(end + 4);
        state.requests.push(request);
        void script(socket, request, state.requests.length, ++mine);
      }
    });
  };
  const server: Server = tls ? createTlsServer(tls, onConnection) : createServer(onConnection);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return Object.assign(state, {
    port,
    get connections() {
      return state.connections;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  }) as Scripted;
}

/** Writes `bytes` in pieces cut at `cuts` (offsets), each piece its own write after a turn of the event loop. */
async function writeInPieces(socket: Socket, bytes: Buffer, cuts: number[]): Promise<void> {
  const at = [...new Set([0, ...cuts.filter((c) => c > 0 && c < bytes.length), bytes.length])].sort((a, b) => a - b);
  for (let i = 0; i + 1 < at.length; i++) {
    if (socket.destroyed) return;
    socket.write(bytes.subarray(at[i], at[i + 1]));
    await new Promise((r) => setImmediate(r));
  }
}

const chunkedOf = (body: Buffer, sizes: number[]): Buffer => {
  const parts: Buffer[] = [];
  let at = 0;
  for (let i = 0; at < body.length; i++) {
    const n = Math.min(body.length - at, Math.max(1, sizes[i % sizes.length]));
    parts.push(Buffer.from(`${n.toString(16)}${i % 3 === 1 ? ';ext=1' : ''}\r\n`), body.subarray(at, at + n), Buffer.from('\r\n'));
    at += n;
  }
  parts.push(Buffer.from('0\r\nx-trailer: t\r\n\r\n'));
  return Buffer.concat(parts);
};

const get = (port: number, path = '/b/k', query: Record<string, string> = {}, protocol = 'http:'): HttpRequest =>
  new HttpRequest({ method: 'GET', protocol, hostname: '127.0.0.1', port, path, query, headers: { 'x-amz-date': '20261207T000000Z', authorization: 'AWS4 test' } });

/** The body's chunks as they arrive. */
async function chunks(body: NodeJS.ReadableStream): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const c of body) out.push(c as Buffer);
  return out;
}

let handler: S3GetHandler;
beforeEach(() => (handler = new S3GetHandler()));
afterEach(() => handler.destroy());

test('a body arrives as sent, however it is framed and cut, in one buffer up to a piece', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 300_000 }),
      fc.constantFrom('length', 'chunked', 'close'),
      fc.array(fc.integer({ min: 0, max: 400_000 }), { maxLength: 6 }),
      fc.array(fc.integer({ min: 1, max: 100_000 }), { minLength: 1, maxLength: 4 }),
      async (size, framing, cuts, chunkSizes) => {
        const body = randomBytes(size);
        const server = await scripted(async (socket) => {
          const head =
            framing === 'length'
              ? `HTTP/1.1 200 OK\r\nContent-Length: ${size}\r\nETag: "e"\r\n\r\n`
              : framing === 'chunked'
                ? 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
                : 'HTTP/1.0 200 OK\r\n\r\n';
          await writeInPieces(socket, Buffer.concat([Buffer.from(head), framing === 'chunked' ? chunkedOf(body, chunkSizes) : body]), cuts);
          if (framing === 'close') socket.end();
        });
        const h = new S3GetHandler();
        try {
          const { response } = await h.handle(get(server.port));
          expect(response.statusCode).toBe(200);
          const got = await chunks(response.body);
          expect(Buffer.concat(got).equals(body)).toBe(true);
          if (framing === 'length') expect(got.length).toBe(size === 0 ? 0 : 1);
        } finally {
          h.destroy();
          await server.close();
        }
      },
    ),
    { numRuns: 40 },
  );
});

test('a body longer than a piece arrives in pieces of BODY_PIECE_BYTES, the bytes sent', async () => {
  const body = randomBytes(BODY_PIECE_BYTES * 2 + 12345);
  const server = await scripted((socket) => void socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body])));
  try {
    const got = await chunks((await handler.handle(get(server.port))).response.body);
    expect(got.map((c) => c.length)).toEqual([BODY_PIECE_BYTES, BODY_PIECE_BYTES, 12345]);
    expect(Buffer.concat(got).equals(body)).toBe(true);
  } finally {
    await server.close();
  }
});

test('requests go as the SDK signed them, and one keep-alive connection carries them in turn', async () => {
  const server = await scripted((socket, _r, n) => void socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-amz-meta-a: 1\r\nX-Amz-Meta-A: 2\r\n\r\n${String(n).padStart(2, '0')}`));
  try {
    for (let i = 1; i <= 3; i++) {
      const { response } = await handler.handle(get(server.port, '/b/a%20key', { 'x-id': 'GetObject', versionId: 'v 1' }));
      expect(Buffer.concat(await chunks(response.body)).toString()).toBe(String(i).padStart(2, '0'));
      expect(response.headers['x-amz-meta-a']).toBe('1, 2');
    }
    expect(server.connections).toBe(1);
    expect(server.requests[0].split('\r\n')).toEqual(['GET /b/a%20key?versionId=v%201&x-id=GetObject HTTP/1.1', 'x-amz-date: 20261207T000000Z', 'authorization: AWS4 test', `host: 127.0.0.1:${server.port}`]);
  } finally {
    await server.close();
  }
});

test('a reused connection the server closed is replaced: the request is sent again and answered', async () => {
  // The server drops each connection when a second request comes on it, unanswered, as one
  // closing an idle connection just as the client sends on it does.
  const server = await scripted((socket, _r, _n, mine) => {
    if (mine === 1) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    else socket.destroy();
  });
  try {
    for (let i = 0; i < 3; i++) expect(Buffer.concat(await chunks((await handler.handle(get(server.port))).response.body)).toString()).toBe('ok');
    expect([server.connections, server.requests.length]).toEqual([3, 5]);
  } finally {
    await server.close();
  }
});

test('Connection: close, and a body framed by the close, leave no connection to reuse', async () => {
  const server = await scripted((socket, _r, n) => {
    if (n === 1) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na');
    else socket.end('HTTP/1.1 200 OK\r\n\r\nbb');
  });
  try {
    expect(Buffer.concat(await chunks((await handler.handle(get(server.port))).response.body)).toString()).toBe('a');
    expect(Buffer.concat(await chunks((await handler.handle(get(server.port))).response.body)).toString()).toBe('bb');
    expect(server.connections).toBe(2);
  } finally {
    await server.close();
  }
});

test('an error status comes back with its body for the SDK to read; an interim 100 is passed over', async () => {
  const xml = '<?xml version="1.0"?><Error><Code>NoSuchKey</Code></Error>';
  const server = await scripted((socket, _r, n) => {
    if (n === 1) socket.write(Buffer.concat([Buffer.from('HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n'), chunkedOf(Buffer.from(xml), [7])]));
    else socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes');
  });
  try {
    const missing = (await handler.handle(get(server.port))).response;
    expect(missing.statusCode).toBe(404);
    expect(Buffer.concat(await chunks(missing.body)).toString()).toBe(xml);
    const ok = (await handler.handle(get(server.port))).response;
    expect([ok.statusCode, Buffer.concat(await chunks(ok.body)).toString()]).toEqual([200, 'yes']);
    expect(server.connections).toBe(1);
  } finally {
    await server.close();
  }
});

test('a connection broken mid-body, bytes past the body, and a malformed head fail naming the endpoint', async () => {
  const server = await scripted((socket, request) => {
    const path = request.split(' ')[1];
    if (path === '/cut') {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some');
      setTimeout(() => socket.destroy(), 20);
    } else if (path === '/extra') socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA');
    else if (path === '/garbage') socket.write('SMTP ready\r\n\r\n');
    else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk');
  });
  const origin = `http://127.0.0.1:${server.port}`;
  try {
    await expect(chunks((await handler.handle(get(server.port, '/cut'))).response.body)).rejects.toThrow(origin);
    await expect(handler.handle(get(server.port, '/extra')).then((r) => chunks(r.response.body))).rejects.toThrow(`${origin}: 5 bytes past the body's 2`);
    await expect(handler.handle(get(server.port, '/garbage'))).rejects.toThrow(`${origin}: not an HTTP/1.x status line`);
    await expect(handler.handle(get(server.port, '/twice'))).rejects.toThrow(`${origin}: bad Content-Length '2, 3'`);
  } finally {
    await server.close();
  }
});

test('a server that does not answer times out; an abort ends a GET before or during its body', async () => {
  const server = await scripted((socket, request) => {
    if (request.startsWith('GET /slow-body')) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab');
  });
  try {
    const slow = new S3GetHandler({ requestTimeout: 200 });
    await expect(slow.handle(get(server.port, '/silent'))).rejects.toMatchObject({ name: 'TimeoutError' });
    slow.destroy();
    const before = new AbortController();
    before.abort();
    await expect(handler.handle(get(server.port), { abortSignal: before.signal })).rejects.toMatchObject({ name: 'AbortError' });
    const during = new AbortController();
    const { response } = await handler.handle(get(server.port, '/slow-body'), { abortSignal: during.signal });
    setTimeout(() => during.abort(), 50);
    await expect(chunks(response.body)).rejects.toMatchObject({ name: 'AbortError' });
  } finally {
    await server.close();
  }
});

test('at most maxSockets connections to an endpoint; the requests beyond wait their turn', async () => {
  const server = await scripted((socket) => void setTimeout(() => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx'), 30));
  const h = new S3GetHandler({ maxSockets: 2 });
  try {
    const bodies = await Promise.all(Array.from({ length: 7 }, async () => Buffer.concat(await chunks((await h.handle(get(server.port))).response.body)).toString()));
    expect(bodies).toEqual(Array(7).fill('x'));
    expect(server.maxOpen).toBe(2);
  } finally {
    h.destroy();
    await server.close();
  }
});

/** A self-signed key and certificate for 127.0.0.1. */
async function selfSigned(): Promise<{ key: Buffer; cert: Buffer }> {
  const dir = await mkdtemp(join(tmpdir(), 'get-tls-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const [key, cert] = await Promise.all([readFile(join(dir, 'k.pem')), readFile(join(dir, 'c.pem'))]);
    return { key, cert };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('https: the body is read through TLS the same way, and an untrusted certificate is refused', async () => {
  const { key, cert } = await selfSigned();
  const body = randomBytes(3 * 1024 * 1024 + 7);
  const server = await scripted((socket) => void socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body])), { key, cert });
  const trusting = new S3GetHandler({ ca: cert });
  try {
    const got = await chunks((await trusting.handle(get(server.port, '/b/k', {}, 'https:'))).response.body);
    expect(got.length).toBe(1);
    expect(got[0].equals(body)).toBe(true);
    await expect(handler.handle(get(server.port, '/b/k', {}, 'https:'))).rejects.toThrow(/self.signed/i);
  } finally {
    trusting.destroy();
    await server.close();
  }
});

test('https: a reader that comes late gets the whole body (over 16 MiB, or chunked), and the connection then reads the next answer', async () => {
  // Over TLS, reads go on after a read callback said "enough" (what was decrypted is delivered):
  // the body may end while reading is stopped, and the connection must read again when reused.
  const { key, cert } = await selfSigned();
  const big = randomBytes(BODY_PIECE_BYTES + 100);
  const small = randomBytes(100_000);
  const server = await scripted((socket, request) => {
    const path = request.split(' ')[1];
    if (path === '/big') socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n`), big]));
    else if (path === '/chunked') socket.write(Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), chunkedOf(small, [8000])]));
    else if (path === '/split') {
      // The chunk's CRLF in a TLS record of its own, the rest later.
      socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${small.length.toString(16)}\r\n`);
      socket.write(small, () => socket.write('\r\n'));
      setTimeout(() => socket.write('3\r\nxyz\r\n0\r\n\r\n'), 300);
    } else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
  }, { key, cert });
  const h = new S3GetHandler({ ca: cert, requestTimeout: 3000 }); // a connection left not reading fails, not hangs
  const late = async (path: string): Promise<Buffer> => {
    const { response } = await h.handle(get(server.port, path, {}, 'https:'));
    await new Promise((r) => setTimeout(r, 300)); // the reader comes late
    return Buffer.concat(await chunks(response.body));
  };
  try {
    expect((await late('/big')).equals(big)).toBe(true);
    expect(Buffer.concat(await chunks((await h.handle(get(server.port, '/ok', {}, 'https:'))).response.body)).toString()).toBe('ok');
    expect((await late('/chunked')).equals(small)).toBe(true);
    expect(Buffer.concat(await chunks((await h.handle(get(server.port, '/ok', {}, 'https:'))).response.body)).toString()).toBe('ok');
    expect((await late('/split')).equals(Buffer.concat([small, Buffer.from('xyz')]))).toBe(true);
    expect(server.connections).toBe(1);
  } finally {
    h.destroy();
    await server.close();
  }
}, 20_000);

test("a fresh connection closed before any answer fails with ECONNRESET, which the SDK retries", async () => {
  const server = await scripted((socket, _r, n) => {
    if (n === 1) socket.end(); // no answer
    else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/octet-stream\r\n\r\nok');
  });
  const h = new S3GetHandler();
  await expect(h.handle(get(server.port))).rejects.toMatchObject({ code: 'ECONNRESET' });
  const client = new S3Client({ endpoint: `http://127.0.0.1:${server.port}`, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'a', secretAccessKey: 'b' }, requestHandler: h });
  try {
    server.requests.length = 0;
    const out = await client.send(new GetObjectCommand({ Bucket: 'b', Key: 'k' }));
    expect(await out.Body!.transformToString()).toBe('ok');
  } finally {
    client.destroy();
    await server.close();
  }
});

test('an answer not to be reused leaves its connection closed; an abort while waiting for a connection rejects at once', async () => {
  const server = await scripted((socket, request) => {
    if (request.startsWith('GET /hang')) return; // holds its connection
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx');
  });
  const h = new S3GetHandler({ maxSockets: 1 });
  try {
    for (let i = 0; i < 3; i++) expect(Buffer.concat(await chunks((await h.handle(get(server.port))).response.body)).toString()).toBe('x');
    await new Promise((r) => setTimeout(r, 50));
    expect([server.connections, server.open]).toEqual([3, 0]);
    const holder = new AbortController();
    const hanging = h.handle(get(server.port, '/hang'), { abortSignal: holder.signal });
    const waiter = new AbortController();
    const waiting = h.handle(get(server.port), { abortSignal: waiter.signal });
    const t = Date.now();
    setTimeout(() => waiter.abort(), 50);
    await expect(waiting).rejects.toMatchObject({ name: 'AbortError' });
    expect(Date.now() - t).toBeLessThan(1000);
    holder.abort();
    await expect(hanging).rejects.toMatchObject({ name: 'AbortError' });
  } finally {
    h.destroy();
    await server.close();
  }
});

test('parseHead: framing and keep-alive as HTTP/1.1 says', () => {
  const o = 'http://h';
  expect(parseHead('HTTP/1.1 200 OK\r\nContent-Length: 5', o, 'GET')).toMatchObject({ framing: 5, keepAlive: true });
  expect(parseHead('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Close', o, 'GET')).toMatchObject({ keepAlive: false });
  expect(parseHead('HTTP/1.0 200 OK\r\nContent-Length: 5', o, 'GET')).toMatchObject({ keepAlive: false });
  expect(parseHead('HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive', o, 'GET')).toMatchObject({ keepAlive: true });
  expect(parseHead('HTTP/1.1 304 Not Modified\r\nContent-Length: 5', o, 'GET')).toMatchObject({ framing: 0 });
  expect(parseHead('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5', o, 'GET')).toMatchObject({ framing: 'chunked' });
  expect(parseHead('HTTP/1.1 200 OK', o, 'GET')).toMatchObject({ framing: 'close', keepAlive: false });
  expect(() => parseHead('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip', o, 'GET')).toThrow("http://h: unsupported Transfer-Encoding 'gzip'");
  expect(() => parseHead('HTTP/1.1 200 OK\r\nno colon', o, 'GET')).toThrow('http://h: malformed header line');
});

test('through the SDK against the local S3: GETs come whole and uncopied, everything else as before', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'get-s3-'));
  const s3 = await startS3Local(dir, 'b');
  const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
  const store = new S3ObjectStore('b', s3Client({ endpoint: s3.endpoint, region: 'us-east-1', credentials }));
  try {
    const h = store.client.config.requestHandler as unknown as S3GetHandler;
    expect(h).toBeInstanceOf(S3GetHandler);
    const body = randomBytes(5 * 1024 * 1024 + 3);
    await store.put('dir/a b+ü', body);
    expect(h.gets).toBe(0); // the PUT went to the SDK's handler
    const got = await store.get('dir/a b+ü');
    expect(got.equals(body)).toBe(true);
    expect(h.gets).toBe(1);
    expect([got.byteOffset, got.byteLength]).toEqual([0, got.buffer.byteLength]);
    expect((await store.get('dir/a b+ü', { start: 7, end: 1000 })).equals(body.subarray(7, 1000))).toBe(true);
    await expect(store.get('missing')).rejects.toThrow(/NoSuchKey|not exist|missing/i);
    expect(await store.listKeys('dir/')).toEqual(['dir/a b+ü']);
    expect(h.gets).toBe(4); // LIST is a GET too; the GETs' bodies all came through the handler
    expect(s3Client({}, { LIVESYNC_S3_NODE_HTTP: '1' }).config.requestHandler).toBeInstanceOf(NodeHttpHandler);
  } finally {
    store.client.destroy();
    await s3.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
