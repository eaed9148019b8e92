// The flush log (agent/flush-log.ts): a FLUSH makes the open batch's new blocks durable in
// the log of its seq instead of cutting a batch. Its records replay in order (last write
// wins); a torn or corrupt tail is never acknowledged and is ignored; and, through the real
// capture path (CapturedDisk → PairCapture → spool, log, uploads), a crash at any point
// recovers every acknowledged write from the journal, the spool and the replayed logs.

import fc from 'fast-check';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, truncate, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { CapturedDisk } from '../agent/captured-disk';
import { DirtyMap } from '../agent/dirty-map';
import { encodeRecord, FlushLog, FLUSH_LOG_HEADER, flushLogSeqs, parseFlushLog, pathOf, replayFlushLogs, replayRecords } from '../agent/flush-log';
import { PairCapture } from '../agent/pair-capture';
import { Spool } from '../agent/spool';
import { BATCH_FLAGS, BLOCK_SIZE, decodeBatch, decodeExtent, EXTENT_FLAGS, type BatchHeader, type ExtentInput } from '../core/batch-format';
import { parseJournalKey } from '../core/keys';

const pairId = 'p';
const names = ['d0', 'd1'];
const header = (seq: number, cutMs: number, flags = 0): BatchHeader => ({ pairId, seq, prevSeq: seq - 1, firstWriteMs: 1000, cutMs, flags, disks: names });
const block = (fill: number, n = 1): Buffer => Buffer.alloc(n * BLOCK_SIZE, fill);

/** Blocks of a batch body as a map `disk:block` → fill byte (0 for zeros). */
function contents(body: Buffer): Map<string, number> {
  const b = decodeBatch(body, 'test');
  const out = new Map<string, number>();
  for (const e of b.extents) {
    const data = e.flags & EXTENT_FLAGS.ZERO ? undefined : decodeExtent(e, body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), 'test');
    for (let i = 0; i < e.blockCount; i++) out.set(`${e.disk}:${e.blockIndex + i}`, data ? data[i * BLOCK_SIZE] : 0);
  }
  return out;
}

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'livesync-flushlog-'));
}

describe('flush log records', () => {
  const records: ExtentInput[][] = [
    [{ disk: 0, blockIndex: 3, data: block(1, 2) }, { disk: 1, blockIndex: 0, data: block(2) }],
    [{ disk: 0, blockIndex: 4, data: block(3) }, { disk: 1, blockIndex: 600, zeroBlocks: 300 }],
    [{ disk: 0, blockIndex: 3, zeroBlocks: 1 }, { disk: 1, blockIndex: 700, data: block(4) }],
  ];
  /** What the three records add up to: the last write of each block wins. */
  const want = new Map([
    ['0:3', 0],
    ['0:4', 3],
    ['1:0', 2],
    ...Array.from({ length: 300 }, (_, i) => [`1:${600 + i}`, 0] as [string, number]),
  ]);

  async function writeLog(dir: string, seq: number): Promise<Buffer> {
    const log = await FlushLog.open(dir);
    for (const [i, r] of records.entries()) {
      await expect(log.append(seq, encodeRecord(header(seq, 2000 + i), r), Promise.resolve())).resolves.toBe(true);
    }
    await log.close();
    return readFile(pathOf(dir, seq));
  }

  test('replayed in order, the last write of a block wins; the batch carries the first write and the last record time', async () => {
    const dir = await tempDir();
    try {
      const buf = await writeLog(dir, 7);
      expect(buf.subarray(0, 4).toString('latin1')).toBe('LSFL');
      const log = parseFlushLog(buf, 7, 'log', pairId, names);
      expect(log.tail).toBeUndefined();
      expect(log.records).toHaveLength(3);
      const body = replayRecords(log.records, pairId, names)!;
      const b = decodeBatch(body, 'replayed');
      expect(b.header).toMatchObject({ seq: 7, prevSeq: 6, firstWriteMs: 1000, cutMs: 2002, flags: 0 });
      // Block 1:700 was written after the run it falls in: the run is split around it.
      expect(contents(body)).toEqual(new Map([...want, ['1:700', 4]]));
      expect(await flushLogSeqs(dir)).toEqual([7]);
      // A log of another pair, seq or disk table is not this batch's.
      expect(parseFlushLog(buf, 8, 'log', pairId, names).records).toHaveLength(0);
      expect(parseFlushLog(buf, 7, 'log', 'q', names).records).toHaveLength(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a torn tail (cut anywhere) or a corrupt last record is ignored from there: the records before it replay', async () => {
    const dir = await tempDir();
    try {
      const buf = await writeLog(dir, 7);
      // Where each record ends.
      const ends: number[] = [];
      for (let at = FLUSH_LOG_HEADER; at < buf.length; at += 8 + buf.readUInt32LE(at)) ends.push(at + 8 + buf.readUInt32LE(at));
      expect(ends).toHaveLength(3);
      for (let len = 0; len < buf.length; len += 97) {
        const torn = parseFlushLog(buf.subarray(0, len), 7, 'log', pairId, names);
        const whole = ends.filter((e) => e <= len).length;
        expect(torn.records).toHaveLength(whole);
        if (len !== ends[whole - 1]) expect(torn.tail).toBeDefined();
      }
      const rotten = Buffer.from(buf);
      rotten[ends[1] + 100] ^= 0x40;
      const r = parseFlushLog(rotten, 7, 'log', pairId, names);
      expect(r.records).toHaveLength(2);
      expect(r.tail).toEqual({ offset: ends[1], reason: 'record CRC-32C mismatch' });
      // A record whose frame CRC was fixed up but whose batch checks fail is refused too.
      expect(contents(replayRecords(r.records, pairId, names)!).get('0:3')).toBe(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('appends wait for their condition and keep their order; after discard, appends do nothing and the file is gone', async () => {
    const dir = await tempDir();
    try {
      const log = await FlushLog.open(dir);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const first = log.append(3, encodeRecord(header(3, 1), [{ disk: 0, blockIndex: 0, data: block(1) }]), gate);
      const second = log.append(3, encodeRecord(header(3, 2), [{ disk: 0, blockIndex: 0, data: block(2) }]), gate);
      await new Promise((r) => setTimeout(r, 20));
      expect(existsSync(pathOf(dir, 3))).toBe(false); // not before its condition
      release();
      await expect(Promise.all([first, second])).resolves.toEqual([true, true]);
      const log3 = parseFlushLog(await readFile(pathOf(dir, 3)), 3, 'log', pairId, names);
      expect(contents(replayRecords(log3.records, pairId, names)!).get('0:0')).toBe(2);
      expect(log.bytes(3)).toBe((await readFile(pathOf(dir, 3))).length);
      await log.discard(3);
      expect(existsSync(pathOf(dir, 3))).toBe(false);
      await expect(log.append(3, encodeRecord(header(3, 3), [{ disk: 0, blockIndex: 0, data: block(3) }]), Promise.resolve())).resolves.toBe(false);
      expect(existsSync(pathOf(dir, 3))).toBe(false);
      // A failed condition (the writer failed) fails the append, and the next ones go on.
      await expect(log.append(4, encodeRecord(header(4, 1), [{ disk: 0, blockIndex: 0, data: block(1) }]), Promise.reject(new Error('batch 3 was not stored')))).rejects.toThrow(/batch 3/);
      await expect(log.append(5, encodeRecord(header(5, 1), [{ disk: 0, blockIndex: 0, data: block(1) }]), Promise.resolve())).resolves.toBe(true);
      await log.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('start-up: a log beside its spooled batch, or of a seq in the journal, is deleted; the next seq is replayed; one beyond a gap is dropped', async () => {
    const dir = await tempDir();
    try {
      const logs = join(dir, 'flushlog');
      const spool = await Spool.open(join(dir, 'spool'), 1 << 30);
      const log = await FlushLog.open(logs);
      const rec = (seq: number) => encodeRecord(header(seq, 5), [{ disk: 0, blockIndex: seq, data: block(seq) }]);
      for (const seq of [4, 5, 6, 8]) await log.append(seq, rec(seq), Promise.resolve());
      await log.close();
      await spool.add(5, await rec(5)); // spooled already
      const said: string[] = [];
      // Seqs up to 4 are in the journal; 5 is spooled; 6 is next; 8 stands beyond a gap.
      await replayFlushLogs(logs, pairId, names, spool, 4, (m) => said.push(m));
      expect(await flushLogSeqs(logs)).toEqual([]);
      expect(spool.seqs()).toEqual([5, 6]);
      expect(contents(await spool.read(6))).toEqual(new Map([['0:6', 6]]));
      expect(said.join('\n')).toMatch(/seq 8 stands beyond seq 6/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('FLUSH through the capture path', () => {
  const diskBlocks = 512;
  const disks = names.map((name) => ({ name, sizeBytes: diskBlocks * BLOCK_SIZE }));

  interface Rig {
    dir: string;
    capture: PairCapture;
    exports: CapturedDisk[];
    store: MemoryObjectStore;
    /** Logs deleted while their batch was neither in the spool nor in the journal (must stay empty). */
    early: number[];
    close(): Promise<void>;
  }

  async function rig(maxBatchBytes: number, maxBatchAgeMs = 0): Promise<Rig> {
    const dir = await tempDir();
    const files: FileHandle[] = [];
    for (const d of disks) {
      const path = join(dir, `${d.name}.img`);
      await writeFile(path, '');
      await truncate(path, d.sizeBytes);
      files.push(await open(path, 'r+'));
    }
    const store = new MemoryObjectStore();
    const spool = await Spool.open(join(dir, 'spool'), 1 << 30);
    const { map: dirty } = await DirtyMap.open(join(dir, 'dirty.map'), disks);
    const flushLog = await FlushLog.open(join(dir, 'flushlog'));
    const early: number[] = [];
    const discard = flushLog.discard.bind(flushLog);
    // A log may go only once its batch is on file in the spool or in the journal (checked after what the capture runs first).
    flushLog.discard = (seq, beforeDelete) =>
      discard(seq, async () => {
        await beforeDelete?.();
        const inJournal = [...store.objects.keys()].some((k) => parseJournalKey(k)!.seq === seq);
        if (existsSync(pathOf(flushLog.dir, seq)) && !existsSync(join(dir, 'spool', `${String(seq).padStart(20, '0')}.batch`)) && !inJournal) early.push(seq);
      });
    const capture = new PairCapture({
      pairId,
      disks,
      files,
      store,
      spool,
      flushLog,
      dirty,
      firstSeq: 1,
      maxBatchBytes,
      maxBatchAgeMs,
      persistNextSeq: async () => {},
    });
    const exports = disks.map((d, i) => new CapturedDisk(d.name, d.sizeBytes, i, join(dir, `${d.name}.img`), files[i], capture));
    return {
      dir,
      capture,
      exports,
      store,
      early,
      async close() {
        await capture.close(0);
        for (const f of files) await f.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  }

  /** What a crash at this moment leaves: the logs, then the spool, then the journal (in the order that makes each later one a superset). */
  interface Snapshot {
    logs: Map<string, Buffer>;
    spool: Map<string, Buffer>;
    journal: Map<number, Buffer>;
  }
  function readDir(dir: string): Map<string, Buffer> {
    const out = new Map<string, Buffer>();
    for (const name of existsSync(dir) ? readdirSync(dir) : []) {
      try {
        out.set(name, readFileSync(join(dir, name)));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; // renamed or removed meanwhile
      }
    }
    return out;
  }
  function snapshot(r: Rig): Snapshot {
    const logs = readDir(join(r.dir, 'flushlog'));
    const spool = readDir(join(r.dir, 'spool'));
    const journal = new Map<number, Buffer>();
    for (const [key, body] of r.store.objects) journal.set(parseJournalKey(key)!.seq, body);
    return { logs, spool, journal };
  }

  /** Restarts from a snapshot as the agent does (spool opened, logs replayed), and returns the disks the batches add up to. */
  async function recoverFrom(s: Snapshot): Promise<Map<string, number>> {
    const dir = await tempDir();
    try {
      for (const [sub, files] of [['flushlog', s.logs], ['spool', s.spool]] as const) {
        await mkdir(join(dir, sub));
        for (const [name, body] of files) await writeFile(join(dir, sub, name), body);
      }
      const spool = await Spool.open(join(dir, 'spool'), 1 << 30);
      const journalHas = Math.max(0, ...s.journal.keys());
      // A log is written only once every batch below its seq is spooled.
      const kept = new Set([...spool.seqs(), ...s.journal.keys()]);
      for (const seq of await flushLogSeqs(join(dir, 'flushlog'))) {
        for (let below = 1; below < seq; below++) if (!kept.has(below)) throw new Error(`flush log of seq ${seq} stands beyond seq ${below}, neither spooled nor in the journal`);
      }
      await replayFlushLogs(join(dir, 'flushlog'), pairId, names, spool, journalHas, () => {});
      const batches = new Map(s.journal);
      for (const seq of spool.seqs()) batches.set(seq, await spool.read(seq));
      const seqs = [...batches.keys()].sort((a, b) => a - b);
      // The seq stream has no hole.
      expect(seqs).toEqual(seqs.map((_, i) => i + 1));
      const disk = new Map<string, number>();
      for (const seq of seqs) for (const [k, v] of contents(batches.get(seq)!)) disk.set(k, v);
      return disk;
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  const op = fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('write' as const), disk: fc.nat(1), block: fc.oneof(fc.nat(15), fc.nat(diskBlocks - 1)), count: fc.integer({ min: 1, max: 8 }), fill: fc.integer({ min: 0, max: 255 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('zero' as const), disk: fc.nat(1), block: fc.nat(diskBlocks - 1), count: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 256, max: 300 })) }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('flush' as const) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('cut' as const) }) },
  );

  // Random writes (many to a few hot blocks, rewritten between FLUSHes of one batch),
  // zeroings, FLUSHes and RP cuts through CapturedDisk with small batches (so size cuts fall
  // between FLUSHes) and no age cuts. A crash is taken at every acknowledged
  // FLUSH or cut and at random points inside operations (while logs, spool files and uploads
  // are being written): recovering from it gives, for every block, the value it had at the
  // last acknowledgement or one written after it — never an older one, and never a hole in
  // the seq stream. At an acknowledgement exactly, it gives that state.
  test('a crash at any point recovers every acknowledged write (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), fc.integer({ min: 4, max: 24 }), fc.array(fc.record({ at: fc.nat(39), ms: fc.nat(12), ticks: fc.nat(40) }), { maxLength: 6 }), async (ops, batchBlocks, crashes) => {
        const r = await rig(batchBlocks * BLOCK_SIZE);
        try {
          /** Per block: (op index, value) of every write, in order. */
          const history = new Map<string, { op: number; v: number }[]>();
          const checks: { s: Snapshot; acked: number; upTo: number }[] = [];
          let acked = -1;
          for (const [i, o] of ops.entries()) {
            const e = o.kind === 'write' || o.kind === 'zero' ? r.exports[o.disk] : undefined;
            let running: Promise<unknown>;
            if (o.kind === 'write' || o.kind === 'zero') {
              const count = Math.min(o.count, diskBlocks - o.block);
              const v = o.kind === 'write' ? o.fill : 0;
              for (let b = 0; b < count; b++) {
                const k = `${o.disk}:${o.block + b}`;
                history.set(k, [...(history.get(k) ?? []), { op: i, v }]);
              }
              running = o.kind === 'write' ? e!.write(o.block * BLOCK_SIZE, block(o.fill, count), false) : e!.zero(o.block * BLOCK_SIZE, count * BLOCK_SIZE, false);
            } else if (o.kind === 'flush') running = Promise.all(r.exports.map((x) => x.flush()));
            else running = (async () => {
              for (const x of r.exports) await x.settle();
              await r.capture.cut({ rp: true });
            })();
            // A crash some milliseconds and event-loop turns after this operation began (it, or
            // spooling and uploads it started, may still run).
            for (const c of crashes.filter((x) => x.at === i)) {
              if (c.ms > 0) await new Promise((res) => setTimeout(res, c.ms));
              for (let t = 0; t < c.ticks; t++) await new Promise((res) => setImmediate(res));
              checks.push({ s: snapshot(r), acked, upTo: i });
            }
            await running;
            if (o.kind === 'flush' || o.kind === 'cut') {
              acked = i;
              checks.push({ s: snapshot(r), acked, upTo: i });
            }
          }
          expect(r.early).toEqual([]);
          for (const c of checks) {
            const disk = await recoverFrom(c.s);
            for (const [k, h] of history) {
              const before = h.filter((x) => x.op < c.acked);
              const allowed = new Set([before.length ? before[before.length - 1].v : 0, ...h.filter((x) => x.op > c.acked && x.op <= c.upTo).map((x) => x.v)]);
              const got = disk.get(k) ?? 0;
              if (!allowed.has(got)) throw new Error(`block ${k}: recovered ${got}, allowed ${[...allowed].join(',')} (crash at op ${c.upTo}, last acknowledged op ${c.acked})`);
            }
          }
        } finally {
          await r.close();
        }
      }),
      { numRuns: 40 },
    );
  });

  test('FLUSHes do not cut: many FLUSHes share one batch, each is in the log before it is answered, and the status says which seq holds them', async () => {
    const r = await rig(4 * 1024 * 1024);
    try {
      for (let i = 0; i < 20; i++) {
        await r.exports[0].write(i * BLOCK_SIZE, block(i + 1), false);
        await r.exports[0].flush();
        const log = parseFlushLog(readFileSync(pathOf(join(r.dir, 'flushlog'), 1)), 1, 'log', pairId, names);
        expect(log.records).toHaveLength(i + 1);
      }
      const st = r.capture.status();
      expect(st).toMatchObject({ lastCutSeq: 0, lastFlushSeq: 1, flushes: 20, flushLogWrites: 20 });
      // An RP request cuts there; the batch is spooled and its log deleted.
      await r.capture.cut({ rp: true });
      expect(r.capture.status()).toMatchObject({ lastCutSeq: 1, lastFlushSeq: 1 });
      expect(existsSync(pathOf(join(r.dir, 'flushlog'), 1))).toBe(false);
      // A FLUSH with nothing new points at the last cut batch.
      await r.exports[0].flush();
      expect(r.capture.status()).toMatchObject({ lastFlushSeq: 1, flushes: 21, flushLogWrites: 20 });
    } finally {
      await r.close();
    }
  });

  test('a clean stop cuts with RP_REQUESTED, also when nothing is pending', async () => {
    for (const pending of [true, false]) {
      const r = await rig(4 * 1024 * 1024);
      try {
        await r.exports[0].write(0, block(7), false);
        await r.exports[0].flush();
        if (!pending) await r.capture.cut({});
        const cutBefore = r.capture.status().lastCutSeq;
        await r.capture.close(10_000);
        const last = [...r.store.objects].map(([k, body]) => ({ seq: parseJournalKey(k)!.seq, body })).sort((a, b) => b.seq - a.seq)[0];
        const b = decodeBatch(last.body, 'last');
        expect({ pending, seq: b.header.seq, rpRequested: (b.header.flags & BATCH_FLAGS.RP_REQUESTED) !== 0, extents: b.extents.length }).toEqual({ pending, seq: cutBefore + 1, rpRequested: true, extents: pending ? 1 : 0 });
      } finally {
        await r.close();
      }
    }
  });

  test('the upload interval cuts the open batch by age, unless uploads are behind', async () => {
    const r = await rig(4 * 1024 * 1024, 200);
    try {
      await r.exports[0].write(0, block(1), false);
      await r.exports[0].flush();
      await new Promise((res) => setTimeout(res, 450));
      expect(r.capture.status().lastCutSeq).toBe(1);
      // A batch waits in the spool (its upload not done): no age cut, the open batch grows.
      await r.capture.uploader.stop();
      await r.capture.cut({ rp: true });
      await r.exports[0].write(BLOCK_SIZE, block(2), false);
      await new Promise((res) => setTimeout(res, 450));
      expect(r.capture.status().lastCutSeq).toBe(2);
    } finally {
      await r.close();
    }
  });
});
