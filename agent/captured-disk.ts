// A disk image served by the agent: every write passes through to the local image and is
// captured into the pair's batch writer. FLUSH (and FUA) return only once the captured
// writes are stored in the journal, so an acknowledged flush survives an agent crash.

import { execFile } from 'node:child_process';
import type { FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { BatchWriter } from '../source/batch-writer';
import type { BlockExport, Extent } from './nbd-server';
import { STATE_HOLE, STATE_ZERO } from './nbd-protocol';

/** Zeroing at least this much punches a hole instead of writing zeros. */
const PUNCH_BYTES = 1024 * 1024;
/** Granularity and reach of one base:allocation answer. */
const STATUS_CHUNK = 64 * 1024;
const STATUS_MAX = 8 * 1024 * 1024;

export class CapturedDisk implements BlockExport {
  /** Mutations run one at a time, so the image and the capture see the same order. */
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    readonly name: string,
    readonly size: number,
    private readonly path: string,
    private readonly fh: FileHandle,
    private readonly writer: BatchWriter,
  ) {}

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    let at = 0;
    while (at < length) {
      const { bytesRead } = await this.fh.read(buf, at, length - at, offset + at);
      if (bytesRead === 0) break; // past the end of a sparse file: zeros
      at += bytesRead;
    }
    return buf;
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.mutate(async () => {
      await writeAll(this.fh, data, offset);
      await this.writer.write(this.name, offset, data);
    }, fua);
  }

  zero(offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutate(async () => {
      if (length >= PUNCH_BYTES) {
        // Node has no fallocate(2); util-linux's fallocate punches the hole (keeps the size).
        await promisify(execFile)('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(length), this.path]);
      } else {
        await writeAll(this.fh, Buffer.alloc(length), offset);
      }
      await this.writer.zero(this.name, offset, length);
    }, fua);
  }

  async flush(): Promise<void> {
    await this.settle();
    await this.writer.flush();
  }

  /** Every mutation accepted so far is in the image (synced) and in the writer. */
  async settle(): Promise<void> {
    await this.tail;
    await this.fh.sync();
  }

  async allocation(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = offset + Math.min(length, STATUS_MAX);
    for (let at = offset; at < end; ) {
      const n = Math.min(STATUS_CHUNK - (at % STATUS_CHUNK), end - at);
      const zero = (await this.read(at, n)).every((b) => b === 0);
      const state = zero ? STATE_HOLE | STATE_ZERO : 0;
      const last = out[out.length - 1];
      if (last && last.state === state) last.length += n;
      else out.push({ length: n, state });
      at += n;
    }
    return out;
  }

  private mutate(op: () => Promise<void>, fua: boolean): Promise<void> {
    const run = this.tail.then(op);
    this.tail = run.catch(() => {});
    return fua ? run.then(() => this.flush()) : run;
  }
}

async function writeAll(fh: FileHandle, data: Buffer, offset: number): Promise<void> {
  for (let at = 0; at < data.length; ) {
    const { bytesWritten } = await fh.write(data, at, data.length - at, offset + at);
    at += bytesWritten;
  }
}
