// A real agent under FLUSHes: a guest that flushes after every 4 KiB write makes about one
// journal object per upload interval, not one per FLUSH; and a SIGKILL right after
// acknowledged FLUSHes loses none of them (the restart replays the flush log).

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { startAgent, type RunningAgent } from '../agent/agent';
import { AGENT_ENV, AGENT_NODE_FLAGS } from '../agent/runtime';
import { NbdClient } from '../bench/nbd-client';
import { BLOCK_SIZE } from '../core/batch-format';
import { createPair, waitForWatermark } from '../replica/pairs';
import { cloud, eventually, firstDifference, have, newPairId, recover, runCli } from './helpers';

const MiB = 2 ** 20;
const size = 16 * MiB;

async function newImage(dir: string): Promise<string> {
  const path = join(dir, 'disk0.img');
  await writeFile(path, '');
  await truncate(path, size);
  return path;
}

(have('fio') ? describe : describe.skip)('flush-heavy guest', () => {
  let dir: string;
  let agent: RunningAgent | undefined;
  afterEach(async () => {
    await agent?.stop();
    agent = undefined;
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  // fio randwrite 4 KiB with fsync=1 (fio's nbd engine refuses fdatasync=1 with EINVAL; fsync is
  // its NBD FLUSH): a FLUSH after every write. Each is answered
  // (fio err=0, the agent counts them), yet the agent cuts at most ~1.2 batches a second.
  test('fio randwrite 4k with fsync=1: every FLUSH answered, at most ~1.2 journal objects a second, replica = image', async () => {
    dir = await mkdtemp(join(tmpdir(), 'livesync-flushheavy-'));
    const pairId = newPairId('flushy');
    await createPair(cloud().index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
    const image = await newImage(dir);
    agent = await startAgent({ pairId, disks: [{ name: 'disk0', path: image }], host: '127.0.0.1', port: 0, store: cloud().store, index: cloud().index, stateDir: join(dir, 'state') });
    const before = agent.status();
    const started = Date.now();
    const { stdout } = await promisify(execFile)('fio', [
      '--name=flushy', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${agent.port}/disk0`, '--rw=randwrite', '--bs=4k', '--fsync=1',
      '--iodepth=1', `--size=${size}`, '--time_based', '--runtime=6', '--randrepeat=0',
    ]);
    const seconds = (Date.now() - started) / 1000;
    const after = agent.status();
    expect(stdout).toMatch(/err= 0/);
    const flushes = after.flushes - before.flushes;
    const objects = after.lastCutSeq - before.lastCutSeq;
    // Hundreds of FLUSHes a second here; the bound is what the issue asks.
    expect({ flushesAbove100: flushes > 100, objectsPerSecondAtMost1_2: objects / seconds <= 1.2, someObjects: objects >= 1 }).toEqual({ flushesAbove100: true, objectsPerSecondAtMost1_2: true, someObjects: true });
    const seq = await agent.flush({ rp: true });
    await waitForWatermark(cloud().index, pairId, seq, 60_000);
    const got = (await recover(cloud(), pairId, seq)).get('disk0')!;
    expect(firstDifference(got, await readFile(image))).toBeUndefined();
  });

  // The agent runs as an operator runs it, with an upload interval so long that nothing is
  // cut: every acknowledged FLUSH is only in the flush log when it is killed.
  test('SIGKILL right after acknowledged FLUSHes: the restart replays the log, and the first RP holds exactly what was acknowledged', async () => {
    dir = await mkdtemp(join(tmpdir(), 'livesync-flushkill-'));
    const pairId = newPairId('flushkill');
    await createPair(cloud().index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
    const image = await newImage(dir);
    const stateDir = join(dir, 'state');
    const child = spawn(
      join(__dirname, '../node_modules/.bin/node'),
      [...AGENT_NODE_FLAGS, '--no-warnings=ExperimentalWarning', '--import', 'tsx', join(__dirname, '../cli/livesync.ts'), 'agent', '--pair', pairId, '--disk', `disk0=${image}`,
        '--listen', '127.0.0.1:0', '--state-dir', stateDir, '--upload-interval', '1h'],
      { env: { ...process.env, ...AGENT_ENV }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const stderr: string[] = [];
    createInterface({ input: child.stderr! }).on('line', (l) => stderr.push(l));
    const exited = new Promise((res) => child.once('exit', res));
    const port = await new Promise<number>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', (l) => resolve((JSON.parse(l) as { port: number }).port));
      child.once('exit', (code, signal) => reject(new Error(`agent exited (${code ?? signal}) before serving: ${stderr.join('\n')}`)));
    });
    const client = await NbdClient.connect('127.0.0.1', port, 'disk0');
    /** The disk as acknowledged by the last FLUSH. */
    const acked = Buffer.alloc(size);
    const blocks = size / BLOCK_SIZE;
    let flushes = 0;
    for (let round = 0; round < 40; round++) {
      // 1-5 writes of 1-3 blocks (overlapping ones land in the order sent), then a FLUSH.
      const writes: [number, Buffer][] = Array.from({ length: 1 + (round % 5) }, () => [Math.floor(Math.random() * (blocks - 3)) * BLOCK_SIZE, randomBytes(BLOCK_SIZE * (1 + (round % 3)))]);
      await Promise.all(writes.map(([at, data]) => client.write(at, data)));
      await client.flush();
      flushes++;
      for (const [at, data] of writes) data.copy(acked, at);
    }
    child.kill('SIGKILL');
    await exited;
    expect(flushes).toBe(40);
    // Nothing was cut: the FLUSHes are in the log of seq 1 only.
    expect(await readdir(join(stateDir, 'flushlog'))).toEqual([`${String(1).padStart(20, '0')}.log`]);
    expect(await readdir(join(stateDir, 'spool'))).toEqual([]);

    const said: string[] = [];
    agent = await startAgent({ pairId, disks: [{ name: 'disk0', path: image }], host: '127.0.0.1', port: 0, store: cloud().store, index: cloud().index, stateDir, log: (m) => said.push(m) });
    expect(said.join('\n')).toMatch(/flush log of seq 1: replayed 40 records into batch 1/);
    expect(await readdir(join(stateDir, 'flushlog'))).toEqual([]);
    // Batch 1 is the pair's first, so an RP: exactly the acknowledged disk.
    await waitForWatermark(cloud().index, pairId, 1, 60_000);
    const rp = (await recover(cloud(), pairId, 1)).get('disk0')!;
    expect(firstDifference(rp, acked)).toBeUndefined();
    // And the resync that follows the unclean stop leaves the replica equal to the image. Its
    // batches are no RPs: the RP is cut once it has ended (as test/held-batches.test.ts does).
    const running = agent;
    await eventually('the resync after the unclean stop', async () => (running.status().mode === 'streaming' ? true : undefined), 60_000);
    const seq = await agent.flush({ rp: true });
    await waitForWatermark(cloud().index, pairId, seq, 60_000);
    expect(firstDifference((await recover(cloud(), pairId, seq)).get('disk0')!, await readFile(image))).toBeUndefined();
  });
});

test('`livesync agent --upload-interval` takes a duration above 0; anything else exits 2 naming the flag', async () => {
  for (const bad of ['soon', '0s', '1.5s']) {
    const res = await runCli('agent', '--pair', 'p', '--disk', 'disk0=/nonexistent', '--upload-interval', bad);
    expect({ bad, code: res.code, named: res.stderr.includes(`--upload-interval: '${bad}'`) }).toEqual({ bad, code: 2, named: true });
  }
});
