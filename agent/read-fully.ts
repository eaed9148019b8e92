// Positional reads that fill a buffer: one read may return less than asked.

import type { FileHandle } from 'node:fs/promises';

/** Reads into `buf` from file position `position` until it is full or the file ends; returns the bytes read. */
export async function readFully(fh: FileHandle, buf: Buffer, position: number): Promise<number> {
  let at = 0;
  while (at < buf.length) {
    const { bytesRead } = await fh.read(buf, at, buf.length - at, position + at);
    if (bytesRead === 0) break;
    at += bytesRead;
  }
  return at;
}
