// Failover operations (core/failover.ts, replica/failover.ts, cli/failover.ts): the table of
// transitions; a planned failover through a real agent loses no acknowledged write and fences
// the source; test failover and cleanup while replication goes on; unplanned failover; every
// transition recorded with its time, who asked and why; actions that do not apply refused.

import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { mkdtemp, readFile, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdClient } from '../bench/nbd-client';
import { nextPhase, type OperationAction, type OperationPhase } from '../core/failover';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { exited, spawnAgentProcess } from './agent-process';
import { cloud, firstDifference, have, newPairId, runCli } from './helpers';

const MiB = 2 ** 20;
const c = cloud();

const PHASES: (OperationPhase | undefined)[] = [undefined, 'TEST', 'FAILING_OVER', 'FAILED_OVER', 'FAILING_BACK'];
const ACTIONS: OperationAction[] = ['test-start', 'test-ready', 'test-cleanup', 'failover-start', 'failover-done', 'failover-failed', 'failback-start', 'failback-done', 'failback-failed'];

test('the transitions: every phase x action, allowed ones to their phase, the rest refused naming both', () => {
  const table: Record<string, string> = {};
  for (const from of PHASES) {
    for (const action of ACTIONS) {
      try {
        table[`${from ?? '-'} ${action}`] = nextPhase('p', from, action) ?? '-';
      } catch (err) {
        expect((err as Error).message).toMatch(new RegExp(`^pair 'p' is ${from ?? 'not in an operation'}: cannot ${action} \\(`));
      }
    }
  }
  expect(table).toEqual({
    '- test-start': 'TEST',
    '- failover-start': 'FAILING_OVER',
    'TEST test-ready': 'TEST',
    'TEST test-cleanup': '-',
    'FAILING_OVER failover-done': 'FAILED_OVER',
    'FAILING_OVER failover-failed': '-',
    'FAILED_OVER failback-start': 'FAILING_BACK',
    'FAILING_BACK failback-done': '-',
    'FAILING_BACK failback-failed': 'FAILED_OVER',
  });
});

const events = async (pairId: string) => JSON.parse((await runCli('pair', 'events', '--pair', pairId)).stdout) as { action: string; from: string; to: string; by: string; reason: string; atMs: number; seq?: number }[];
const show = async (pairId: string) => JSON.parse((await runCli('pair', 'show', '--pair', pairId)).stdout);

test('planned failover: the agent takes the final ACRP and refuses writes after it; that exact RP is recovered with every acknowledged write; FAILING_OVER → FAILED_OVER, recorded', async () => {
  const size = 16 * MiB;
  const pairId = newPairId('planned');
  await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
  const dir = await mkdtemp(join(tmpdir(), 'livesync-failover-'));
  const image = join(dir, 'disk0.img');
  await (await import('node:fs/promises')).writeFile(image, '');
  await truncate(image, size);
  const stateDir = join(dir, 'state');
  const agent = await spawnAgentProcess(pairId, { disk0: image }, stateDir);
  const model = Buffer.alloc(size);
  try {
    const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
    // Acknowledged writes, the last ones with no FLUSH after them: all must be in the failover RP.
    for (let i = 0; i < 40; i++) {
      const at = Math.floor(Math.random() * (size / 4096 - 16)) * 4096;
      const data = randomBytes(4096 * (1 + (i % 16)));
      await client.write(at, data);
      data.copy(model, at);
      if (i === 20) await client.flush();
    }
    const prefix = `recoveries/${pairId}/failover`;
    const out = await runCli('failover', 'planned', '--pair', pairId, '--to', `s3://${c.bucket}/${prefix}`, '--state-dir', stateDir, '--tag', 'failover-test', '--by', 'tester');
    expect(out.stderr).toMatch(/source fenced at ACRP \d+ \('failover-test'\)/);
    expect(out.code).toBe(0);
    const op = JSON.parse(out.stdout);
    expect(op).toMatchObject({ phase: 'FAILED_OVER', kind: 'planned', by: 'tester', outputs: { disk0: `s3://${c.bucket}/${prefix}/disk0.img` } });
    expect(firstDifference(await c.store.get(`${prefix}/disk0.img`), model)).toBeUndefined();
    // The RP recovered is the final ACRP, tagged.
    expect(await c.index.getRecoveryPoint(pairId, op.seq)).toMatchObject({ type: 'APP', tag: 'failover-test' });
    // The source is fenced: a write now is refused (so none is acknowledged that the RP lacks).
    await expect(client.write(0, randomBytes(4096))).rejects.toThrow();
    await client.close().catch(() => {});
    expect((await show(pairId)).shownState).toBe('FAILED_OVER');
    const ev = await events(pairId);
    expect(ev.map((e) => [e.action, e.from, e.to, e.by])).toEqual([
      ['failover-start', 'REPLICATING', 'FAILING_OVER', 'tester'],
      ['failover-done', 'FAILING_OVER', 'FAILED_OVER', 'tester'],
    ]);
    expect(ev[1].reason).toBe(`failed over to ACRP ${op.seq} ('failover-test')`);
    // A second failover is refused.
    const again = await runCli('failover', 'unplanned', '--pair', pairId, '--latest', '--to', `s3://${c.bucket}/${prefix}2`);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(`pair '${pairId}' is FAILED_OVER: cannot failover-start (the pair has failed over: fail back first)`);
  } finally {
    agent.child.kill('SIGTERM');
    await exited(agent.child);
    await rm(dir, { recursive: true, force: true });
  }
});

test('test failover while replication goes on, shown with its age until cleanup; unplanned failover to an ACRP; refusals', async () => {
  const size = 4 * MiB;
  const pairId = newPairId('drill');
  const disks = [{ name: 'disk0', sizeBytes: size }];
  await createPair(c.index, { pairId, disks });
  const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
  const model = Buffer.alloc(size);
  const write = async (at: number, data: Buffer) => {
    await w.write('disk0', at, data);
    data.copy(model, at);
  };
  await write(0, randomBytes(64 * 1024));
  const first = w.cut({ appTag: 'app-ok' })!;
  const atFirst = Buffer.from(model);
  await write(MiB, randomBytes(64 * 1024));
  const second = w.cut({ rp: true })!;
  await waitForWatermark(c.index, pairId, second, 30_000);

  const dir = await mkdtemp(join(tmpdir(), 'livesync-drill-'));
  try {
    expect((await runCli('failover', 'cleanup', '--pair', pairId)).stderr).toMatch(`pair '${pairId}' is not in an operation: cannot test-cleanup (no operation is in progress)`);
    const test = await runCli('failover', 'test', '--pair', pairId, '--latest', '--to', `file:${dir}/test`, '--by', 'drill');
    expect(test.code).toBe(0);
    expect(JSON.parse(test.stdout)).toMatchObject({ phase: 'TEST', kind: 'test', seq: second, outputs: { disk0: `${dir}/test/disk0.img` } });
    expect(firstDifference(await readFile(join(dir, 'test', 'disk0.img')), model)).toBeUndefined();
    // Replication goes on during the test.
    await write(2 * MiB, randomBytes(4096));
    const third = w.cut({ rp: true })!;
    await w.close();
    await waitForWatermark(c.index, pairId, third, 30_000);
    const status = await runCli('pair', 'status', '--pair', pairId);
    expect(status.stdout).toMatch(new RegExp(`^${pairId}\\tTEST\\twatermark ${third}\\ttest since \\d+ s \\(RP ${second}\\): RP ${second} recovered for the test`));
    // No failover while the test runs.
    expect((await runCli('failover', 'unplanned', '--pair', pairId, '--latest', '--to', `file:${dir}/x`)).stderr).toMatch('a test failover is running: end it with `livesync failover cleanup` first');
    expect(JSON.parse((await runCli('failover', 'cleanup', '--pair', pairId, '--reason', 'drill done', '--by', 'drill')).stdout)).toMatchObject({ ended: { phase: 'TEST', seq: second } });
    expect((await show(pairId)).shownState).toBe('REPLICATING');

    const un = await runCli('failover', 'unplanned', '--pair', pairId, '--acrp', 'app-ok', '--to', `file:${dir}/dr`, '--by', 'oncall');
    expect(un.code).toBe(0);
    expect(JSON.parse(un.stdout)).toMatchObject({ phase: 'FAILED_OVER', kind: 'unplanned', seq: first });
    expect(firstDifference(await readFile(join(dir, 'dr', 'disk0.img')), atFirst)).toBeUndefined();
    const ev = await events(pairId);
    expect(ev.map((e) => [e.action, e.from, e.to, e.by])).toEqual([
      ['test-start', 'REPLICATING', 'TEST', 'drill'],
      ['test-ready', 'TEST', 'TEST', 'drill'],
      ['test-cleanup', 'TEST', 'REPLICATING', 'drill'],
      ['failover-start', 'REPLICATING', 'FAILING_OVER', 'oncall'],
      ['failover-done', 'FAILING_OVER', 'FAILED_OVER', 'oncall'],
    ]);
    expect(ev[2].reason).toBe('drill done');
    expect(ev.every((e, i) => i === 0 || e.atMs >= ev[i - 1].atMs)).toBe(true);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

(have('qemu-img') ? test : test.skip)('test failover onto an export: the RP served at once over NBD while the test lasts, TEST shown; stopping the export ends it', async () => {
  const size = 4 * MiB;
  const pairId = newPairId('drillnbd');
  const disks = [{ name: 'disk0', sizeBytes: size }];
  await createPair(c.index, { pairId, disks });
  const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: MiB });
  const model = Buffer.alloc(size);
  const data = randomBytes(256 * 1024);
  await w.write('disk0', 512 * 1024, data);
  data.copy(model, 512 * 1024);
  const seq = w.cut({ rp: true })!;
  await w.close();
  await waitForWatermark(c.index, pairId, seq, 30_000);
  const dir = await mkdtemp(join(tmpdir(), 'livesync-drillnbd-'));
  const child = spawn(join(__dirname, '../node_modules/.bin/tsx'), [join(__dirname, '../cli/livesync.ts'), 'failover', 'test', '--pair', pairId, '--latest', '--listen', '127.0.0.1:0', '--by', 'drill'], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`failover test exited with ${code}`)));
    });
    const { operation, disks: served } = JSON.parse(line);
    expect(operation).toMatchObject({ phase: 'TEST', kind: 'test', seq, outputs: { disk0: served[0].uri } });
    expect((await runCli('pair', 'status', '--pair', pairId)).stdout).toMatch(new RegExp(`^${pairId}\\tTEST\\t`));
    await promisify(execFile)('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', served[0].uri, join(dir, 'read.img')]);
    expect(firstDifference(await readFile(join(dir, 'read.img')), model)).toBeUndefined();
    child.kill('SIGINT');
    await exited(child);
    expect(child.exitCode).toBe(0);
    expect((await show(pairId)).shownState).toBe('REPLICATING');
    expect((await events(pairId)).map((e) => e.action)).toEqual(['test-start', 'test-ready', 'test-cleanup']);
  } finally {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
