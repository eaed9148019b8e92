// The default NBD export (the empty name): a URI without an export name, as in
// `qemu … -drive file=nbd://127.0.0.1:10809`, reaches the only disk of a one-disk server, as
// with qemu-nbd and nbdkit; named exports keep working; with two disks the empty name is
// refused with an error that names them. Real clients: qemu-io (NBD_OPT_GO) and nbdinfo.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startNbdServer, type NbdServer } from '../agent/nbd-server';
import { have } from './helpers';
import { memoryExport } from './memory-export';

const run = promisify(execFile);
const KiB = 1024;

/** qemu-io's commands against `uri`; rejects with its output on failure. */
async function qemuIo(uri: string, ...commands: string[]): Promise<string> {
  const { stdout } = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]).catch((err: { stderr?: string; message: string }) => {
    throw new Error(err.stderr || err.message);
  });
  // qemu-io reports a failed command on stdout and still exits 0 for some of them.
  if (/error|failed|not available/i.test(stdout)) throw new Error(stdout);
  return stdout;
}

const tools = have('qemu-io') && have('nbdinfo');
if (!tools) console.warn('default export tests skipped: qemu-io or nbdinfo missing (apt-get install qemu-utils libnbd-bin; .ci/run does)');

(tools ? describe : describe.skip)('NBD default export', () => {
  let server: NbdServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  test('one disk: a URI with no export name writes and reads that disk; its name still works', async () => {
    const disk = memoryExport('disk0', 1024 * KiB);
    server = await startNbdServer([disk], '127.0.0.1', 0);
    const bare = `nbd://127.0.0.1:${server.port}`;

    await qemuIo(bare, 'write -P 0xab 64k 128k');
    expect(disk.bytes.subarray(64 * KiB, 192 * KiB).equals(Buffer.alloc(128 * KiB, 0xab))).toBe(true);
    expect(disk.bytes.subarray(0, 64 * KiB).equals(Buffer.alloc(64 * KiB))).toBe(true);
    expect(disk.bytes.subarray(192 * KiB).equals(Buffer.alloc(disk.size - 192 * KiB))).toBe(true);
    // Read back through the default export and through the named one (read -P checks the pattern).
    await qemuIo(bare, 'read -P 0xab 64k 128k');
    await qemuIo(`${bare}/disk0`, 'read -P 0xab 64k 128k', 'write -P 0x5c 0 4k');
    expect(disk.bytes.subarray(0, 4 * KiB).equals(Buffer.alloc(4 * KiB, 0x5c))).toBe(true);

    const { stdout } = await run('nbdinfo', ['--json', bare]);
    expect((JSON.parse(stdout) as { exports: { 'export-size': number }[] }).exports[0]['export-size']).toBe(disk.size);
  });

  test('two disks: the empty name is refused with an error naming the exports; named ones work', async () => {
    const a = memoryExport('a', 256 * KiB);
    const b = memoryExport('b', 512 * KiB);
    server = await startNbdServer([a, b], '127.0.0.1', 0);
    const bare = `nbd://127.0.0.1:${server.port}`;

    // qemu passes on the server's message ("server reported: …").
    await expect(qemuIo(bare, 'write -P 0x11 0 4k')).rejects.toThrow("no default export: this server has 2 exports ('a', 'b'); name one");
    await expect(run('nbdinfo', [bare])).rejects.toThrow(/default export/);
    expect(a.bytes.equals(Buffer.alloc(a.size))).toBe(true);
    expect(b.bytes.equals(Buffer.alloc(b.size))).toBe(true);

    await qemuIo(`${bare}/b`, 'write -P 0x22 4k 4k');
    expect(b.bytes.subarray(4 * KiB, 8 * KiB).equals(Buffer.alloc(4 * KiB, 0x22))).toBe(true);
    expect(a.bytes.equals(Buffer.alloc(a.size))).toBe(true);
  });
});
