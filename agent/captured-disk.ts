// A disk image served by the agent: every write passes through to the local image and is
// captured for the pair (agent/pair-capture.ts). Requests run concurrently; overlapping
// ones keep their arrival order (range lock, whole 4 KiB blocks). FLUSH and FUA return once
// the image is synced and the captured writes are in the spool.

import { execFile } from 'node:child_process';
import { writeSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import { BLOCK_SIZE } from '../core/batch-format';
import type { BlockExport, Extent } from './nbd-server';
import { STATE_HOLE, STATE_ZERO } from './nbd-protocol';
import { readRange, type PairCapture } from './pair-capture';

/** Zeroing at least this much punches a hole instead of writing zeros. */
const PUNCH_BYTES = 1024 * 1024;
/** Granularity and reach of one base:allocation answer. */
const STATUS_CHUNK = 64 * 1024;
const STATUS_MAX = 8 * 1024 * 1024;

export class CapturedDisk implements BlockExport {
  constructor(
    readonly name: string,
    readonly size: number,
    /** Position of the disk in the pair. */
    private readonly index: number,
    private readonly path: string,
    private readonly fh: FileHandle,
    private readonly capture: PairCapture,
  ) {}

  async read(offset: number, length: number): Promise<Buffer> {
    const release = await this.lock(offset, length, true);
    try {
      return await readRange(this.fh, offset, length);
    } finally {
      release();
    }
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.mutate(
      offset,
      data.length,
      () => writeAll(this.fh, data, offset),
      (w) => w.write(this.name, offset, data),
    );
    if (fua) await this.flush();
  }

  async zero(offset: number, length: number, fua: boolean): Promise<void> {
    await this.mutate(
      offset,
      length,
      async () => {
        // Node has no fallocate(2); util-linux's fallocate punches the hole (keeps the size).
        if (length >= PUNCH_BYTES) await promisify(execFile)('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(length), this.path]);
        else await writeAll(this.fh, Buffer.alloc(length), offset);
      },
      (w) => w.zero(this.name, offset, length),
    );
    if (fua) await this.flush();
  }

  async flush(): Promise<void> {
    await this.settle();
    await this.capture.flush();
  }

  /** Every mutation that arrived before this call is in the image (synced) and captured. */
  async settle(): Promise<void> {
    await this.capture.locks[this.index].drain();
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

  private async mutate(offset: number, length: number, toImage: () => Promise<void>, toWriter: Parameters<PairCapture['mutate']>[4]): Promise<void> {
    const release = await this.lock(offset, length, false);
    try {
      await this.capture.mutate(this.index, offset, length, toImage, toWriter);
    } finally {
      release();
    }
  }

  /** Queues the whole blocks of the range now, in arrival order (this call is synchronous up to here). */
  private lock(offset: number, length: number, shared: boolean): Promise<() => void> {
    const start = Math.floor(offset / BLOCK_SIZE) * BLOCK_SIZE;
    const end = Math.ceil((offset + Math.max(length, 1)) / BLOCK_SIZE) * BLOCK_SIZE;
    return this.capture.locks[this.index].acquire(start, end, shared);
  }
}

/**
 * A synchronous pwrite: into the page cache it takes microseconds, less than handing it to
 * the libuv pool and waking the loop again (which, on a busy host, also costs a context
 * switch per write). The image is synced before any FLUSH reply, as before.
 */
async function writeAll(fh: FileHandle, data: Buffer, offset: number): Promise<void> {
  for (let at = 0; at < data.length; ) at += writeSync(fh.fd, data, at, data.length - at, offset + at);
}
