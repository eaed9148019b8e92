// The agent under faults: SIGKILL at random points of a write workload, an upload outage
// that fills the spool, an image changed while the agent was stopped, lost local state.
// After each, the replica equals the image and every acknowledged flushed write is in it.

import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent, type AgentOptions, type RunningAgent } from '../agent/agent';
import { callAgent } from '../agent/control';
import { NbdClient } from '../bench/nbd-client';
import { BATCH_FLAGS } from '../core/batch-format';
import { journalPrefix, parseJournalKey } from '../core/keys';
import { rng } from '../source/workload';
import { createPair, waitForWatermark } from '../replica/pairs';
import type { KeyLister, ObjectStore } from '../replica/ports';
import { compactOnce } from '../replica/compactor';
import { gcOnce } from '../replica/gc';
import { spawnAgentProcess, type AgentProcess } from './agent-process';
import { cloud, eventually, firstDifference, have, newPairId, recover } from './helpers';

const KiB = 1024;
const MiB = 1024 * KiB;
const SLOT = 64 * KiB;
const clients = ['qemu-io', 'fallocate'].every(have);

/** 64 KiB of a write id repeated: a slot of the replica tells which write it holds. */
const content = (id: number): Buffer => {
  const b = Buffer.alloc(SLOT);
  for (let i = 0; i < SLOT; i += 4) b.writeUInt32LE(id, i);
  return b;
};

async function newImage(dir: string, size: number): Promise<string> {
  const path = join(dir, 'disk0.img');
  await writeFile(path, '');
  await truncate(path, size);
  return path;
}

/** The latest RP of everything written so far, recovered through the cloud side. */
async function recoverLatest(pairId: string, seq: number): Promise<Buffer> {
  await waitForWatermark(cloud().index, pairId, seq, 60_000);
  return (await recover(cloud(), pairId, seq)).get('disk0')!;
}

(clients ? describe : describe.skip)('agent crashes (SIGKILL)', () => {
  const size = 32 * MiB;
  const slots = size / SLOT;

  /** `livesync agent` as an operator runs it, as a child process we can kill. */
  const spawnAgent = (pairId: string, image: string, stateDir: string): Promise<AgentProcess> => spawnAgentProcess(pairId, { disk0: image }, stateDir);

  test('killed at random points of a workload and restarted, it loses and duplicates nothing', async () => {
    const seed = Number(process.env.LIVESYNC_SEED ?? Date.now() % 1e9);
    const r = rng(seed);
    const pairId = newPairId('crash');
    await createPair(cloud().index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
    const dir = await mkdtemp(join(tmpdir(), 'livesync-crash-'));
    const image = await newImage(dir, size);
    const stateDir = join(dir, 'state');
    /** Per slot: ids sent, in order, and the last id covered by an acknowledged FLUSH. */
    const sent = new Map<number, number[]>();
    const flushed = new Map<number, number>();
    let nextId = 1;
    /** Requests the agent acknowledged (writes, FLUSHes), over all rounds. */
    const acked = { writes: 0, flushes: 0 };

    for (let round = 0; round < 4; round++) {
      const agent = await spawnAgent(pairId, image, stateDir);
      const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
      const killAt = Date.now() + 300 + Math.floor(r() * 1200);
      let killSent = false;
      const killed = new Promise<void>((resolve) => setTimeout(() => {
        killSent = true;
        agent.child.kill('SIGKILL');
        resolve();
      }, killAt - Date.now()));
      // Writes (8 in flight) with a FLUSH every 16; what a FLUSH acknowledges is recorded.
      try {
        for (let n = 0; Date.now() < killAt + 1000; n++) {
          const inFlight: Promise<void>[] = [];
          const batch: [number, number][] = [];
          for (let k = 0; k < 16; k++) {
            const slot = Math.floor(r() * slots);
            const id = nextId++;
            sent.set(slot, [...(sent.get(slot) ?? []), id]);
            batch.push([slot, id]);
            inFlight.push(client.write(slot * SLOT, content(id)).then(() => void acked.writes++));
            if (inFlight.length >= 8) await Promise.all(inFlight.splice(0));
          }
          await Promise.all(inFlight);
          await client.flush();
          acked.flushes++;
          for (const [slot, id] of batch) flushed.set(slot, Math.max(flushed.get(slot) ?? 0, id));
        }
      } catch (err) {
        // The agent died under the client: expected, once it was killed. Before that, any
        // failed request (an EIO reply, a dropped connection) is the agent's failure.
        if (!killSent) throw new Error(`seed ${seed}, round ${round}: a request failed before the kill: ${(err as Error).message}`);
      }
      await killed;
      await new Promise((res) => (agent.child.exitCode !== null || agent.child.signalCode !== null ? res(undefined) : agent.child.once('exit', res)));
    }

    // The workload happened: writes and FLUSHes were acknowledged, at least one FLUSH per
    // round on average (a round runs 0.3-1.5 s before its kill; a FLUSH covers 16 writes
    // of 64 KiB). What they acknowledged is checked below.
    expect({ seed, flushesAtLeast4: acked.flushes >= 4, writesAtLeast64: acked.writes >= 64 }).toEqual({ seed, flushesAtLeast4: true, writesAtLeast64: true });
    expect(flushed.size).toBeGreaterThan(0);

    // A last run resyncs what the kill left uncaptured, takes an RP of everything, stops cleanly.
    const agent = await spawnAgent(pairId, image, stateDir);
    const sock = join(stateDir, 'control.sock');
    await eventually('the resync after the kill', async () => {
      const st = await callAgent(sock, { op: 'status' });
      return st.ok && 'status' in st && st.status.mode === 'streaming' ? true : undefined;
    });
    const ans = await callAgent(join(stateDir, 'control.sock'), { op: 'acrp', tag: 'final' });
    if (!ans.ok || !('seq' in ans)) throw new Error(`no final RP: ${JSON.stringify(ans)}`);
    agent.child.kill('SIGTERM');
    const got = await recoverLatest(pairId, ans.seq).catch((err: Error) => {
      throw new Error(`seed ${seed} (LIVESYNC_SEED replays it): ${err.message}`);
    });
    const img = await readFile(image);
    expect({ seed, diff: firstDifference(got, img) }).toEqual({ seed, diff: undefined });
    // Every slot holds its last flushed write or one sent after it; never an older one.
    for (const [slot, ids] of sent) {
      const holds = img.readUInt32LE(slot * SLOT);
      expect(img.subarray(slot * SLOT, (slot + 1) * SLOT).equals(content(holds))).toBe(true);
      const minimum = flushed.get(slot) ?? 0;
      // 0: every write to the slot died with an agent before reaching the image (none flushed).
      const ok = holds === 0 ? minimum === 0 : ids.includes(holds) && holds >= minimum;
      expect({ seed, slot, holds, minimum, ok }).toEqual({ seed, slot, holds, minimum, ok: true });
    }
    // Exactly once: no batch was refused as a duplicate of a different one, no seq skipped.
    const c = cloud();
    expect(await c.index.listQuarantine(pairId)).toEqual([]);
    const pair = await c.index.getPair(pairId);
    expect(pair?.state).toBe('REPLICATING');
    expect(pair?.error).toBeUndefined();
    await rm(dir, { recursive: true, force: true });
  });
});

/** An object store whose uploads fail while `down` is set (a network outage). */
function outage(store: ObjectStore & KeyLister): ObjectStore & KeyLister & { down: boolean } {
  const s = {
    down: false,
    put: (key: string, body: Buffer) => (s.down ? Promise.reject(new Error('network unreachable')) : store.put(key, body)),
    get: store.get.bind(store),
    upload: store.upload.bind(store),
    size: store.size.bind(store),
    listKeys: store.listKeys.bind(store),
  };
  return s;
}

(clients ? describe : describe.skip)('agent spool and resync', () => {
  let dir: string;
  let agent: RunningAgent | undefined;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'livesync-resync-'));
  });
  afterEach(async () => {
    await agent?.stop();
    agent = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  const write = async (image: string, offset: number, data: Buffer): Promise<void> => {
    const fh = await open(image, 'r+');
    await fh.write(data, 0, data.length, offset);
    await fh.close();
  };

  /** A new pair with one disk on a sparse image, and how to start its agent (in this process). */
  async function servedPair(prefix: string, size: number, ccrpIntervalMs?: number) {
    const pairId = newPairId(prefix);
    const c = cloud();
    await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }], ccrpIntervalMs });
    const image = await newImage(dir, size);
    const start = (o: Partial<AgentOptions> = {}): Promise<RunningAgent> =>
      startAgent({ pairId, disks: [{ name: 'disk0', path: image }], host: '127.0.0.1', port: 0, store: c.store, index: c.index, stateDir: join(dir, 'state'), ...o });
    return { pairId, c, image, start };
  }

  const untilStreaming = (what: string): Promise<true> => eventually(what, async () => (agent!.status().mode === 'streaming' ? true : undefined), 60_000);

  test('an outage fills the spool; writes go on, the pair shows RESYNCING, only dirty regions are resent, no RP while inconsistent', async () => {
    const { pairId, c, image, start } = await servedPair('spool', 64 * MiB, 100);
    const store = outage(c.store);
    agent = await start({ store, spoolBytes: 2 * MiB, maxBatchBytes: 512 * KiB, retryBaseDelayMs: 5 });
    const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
    await client.write(0, content(1));
    await client.flush();
    store.down = true;
    // 8 MiB of incompressible 256 KiB writes at scattered places: far more than the spool holds.
    for (let i = 0; i < 32; i++) await client.write(i * 2 * MiB, randomBytes(256 * KiB));
    await client.flush();
    expect(agent.status().mode).toBe('overflow');
    // Writes still succeed while only the dirty map tracks them.
    await client.write(40 * MiB + 4 * KiB, content(7));
    await client.flush();
    const states = new Set<string>();
    const watch = setInterval(() => void c.index.getPair(pairId).then((p) => p && states.add(p.state)), 20);
    store.down = false;
    await untilStreaming('the resync to complete');
    await client.close();
    const seq = await agent.flush({ rp: true });
    const got = await recoverLatest(pairId, seq);
    clearInterval(watch);
    expect(firstDifference(got, await readFile(image))).toBeUndefined();
    expect(states).toContain('RESYNCING');
    expect((await c.index.getPair(pairId))?.state).toBe('REPLICATING');
    // Resent: the dirty regions (64 KiB each), not the disk.
    const st = agent.status();
    expect(st.overflows).toBeGreaterThanOrEqual(1);
    expect(st.resyncedBytes).toBeLessThanOrEqual(8 * MiB + 64 * KiB * 4);
    // No RP from the first RESYNC batch until RESYNC_END; one at RESYNC_END.
    const batches = await c.index.batchesAfter(pairId, 0, Infinity);
    const begin = batches.find((b) => b.flags & BATCH_FLAGS.RESYNC)!.seq;
    const end = batches.find((b) => b.flags & BATCH_FLAGS.RESYNC_END)!.seq;
    const rps = (await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000))).map((rp) => rp.seq);
    expect(rps.filter((s) => s >= begin && s < end)).toEqual([]);
    expect(rps).toContain(end);
    expect(await c.index.listQuarantine(pairId)).toEqual([]);
  });

  test('an image changed while the agent was stopped, or lost local state, is compared with the replica and only differing regions are resent', async () => {
    const { pairId, c, image, start } = await servedPair('verify', 32 * MiB);
    agent = await start();
    const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
    for (let i = 0; i < 16; i++) await client.write(i * MiB, content(100 + i));
    await client.flush();
    await client.close();
    await agent.stop();

    // Offline edits the spool and dirty map know nothing of.
    await write(image, 5 * MiB + 12_345, Buffer.from('changed offline'));
    await write(image, 30 * MiB, content(999));
    agent = await start();
    await untilStreaming('the comparison and resync');
    let seq = await agent.flush({ rp: true });
    expect(firstDifference(await recoverLatest(pairId, seq), await readFile(image))).toBeUndefined();
    expect(agent.status().resyncedRegions).toBe(2);
    await agent.stop();

    // The state directory is lost (a new host, a wiped disk) and the image changes again.
    await rm(join(dir, 'state'), { recursive: true, force: true });
    await write(image, 17 * MiB, content(4242));
    agent = await start();
    await untilStreaming('the comparison and resync');
    seq = await agent.flush({ rp: true });
    expect(firstDifference(await recoverLatest(pairId, seq), await readFile(image))).toBeUndefined();
    expect(agent.status().resyncedRegions).toBe(1);
    expect(await c.index.listQuarantine(pairId)).toEqual([]);
  });
  test('once its batches are compacted and collected, the comparison reads the replica through the history, without a reader lease', async () => {
    const { pairId, c, image, start } = await servedPair('vhist', 16 * MiB);
    agent = await start({ history: c.history });
    const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
    for (let i = 0; i < 8; i++) {
      await client.write(i * 2 * MiB, content(300 + i));
      await client.flush();
      await agent.flush({ rp: true });
    }
    await client.close();
    const last = await agent.flush({ rp: true });
    await waitForWatermark(c.index, pairId, last, 60_000);
    await agent.stop();
    agent = undefined;
    // The clean stop uploads one more batch: wait until it is applied too, or the history may fold
    // up to the watermark before it and leave it in the journal.
    const uploaded = (await c.store.listKeys(journalPrefix(pairId))).map((k) => parseJournalKey(k)!.seq);
    await waitForWatermark(c.index, pairId, Math.max(...uploaded), 60_000);
    // Every batch (the clean stop's last one too, an RP) folded into the history, by this unit
    // or by a run the apply path started meanwhile, and, grace 0, collected: the journal is empty.
    await eventually('the history folded up to the watermark', async () => {
      await compactOnce(c, pairId, { holder: 'test' });
      const pair = (await c.index.getPair(pairId))!;
      return (await c.history.getHistory(pairId)).frontierSeq === pair.watermark ? true : undefined;
    });
    await gcOnce(c, pairId, { nowMs: Date.now() + 1000, graceMs: 0 });
    expect(await c.store.listKeys(`pairs/${pairId}/journal/`)).toEqual([]);

    await write(image, 3 * MiB + 777, Buffer.from('changed offline'));
    // The agent may not write index items: a reader lease it tried to take would fail here.
    const readOnly = Object.assign(Object.create(c.history) as typeof c.history, {
      putReaderLease: async () => {
        throw new Error('AccessDenied: the agent may not write LEASE# items');
      },
    });
    agent = await start({ history: readOnly, verifyReplica: true });
    await untilStreaming('the comparison and resync');
    const seq = await agent.flush({ rp: true });
    expect(firstDifference(await recoverLatest(pairId, seq), await readFile(image))).toBeUndefined();
    expect(agent.status().resyncedRegions).toBe(1);
  });

  test('a corrupt spooled batch is dropped at start; its seq becomes a resync marker and its regions are found by comparison', async () => {
    const { pairId, c, image, start } = await servedPair('rot', 32 * MiB);
    const store = outage(c.store);
    const startRot = (): Promise<RunningAgent> => start({ store, drainMs: 200, retryBaseDelayMs: 5 });
    agent = await startRot();
    const client = await NbdClient.connect('127.0.0.1', agent.port, 'disk0');
    await client.write(0, randomBytes(MiB));
    await client.flush();
    await agent.drained(30_000);
    store.down = true;
    for (let i = 1; i < 5; i++) {
      await client.write(i * 4 * MiB, randomBytes(MiB));
      await client.flush();
    }
    await client.close();
    await agent.stop(); // the last batches stay spooled
    agent = undefined;
    const spooled = (await readdir(join(dir, 'state', 'spool'))).sort();
    expect(spooled.length).toBeGreaterThanOrEqual(2);
    const victim = join(dir, 'state', 'spool', spooled[0]);
    const body = await readFile(victim);
    body[body.length >> 1] ^= 0x40;
    await writeFile(victim, body);

    store.down = false;
    agent = await startRot();
    await untilStreaming('the comparison and resync');
    const seq = await agent.flush({ rp: true });
    expect(firstDifference(await recoverLatest(pairId, seq), await readFile(image))).toBeUndefined();
    expect(agent.status().resyncedRegions).toBeGreaterThan(0);
    expect(await c.index.listQuarantine(pairId)).toEqual([]);
  });
});
