// Failback end to end (cli/failback.ts): replicate through an agent, keep writing on the source
// after the RP the pair then fails over to (an unplanned failover), run production on the
// recovered disk under a reverse agent, fail back: the source's image becomes the recovered
// side's, byte for byte, with only the differing blocks shipped; its agent, restarted, resyncs
// the pair, whose next RP is those bytes.

import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { callAgent } from '../agent/control';
import { NbdClient } from '../bench/nbd-client';
import { createPair, waitForWatermark } from '../replica/pairs';
import { exited, spawnAgentProcess, type AgentProcess } from './agent-process';
import { cloud, eventually, firstDifference, newPairId, recover, runCli } from './helpers';

const MiB = 2 ** 20;
const size = 16 * MiB;
const c = cloud();

async function writeRandom(agent: AgentProcess, at: number[], len = 8192): Promise<void> {
  const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
  for (const a of at) await client.write(a, randomBytes(len));
  await client.flush();
  await client.close();
}

async function stop(agent: AgentProcess): Promise<void> {
  agent.child.kill('SIGTERM');
  await exited(agent.child);
}

test('fail over, write on the recovered side, fail back: the source gets the recovered bytes, only what differs shipped; its agent resyncs the pair', async () => {
  const pairId = newPairId('fb');
  const reversePair = `${pairId}-rev`;
  await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
  const dir = await mkdtemp(join(tmpdir(), 'livesync-failback-'));
  const source = join(dir, 'source.img');
  await writeFile(source, '');
  await truncate(source, size);
  const stateA = join(dir, 'state-a');
  const stateB = join(dir, 'state-b');
  let a: AgentProcess | undefined;
  let b: AgentProcess | undefined;
  try {
    a = await spawnAgentProcess(pairId, { disk0: source }, stateA);
    await writeRandom(a, [0, MiB, 5 * MiB, 9 * MiB + 4096]);
    const ans = await callAgent(join(stateA, 'control.sock'), { op: 'acrp', tag: 'good' });
    const good = (ans as { seq: number }).seq;
    await waitForWatermark(c.index, pairId, good, 30_000);
    // The source goes on after that RP (these writes are not in the RP it fails over to), then dies.
    await writeRandom(a, [2 * MiB, 9 * MiB], 65536);
    await stop(a);
    a = undefined;

    const recovered = join(dir, 'dr');
    const fo = await runCli('failover', 'unplanned', '--pair', pairId, '--acrp', 'good', '--to', `file:${recovered}`);
    expect(fo.code).toBe(0);
    expect(JSON.parse(fo.stdout)).toMatchObject({ phase: 'FAILED_OVER', seq: good });
    const start = await runCli('failback', 'start', '--pair', pairId, '--reverse', reversePair);
    expect(start.code).toBe(0);
    expect(JSON.parse(start.stdout)).toMatchObject({ phase: 'FAILING_BACK', reversePair, seq: good });

    // Production on the recovered disk, protected in reverse.
    b = await spawnAgentProcess(reversePair, { disk0: join(recovered, 'disk0.img') }, stateB);
    await writeRandom(b, [3 * MiB, 12 * MiB, MiB + 8192], 16384);

    const fin = await runCli('failback', 'finish', '--pair', pairId, '--disk', `disk0=${source}`, '--reverse-state-dir', stateB);
    expect(fin.stderr).toMatch(/recovery side fenced at ACRP \d+/);
    expect(fin.code).toBe(0);
    const res = JSON.parse(fin.stdout);
    await stop(b);
    b = undefined;
    // The source now holds what the recovery side held.
    const want = await readFile(join(recovered, 'disk0.img'));
    expect(firstDifference(await readFile(source), want)).toBeUndefined();
    // Only what differs was shipped: the source's two later writes' regions (64 KiB each, set
    // back) and the three writes of the recovery side (16 KiB each).
    expect(res.disks.disk0).toEqual({ regionsBack: 2, bytesBack: 2 * 65536, bytesWritten: 3 * 16384 });
    expect(res.shippedBytes).toBe(2 * 65536 + 3 * 16384);
    expect(res.operation).toBeUndefined(); // the operation ended: the roles switched back
    const events = JSON.parse((await runCli('pair', 'events', '--pair', pairId)).stdout) as { action: string; to: string }[];
    expect(events.map((e) => e.action)).toEqual(['failover-start', 'failover-done', 'failback-start', 'failback-done']);

    // The source's agent, restarted, finds its image changed and resyncs the pair to it.
    a = await spawnAgentProcess(pairId, { disk0: source }, stateA);
    const seq = await eventually('the resynced agent takes an ACRP', async () => {
      const after = await callAgent(join(stateA, 'control.sock'), { op: 'acrp', tag: 'back' });
      return after.ok ? (after as { seq: number }).seq : undefined; // refused while it resyncs
    }, 60_000);
    await waitForWatermark(c.index, pairId, seq, 60_000);
    expect(firstDifference((await recover(c, pairId, seq)).get('disk0')!, want)).toBeUndefined();
  } finally {
    if (a) await stop(a);
    if (b) await stop(b);
    await rm(dir, { recursive: true, force: true });
  }
});
