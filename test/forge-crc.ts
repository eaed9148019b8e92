// CRC-32C is a checksum, not a seal: anyone can give other bytes the same CRC. For tests that
// play a forger: set 4 bytes of a buffer so that its CRC-32C becomes a chosen value.

import { crc32c } from '../core/crc32c';

const POLY = 0x82f63b78;
const T = new Uint32Array(256);
/** TOP[t >>> 24] = the table index whose entry has that top byte (unique for CRC tables). */
const TOP = new Uint8Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[n] = c >>> 0;
  TOP[T[n] >>> 24] = n;
}

/** The register before one zero byte, from the one after it. */
const unstep = (s: number): number => {
  const i = TOP[s >>> 24];
  return (((s ^ T[i]) << 8) | i) >>> 0;
};

/**
 * Overwrites bytes [at, at + 4) of `buf` so that crc32c(buf) === target. (Feeding 4 bytes X
 * from register r is feeding 4 zero bytes from r ^ X, and that map is invertible.)
 */
export function forgeCrc32c(buf: Buffer, at: number, target: number): void {
  const before = ~crc32c(buf.subarray(0, at)) >>> 0;
  let need = ~target >>> 0;
  // Back over the bytes after the 4: they are fixed, so unwind them from the target.
  for (let i = buf.length - 1; i >= at + 4; i--) {
    const s = need;
    const idx = TOP[s >>> 24];
    const prev = (((s ^ T[idx]) << 8) | (idx ^ buf[i])) >>> 0;
    need = prev;
  }
  for (let k = 0; k < 4; k++) need = unstep(need);
  buf.writeUInt32LE((need ^ before) >>> 0, at);
}
