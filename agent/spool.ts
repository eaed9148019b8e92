// The agent's local spool: cut batches, durable on local disk before a FLUSH is
// acknowledged, kept until the journal holds them. One file per batch, named by seq:
// `{seq:020}.batch`, written to a temporary name, synced, renamed (docs/design.md, "Agent").

import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeBatch } from '../core/batch-format';
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
   * Stores a batch durably (data synced before the rename, the rename synced too). Batches
   * are written concurrently but appear in call order (the seq order): after a crash the
   * spool never holds a seq whose predecessor was lost, so no seq stream has a hole.
   * The spool owns `body` from here on (see SpoolOptions.bodies).
   */
  add(seq: number, body: Buffer): Promise<void> {
    const path = this.path(seq);
    const tmp = `${path}.tmp`;
    const written = writeSynced(tmp, body);
    const visible = Promise.all([written, this.lastAdd]).then(async () => {
      await rename(tmp, path);
      await syncDir(this.dir);
      this.track(seq, body.length);
      if (this.inMemoryBytes + body.length <= this.memoryBytes) {
        this.inMemory.set(seq, body);
        this.inMemoryBytes += body.length;
      } else {
        this.bodies?.give(body);
      }
    });
    this.lastAdd = visible.catch(() => {});
    return visible;
  }

  /**
   * A spooled batch, for its upload: from memory if this process spooled it, else read from
   * its file and checked end to end (a torn or rotten file is refused). The body is the
   * spool's until the batch is removed.
   */
  async read(seq: number): Promise<Buffer> {
    const kept = this.inMemory.get(seq);
    if (kept) return kept;
    const body = await this.readChecked(seq);
    const earlier = this.lent.get(seq); // read again: the upload that read it has given up
    if (earlier) this.bodies?.give(earlier);
    this.lent.set(seq, body);
    return body;
  }

  /** Checks a spooled batch as `read` does, holding on to nothing (at start, for every one). */
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

async function writeSynced(path: string, body: Buffer): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(body);
    await fh.datasync();
  } finally {
    await fh.close();
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
