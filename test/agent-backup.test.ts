// `livesync backup` through the running agent: a full streaming backup of the images as
// served while a real NBD client (qemu-io) keeps writing. The manifest and chunks are checked
// against the images, a backup inside a freeze window is an ACRP, a failed freeze gives no
// backup, and a pair seeded from such a backup recovers exactly what the images hold.

import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { startAgent, type RunningAgent } from '../agent/agent';
import { callAgent, type AgentBackup } from '../agent/control';
import { BLOCK_SIZE } from '../core/batch-format';
import { CHUNK_BYTES, decodeChunk } from '../core/chunk-format';
import { backupManifestKey, seedBackupKey } from '../core/keys';
import { backupChunkKey, parseBackupManifest, type BackupManifest } from '../core/seed-manifests';
import { sleep } from '../replica/concurrency';
import { createPair, waitForWatermark } from '../replica/pairs';
import { activateSeed, catchUpSeed, finalizeSeed, planSeed, seedRange, validateSeed, type SeedDeps } from '../replica/seeding';
import { cloud, eventually, firstDifference, have, newPairId, recover, runCli } from './helpers';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const clients = have('qemu-io');
if (!clients) console.warn('agent backup tests skipped: qemu-io missing (apt-get install qemu-utils)');

// disk0: chunks 0 and 2 written before the backup only; chunk 7 written before (0x33) and
// during; chunk 9 only during. disk1: chunk 1 written before only. Everything else stays zero.
const disks = [
  { name: 'disk0', sizeBytes: 40 * MiB },
  { name: 'disk1', sizeBytes: 16 * MiB },
];
const BUSY = [7, 9]; // chunks of disk0 written while the backup runs
const OLD = new Map([[7, 0x33], [9, 0]]); // their content before

async function makeImages(dir: string): Promise<{ name: string; path: string }[]> {
  const out = [];
  for (const d of disks) {
    const path = join(dir, `${d.name}.img`);
    await writeFile(path, '');
    await truncate(path, d.sizeBytes);
    out.push({ name: d.name, path });
  }
  return out;
}

async function qemuIo(url: string, ...cmds: string[]): Promise<void> {
  const { stdout } = await run('qemu-io', ['-f', 'raw', url, ...cmds.flatMap((c) => ['-c', c])]);
  if (/error|failed/i.test(stdout)) throw new Error(`qemu-io: ${stdout}`);
}

async function writeBeforeBackup(port: number): Promise<void> {
  await qemuIo(`nbd://127.0.0.1:${port}/disk0`, 'write -P 0x11 0 1M', 'write -P 0x22 9M 2M', 'write -P 0x33 28M 4M', 'flush');
  await qemuIo(`nbd://127.0.0.1:${port}/disk1`, 'write -P 0x44 4M 4K', 'flush');
}

/**
 * qemu-io writing 4 KiB blocks of the busy chunks, one process after another, until
 * `stop()`; `allowed` collects every pattern each block was given, `last` the final one.
 */
function writeLoop(port: number): { stop(): Promise<number>; started: Promise<void>; allowed: Map<number, Set<number>>; last: Map<number, number> } {
  const allowed = new Map<number, Set<number>>();
  const last = new Map<number, number>();
  let stopping = false;
  let first!: () => void;
  const started = new Promise<void>((r) => (first = r));
  const loop = (async () => {
    let i = 0;
    for (; !stopping; i++) {
      const p = 0x50 + (i % 0x80);
      const cmds: string[] = [];
      for (let j = 0; j < 8; j++) {
        const offset = BUSY[j % 2] * CHUNK_BYTES + (((i * 8 + j) * 37) % (CHUNK_BYTES / BLOCK_SIZE)) * BLOCK_SIZE;
        if (!allowed.has(offset)) allowed.set(offset, new Set());
        allowed.get(offset)!.add(p);
        last.set(offset, p);
        cmds.push(`write -P ${p} ${offset} 4K`);
      }
      await qemuIo(`nbd://127.0.0.1:${port}/disk0`, ...cmds);
      if (i === 0) first();
    }
    return i;
  })();
  return {
    started,
    allowed,
    last,
    stop: async () => {
      stopping = true;
      return loop;
    },
  };
}

async function readManifest(key: string): Promise<BackupManifest> {
  return parseBackupManifest((await cloud().store.get(key)).toString('utf8'), key);
}

/** Each stored chunk of the backup, decoded (checksums verified): disk → chunk index → data. */
async function backupChunks(key: string, m: BackupManifest): Promise<Map<string, Map<number, Buffer>>> {
  const out = new Map<string, Map<number, Buffer>>();
  for (const d of m.disks) {
    const chunks = new Map<number, Buffer>();
    for (const c of d.chunks) {
      const ck = backupChunkKey(key, c.sha256);
      chunks.set(c.index, decodeChunk(await cloud().store.get(ck), c, ck));
    }
    out.set(d.name, chunks);
  }
  return out;
}

/**
 * A disk state the backup (or an RP made from it) may hold: chunks untouched while the backup
 * ran equal the final image exactly; each 4 KiB block of a busy chunk holds its old content
 * or one of the patterns written to it (never a mix).
 */
function expectPlausible(chunkOf: (disk: string, index: number) => Buffer | undefined, images: Map<string, Buffer>, allowed: Map<number, Set<number>>): void {
  for (const d of disks) {
    const image = images.get(d.name)!;
    for (let index = 0; index < d.sizeBytes / CHUNK_BYTES; index++) {
      const data = chunkOf(d.name, index) ?? Buffer.alloc(CHUNK_BYTES);
      const at = index * CHUNK_BYTES;
      if (d.name !== 'disk0' || !BUSY.includes(index)) {
        expect({ disk: d.name, index, diff: firstDifference(data, image.subarray(at, at + CHUNK_BYTES)) }).toEqual({ disk: d.name, index, diff: undefined });
        continue;
      }
      const bad: string[] = [];
      for (let b = 0; b < CHUNK_BYTES; b += BLOCK_SIZE) {
        const block = data.subarray(b, b + BLOCK_SIZE);
        const v = block[0];
        const ok = block.every((x) => x === v) && (v === OLD.get(index) || (allowed.get(at + b)?.has(v) ?? false));
        if (!ok) bad.push(`block at ${at + b}: ${block.subarray(0, 4).toString('hex')}…`);
      }
      expect(bad).toEqual([]);
    }
  }
}

async function readImages(dir: string): Promise<Map<string, Buffer>> {
  return new Map(await Promise.all(disks.map(async (d) => [d.name, await readFile(join(dir, `${d.name}.img`))] as [string, Buffer])));
}

(clients ? describe : describe.skip)('backup through the running agent', () => {
  let dir: string;
  let agent: RunningAgent;
  let pairId: string;
  const hookLog = (): Promise<string> => readFile(join(dir, 'hooks.log'), 'utf8').catch(() => '');

  beforeAll(async () => {
    const c = cloud();
    pairId = newPairId('backup');
    await createPair(c.index, { pairId, disks });
    dir = await mkdtemp(join(tmpdir(), 'livesync-backup-'));
    const preFreeze = `cd ${dir} && if [ -e FAIL ]; then echo cannot freeze >&2; exit 3; fi; echo "freeze $LIVESYNC_ACRP_TAG" >> hooks.log`;
    agent = await startAgent({
      pairId, disks: await makeImages(dir), host: '127.0.0.1', port: 0, store: c.store, index: c.index, bucket: c.bucket,
      stateDir: join(dir, 'state'), hooks: { preFreeze, postThaw: `echo thaw >> ${dir}/hooks.log`, timeoutMs: 5000 },
    });
    await writeBeforeBackup(agent.port);
  });

  afterAll(async () => {
    await agent?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('`livesync backup` while qemu-io writes: zero chunks skipped, chunks decode, untouched chunks exact, busy blocks old or new', async () => {
    const before = agent.status().lastCutSeq;
    const writes = writeLoop(agent.port);
    await writes.started;
    const res = await runCli('backup', '--pair', pairId, '--state-dir', join(dir, 'state'));
    const iterations = await writes.stop();
    expect(res.stderr).toBe('');
    expect(res.code).toBe(0);
    const b = JSON.parse(res.stdout) as AgentBackup;
    const key = backupManifestKey(pairId, b.backupId);
    expect(b).toMatchObject({ manifestKey: key, url: `s3://${cloud().bucket}/${key}`, appConsistent: false });
    expect(b.backupId).toMatch(/^b-[0-9a-z]+$/);
    expect(b.appTag).toBeUndefined();
    // The start cut covers every write before; writes went on between the two cuts.
    expect(b.startSeq).toBeGreaterThan(before);
    expect(b.endSeq).toBeGreaterThanOrEqual(b.startSeq);
    expect(iterations).toBeGreaterThan(1);

    const m = await readManifest(key);
    expect(m).toMatchObject({ pairId, backupId: b.backupId, startSeq: b.startSeq, endSeq: b.endSeq, appConsistent: false, chunkBytes: CHUNK_BYTES });
    expect(m.disks.map((d) => [d.name, d.sizeBytes])).toEqual(disks.map((d) => [d.name, d.sizeBytes]));
    // Only chunks with data are stored: those written before, and chunk 9 if read after its first write.
    const stored = m.disks.map((d) => d.chunks.map((c) => c.index));
    expect([[0, 2, 7], [0, 2, 7, 9]]).toContainEqual(stored[0]);
    expect(stored[1]).toEqual([1]);
    const total = disks.reduce((n, d) => n + d.sizeBytes / CHUNK_BYTES, 0);
    expect(b.chunksStored).toBe(stored.flat().length);
    expect(b.zeroChunks).toBe(total - b.chunksStored);
    expect(b.bytesRead).toBe(disks.reduce((n, d) => n + d.sizeBytes, 0));
    expect(b.bytesStored).toBeLessThan(b.chunksStored * CHUNK_BYTES); // compressed

    const chunks = await backupChunks(key, m);
    const images = await readImages(dir);
    expectPlausible((disk, i) => chunks.get(disk)!.get(i), images, writes.allowed);
    // The images hold what was written (the last pattern of every busy block).
    for (const [offset, p] of writes.last) expect(images.get('disk0')!.subarray(offset, offset + BLOCK_SIZE).every((x) => x === p)).toBe(true);
    expect(images.get('disk0')!.subarray(0, MiB).every((x) => x === 0x11)).toBe(true);
    expect(await hookLog()).toBe(''); // no tag: no freeze
  });

  test('with --app-tag the backup runs inside one freeze window: an ACRP at its endSeq, hooks ran once each', async () => {
    const c = cloud();
    const res = await callAgent(join(dir, 'state', 'control.sock'), { op: 'backup', appTag: 'app=db' });
    if (!res.ok || !('backup' in res)) throw new Error(`backup failed: ${JSON.stringify(res)}`);
    const b = res.backup;
    expect(b).toMatchObject({ appConsistent: true, appTag: 'app=db' });
    expect(b.endSeq).toBeGreaterThanOrEqual(b.startSeq); // the tagged end cut is always made
    expect(await hookLog()).toBe('freeze app=db\nthaw\n');
    const m = await readManifest(b.manifestKey);
    expect(m).toMatchObject({ pairId, appConsistent: true, appTag: 'app=db', startSeq: b.startSeq, endSeq: b.endSeq });
    // Nothing wrote meanwhile: the backup is the images exactly.
    const chunks = await backupChunks(b.manifestKey, m);
    const images = await readImages(dir);
    for (const d of m.disks) {
      const want = Buffer.alloc(d.sizeBytes);
      for (const [i, data] of chunks.get(d.name)!) data.copy(want, i * CHUNK_BYTES);
      expect(firstDifference(want, images.get(d.name)!)).toBeUndefined();
    }
    // The end cut carries the tag: the RP Store lists it as an ACRP.
    await waitForWatermark(c.index, pairId, b.endSeq, 30_000);
    const acrps = await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000), 'APP');
    expect(acrps.map((r) => [r.seq, r.tag])).toContainEqual([b.endSeq, 'app=db']);
  });

  test('a failing freeze gives no backup and a clear error; thaw still runs; a bad tag runs no hook', async () => {
    const c = cloud();
    const key = `pairs/${pairId}/backups/failed/manifest.json`;
    await writeFile(join(dir, 'FAIL'), '');
    const thawsBefore = (await hookLog()).match(/thaw/g)?.length ?? 0;
    const res = await runCli('backup', '--pair', pairId, '--to', key, '--app-tag', 'app=db', '--state-dir', join(dir, 'state'));
    await rm(join(dir, 'FAIL'));
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(new RegExp(`no backup of pair '${pairId}': pre-freeze hook .* failed \\(exit 3\\): cannot freeze`));
    expect((await hookLog()).match(/thaw/g)?.length).toBe(thawsBefore + 1);
    expect(await c.store.size(key)).toBeUndefined();

    const log = await hookLog();
    await expect(agent.backup({ appTag: '' })).rejects.toThrow(/backup tag '' must be 1-255 bytes/);
    await expect(agent.backup({ manifestKey: 's3://some-other-bucket/x/manifest.json' })).rejects.toThrow(/writes only to its own bucket/);
    expect(await hookLog()).toBe(log);

    // The agent goes on: a backup to that key now succeeds, and the key is not overwritten.
    const ok = await agent.backup({ manifestKey: key });
    expect(ok).toMatchObject({ manifestKey: key, appConsistent: false });
    await expect(agent.backup({ manifestKey: key })).rejects.toThrow(/already exists/);
  });
});

(clients ? describe : describe.skip)('seeding a pair from the agent\'s own backup', () => {
  let dir: string;
  let agent: RunningAgent | undefined;

  afterAll(async () => {
    await agent?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('backup while qemu-io writes, then seed: the first RP is endSeq and the latest RP equals the images', async () => {
    const c = cloud();
    const pairId = newPairId('bkseed');
    // Not under backups/: there the agent would take the seeding backup by itself when it starts.
    const key = `pairs/${pairId}/manual/first/manifest.json`;
    await createPair(c.index, { pairId, disks, backup: `s3://${c.bucket}/${key}`, ccrpIntervalMs: 100 });
    dir = await mkdtemp(join(tmpdir(), 'livesync-bkseed-'));
    agent = await startAgent({ pairId, disks: await makeImages(dir), host: '127.0.0.1', port: 0, store: c.store, index: c.index, bucket: c.bucket, stateDir: join(dir, 'state') });
    await writeBeforeBackup(agent.port);

    const writes = writeLoop(agent.port);
    await writes.started;
    const b = await agent.backup({ manifestKey: `s3://${c.bucket}/${key}` });
    await writes.stop();
    expect(b).toMatchObject({ manifestKey: key, url: `s3://${c.bucket}/${key}` });
    expect(b.endSeq).toBeGreaterThanOrEqual(b.startSeq);

    // The seed steps, in the state machine's order.
    const deps: SeedDeps = { store: c.store, index: c.index, sourceStore: (bucket) => (bucket === c.bucket ? c.store : new S3ObjectStore(bucket)) };
    const run = { pairId, seedId: (await c.index.getPair(pairId))!.seed!.seedId };
    await validateSeed(deps, run);
    const plan = await planSeed(deps, run);
    for (const item of plan.items) await seedRange(deps, item);
    const fin = await finalizeSeed(deps, { ...run, ranges: plan.ranges });
    expect(fin.firstRpSeq).toBe(b.endSeq);
    expect((await c.index.getPair(pairId))!.base).toMatchObject({ baseSeq: b.startSeq - 1, firstRpSeq: b.endSeq });
    for (let i = 0; !(await catchUpSeed(deps, fin)).caughtUp; i++) {
      if (i > 300) throw new Error('journal never reached the first RP');
      await sleep(100);
    }
    await activateSeed(deps, fin);
    expect((await c.index.getPair(pairId))!.state).toBe('REPLICATING');
    const rps = await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000));
    expect(rps[0]).toMatchObject({ seq: b.endSeq });
    expect(rps.some((r) => r.seq < b.endSeq)).toBe(false);

    // The first RP: base + journal from startSeq; untouched chunks exact, busy blocks old or new.
    const images = await readImages(dir);
    const first = await recover(c, pairId, b.endSeq);
    expectPlausible((disk, i) => first.get(disk)!.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES), images, writes.allowed);
    // The latest RP equals the images byte for byte.
    await qemuIo(`nbd://127.0.0.1:${agent.port}/disk1`, 'write -P 0x77 12M 8K', 'flush');
    const last = await agent.flush({ rp: true });
    await waitForWatermark(c.index, pairId, last, 30_000);
    const got = await recover(c, pairId, last);
    const now = await readImages(dir);
    for (const d of disks) expect({ disk: d.name, diff: firstDifference(got.get(d.name)!, now.get(d.name)!) }).toEqual({ disk: d.name, diff: undefined });
  });
});

(clients ? describe : describe.skip)('a pair created with --backup agent seeds itself', () => {
  test('the agent takes the backup when it starts, the workflow waits for it, seeds, and replication goes on', async () => {
    const c = cloud();
    const pairId = newPairId('auto');
    const created = await runCli('pair', 'create', '--pair', pairId, '--disk', 'disk0=40M', '--disk', 'disk1=16M', '--backup', 'agent', '--ccrp-interval', '100ms');
    expect(created).toMatchObject({ code: 0 });
    const key = seedBackupKey(pairId);
    expect(JSON.parse(created.stdout)).toMatchObject({ state: 'CONFIGURED', seed: { source: `s3://${c.bucket}/${key}`, attempt: 1 } });
    // The workflow runs and waits: no backup yet.
    await sleep(1500);
    expect((await c.index.getPair(pairId))!).toMatchObject({ state: 'CONFIGURED', seed: { status: 'RUNNING' } });

    const dir = await mkdtemp(join(tmpdir(), 'livesync-auto-'));
    const agent = await startAgent({ pairId, disks: await makeImages(dir), host: '127.0.0.1', port: 0, store: c.store, index: c.index, bucket: c.bucket, stateDir: join(dir, 'state') });
    try {
      await writeBeforeBackup(agent.port);
      const seeded = await eventually('the pair to be seeded', async () => {
        const p = (await c.index.getPair(pairId))!;
        if (p.state === 'SEED_FAILED') throw new Error(`seed failed: ${p.seed!.reason}`);
        return p.state === 'REPLICATING' ? p : undefined;
      }, 60_000);
      const m = await readManifest(key);
      expect(seeded.base).toMatchObject({ baseSeq: m.startSeq - 1, firstRpSeq: m.endSeq });
      // Writes made while seeding are offered as RPs at activation or by the apply path after it.
      await qemuIo(`nbd://127.0.0.1:${agent.port}/disk1`, 'write -P 0x78 8M 64K', 'flush');
      const last = await agent.flush({ rp: true });
      await waitForWatermark(c.index, pairId, last, 30_000);
      const rps = await c.index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000));
      expect(rps[0].seq).toBe(m.endSeq);
      expect(rps[rps.length - 1].seq).toBe(last);
      const got = await recover(c, pairId, last);
      const now = await readImages(dir);
      for (const d of disks) expect({ disk: d.name, diff: firstDifference(got.get(d.name)!, now.get(d.name)!) }).toEqual({ disk: d.name, diff: undefined });
    } finally {
      await agent.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
