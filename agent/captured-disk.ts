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

  /** Why new writes are refused (a planned failover fenced the source), if they are. */
  private fenced: string | undefined;

  fence(reason: string | undefined): void {
    this.fenced = reason;
  }

  private refuseIfFenced(): void {
    if (this.fenced) throw new Error(`disk '${this.name}' refuses writes: ${this.fenced}`);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.refuseIfFenced();
    await this.mutate(
      offset,
      data.length,
      () => writeAll(this.fh, data, offset),
      (w) => w.write(this.name, offset, data),
    );
    if (fua) await this.flush();
  }

  /**
   * The write at once, when no request overlapping it is in flight and the capture needs no
   * wait (agent/pair-capture.ts mutateNow); false: nothing was done. It runs to completion
   * without yielding, so it needs no place in the range lock's queue.
   */
  writeNow(offset: number, data: Buffer): boolean {
    if (this.fenced) return false; // write() refuses it
    const [start, end] = blockSpan(offset, data.length);
    if (!this.capture.locks[this.index].isFree(start, end)) return false;
    return this.capture.mutateNow(
      this.index,
      offset,
      data.length,
      () => writeImage(this.fh, data, offset),
      (w) => w.writeNow(this.name, offset, data),
    );
  }

  async zero(offset: number, length: number, fua: boolean): Promise<void> {
    this.refuseIfFenced();
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
    const [start, end] = blockSpan(offset, length);
    return this.capture.locks[this.index].acquire(start, end, shared);
  }
}

/** The whole 4 KiB blocks a byte range touches, as a byte range. */
function blockSpan(offset: number, length: number): [number, number] {
  return [Math.floor(offset / BLOCK_SIZE) * BLOCK_SIZE, Math.ceil((offset + Math.max(length, 1)) / BLOCK_SIZE) * BLOCK_SIZE];
}

/**
 * A synchronous pwrite: into the page cache it takes microseconds, less than handing it to
 * the libuv pool and waking the loop again (which, on a busy host, also costs a context
 * switch per write). The image is synced before any FLUSH reply, as before.
 */
function writeImage(fh: FileHandle, data: Buffer, offset: number): void {
  for (let at = 0; at < data.length; ) at += writeSync(fh.fd, data, at, data.length - at, offset + at);
}

async function writeAll(fh: FileHandle, data: Buffer, offset: number): Promise<void> {
  writeImage(fh, data, offset);
}
