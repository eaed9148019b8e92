// `livesync export` (replica/rp-export.ts, cli/export.ts): an RP of a pair replicated through
// the embedded stack, compacted and with an L0 above the history, served over NBD and read by
// real clients (qemu-img, nbdcopy, nbdsh, qemu-io) over TCP and a Unix socket: the bytes are
// the model's at that RP, which is not the latest. Read-only exports refuse writes; writable
// ones keep writes in a local overlay and never write to the RP Store; the export lease lives
// exactly as long as the export; the window cache stays within its bound.

import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import type { RpStore } from '../adapters/from-env';
import { BLOCK_SIZE } from '../core/batch-format';
import { InvalidArgumentError } from '../core/errors';
import { compactOnce } from '../replica/compactor';
import { createPair, waitForWatermark } from '../replica/pairs';
import { openRpExport } from '../replica/rp-export';
import { BatchWriter } from '../source/batch-writer';
import { startExport, type RunningExport } from '../cli/export';
import { parseListen } from '../cli/listen';
import { cloud, eventually, firstDifference, newPairId, pattern, SourceModel } from './helpers';

const KiB = 1024;
const MiB = 1024 * KiB;
const DISKS = [
  { name: 'd', sizeBytes: 24 * MiB },
  { name: 'e', sizeBytes: 2 * MiB + 12 * KiB },
];
const c = cloud();
const pairId = newPairId('export');
const model = new SourceModel(DISKS);
const journal = new Map<number, string>();
/** Exported: above the compacted history (13 sits in the L0), and not the latest (14). */
const SEQ = 13;
const COMPACTED = 12;
const LAST = 14;
const tools = { PATH: `/usr/bin:${process.env.PATH}` };
const run = promisify(execFile);
let dir = '';
let held: Awaited<ReturnType<typeof c.history.acquireCompactor>>;

/** Deterministic writes all over both disks: data, overwrites, zeroes; one batch per step. */
async function step(w: BatchWriter, i: number): Promise<number> {
  let x = i * 7919;
  const next = (n: number): number => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n);
  for (let k = 0; k < 6; k++) {
    const d = DISKS[k % 3 === 2 ? 1 : 0];
    const blocks = 1 + next(64);
    const at = next(d.sizeBytes / BLOCK_SIZE - blocks) * BLOCK_SIZE;
    if (k === 5 && i % 3 === 0) {
      model.zero(d.name, at, blocks * BLOCK_SIZE);
      await w.zero(d.name, at, blocks * BLOCK_SIZE);
    } else {
      const data = pattern(blocks * BLOCK_SIZE, i * 100 + k);
      model.write(d.name, at, data);
      await w.write(d.name, at, data);
    }
  }
  const seq = await w.flush({ rp: true });
  model.snapshot(seq);
  return seq;
}

const atSeq = (seq: number, disk: string): Buffer => model.atSeq.get(seq)!.get(disk)!;
const leases = () => c.history.listReaderLeases(pairId, Date.now());

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'livesync-export-test-'));
  await createPair(c.index, { pairId, disks: DISKS });
  // The test runs the compaction units itself: the stack's, started as the L0 grows, find the lease held.
  // The stack may run a unit of its own now and then: the lease is taken when it is free.
  const acquire = () => eventually('the compactor lease', async () => (await c.history.acquireCompactor(pairId, 'test', Date.now(), 15 * 60_000)) ?? undefined, 60_000);
  held = await acquire();
  const w = new BatchWriter({ pairId, disks: DISKS, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 2 * MiB, onUploaded: (b) => journal.set(b.seq, b.key) });
  for (let i = 1; i <= COMPACTED; i++) expect(await step(w, i)).toBe(i);
  await waitForWatermark(c.index, pairId, COMPACTED, 60_000);
  await c.history.releaseCompactor(pairId, held);
  // Units of 4 batches until the history's frontier is 12 (a unit that finds the lease taken by the stack's is tried again).
  await eventually('compaction through seq 12', async () => {
    if ((await c.history.getHistory(pairId)).frontierSeq >= COMPACTED) return true;
    await compactOnce({ store: c.store, index: c.index, history: c.history }, pairId, { holder: 'test', maxBatches: 4, imageBytes: 256 * KiB });
    return undefined;
  }, 120_000);
  // What the history folded is gone, as GC leaves it: a read that touched a folded batch would fail.
  const folded = Array.from({ length: COMPACTED }, (_, i) => i + 1);
  await c.history.deleteBatchItems(pairId, folded);
  await c.deleter.deleteKeys(folded.map((s) => journal.get(s)!));
  held = await acquire(); // until the end: 13 and 14 stay in the L0
  for (let i = COMPACTED + 1; i <= LAST; i++) await step(w, i);
  await w.close();
  await waitForWatermark(c.index, pairId, LAST, 60_000);
  expect(atSeq(SEQ, 'd').equals(atSeq(LAST, 'd'))).toBe(false);
});

afterAll(async () => {
  if (held) await c.history.releaseCompactor(pairId, held);
  await rm(dir, { recursive: true, force: true });
});

/** Serves RP SEQ (or `seq`) of the pair until the test's end. */
async function serve(listen: string, o: { writable?: boolean; overlayDir?: string; cacheBytes?: number; seq?: number; rps?: RpStore } = {}): Promise<RunningExport> {
  return startExport(o.rps ?? c, pairId, { seq: o.seq ?? SEQ }, { listen, ...o });
}

async function readWith(tool: 'qemu-img' | 'nbdcopy', uri: string, out: string): Promise<Buffer> {
  if (tool === 'qemu-img') await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out], { env: { ...process.env, ...tools } });
  else await run('nbdcopy', [uri, out], { env: { ...process.env, ...tools } });
  return readFile(out);
}

/** Runs a Python snippet in nbdsh connected to `uri` (`h` is the handle); its stdout. */
async function nbdsh(uri: string, code: string, env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await run('nbdsh', ['-u', uri, '-c', code], { env: { ...process.env, ...tools, ...env }, maxBuffer: 64 * MiB });
  return stdout;
}

describe('export of an RP', () => {
  test('every disk reads as the model at the RP over TCP (qemu-img) and over a 0600 Unix socket (nbdcopy)', async () => {
    const tcp = await serve('127.0.0.1:0');
    try {
      expect(tcp.seq).toBe(SEQ);
      // Through the compacted history (4 MiB windows), with seq 13 from the L0.
      expect(tcp.export.reader.manifest).toMatchObject({ frontierSeq: COMPACTED });
      expect(tcp.export.reader.manifest.version).toBeGreaterThan(0);
      expect(tcp.export.reader.segments).toBe(1);
      expect(tcp.stats().windowBytes).toBe(4 * MiB);
      expect(tcp.disks.map((d) => d.uri)).toEqual([`nbd://127.0.0.1:${tcp.server.port}/d`, `nbd://127.0.0.1:${tcp.server.port}/e`]);
      for (const d of tcp.disks) {
        const img = await readWith('qemu-img', d.uri, join(dir, `tcp-${d.name}.img`));
        expect({ disk: d.name, diff: firstDifference(img, atSeq(SEQ, d.name)) }).toEqual({ disk: d.name, diff: undefined });
      }
    } finally {
      await tcp.stop();
    }
    const socket = join(dir, 'export.sock');
    const unix = await serve(`unix:${socket}`);
    try {
      expect((await stat(socket)).mode & 0o777).toBe(0o600);
      expect(unix.disks[0].uri).toBe(`nbd+unix:///d?socket=${socket}`);
      for (const d of unix.disks) {
        const img = await readWith('nbdcopy', d.uri, join(dir, `unix-${d.name}.img`));
        expect({ disk: d.name, diff: firstDifference(img, atSeq(SEQ, d.name)) }).toEqual({ disk: d.name, diff: undefined });
      }
    } finally {
      await unix.stop();
    }
    expect(existsSync(socket)).toBe(false);
  });

  test('random 4 KiB reads (nbdsh) equal the model; concurrent reads of one window share one fill', async () => {
    const e = await serve('127.0.0.1:0');
    try {
      for (const d of e.disks) {
        const size = DISKS.find((x) => x.name === d.name)!.sizeBytes;
        const offsets = Array.from({ length: 150 }, (_, i) => ((i * 2654435761) % (size / BLOCK_SIZE)) * BLOCK_SIZE + (i % 5 === 0 ? 512 : 0)).map((o) => Math.min(o, size - BLOCK_SIZE));
        const out = join(dir, `rand-${d.name}.bin`);
        await nbdsh(d.uri, "import os\nwith open(os.environ['OUT'], 'wb') as f:\n  for o in os.environ['OFFSETS'].split(','):\n    f.write(h.pread(4096, int(o)))", { OUT: out, OFFSETS: offsets.join(',') });
        const got = await readFile(out);
        const want = Buffer.concat(offsets.map((o) => atSeq(SEQ, d.name).subarray(o, o + BLOCK_SIZE)));
        expect({ disk: d.name, diff: firstDifference(got, want) }).toEqual({ disk: d.name, diff: undefined });
      }
    } finally {
      await e.stop();
    }
    // In process: 64 reads of one window at once are one fill, and one window's GETs.
    const x = await openRpExport(c.store, c.index, { pairId, seq: SEQ, history: c.history, readaheadWindows: 0 });
    try {
      const d = x.exports[0];
      const at = 8 * MiB;
      const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => d.read(at + i * 64 * KiB, 8 * KiB)));
      reads.forEach((r, i) => expect(r.equals(atSeq(SEQ, 'd').subarray(at + i * 64 * KiB, at + i * 64 * KiB + 8 * KiB))).toBe(true));
      expect(x.stats()).toMatchObject({ fills: 1, hits: 63, readaheads: 0 });
    } finally {
      await x.close();
    }
  });

  test('a read-only export advertises it and refuses writes: qemu-io fails, a raw write, trim or zero gets EPERM; the bytes are unchanged', async () => {
    const e = await serve('127.0.0.1:0');
    try {
      const uri = e.disks[0].uri;
      expect((await nbdsh(uri, 'print(h.is_read_only())')).trim()).toBe('True');
      const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 4k', uri], { env: { ...process.env, ...tools } }).then(
        (r) => r.stdout + r.stderr,
        (err: { stdout: string; stderr: string }) => err.stdout + err.stderr,
      );
      expect(io).not.toMatch(/wrote 4096/);
      const answers = await nbdsh(
        uri,
        [
          'h.set_strict_mode(0)', // the client's own checks off: the server must refuse
          'for name, f in [("write", lambda: h.pwrite(b"x" * 4096, 0)), ("trim", lambda: h.trim(4096, 0)), ("zero", lambda: h.zero(4096, 0))]:',
          '  try:',
          '    f(); print(name, "ok")',
          '  except nbd.Error as ex:',
          '    print(name, ex.string)',
        ].join('\n'),
      );
      // The server's EPERM (libnbd 1.14 leaves ex.errno unset for a server's error).
      expect(answers.trim().split('\n')).toEqual(['write nbd_pwrite: write', 'trim nbd_trim: trim', 'zero nbd_zero: write-zeroes'].map((s) => `${s}: command failed: Operation not permitted`));
      const img = await readWith('nbdcopy', uri, join(dir, 'ro.img'));
      expect(firstDifference(img, atSeq(SEQ, 'd'))).toBeUndefined();
    } finally {
      await e.stop();
    }
  });

  test('a writable export reads its writes back over the RP, never writes to the RP Store, and a fresh export reads the RP as it was', async () => {
    const prefix = `pairs/${pairId}/`;
    const listing = async () => Promise.all((await c.store.listKeys(prefix)).map(async (k) => `${k} ${await c.store.size(k)}`));
    const before = await listing();
    const writes: string[] = [];
    const store = Object.create(c.store) as typeof c.store;
    store.put = async (key: string) => void writes.push(key);
    store.upload = async (key: string) => void writes.push(key);
    const overlayDir = join(dir, 'overlay');
    const e = await serve('127.0.0.1:0', { writable: true, overlayDir, rps: { ...c, store } });
    const expected = new Map(DISKS.map((d) => [d.name, Buffer.from(atSeq(SEQ, d.name))]));
    try {
      const d = e.disks[0];
      const E = e.disks[1];
      // Unaligned, across blocks and windows; a zero and a trim with partial blocks at both ends; the short disk's last bytes.
      // Partial blocks over data: the rest of each block must keep the RP's bytes.
      /** The first block from `from` on where a write of `len` bytes at `skip` into it leaves data of the RP on both sides, in the blocks it touches. */
      const dataAt = (disk: string, from: number, skip: number, len: number) => {
        const img = atSeq(SEQ, disk);
        const someData = (a: number, b: number) => img.subarray(a, b).some((x) => x !== 0);
        let o = Math.floor(from / BLOCK_SIZE) * BLOCK_SIZE;
        while (!(someData(o, o + skip) && someData(o + skip + len, Math.ceil((o + skip + len) / BLOCK_SIZE) * BLOCK_SIZE))) o += BLOCK_SIZE;
        return o;
      };
      const p = dataAt('d', 12 * MiB, 100, 50);
      const q = dataAt('d', 16 * MiB, 3000, 6000);
      const ops: [string, string, number, number][] = [
        ['d', 'write', 4 * MiB - 1000, 9000],
        ['d', 'write', p + 100, 50],
        ['d', 'write', q + 3000, 6000],
        ['d', 'zero', 6 * MiB + 300, 3 * BLOCK_SIZE],
        ['d', 'trim', 10 * MiB - 2048, 5 * BLOCK_SIZE + 4096],
        ['d', 'write', 6 * MiB + 4096, 100], // into a zeroed block
        ['e', 'write', DISKS[1].sizeBytes - 5000, 5000],
        ['e', 'zero', dataAt('e', 0, 10, 20) + 10, 20],
      ];
      for (const [disk, op, at, len] of ops) {
        const uri = disk === 'd' ? d.uri : E.uri;
        const data = pattern(Math.ceil(len / 4) * 4, at).subarray(0, len);
        if (op === 'write') {
          await nbdsh(uri, `import os\nh.pwrite(bytes.fromhex(os.environ['DATA']), ${at})\nh.flush()`, { DATA: data.toString('hex') });
          data.copy(expected.get(disk)!, at);
        } else {
          await nbdsh(uri, `h.${op}(${len}, ${at})`);
          expected.get(disk)!.fill(0, at, at + len);
        }
      }
      for (const x of e.disks) {
        const img = await readWith('nbdcopy', x.uri, join(dir, `cow-${x.name}.img`));
        expect({ disk: x.name, diff: firstDifference(img, expected.get(x.name)!) }).toEqual({ disk: x.name, diff: undefined });
      }
      expect(e.stats().overlayBlocks).toBeGreaterThan(0);
      const map = await readFile(join(overlayDir, 'd.map'));
      expect(map.length).toBe(DISKS[0].sizeBytes / BLOCK_SIZE);
      const block = (at: number) => map[Math.floor(at / BLOCK_SIZE)];
      expect([block(p), block(6 * MiB), block(6 * MiB + 4096), block(6 * MiB + 8192), block(p + BLOCK_SIZE)]).toEqual([1, 1, 1, 2, 0]);
    } finally {
      await e.stop();
    }
    expect(writes).toEqual([]);
    expect(await listing()).toEqual(before);
    // The overlay stays where it was asked for, and is not taken over by the next export.
    const again = await serve('127.0.0.1:0', { writable: true, overlayDir }).catch((err: Error) => err);
    if (!(again instanceof Error)) await again.stop();
    expect(again).toBeInstanceOf(InvalidArgumentError);
    expect((again as Error).message).toContain(`overlay ${join(overlayDir, 'd.overlay')} exists`);
    expect(await leases()).toEqual([]);
    const fresh = await serve('127.0.0.1:0');
    try {
      for (const x of fresh.disks) {
        const img = await readWith('nbdcopy', x.uri, join(dir, `fresh-${x.name}.img`));
        expect({ disk: x.name, diff: firstDifference(img, atSeq(SEQ, x.name)) }).toEqual({ disk: x.name, diff: undefined });
      }
    } finally {
      await fresh.stop();
    }
  });

  test('the export lease is listed while the export runs and gone once it stops', async () => {
    expect(await leases()).toEqual([]);
    const e = await serve('127.0.0.1:0', { writable: true });
    const overlayDir = e.export.overlayDir!;
    expect(existsSync(overlayDir)).toBe(true);
    expect(await leases()).toEqual([expect.objectContaining({ kind: 'export', seq: SEQ })]);
    await nbdsh(e.disks[1].uri, 'h.pread(4096, 0)');
    expect(await leases()).toEqual([expect.objectContaining({ kind: 'export', seq: SEQ })]);
    await e.stop();
    expect(await leases()).toEqual([]);
    expect(existsSync(overlayDir)).toBe(false); // a temporary overlay goes with the export
  });

  test('the window cache stays within its bound while a sequential copy reads ahead and random reads wait for room', async () => {
    const e = await serve('127.0.0.1:0', { cacheBytes: 12 * MiB });
    try {
      const img = await readWith('nbdcopy', e.disks[0].uri, join(dir, 'bounded.img'));
      expect(firstDifference(img, atSeq(SEQ, 'd'))).toBeUndefined();
      const s = e.stats();
      expect(s.cacheLimit).toBe(12 * MiB);
      expect(s.peakCachedBytes).toBeLessThanOrEqual(12 * MiB);
      expect(s.cachedBytes).toBeLessThanOrEqual(12 * MiB);
      expect(s.fills).toBeGreaterThanOrEqual(6);
      expect(s.readaheads).toBeGreaterThan(0);
    } finally {
      await e.stop();
    }
    // Every window of d at once through a cache of two: each read waits its turn, none is wrong.
    const x = await openRpExport(c.store, c.index, { pairId, seq: SEQ, history: c.history, cacheBytes: 8 * MiB });
    try {
      const d = x.exports[0];
      const reads = await Promise.all(Array.from({ length: 6 }, (_, w) => d.read(w * 4 * MiB + 4096, 8192)));
      reads.forEach((r, w) => expect(r.equals(atSeq(SEQ, 'd').subarray(w * 4 * MiB + 4096, w * 4 * MiB + 4096 + 8192))).toBe(true));
      expect(x.stats().peakCachedBytes).toBeLessThanOrEqual(8 * MiB);
      expect(x.stats().waits).toBeGreaterThan(0);
    } finally {
      await x.close();
    }
    await expect(openRpExport(c.store, c.index, { pairId, seq: SEQ, history: c.history, cacheBytes: 4 * MiB })).rejects.toThrow('export cache of 4194304 bytes is less than two windows (8388608 bytes)');
    expect(await leases()).toEqual([]);
  });

  test('copy on read: a window the memory cache let go is read again from the local copy, not the RP Store; with none, it is filled again', async () => {
    const slice = (at: number) => atSeq(SEQ, 'd').subarray(at, at + 8192);
    for (const localCopyBytes of [undefined, 0]) {
      const x = await openRpExport(c.store, c.index, { pairId, seq: SEQ, history: c.history, cacheBytes: 8 * MiB, readaheadWindows: 0, localCopyBytes });
      try {
        const d = x.exports[0];
        for (let w = 0; w < 4; w++) expect((await d.read(w * 4 * MiB + 4096, 8192)).equals(slice(w * 4 * MiB + 4096))).toBe(true);
        for (let i = 0; localCopyBytes !== 0 && x.stats().localWindows < 4 && i < 200; i++) await new Promise((r) => setTimeout(r, 10));
        const gets = x.stats().gets;
        // Windows 0 and 1 were let go (a cache of two windows): read again, across their boundary.
        expect((await d.read(4 * MiB - 4096, 8192)).equals(atSeq(SEQ, 'd').subarray(4 * MiB - 4096, 4 * MiB + 4096))).toBe(true);
        if (localCopyBytes === 0) {
          expect(x.stats()).toMatchObject({ fills: 6, localHits: 0, localWindows: 0, localBytes: 0 });
          expect(x.stats().gets).toBeGreaterThan(gets);
          expect(x.localCopyDir).toBeUndefined();
        } else {
          expect(x.stats()).toMatchObject({ fills: 4, localHits: 2, localWindows: 4 });
          expect(x.stats().localBytes).toBeGreaterThan(0);
          expect(x.stats().gets).toBe(gets);
          expect(statSync(x.localCopyDir!).mode & 0o777).toBe(0o700);
        }
      } finally {
        await x.close();
      }
      if (x.localCopyDir) expect(existsSync(x.localCopyDir)).toBe(false); // removed at close
    }
    expect(await leases()).toEqual([]);
  });

  test('readahead: a sequential run fills the windows after it before they are asked for; scattered reads fill none ahead', async () => {
    const x = await openRpExport(c.store, c.index, { pairId, seq: SEQ, history: c.history, readaheadWindows: 2 });
    try {
      const d = x.exports[0];
      for (let at = 0; at < MiB; at += 256 * KiB) expect((await d.read(at, 256 * KiB)).equals(atSeq(SEQ, 'd').subarray(at, at + 256 * KiB))).toBe(true);
      expect(x.stats()).toMatchObject({ fills: 3, readaheads: 2 }); // window 0, and 1 and 2 ahead
      expect((await d.read(4 * MiB, 4096)).equals(atSeq(SEQ, 'd').subarray(4 * MiB, 4 * MiB + 4096))).toBe(true);
      expect(x.stats()).toMatchObject({ fills: 3, hits: 4 }); // 3 reads inside window 0, then window 1
    } finally {
      await x.close();
    }
    const y = await openRpExport(c.store, c.index, { pairId, seq: SEQ, history: c.history, readaheadWindows: 2 });
    try {
      for (const at of [20 * MiB, 3 * MiB, 13 * MiB, 7 * MiB]) expect((await y.exports[0].read(at, 4096)).equals(atSeq(SEQ, 'd').subarray(at, at + 4096))).toBe(true);
      expect(y.stats()).toMatchObject({ fills: 4, readaheads: 0 });
    } finally {
      await y.close();
    }
  });

  test('the command: one line of what it serves, reads, and on SIGTERM the lease and the socket are gone', async () => {
    const socket = join(dir, 'cmd.sock');
    const script = `import { exportCommand } from ${JSON.stringify(join(__dirname, '../cli/export'))}; import { rpStoreFromEnv } from ${JSON.stringify(join(__dirname, '../adapters/from-env'))};
exportCommand(rpStoreFromEnv(), ${JSON.stringify(pairId)}, { latest: true }, { listen: ${JSON.stringify(`unix:${socket}`)} }).then(() => process.exit(0), (e) => { console.error(e.message); process.exit(1); });`;
    const child = spawn(join(__dirname, '../node_modules/.bin/tsx'), ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).once('line', resolve);
        child.once('exit', (code) => reject(new Error(`export exited with ${code}`)));
      });
      const served = JSON.parse(line) as { pair: string; seq: number; writable: boolean; disks: { name: string; sizeBytes: number; uri: string }[] };
      expect(served).toEqual({ pair: pairId, seq: LAST, writable: false, disks: DISKS.map((d) => ({ ...d, uri: `nbd+unix:///${d.name}?socket=${socket}` })) });
      const img = await readWith('nbdcopy', served.disks[1].uri, join(dir, 'cmd-e.img'));
      expect(firstDifference(img, atSeq(LAST, 'e'))).toBeUndefined();
      expect(await leases()).toEqual([expect.objectContaining({ kind: 'export', seq: LAST })]);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(await leases()).toEqual([]);
      expect(existsSync(socket)).toBe(false);
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('listen rules: a Unix socket or a loopback address only; --overlay needs --writable; an unknown pair is named', async () => {
    expect(parseListen('127.0.0.1:10809')).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(parseListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseListen('unix:/run/x.sock')).toEqual({ path: '/run/x.sock' });
    expect(parseListen('unix:x.sock')).toEqual({ path: join(process.cwd(), 'x.sock') });
    for (const bad of ['0.0.0.0:10809', '10.1.2.3:10809', '[::]:10809', 'example.com:10809']) {
      expect(() => parseListen(bad)).toThrow(InvalidArgumentError);
      expect(() => parseListen(bad)).toThrow(`--listen ${bad}: NBD is served only on a Unix socket or a loopback address`);
    }
    for (const bad of ['10809', 'unix:', '127.0.0.1:99999', `unix:/tmp/${'x'.repeat(100)}.sock`]) expect(() => parseListen(bad)).toThrow(InvalidArgumentError);
    await expect(serve('127.0.0.1:0', { overlayDir: dir })).rejects.toThrow('--overlay DIR is for a --writable export');
    await expect(startExport(c, 'no-such-pair', { latest: true }, { listen: '127.0.0.1:0' })).rejects.toThrow("no-such-pair");
    expect(await leases()).toEqual([]);
  });
});
