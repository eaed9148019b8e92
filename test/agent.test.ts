// The agent under real NBD clients (qemu-io, qemu-img, nbdcopy, nbdinfo, fio): what a client
// reads is what it wrote, and the latest RP recovered through the cloud side equals the
// served image byte for byte.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startAgent, type RunningAgent } from '../agent/agent';
import { createPair, waitForWatermark } from '../replica/pairs';
import { cloud, firstDifference, have, newPairId, recover, runCli } from './helpers';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const clients = ['qemu-io', 'qemu-img', 'nbdcopy', 'nbdinfo', 'fio'].every(have);
if (!clients) console.warn('agent tests skipped: NBD clients missing (apt-get install qemu-utils libnbd-bin fio; .ci/run does)');

(clients ? describe : describe.skip)('agent over NBD', () => {
  let dir: string;
  let agent: RunningAgent;
  let pairId: string;
  let url: string;
  const size = 64 * MiB;

  beforeAll(async () => {
    const c = cloud();
    pairId = newPairId('agent');
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
    dir = await mkdtemp(join(tmpdir(), 'livesync-agent-'));
    await writeFile(join(dir, 'disk0.img'), '');
    await truncate(join(dir, 'disk0.img'), size);
    agent = await startAgent({ pairId, disks: [{ name: 'disk0', path: join(dir, 'disk0.img') }], host: '127.0.0.1', port: 0, store: c.store, index: c.index, stateDir: join(dir, 'state') });
    url = `nbd://127.0.0.1:${agent.port}/disk0`;
  });

  afterAll(async () => {
    await agent?.stop();
    if (dir) await rm(dir, { recursive: true, force: true }); // the 64 MiB image and the spool
  });

  /** Recovers the latest state through the cloud side and compares it with the served image. */
  async function expectReplicaMatchesImage(): Promise<void> {
    const seq = await agent.flush({ rp: true });
    const c = cloud();
    await waitForWatermark(c.index, pairId, seq, 60_000);
    const got = (await recover(c, pairId, seq)).get('disk0')!;
    expect(firstDifference(got, await readFile(join(dir, 'disk0.img')))).toBeUndefined();
  }

  test('qemu-io writes, reads back and verifies patterns, unaligned and zeroing included', async () => {
    const { stdout } = await run('qemu-io', [
      '-f', 'raw', url,
      '-c', 'write -P 0xab 0 1M',
      '-c', 'write -P 0xcd 4096 512',
      '-c', 'write -P 0x11 3M 123456',
      '-c', 'write -z 512K 64K',
      '-c', 'discard 2M 1M',
      '-c', 'write -P 0x22 -f 60M 4M', // FUA
      '-c', 'flush',
      '-c', 'read -P 0xab 0 4096',
      '-c', 'read -P 0xcd 4096 512',
      '-c', 'read -P 0xab 4608 3584',
      '-c', 'read -P 0x11 3M 123456',
      '-c', 'read -P 0 512K 64K',
      '-c', 'read -P 0x22 60M 4M',
    ]);
    expect(stdout).not.toMatch(/Pattern verification failed|error/i);
    await expectReplicaMatchesImage();
  });

  test('nbdcopy writes a whole image; qemu-img compare and the replica agree', async () => {
    const src = join(dir, 'src.img');
    const data = Buffer.alloc(size);
    for (let off = 0; off < size; off += 4 * MiB) randomBytes(MiB).copy(data, off); // data with holes between
    await writeFile(src, data);
    await run('nbdcopy', [src, url]);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, url]);
    await expectReplicaMatchesImage();
  });

  test('fio (nbd engine, queue depth 16, two connections) verifies crc32c of everything it wrote', async () => {
    const { stdout } = await run('fio', [
      '--name=verify', '--ioengine=nbd', `--uri=${url}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
      '--size=8M', '--numjobs=2', '--offset_increment=16M', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0', '--group_reporting',
    ]);
    expect(stdout).toMatch(/err= 0/);
    expect(stdout).not.toMatch(/verify:.*bad|crc32c: verify failed/i);
    await expectReplicaMatchesImage();
  });

  // Payloads over 512 KiB are joined in reused buffers (over 1 MiB, fresh ones): a buffer given
  // back too early, or a read-ahead left in one, shows as a verify failure or a replica mismatch.
  test('fio with large writes (600 KiB to 2 MiB, queue depth 8) verifies crc32c of everything it wrote', async () => {
    const { stdout } = await run('fio', [
      '--name=large', '--ioengine=nbd', `--uri=${url}`, '--rw=randwrite', '--bsrange=600k-2m', '--bs_unaligned=0', '--iodepth=8',
      '--size=24M', '--verify=crc32c', '--do_verify=1', '--verify_state_save=0',
    ]);
    expect(stdout).toMatch(/err= 0/);
    expect(stdout).not.toMatch(/verify:.*bad|crc32c: verify failed/i);
    await expectReplicaMatchesImage();
  });

  test('a restarted agent continues the seq stream after every batch it cut, applied yet or not', async () => {
    await run('qemu-io', ['-f', 'raw', url, '-c', 'write -P 0x31 8M 1M', '-c', 'flush']);
    await agent.stop();
    // A FLUSH no longer cuts: the stop's final cut (RP_REQUESTED) holds the write.
    const cutSoFar = agent.capture.writer.nextSeq;
    const c = cloud();
    agent = await startAgent({ pairId, disks: [{ name: 'disk0', path: join(dir, 'disk0.img') }], host: '127.0.0.1', port: 0, store: c.store, index: c.index, stateDir: join(dir, 'state') });
    url = `nbd://127.0.0.1:${agent.port}/disk0`;
    expect(agent.capture.writer.nextSeq).toBe(cutSoFar);
    await run('qemu-io', ['-f', 'raw', url, '-c', 'write -P 0x32 9M 1M', '-c', 'flush']);
    await expectReplicaMatchesImage();
    expect((await c.index.listQuarantine(pairId))).toEqual([]);
  });

  test('block status shows holes, and unknown exports and options are refused', async () => {
    const { stdout } = await run('nbdinfo', ['--map', url]);
    expect(stdout).toMatch(/hole,zero/);
    expect(stdout).toMatch(/data/);
    await expect(run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${agent.port}/nope`, '-c', 'read 0 512'])).rejects.toThrow();
    const { stdout: list } = await run('nbdinfo', ['--list', `nbd://127.0.0.1:${agent.port}`]);
    expect(list).toContain('export="disk0"');
  });
});

(clients ? describe : describe.skip)('application-consistent recovery points', () => {
  let dir: string;
  let agent: RunningAgent;
  let pairId: string;
  const log = (): Promise<string> => readFile(join(dir, 'hooks.log'), 'utf8').catch(() => '');

  beforeAll(async () => {
    const c = cloud();
    pairId = newPairId('acrp');
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: 16 * MiB }] });
    dir = await mkdtemp(join(tmpdir(), 'livesync-acrp-'));
    await writeFile(join(dir, 'disk0.img'), '');
    await truncate(join(dir, 'disk0.img'), 16 * MiB);
    // The freeze hook fails while FAIL exists and hangs while SLOW exists.
    const preFreeze = `cd ${dir} && if [ -e FAIL ]; then echo cannot freeze >&2; exit 3; fi; if [ -e SLOW ]; then sleep 5; fi; echo "freeze $LIVESYNC_ACRP_TAG" >> hooks.log`;
    agent = await startAgent({
      pairId, disks: [{ name: 'disk0', path: join(dir, 'disk0.img') }], host: '127.0.0.1', port: 0, store: c.store, index: c.index,
      stateDir: join(dir, 'state'), hooks: { preFreeze, postThaw: `echo thaw >> ${dir}/hooks.log`, timeoutMs: 1000 },
    });
  });

  afterAll(async () => {
    await agent?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('`livesync acrp` freezes, marks, thaws; the ACRP is listed with its tag and recovers the data', async () => {
    const c = cloud();
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${agent.port}/disk0`, '-c', 'write -P 0x41 0 1M']);
    const res = await runCli('acrp', '--pair', pairId, '--tag', 'app=postgres', '--state-dir', join(dir, 'state'));
    expect(res.code).toBe(0);
    const { seq } = JSON.parse(res.stdout);
    expect(await log()).toBe('freeze app=postgres\nthaw\n');
    await waitForWatermark(c.index, pairId, seq, 30_000);
    const acrps = await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000), 'APP');
    expect(acrps.map((r) => [r.seq, r.tag])).toEqual([[seq, 'app=postgres']]);
    const got = (await recover(c, pairId, seq)).get('disk0')!;
    expect(got.subarray(0, MiB).every((b) => b === 0x41)).toBe(true);
  });

  test('a failing or timed-out freeze gives no ACRP and a clear error; thaw still runs; replication goes on', async () => {
    const c = cloud();
    const before = (await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000), 'APP')).length;
    await writeFile(join(dir, 'FAIL'), '');
    await expect(agent.acrp('app=db')).rejects.toThrow(/pre-freeze hook .* failed \(exit 3\): cannot freeze/);
    await rm(join(dir, 'FAIL'));
    await writeFile(join(dir, 'SLOW'), '');
    await expect(agent.acrp('app=db')).rejects.toThrow(/pre-freeze hook .* timed out after 1000 ms/);
    await rm(join(dir, 'SLOW'));
    expect((await log()).match(/thaw/g)).toHaveLength(3); // after the success and both failures
    await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${agent.port}/disk0`, '-c', 'write -P 0x42 1M 1M', '-c', 'flush']);
    const seq = await agent.flush({ rp: true });
    await waitForWatermark(c.index, pairId, seq, 30_000);
    expect((await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000), 'APP')).length).toBe(before);
    await expect(agent.acrp('')).rejects.toThrow(/ACRP tag '' must be 1-255 bytes/);
  });
});
