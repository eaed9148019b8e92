// NBD over TLS (STARTTLS, x509): a server given a certificate serves only clients that
// STARTTLS first; with a CA, only those showing a certificate it signed. Real qemu-io and
// qemu-img (tls-creds-x509) and nbdsh (libnbd) against a server on an in-memory disk;
// certificates made by openssl.

import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startNbdServer, type NbdServer } from '../agent/nbd-server';
import { loadNbdTls, parseListen } from '../cli/listen';
import { InvalidArgumentError } from '../core/errors';
import { execNbdsh, have } from './helpers';
import { memoryExport } from './memory-export';
import { makeCerts } from './tls-certs';

const run = promisify(execFile);
const KiB = 1024;

/** qemu-io's commands against the server's disk0, over TLS with the credentials in `credsDir` (none: plain). */
async function qemuIo(port: number, credsDir: string | undefined, ...commands: string[]): Promise<string> {
  const image = credsDir
    ? ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${credsDir}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=disk0,tls-creds=tls0`]
    : ['-f', 'raw', `nbd://127.0.0.1:${port}/disk0`];
  const { stdout } = await run('qemu-io', [...image, ...commands.flatMap((c) => ['-c', c])]).catch((err: { stderr?: string; message: string }) => {
    throw new Error(err.stderr || err.message);
  });
  return stdout;
}

const tools = have('qemu-io') && have('openssl');
if (!tools) console.warn('NBD TLS tests skipped: qemu-io or openssl missing (apt-get install qemu-utils openssl; .ci/run does)');

(tools ? describe : describe.skip)('NBD over TLS', () => {
  let dir: string;
  let server: NbdServer | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'livesync-tls-'));
    await makeCerts(dir);
    // What qemu reads: the CA only (server auth), or the CA and its own certificate (mutual).
    for (const sub of ['ca-only', 'mutual']) {
      await run('mkdir', ['-p', join(dir, sub)]);
      await copyFile(join(dir, 'ca-cert.pem'), join(dir, sub, 'ca-cert.pem'));
    }
    await copyFile(join(dir, 'client-cert.pem'), join(dir, 'mutual', 'client-cert.pem'));
    await copyFile(join(dir, 'client-key.pem'), join(dir, 'mutual', 'client-key.pem'));
  });
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('TLS only: qemu-io writes and reads over STARTTLS; a plain client is told TLS is required and reaches nothing', async () => {
    const disk = memoryExport('disk0', 1024 * KiB);
    const tls = loadNbdTls({ cert: join(dir, 'server-cert.pem'), key: join(dir, 'server-key.pem') });
    server = await startNbdServer([disk], '127.0.0.1', 0, undefined, { tls });
    const out = await qemuIo(server.port, join(dir, 'ca-only'), `write -P 0x5a ${64 * KiB} ${64 * KiB}`, `read -P 0x5a ${64 * KiB} ${64 * KiB}`);
    expect(out).toContain(`read ${64 * KiB}/${64 * KiB} bytes`);
    expect(out).not.toContain('Pattern verification failed');
    expect(disk.bytes.subarray(64 * KiB, 128 * KiB).every((b) => b === 0x5a)).toBe(true);
    await expect(qemuIo(server.port, undefined, 'read 0 4k')).rejects.toThrow(/TLS negotiation required/);
    // A client that trusts another CA refuses the server.
    await run('mkdir', ['-p', join(dir, 'other-ca')]);
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'other-ca', 'k.pem'), '-out', join(dir, 'other-ca', 'ca-cert.pem'), '-days', '1', '-subj', '/CN=other']);
    await expect(qemuIo(server.port, join(dir, 'other-ca'), 'read 0 4k')).rejects.toThrow(/certificate|verif|TLS/i);
  });

  (have('qemu-img') && have('nbdsh') ? test : test.skip)('qemu-img and nbdsh (libnbd) over TLS too: an image copied out whole, a write and a read; nbdsh without TLS is refused', async () => {
    const disk = memoryExport('disk0', 1024 * KiB);
    disk.bytes.fill(0x21, 0, 256 * KiB);
    const tls = loadNbdTls({ cert: join(dir, 'server-cert.pem'), key: join(dir, 'server-key.pem') });
    server = await startNbdServer([disk], '127.0.0.1', 0, undefined, { tls });
    const out = join(dir, 'copy.img');
    await run('qemu-img', ['convert', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${join(dir, 'ca-only')}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${server.port},export=disk0,tls-creds=tls0`, '-O', 'raw', out]);
    expect((await readFile(out)).equals(disk.bytes)).toBe(true);
    // libnbd checks the server's certificate against the CA and its name (127.0.0.1 in its SAN).
    const py = (tlsMode: string): string => [
      `h.set_tls(${tlsMode})`,
      `h.set_tls_certificates(${JSON.stringify(join(dir, 'ca-only'))})`,
      "h.set_export_name('disk0')",
      `h.connect_tcp('127.0.0.1', '${server!.port}')`,
      `h.pwrite(b'\\x44' * 4096, ${512 * KiB})`,
      `print(h.pread(4096, ${512 * KiB}) == b'\\x44' * 4096, h.pread(4096, 0) == b'\\x21' * 4096)`,
    ].join('; ');
    expect((await execNbdsh('-c', py('nbd.TLS_REQUIRE'))).stdout.trim()).toBe('True True');
    expect(disk.bytes.subarray(512 * KiB, 516 * KiB).every((b) => b === 0x44)).toBe(true);
    await expect(execNbdsh('-c', py('nbd.TLS_DISABLE'))).rejects.toThrow(/server requires TLS/);
  });

  test('with --tls-ca: only a client showing a certificate the CA signed gets in', async () => {
    const disk = memoryExport('disk0', 1024 * KiB);
    const tls = loadNbdTls({ cert: join(dir, 'server-cert.pem'), key: join(dir, 'server-key.pem'), ca: join(dir, 'ca-cert.pem') });
    expect(tls?.requireClientCert).toBe(true);
    server = await startNbdServer([disk], '127.0.0.1', 0, undefined, { tls });
    expect(await qemuIo(server.port, join(dir, 'mutual'), `write -P 0x33 0 ${4 * KiB}`)).toContain(`wrote ${4 * KiB}/${4 * KiB} bytes`);
    await expect(qemuIo(server.port, join(dir, 'ca-only'), 'read 0 4k')).rejects.toThrow();
    expect(disk.bytes[0]).toBe(0x33);
  });

  test('a listen beyond loopback needs TLS; bad TLS options are refused by name', () => {
    expect(() => parseListen('0.0.0.0:10809')).toThrow('unless it is TLS (--tls-cert and --tls-key)');
    expect(parseListen('0.0.0.0:10809', { tls: true })).toEqual({ host: '0.0.0.0', port: 10809 });
    expect(loadNbdTls({})).toBeUndefined();
    expect(() => loadNbdTls({ cert: join(dir, 'server-cert.pem') })).toThrow('--tls-cert and --tls-key go together');
    expect(() => loadNbdTls({ cert: join(dir, 'nope.pem'), key: join(dir, 'server-key.pem') })).toThrow(InvalidArgumentError);
    expect(() => loadNbdTls({ cert: join(dir, 'nope.pem'), key: join(dir, 'server-key.pem') })).toThrow(`--tls-cert ${join(dir, 'nope.pem')}`);
    expect(() => loadNbdTls({ cert: join(dir, 'client-cert.pem'), key: join(dir, 'server-key.pem') })).toThrow(/--tls-cert .* \/ --tls-key .*: /); // a key that is not the certificate's
  });
});
