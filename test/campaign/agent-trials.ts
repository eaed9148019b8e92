// The agent killed (SIGKILL) under a guest's writes, 1–2 times, then restarted to a clean stop.
// The guest writes 64 KiB slots, each holding its write's id, and FLUSHes every 16 writes; what
// each FLUSH acknowledged, and when, is recorded. Every live RP must then hold, in every slot,
// a write sent to that slot before the RP's boundary and no older than the last write a FLUSH
// acknowledged before it; the final RP must equal the image.

import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { callAgent } from '../../agent/control';
import { NbdClient } from '../../bench/nbd-client';
import { createPair } from '../../replica/pairs';
import { randInt } from '../../source/workload';
import { spawnAgentProcess, exited } from '../agent-process';
import { newPairId, recover } from '../helpers';
import { readFile } from 'node:fs/promises';
import { count, KiB, liveRps, MiB, until, underEdgeFaults, untilWatermark, type Trial } from './common';

const SIZE = 8 * MiB;
const SLOT = 64 * KiB;
const SLOTS = SIZE / SLOT;

const content = (id: number): Buffer => {
  const b = Buffer.alloc(SLOT);
  for (let i = 0; i < SLOT; i += 4) b.writeUInt32LE(id, i);
  return b;
};

export async function agentKill(t: Trial): Promise<string> {
  const pairId = newPairId('fc-agent');
  await createPair(t.c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: SIZE }], ccrpIntervalMs: 200 });
  const image = join(t.dir, 'disk0.img');
  await writeFile(image, '');
  await truncate(image, SIZE);
  const stateDir = join(t.dir, 'state');
  const spawn = () => spawnAgentProcess(pairId, { disk0: image }, stateDir);

  /** Per id: its slot and when it was sent; per slot the ids sent, ascending. */
  const sentMs = new Map<number, number>();
  const sentTo = new Map<number, Set<number>>();
  /** Each acknowledged FLUSH: when, and the newest id it covered per slot (cumulative). */
  const acks: { ms: number; flushed: Map<number, number> }[] = [];
  const flushed = new Map<number, number>();
  let nextId = 1;
  let writes = 0;

  const rounds = randInt(t.r, 1, 2);
  await underEdgeFaults(t, async () => {
    for (let round = 0; round < rounds; round++) {
      const agent = await spawn();
      const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
      const killAt = Date.now() + randInt(t.r, 200, 1500);
      let killed = false;
      const kill = new Promise<void>((resolve) =>
        setTimeout(() => {
          killed = true;
          agent.child.kill('SIGKILL');
          resolve();
        }, killAt - Date.now()),
      );
      try {
        while (!killed) {
          const batch: [number, number][] = [];
          const inFlight: Promise<void>[] = [];
          for (let k = 0; k < 16; k++) {
            const slot = randInt(t.r, 0, SLOTS - 1);
            const id = nextId++;
            sentMs.set(id, Date.now());
            if (!sentTo.has(slot)) sentTo.set(slot, new Set());
            sentTo.get(slot)!.add(id);
            batch.push([slot, id]);
            inFlight.push(client.write(slot * SLOT, content(id)).then(() => void writes++));
            if (inFlight.length >= 8) await Promise.all(inFlight.splice(0));
          }
          await Promise.all(inFlight);
          await client.flush();
          for (const [slot, id] of batch) flushed.set(slot, Math.max(flushed.get(slot) ?? 0, id));
          acks.push({ ms: Date.now(), flushed: new Map(flushed) });
        }
      } catch (err) {
        if (!killed) throw new Error(`a request failed before the kill: ${(err as Error).message}`);
      }
      await kill;
      await exited(agent.child);
      t.tally.realKills++;
      count(t, 'agent_sigkill');
    }
  });
  if (acks.length === 0) throw new Error('no FLUSH was acknowledged before the kills: the workload did not happen');

  // A clean run: the resync after the kills, an RP of everything, a clean stop.
  const agent = await spawn();
  const sock = join(stateDir, 'control.sock');
  await until('the resync after the kill', async () => {
    const st = await callAgent(sock, { op: 'status' });
    return st.ok && 'status' in st && st.status.mode === 'streaming' ? true : undefined;
  });
  const ans = await callAgent(sock, { op: 'acrp', tag: 'final' });
  if (!ans.ok || !('seq' in ans)) throw new Error(`no final RP: ${JSON.stringify(ans)}`);
  agent.child.kill('SIGTERM');
  await exited(agent.child);
  await untilWatermark(t, pairId, ans.seq);

  const img = await readFile(image);
  let checked = 0;
  for (const rp of await liveRps(t, pairId)) {
    const got = (await recover(t.c, pairId, rp.seq)).get('disk0')!;
    t.tally.rpsChecked++;
    checked++;
    const ack = [...acks].reverse().find((a) => a.ms < rp.atMs);
    const bad: string[] = [];
    for (let slot = 0; slot < SLOTS; slot++) {
      const holds = got.readUInt32LE(slot * SLOT);
      const whole = got.subarray(slot * SLOT, (slot + 1) * SLOT).equals(holds === 0 ? Buffer.alloc(SLOT) : content(holds));
      const minimum = ack?.flushed.get(slot) ?? 0;
      const sentBefore = holds === 0 || (sentTo.get(slot)?.has(holds) === true && sentMs.get(holds)! <= rp.atMs);
      if (!whole || !sentBefore || holds < minimum) bad.push(`slot ${slot} holds ${holds}${whole ? '' : ' (torn)'}, flushed ${minimum}`);
    }
    if (rp.seq === ans.seq && !got.equals(img)) bad.push('the final RP differs from the image');
    if (bad.length === 0) t.tally.rpsBitExact++;
    else {
      t.tally.writesLost += bad.length;
      throw new Error(`pair '${pairId}' RP ${rp.seq} (at ${rp.atMs}): ${bad.slice(0, 5).join('; ')}`);
    }
  }
  if (checked === 0) throw new Error(`pair '${pairId}' has no live RP`);
  return `${rounds} kills, ${writes} writes and ${acks.length} FLUSHes acknowledged, ${checked} RPs`;
}
