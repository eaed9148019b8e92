// The agent's local spool: cut batches, kept until the journal holds them. One file per
// batch, named by seq: `{seq:020}.batch`, written to a temporary name, renamed. A batch added
// without `durable` is first only held in memory: the uploader usually PUTs it from there
// and it never touches the disk. When held bodies outgrow the memory budget, those the disk
// images can give back are let go (agent/image-backing.ts) and the rest written to their
// files; a batch is also written when something needs it on disk: syncThrough (a FLUSH, a
// cut, the discard of its flush log, a clean stop), which also syncs it (docs/design.md, "Agent").

import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeBatch, decodeTrailer } from '../core/batch-format';
import { crc32c } from '../core/crc32c';
import { BatchError } from '../core/errors';
import type { BodyPool } from '../source/body-pool';
import { ImageRanges, rebuildBody, rebuildPlan, type ImageRange, type RebuildPlan } from './image-backing';
import { readFully } from './read-fully';

const NAME = /^(\d{20})\.batch$/;

export class SpoolCorruptError extends Error {
  constructor(readonly path: string, reason: string) {
    super(`spooled batch ${path} is unreadable: ${reason}`);
    this.name = 'SpoolCorruptError';
  }
}

/** Bodies this process spooled and no upload holds are kept in memory up to this many bytes (default). */
const DEFAULT_MEMORY_BYTES = 10 * 1024 * 1024; // two 4 MiB batches and their framing

export interface SpoolOptions {
  /**
   * Bytes of bodies kept in memory that no upload holds (default 10 MiB; a pooled body counts
   * its pool's whole buffer): held ones (not yet in a file), and ones written to their file,
   * kept for the uploader. Beyond it the oldest held are written out and bodies on file are
   * let go. Bodies being uploaded stay in memory until their batch is removed, as they must.
   */
  memoryBytes?: number;
  /**
   * Where bodies read back from files come from, and where every body the spool lets go of
   * goes back to: once it is on file and not kept in memory, or when its batch is removed
   * (its upload done). The batch writer takes its bodies from the same pool.
   */
  bodies?: BodyPool;
}

export class Spool {
  private readonly sizes = new Map<number, number>();
  private total = 0;
  /** The last file write started: files are written (renamed) one at a time, in the order asked. */
  private lastWrite: Promise<unknown> = Promise.resolve();
  /**
   * Batches this process encoded and spooled, not yet uploaded: read() hands them out
   * without reading the file back and checking it again (they never left memory).
   */
  private readonly inMemory = new Map<number, Buffer>();
  /** Added without durable, in memory only: no file yet (none may ever be needed). */
  private readonly held = new Set<number>();
  /**
   * Called once per batch added, when it is safe from a crash of this process: written to its
   * file (renamed; the page cache keeps it), or removed (the journal holds it). The agent's
   * capture clears dirty marks only for batches past this point.
   */
  onSecured: ((seq: number) => void) | undefined;
  /** Batch files this process wrote. */
  filesWritten = 0;
  /** Bodies read() handed to the uploader from memory: kept in memory until their batch is removed. */
  private readonly handedOut = new Set<number>();
  /** File writes of held batches, started and not yet done. */
  private readonly writes = new Map<number, Promise<void>>();
  /** Bodies read back from files for the uploader, given back when their batch is removed. */
  private readonly lent = new Map<number, Buffer>();
  /** Spooled (renamed) batches whose data may not be on disk yet: added with durable false. */
  private readonly unsynced = new Set<number>();
  /** A rename since the directory was last synced. */
  private dirUnsynced = false;
  /** The syncThrough running, if any: the next one waits for it, then syncs what is left. */
  private syncing: Promise<void> = Promise.resolve();
  /**
   * Reads a disk image's bytes (the agent's images), for the batches they can give back;
   * undefined: none are (every held batch over the budget is written to its file).
   */
  readImage: ((disk: number, offset: number, into: Buffer) => Promise<void>) | undefined;
  /** The image ranges of batches the images can give back, from their cut until a write reaches one (see beforeImageWrite). */
  private readonly images = new ImageRanges();
  /** Held batches whose bodies were let go: the images give them back (see restore). */
  private readonly backed = new Map<number, RebuildPlan>();
  private readonly restoring = new Map<number, Promise<Buffer>>();

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
   * Stores a batch; the spool owns `body` from here on (see SpoolOptions.bodies).
   *
   * durable (default): written to its file and synced, with every batch before it (as
   * syncThrough(seq)): when this resolves, the batch and all before it survive a host crash.
   * durable false: held in memory, for a batch no FLUSH waits for; resolves at once. The
   * uploader PUTs it from memory, and if that happens first it is never written. It reaches
   * its file (renamed, not synced) when held bodies outgrow the memory budget, and is synced
   * by syncThrough before a FLUSH that needs it is answered. A crash before either loses it:
   * the dirty marks of its writes are still set then (onSecured has not fired), and the
   * start-up fills its seq and resyncs them (agent.ts, docs/design.md "Agent").
   */
  add(seq: number, body: Buffer, opts: { durable?: boolean } = {}): Promise<void> {
    this.track(seq, body.length);
    const earlier = this.inMemory.get(seq); // added again (start-up repairs): the new body wins
    if (earlier && earlier !== body) this.bodies?.give(earlier);
    this.inMemory.set(seq, body);
    this.held.add(seq);
    // A durable add writes it now (and its write keeps the budget). Otherwise, over the memory
    // budget, the add waits for the writes that bring it back (backpressure on the cuts).
    return opts.durable ?? true ? this.syncThrough(seq) : this.relieve();
  }

  /**
   * Makes every spooled batch up to `seq` durable: the held ones are written to their files
   * first (in seq order), then the files not synced yet (their data) and the directory (their
   * renames) are synced. Cheap when there is nothing to do: no system call at all.
   */
  syncThrough(seq: number): Promise<void> {
    const written = [...this.held].filter((s) => s <= seq).sort((a, b) => a - b).map((s) => this.writeOut(s));
    const run = Promise.all([...written, this.syncing]).then(async () => {
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

  /** Spooled batches not durable yet (added with durable false): held, or on file and not synced. */
  get unsyncedCount(): number {
    return this.unsynced.size + this.held.size;
  }

  /** Batches held in memory only, with no file (image-backed ones included). */
  get heldCount(): number {
    return this.held.size;
  }

  /** Held batches whose bodies were let go because the disk images can give them back. */
  get imageBackedCount(): number {
    return this.backed.size;
  }

  /**
   * Batch `seq`, just cut, holds at these ranges exactly what the images hold (every write
   * reaches its image before the batch writer, and none in flight overlaps them): until a write
   * reaches one of them, its body may be let go and rebuilt from the images. Ignored without readImage.
   */
  trackImageRanges(seq: number, ranges: readonly ImageRange[]): void {
    if (this.readImage && ranges.length > 0) this.images.track(seq, ranges);
  }

  /**
   * A write is about to change [offset, offset + length) of disk `disk`'s image: the batches
   * relying on that range stop doing so, at once where their body is in memory; a body let go
   * is rebuilt first, and the promise returned resolves once it is (undefined: nothing to wait
   * for, and the write may go ahead now). Never rejects: a batch that cannot be rebuilt fails its upload.
   */
  beforeImageWrite(disk: number, offset: number, length: number): Promise<void> | undefined {
    const seqs = this.images.overlapping(disk, offset, length);
    if (seqs.length === 0) return undefined;
    const waits: Promise<unknown>[] = [];
    for (const seq of seqs) {
      if (this.backed.has(seq)) waits.push(this.restore(seq).catch(() => {}));
      else this.images.untrack(seq);
    }
    return waits.length > 0 ? Promise.all(waits).then(() => {}) : undefined;
  }

  /**
   * A spooled batch, for its upload: from memory if this process spooled it, else read from
   * its file and checked end to end (a torn or rotten file is refused). The body is the
   * spool's until the batch is removed.
   */
  async read(seq: number): Promise<Buffer> {
    const kept = this.inMemory.get(seq);
    if (kept) {
      this.handedOut.add(seq);
      return kept;
    }
    if (this.backed.has(seq)) {
      // Handed out from the moment it is back in memory: never written out or let go meanwhile.
      this.handedOut.add(seq);
      return this.restore(seq).catch((err: Error) => {
        this.handedOut.delete(seq);
        throw err;
      });
    }
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
    const wasHeld = this.held.delete(seq); // a write of it not started yet is skipped
    await this.writes.get(seq)?.catch(() => {}); // one under way finishes first, then its file goes
    await rm(this.path(seq), { force: true });
    this.unsynced.delete(seq); // in the journal now: nothing to sync
    this.total -= this.sizes.get(seq) ?? 0;
    this.sizes.delete(seq);
    const kept = this.inMemory.get(seq);
    const body = kept ?? this.lent.get(seq);
    this.backed.delete(seq);
    this.images.untrack(seq);
    this.inMemory.delete(seq);
    this.lent.delete(seq);
    this.handedOut.delete(seq);
    if (body) this.bodies?.give(body);
    if (wasHeld) this.onSecured?.(seq);
  }

  /**
   * Writes a held batch to its file (renamed, not synced) after the writes asked for before
   * it; once there, it is secured. Its body stays in memory (for the uploader) if the budget
   * allows. A batch removed meanwhile is not written.
   */
  private writeOut(seq: number): Promise<void> {
    const started = this.writes.get(seq);
    if (started) return started;
    if (!this.held.has(seq)) return Promise.resolve();
    const path = this.path(seq);
    const write = this.lastWrite.then(async () => {
      // One the images cannot give back stays held and unsecured (its regions stay marked, and a
      // restart resends them): its upload stops the uploads and says why; the guest's FLUSH goes on.
      if (this.backed.has(seq) && !(await this.restore(seq).then(() => true, () => false))) return;
      const body = this.inMemory.get(seq);
      if (!body || !this.held.has(seq)) return; // removed (uploaded) before its turn
      await writeWhole(`${path}.tmp`, body, false);
      await rename(`${path}.tmp`, path);
      this.filesWritten++;
      this.images.untrack(seq); // on file: the images may change
      this.dirUnsynced = true;
      this.unsynced.add(seq);
      // Removed while it was being written: remove() deletes the file and says it is secured.
      if (this.held.delete(seq)) this.onSecured?.(seq);
      void this.relieve();
    });
    const done = write.finally(() => this.writes.delete(seq));
    this.writes.set(seq, done);
    this.lastWrite = done.catch(() => {});
    return done;
  }

  /**
   * Within the memory budget again: bodies already on file are let go, the newest first (the
   * uploader reads those back from their files, last); then the oldest held batches not being
   * uploaded are written out (the spool on disk stays a prefix of the seqs where it can).
   */
  private relieve(): Promise<void> {
    // What the uploads hold is theirs; the budget is for what waits. A pooled body takes its pool's whole buffer.
    const footprint = (b: Buffer): number => this.bodies?.footprint(b) ?? b.length;
    let over = -this.memoryBytes;
    for (const [seq, b] of this.inMemory) if (!this.handedOut.has(seq)) over += footprint(b);
    if (over <= 0) return Promise.resolve();
    const writes: Promise<void>[] = [];
    const seqs = [...this.inMemory.keys()].sort((a, b) => a - b);
    // Being uploaded: it leaves with its removal, soon as a rule (and is never written out for it).
    const waiting = seqs.filter((seq) => !this.handedOut.has(seq));
    // First what costs nothing: bodies already on file, the newest first (uploaded last).
    for (const seq of [...waiting].reverse()) {
      if (over <= 0) break;
      if (this.held.has(seq)) continue;
      const body = this.inMemory.get(seq)!;
      this.inMemory.delete(seq);
      this.bodies?.give(body);
      over -= footprint(body);
    }
    // Then bodies the images can give back, the newest first (uploaded last): no disk write.
    for (const seq of [...waiting].reverse()) {
      if (over <= 0) break;
      if (!this.held.has(seq) || !this.images.has(seq) || this.writes.has(seq)) continue;
      const body = this.inMemory.get(seq)!;
      const plan = planOf(body, this.path(seq));
      if (!plan) {
        this.images.untrack(seq);
        continue;
      }
      this.backed.set(seq, plan);
      this.inMemory.delete(seq);
      this.bodies?.give(body);
      over -= footprint(body);
    }
    // Then held ones are written out, the oldest first, and let go of once written (writeOut calls this again).
    for (const seq of waiting) {
      if (over <= 0) break;
      if (!this.held.has(seq) || !this.inMemory.has(seq)) continue;
      writes.push(this.writeOut(seq));
      over -= footprint(this.inMemory.get(seq)!);
    }
    // A failed write is tried again by syncThrough, which reports it.
    return Promise.all(writes).then(
      () => {},
      () => {},
    );
  }

  /**
   * Brings an image-backed batch's body back into memory: laid out again from the images and
   * checked whole (the object CRC-32C covers every byte). From then on it no longer relies on
   * the images (it is an ordinary held batch). One restore per batch at a time, shared.
   */
  private restore(seq: number): Promise<Buffer> {
    const running = this.restoring.get(seq);
    if (running) return running;
    const plan = this.backed.get(seq);
    if (!plan || !this.readImage) return Promise.reject(new Error(`batch ${seq} is not image-backed`));
    const read = this.readImage;
    const where = `${this.path(seq)} (rebuilt from the disk images)`;
    const body = this.bodies ? this.bodies.take(plan.length) : Buffer.allocUnsafe(plan.length);
    const done = rebuildBody(plan, body, read)
      .then(() => checkWhole(body, seq, where))
      .then(
        () => {
          this.restoring.delete(seq);
          this.images.untrack(seq);
          // Removed meanwhile (cannot happen while an upload waits for it): nothing holds it.
          if (!this.backed.delete(seq)) this.bodies?.give(body);
          else this.inMemory.set(seq, body);
          return body;
        },
        (err: Error) => {
          this.restoring.delete(seq);
          this.images.untrack(seq);
          this.bodies?.give(body);
          throw err instanceof SpoolCorruptError ? err : new SpoolCorruptError(where, err.message);
        },
      );
    this.restoring.set(seq, done);
    return done;
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
  const fh = await open(path, 'w', 0o600); // the VM's data: owner-only (in a 0700 state directory)
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

/** The rebuild plan of a body the images can give back, if they can (a body with a compressed payload cannot). */
function planOf(body: Buffer, where: string): RebuildPlan | undefined {
  try {
    return rebuildPlan(body, where);
  } catch {
    return undefined; // not a body this agent encoded as expected: it is written to its file instead
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
