// Writing a buffer at a position of a file until all of it is written: fs may write less
// than asked (a full disk, a signal), and a write that makes no progress is an error.

import type { FileHandle } from 'node:fs/promises';

/** Writes all of `data` at `position` of `fh`; `what` names the file in the error. */
export async function writeFully(fh: FileHandle, data: Buffer, position: number, what: string): Promise<void> {
  for (let at = 0; at < data.length; ) {
    const { bytesWritten } = await fh.write(data, at, data.length - at, position + at);
    if (bytesWritten === 0) throw new Error(`no progress writing ${what} at byte ${position + at}`);
    at += bytesWritten;
  }
}
