// The agent's local spool: cut batches, durable on local disk before a FLUSH is
// acknowledged, kept until the journal holds them. One file per batch, named by seq:
// `{seq:020}.batch`, written to a temporary name, renamed; synced before the rename (a
// durable add), or later by syncThrough, before the FLUSH that needs it is answered
// (docs/design.md, "Agent").

import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeBatch, decodeTrailer } from '../core/batch-format';
import { crc32c } from '../core/crc32c';
import { BatchError } from '../core/errors';
import type { BodyPool } from '../source/body-pool';
import { readFully } from './read-fully';

const NAME = /^(\d{20})\.batch$/;

export class SpoolCorruptError extends Error {
  constructor(readonly path: string, reason: string) {
    super(`spooled batch ${path} is unreadable: ${reason}`);
    this.name = 'SpoolCorruptError';
  }
}

/** Bodies this process spooled are kept in memory up to this many bytes, for the uploader. */
const DEFAULT_MEMORY_BYTES = 10 * 1024 * 1024; // two 4 MiB batches and their framing

export interface SpoolOptions {
  /** Bytes of spooled bodies kept in memory for the uploader (default 10 MiB). */
  memoryBytes?: number;
  /**
   * Where bodies read back from files come from, and where every body the spool lets go of
   * goes back to: after its write if not kept in memory, else when its batch is removed (its
   * upload done). The batch writer takes its bodies from the same pool.
   */
  bodies?: BodyPool;
}

export class Spool {
  private readonly sizes = new Map<number, number>();
  private total = 0;
  private lastAdd: Promise<unknown> = Promise.resolve();
  /**
   * Batches this process encoded and spooled, not yet uploaded: read() hands them out
   * without reading the file back and checking it again (they never left memory).
   */
  private readonly inMemory = new Map<number, Buffer>();
  private inMemoryBytes = 0;
  /** Bodies read back from files for the uploader, given back when their batch is removed. */
  private readonly lent = new Map<number, Buffer>();
  /** Spooled (renamed) batches whose data may not be on disk yet: added with durable false. */
  private readonly unsynced = new Set<number>();
  /** A rename since the directory was last synced. */
  private dirUnsynced = false;
  /** The syncThrough running, if any: the next one waits for it, then syncs what is left. */
  private syncing: Promise<void> = Promise.resolve();

  private constructor(
    readonly dir: string,
    readonly limitBytes: number,
    private readonly memoryBytes: number,
    private readonly bodies: BodyPool | undefined,
  ) {}

  /** Opens (creating) the spool; leftovers of an interrupted write are removed. */
  static async open(dir: string, limitBytes: number, o: SpoolOptions = {}): Promise<Spool> {
    await mkdir(dir, { recursive: true });
    const spool = new Spool(dir, limitBytes, o.memoryBytes ?? DEFAULT_MEMORY_BYTES, o.bodies);
    for (const name of await readdir(dir)) {
      const m = NAME.exec(name);
      if (!m) {
        await rm(join(dir, name), { force: true }); // a .tmp the crash left: never acknowledged
        continue;
      }
      spool.track(Number(m[1]), (await stat(join(dir, name))).size);
    }
    return spool;
  }

  get bytes(): number {
    return this.total;
  }

  get count(): number {
    return this.sizes.size;
  }

  /** Spooled seqs, ascending. */
  seqs(): number[] {
    return [...this.sizes.keys()].sort((a, b) => a - b);
  }

  /** Whether `n` more bytes stay within the limit. */
  fits(n: number): boolean {
    return this.total + n <= this.limitBytes;
  }

  /**
   * Stores a batch. Batches are written concurrently but appear (are renamed) in call order,
   * the seq order: after a crash the spool never holds a seq whose predecessor's rename was
   * lost, so no seq stream has a hole. The spool owns `body` from here on (see
   * SpoolOptions.bodies).
   *
   * durable (default): the data is synced before the rename and the rename after it, with
   * every earlier batch added without (as syncThrough(seq)): when this resolves, the batch
   * and all before it survive a host crash. durable false: written and renamed only, for a
   * batch no FLUSH waits for; it survives a process kill (the page cache keeps it), and
   * syncThrough makes it durable before a FLUSH that needs it is answered. A host crash
   * before that may leave it torn or empty: the start-up check drops it, and the agent then
   * distrusts its state (agent.ts, docs/design.md "Agent").
   */
  add(seq: number, body: Buffer, opts: { durable?: boolean } = {}): Promise<void> {
    const durable = opts.durable ?? true;
    const path = this.path(seq);
    const tmp = `${path}.tmp`;
    const written = writeWhole(tmp, body, durable);
    const visible = Promise.all([written, this.lastAdd]).then(async () => {
      await rename(tmp, path);
      this.dirUnsynced = true;
      if (!durable) this.unsynced.add(seq);
      this.track(seq, body.length);
      if (this.inMemoryBytes + body.length <= this.memoryBytes) {
        this.inMemory.set(seq, body);
        this.inMemoryBytes += body.length;
      } else {
        this.bodies?.give(body);
      }
    });
    this.lastAdd = visible.catch(() => {});
    return durable ? visible.then(() => this.syncThrough(seq)) : visible;
  }

  /**
   * Makes every spooled batch up to `seq` durable: the files added without a sync (their
   * data), then the directory (their renames). Waits for the adds called before it. Cheap
   * when nothing is unsynced: no system call at all.
   */
  syncThrough(seq: number): Promise<void> {
    const run = Promise.all([this.lastAdd, this.syncing]).then(async () => {
      const files = [...this.unsynced].filter((s) => s <= seq);
      if (files.length === 0 && !this.dirUnsynced) return;
      for (const s of files) this.unsynced.delete(s);
      this.dirUnsynced = false;
      try {
        await Promise.all(files.map((s) => syncFile(this.path(s))));
        await syncDir(this.dir);
      } catch (err) {
        // Not durable after all: a later call tries again.
        for (const s of files) if (this.sizes.has(s)) this.unsynced.add(s);
        this.dirUnsynced = true;
        throw err;
      }
    });
    this.syncing = run.catch(() => {});
    return run;
  }

  /** Spooled batches whose data is not synced yet (added with durable false). */
  get unsyncedCount(): number {
    return this.unsynced.size;
  }

  /**
   * A spooled batch, for its upload: from memory if this process spooled it, else read from
   * its file and checked end to end (a torn or rotten file is refused). The body is the
   * spool's until the batch is removed.
   */
  async read(seq: number): Promise<Buffer> {
    const kept = this.inMemory.get(seq);
    if (kept) return kept;
    const body = await this.readWhole(this.path(seq));
    try {
      checkWhole(body, seq, this.path(seq));
    } catch (err) {
      this.bodies?.give(body);
      throw err;
    }
    const earlier = this.lent.get(seq); // read again: the upload that read it has given up
    if (earlier) this.bodies?.give(earlier);
    this.lent.set(seq, body);
    return body;
  }

  /**
   * Checks a spooled batch fully (every checksum, every extent decoded), holding on to
   * nothing: at start, for every one. `read` then checks only the whole-object checksum,
   * which covers every byte: a file torn or rotten since is still refused.
   */
  async check(seq: number): Promise<void> {
    if (!this.inMemory.has(seq)) this.bodies?.give(await this.readChecked(seq));
  }

  private async readChecked(seq: number): Promise<Buffer> {
    const path = this.path(seq);
    const body = await this.readWhole(path);
    try {
      const b = decodeBatch(body, path);
      if (b.header.seq !== seq) throw new SpoolCorruptError(path, `holds seq ${b.header.seq}`);
    } catch (err) {
      this.bodies?.give(body);
      if (err instanceof BatchError) throw new SpoolCorruptError(path, err.message);
      throw err;
    }
    return body;
  }

  async remove(seq: number): Promise<void> {
    await rm(this.path(seq), { force: true });
    this.unsynced.delete(seq); // in the journal now: nothing to sync
    this.total -= this.sizes.get(seq) ?? 0;
    this.sizes.delete(seq);
    const kept = this.inMemory.get(seq);
    this.inMemoryBytes -= kept?.length ?? 0;
    const body = kept ?? this.lent.get(seq);
    this.inMemory.delete(seq);
    this.lent.delete(seq);
    if (body) this.bodies?.give(body);
  }

  /** A file's bytes, in a body from the pool if there is one. */
  private async readWhole(path: string): Promise<Buffer> {
    const file = await open(path, 'r');
    try {
      const { size } = await file.stat();
      const body = this.bodies ? this.bodies.take(size) : Buffer.allocUnsafe(size);
      // Shorter than it was a moment ago: decodeBatch says so.
      return body.subarray(0, await readFully(file, body, 0));
    } finally {
      await file.close();
    }
  }

  private track(seq: number, size: number): void {
    this.total += size - (this.sizes.get(seq) ?? 0);
    this.sizes.set(seq, size);
  }

  private path(seq: number): string {
    return join(this.dir, `${String(seq).padStart(20, '0')}.batch`);
  }
}

/** Writes `body` to a new file in one call (a 4 MiB body: not eight 512 KiB writes), synced if asked. */
async function writeWhole(path: string, body: Buffer, sync: boolean): Promise<void> {
  const fh = await open(path, 'w');
  try {
    for (let at = 0; at < body.length; ) at += (await fh.write(body, at, body.length - at, at)).bytesWritten;
    if (sync) await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** fdatasync of a spooled file; one removed meanwhile (uploaded) needs none. */
async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!fh) return;
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * The upload's check of a body read back from its file: the end marker, the whole-object
 * CRC-32C (over every byte but its own field) and the seq in the trailer.
 */
function checkWhole(body: Buffer, seq: number, path: string): void {
  try {
    const trailer = decodeTrailer(body, body.length, path);
    const crc = crc32c(body.subarray(0, body.length - 8));
    if (crc !== trailer.objectCrc) throw new SpoolCorruptError(path, `object checksum ${crc.toString(16)} != stored ${trailer.objectCrc.toString(16)}`);
    if (trailer.seq !== seq) throw new SpoolCorruptError(path, `holds seq ${trailer.seq}`);
  } catch (err) {
    if (err instanceof BatchError) throw new SpoolCorruptError(path, err.message);
    throw err;
  }
}

/** Makes a rename in `dir` durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
