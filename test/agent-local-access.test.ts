// The agent's local trust boundaries: by default NBD is served on a Unix socket (0600) in
// its state directory, which is owner-only like everything in it (spool files 0600, the
// control socket 0600); the control protocol bounds its request lines; freeze hooks run
// without the agent's AWS credentials. Real qemu-io, nbdsh (libnbd) and qemu-img over nbd+unix://.

import { execFile } from 'node:child_process';
import { createConnection } from 'node:net';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { hookEnvironment } from '../agent/acrp';
import { startAgent } from '../agent/agent';
import { MAX_SEQ_LEAD } from '../core/model';
import { journalKey } from '../core/keys';
import { callAgent, CONTROL_LINE_MAX } from '../agent/control';
import { Spool } from '../agent/spool';
import { encodeBatch } from '../core/batch-format';
import { createPair, waitForWatermark } from '../replica/pairs';
import { exited, spawnAgentProcess } from './agent-process';
import { NbdClient } from '../bench/nbd-client';
import { cloud, eventually, execNbdsh, firstDifference, have, newPairId, recover } from './helpers';
import { makeCerts } from './tls-certs';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

describe('the agent on its host', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'livesync-la-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A new one-disk pair (disk0 of `size`) and its image, sparse, in the test's directory. */
  async function pairWithImage(prefix: string, size: number): Promise<{ pairId: string; image: string }> {
    const pairId = newPairId(prefix);
    await createPair(cloud().index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
    const image = join(dir, 'disk0.img');
    await writeFile(image, Buffer.alloc(0));
    await truncate(image, size);
    return { pairId, image };
  }

  (['qemu-io', 'nbdsh', 'qemu-img'].every(have) ? test : test.skip)('by default it serves NBD on a 0600 Unix socket in its 0700 state directory; qemu-io, nbdsh and qemu-img write and read through it; the control socket is 0600 and refuses an endless line; hooks see no AWS_ variable', async () => {
    const c = cloud();
    const { pairId, image } = await pairWithImage('local', 8 * MiB);
    const stateDir = join(dir, 'state');
    const hookOut = join(dir, 'hook.env');
    const agent = await spawnAgentProcess(pairId, { disk0: image }, stateDir, { listen: null, args: ['--pre-freeze', `env > ${hookOut}`] });
    try {
      expect(agent.socket).toBe(join(stateDir, 'nbd.sock'));
      expect(await mode(stateDir)).toBe(0o700);
      expect(await mode(agent.socket!)).toBe(0o600);
      expect(await mode(join(stateDir, 'control.sock'))).toBe(0o600);

      // qemu-io over nbd+unix://: a pattern written at 2 MiB, read back and verified by qemu-io.
      const uri = `nbd+unix:///disk0?socket=${agent.socket}`;
      await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a ${2 * MiB} ${MiB}`, uri]);
      const { stdout } = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x5a ${2 * MiB} ${MiB}`, uri]);
      expect(stdout).toContain(`read ${MiB}/${MiB} bytes`);
      expect(stdout).not.toContain('Pattern verification failed');
      // nbdsh (libnbd) over the socket: a write at 4 MiB, and qemu-io's pattern read back.
      const { stdout: py } = await execNbdsh('-u', uri, '-c', `h.pwrite(b'\\x33' * 4096, ${4 * MiB}); print(h.pread(4096, ${2 * MiB}) == b'\\x5a' * 4096)`);
      expect(py.trim()).toBe('True');
      // qemu-img copies the whole disk out through it: the image's bytes.
      const copy = join(dir, 'copy.img');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, copy]);
      expect(firstDifference(await readFile(copy), await readFile(image))).toBeUndefined();
      expect((await readFile(copy)).subarray(4 * MiB, 4 * MiB + 4096).every((b) => b === 0x33)).toBe(true);

      // An ACRP: its pre-freeze hook runs without the agent's AWS variables (the stack's endpoints and keys are set here).
      expect(Object.keys(process.env).some((k) => k.startsWith('AWS_'))).toBe(true);
      const acrp = await callAgent(join(stateDir, 'control.sock'), { op: 'acrp', tag: 'app=test' });
      expect(acrp).toMatchObject({ ok: true });
      const hookEnv = await readFile(hookOut, 'utf8');
      expect(hookEnv).toContain('LIVESYNC_ACRP_TAG=app=test');
      expect(hookEnv.split('\n').filter((l) => /^AWS_/i.test(l))).toEqual([]);
      const seq = (acrp as { seq: number }).seq;
      await waitForWatermark(c.index, pairId, seq, 60_000);
      const got = (await recover(c, pairId, seq)).get('disk0')!;
      expect(firstDifference(got.subarray(2 * MiB, 3 * MiB), Buffer.alloc(MiB, 0x5a))).toBeUndefined();

      // A request line that never ends: refused once past the bound, the connection closed, the agent unharmed.
      const answer = await new Promise<string>((resolve, reject) => {
        const sock = createConnection(join(stateDir, 'control.sock'));
        let got = '';
        sock.on('data', (b) => (got += b.toString()));
        sock.on('close', () => resolve(got));
        sock.on('error', reject);
        sock.write('x'.repeat(CONTROL_LINE_MAX + 1024));
      });
      expect(answer).toContain(`request line over ${CONTROL_LINE_MAX} bytes: refused`);
      expect(await callAgent(join(stateDir, 'control.sock'), { op: 'status' })).toMatchObject({ ok: true });
    } finally {
      agent.child.kill('SIGTERM');
      await exited(agent.child);
    }
  });

  (have('qemu-io') && have('openssl') ? test : test.skip)('with --tls-cert and --tls-key it serves TLS only, on a TCP address: qemu-io writes over TLS, a plain client is refused; the RP holds the write', async () => {
    const c = cloud();
    const { pairId, image } = await pairWithImage('tls', 8 * MiB);
    const certs = join(dir, 'certs');
    await mkdir(certs);
    await makeCerts(certs);
    const clientDir = join(dir, 'client');
    await mkdir(clientDir);
    await copyFile(join(certs, 'ca-cert.pem'), join(clientDir, 'ca-cert.pem'));
    const agent = await spawnAgentProcess(pairId, { disk0: image }, join(dir, 'state'), { listen: '127.0.0.1:0', args: ['--tls-cert', join(certs, 'server-cert.pem'), '--tls-key', join(certs, 'server-key.pem')] });
    try {
      const tlsImage = ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${clientDir}`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${agent.port},export=disk0,tls-creds=tls0`];
      const { stdout } = await run('qemu-io', [...tlsImage, '-c', `write -P 0x6b ${MiB} ${MiB}`, '-c', `read -P 0x6b ${MiB} ${MiB}`]);
      expect(stdout).toContain(`read ${MiB}/${MiB} bytes`);
      expect(stdout).not.toContain('Pattern verification failed');
      await expect(run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', `nbd://127.0.0.1:${agent.port}/disk0`])).rejects.toThrow(/TLS negotiation required/);
      const acrp = await callAgent(join(dir, 'state', 'control.sock'), { op: 'acrp', tag: 'tls' });
      const seq = (acrp as { seq: number }).seq;
      await waitForWatermark(c.index, pairId, seq, 60_000);
      expect(firstDifference((await recover(c, pairId, seq)).get('disk0')!.subarray(MiB, 2 * MiB), Buffer.alloc(MiB, 0x6b))).toBeUndefined();
    } finally {
      agent.child.kill('SIGTERM');
      await exited(agent.child);
    }
  });

  test('a batch in the journal far past anything it wrote (another writer\'s) stops the agent from starting, named, instead of a million gap-filling PUTs', async () => {
    const c = cloud();
    const { pairId, image } = await pairWithImage('far', MiB);
    const far = 1 + MAX_SEQ_LEAD + 1;
    const key = journalKey(pairId, far);
    await c.store.put(key, encodeBatch({ pairId, seq: far, prevSeq: far - 1, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['disk0'] }, []));
    const start = (): Promise<unknown> => startAgent({ pairId, disks: [{ name: 'disk0', path: image }], host: '127.0.0.1', port: 0, store: c.store, index: c.index, stateDir: join(dir, 'state') });
    await expect(start()).rejects.toThrow(`pair '${pairId}' has batches ${far} (${key}) over ${MAX_SEQ_LEAD} seqs past anything this agent wrote (seq 0): another writer's`);
    expect(await c.store.listKeys(`pairs/${pairId}/journal/`)).toEqual([key]); // nothing filled
  });

  test('objects apply quarantined hold no seq: one at the next seq is written over by a real batch, one far ahead neither stops the agent nor holds the pair in ERROR', async () => {
    const c = cloud();
    const { pairId, image } = await pairWithImage('quar', MiB);
    const junk = [journalKey(pairId, 1), journalKey(pairId, 1 + MAX_SEQ_LEAD + 1)];
    for (const key of junk) await c.store.put(key, Buffer.from('not a batch'), { createOnly: true });
    await eventually('apply to quarantine both', async () => ((await c.index.listQuarantine(pairId)).length === 2 ? true : undefined));
    const agent = await startAgent({ pairId, disks: [{ name: 'disk0', path: image }], host: '127.0.0.1', port: 0, store: c.store, index: c.index, stateDir: join(dir, 'state') });
    try {
      const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
      await client.write(64 * 1024, Buffer.alloc(4096, 0x77));
      await client.flush();
      const seq = await agent.acrp('after-junk');
      await waitForWatermark(c.index, pairId, seq, 60_000); // seq 1 was sent for real: apply moved past it
      expect(seq).toBeLessThan(10);
      const got = (await recover(c, pairId, seq)).get('disk0')!;
      expect(got.subarray(64 * 1024, 68 * 1024).every((b) => b === 0x77)).toBe(true);
      // The junk far ahead is listed, and holds nothing up: the pair replicates, without an error.
      const after = await c.index.getPair(pairId);
      expect({ state: after?.state, error: after?.error }).toEqual({ state: 'REPLICATING', error: undefined });
      expect((await c.index.listQuarantine(pairId)).map((q) => q.key).sort()).toEqual([...junk].sort());
      await client.close();
    } finally {
      await agent.stop();
    }
  });

  test('spool files are 0600', async () => {
    const spool = await Spool.open(join(dir, 'spool'), 64 * MiB);
    const body = encodeBatch({ pairId: 'p', seq: 1, prevSeq: 0, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['d'] }, [{ disk: 0, blockIndex: 0, data: Buffer.alloc(4096, 1) }]);
    await spool.add(1, body, { durable: true });
    expect(await mode(join(dir, 'spool', `${'1'.padStart(20, '0')}.batch`))).toBe(0o600);
  });

  test('hookEnvironment drops every AWS_ variable and keeps the rest', () => {
    expect(hookEnvironment({ PATH: '/bin', AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 's', AWS_SESSION_TOKEN: 't', AWS_PROFILE: 'p', aws_region: 'r', HOME: '/h' })).toEqual({ PATH: '/bin', HOME: '/h' });
  });
});
