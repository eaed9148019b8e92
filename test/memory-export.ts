// An NBD export held in memory, for tests of the NBD server with real clients: what the
// clients wrote is in `bytes`.

import type { BlockExport } from '../agent/nbd-server';

export function memoryExport(name: string, size: number): BlockExport & { bytes: Buffer } {
  const bytes = Buffer.alloc(size);
  return {
    name,
    size,
    bytes,
    read: async (offset, length) => Buffer.from(bytes.subarray(offset, offset + length)),
    write: async (offset, data) => void data.copy(bytes, offset),
    zero: async (offset, length) => void bytes.fill(0, offset, offset + length),
    flush: async () => {},
    allocation: async (_offset, length) => [{ length, state: 0 }],
  };
}
