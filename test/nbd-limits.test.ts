// What one NBD client can take from the server: a handshake must end in time, connections
// are limited, and a client that never reads its replies pins a bounded number of READ
// bytes (it stops being read from), not 64 requests of 32 MiB. A raw client speaks the
// fixed-newstyle handshake and sends requests itself.

import { once } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { MAX_READ_BYTES_IN_FLIGHT, startNbdServer, type BlockExport, type NbdServer } from '../agent/nbd-server';

const MiB = 1024 * 1024;

/** A disk whose reads are counted and all return one shared buffer (the test's memory stays flat). */
function countingExport(size: number): BlockExport & { reads: number } {
  const shared = Buffer.alloc(4 * MiB, 0x11);
  const exp = {
    name: 'disk0',
    size,
    reads: 0,
    read: async (_offset: number, length: number) => {
      exp.reads++;
      return shared.subarray(0, length);
    },
    write: async () => {},
    zero: async () => {},
    flush: async () => {},
    allocation: async (_offset: number, length: number) => [{ length, state: 0 }],
  };
  return exp;
}

const connect = async (port: number): Promise<Socket> => {
  const sock = createConnection(port, '127.0.0.1');
  await once(sock, 'connect');
  return sock;
};
const closed = (sock: Socket): Promise<void> => (sock.destroyed ? Promise.resolve() : once(sock, 'close').then(() => {}));

/** Reads exactly `n` bytes (a test client: small handshake replies only). */
function readExactly(sock: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (c: Buffer): void => {
      got = Buffer.concat([got, c]);
      if (got.length >= n) {
        sock.off('data', onData);
        if (got.length > n) sock.unshift(got.subarray(n));
        sock.pause();
        resolve(got.subarray(0, n));
      }
    };
    sock.on('data', onData);
    sock.once('close', () => reject(new Error(`closed after ${got.length} of ${n} bytes`)));
    sock.resume();
  });
}

/** Fixed newstyle with NO_ZEROES, then NBD_OPT_EXPORT_NAME: the socket is in transmission. */
async function handshake(sock: Socket, name = 'disk0'): Promise<void> {
  await readExactly(sock, 18);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(3); // FIXED_NEWSTYLE | NO_ZEROES
  const opt = Buffer.alloc(16);
  opt.write('IHAVEOPT', 0, 'latin1');
  opt.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME
  opt.writeUInt32BE(Buffer.byteLength(name), 12);
  sock.write(Buffer.concat([flags, opt, Buffer.from(name)]));
  await readExactly(sock, 10); // size + transmission flags
}

function readRequest(cookie: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(0, 4); // flags
  b.writeUInt16BE(0, 6); // NBD_CMD_READ
  b.writeBigUInt64BE(BigInt(cookie), 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length, 24);
  return b;
}

describe('NBD server limits', () => {
  let server: NbdServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  test('a client that does not finish the handshake in time is hung up on', async () => {
    server = await startNbdServer([countingExport(MiB)], '127.0.0.1', 0, undefined, { handshakeMs: 300 });
    const sock = await connect(server.port);
    const t0 = Date.now();
    await readExactly(sock, 18); // the server's hello; the client says nothing more
    sock.resume();
    await closed(sock);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  test('connections past the limit are closed at once; one that ends frees its slot', async () => {
    const lines: string[] = [];
    server = await startNbdServer([countingExport(MiB)], '127.0.0.1', 0, (m) => lines.push(m), { maxConnections: 2 });
    const a = await connect(server.port);
    const b = await connect(server.port);
    await readExactly(a, 18);
    await readExactly(b, 18);
    const c = await connect(server.port);
    c.resume();
    await closed(c);
    expect(lines).toContain('nbd: refused a connection: 2 are open');
    a.destroy();
    await closed(a);
    await new Promise((r) => setTimeout(r, 100));
    const d = await connect(server.port);
    await readExactly(d, 18); // served
    b.destroy();
    d.destroy();
  });

  test('a client that never reads its replies pins a bounded number of READ bytes: the server stops taking its requests', async () => {
    const disk = countingExport(512 * MiB);
    server = await startNbdServer([disk], '127.0.0.1', 0);
    const sock = await connect(server.port);
    await handshake(sock);
    sock.pause(); // never reads a reply
    const n = 60;
    for (let i = 0; i < n; i++) sock.write(readRequest(i, i * 4 * MiB, 4 * MiB));
    await new Promise((r) => setTimeout(r, 1500));
    // The bound, one request past it, and what the kernel's socket buffers took.
    const bound = MAX_READ_BYTES_IN_FLIGHT / (4 * MiB) + 1;
    expect(disk.reads).toBeGreaterThanOrEqual(bound - 1);
    expect(disk.reads).toBeLessThanOrEqual(bound + 6);
    expect(disk.reads).toBeLessThan(n);
    sock.destroy();
  });
});
