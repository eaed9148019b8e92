// CRC-32C (Castagnoli), the checksum S3 offers as x-amz-checksum-crc32c.
// The CPU's CRC-32C instruction through @node-rs/crc32 (a prebuilt N-API binary: ~4.6 GB/s
// here) where that loads, as on the agent's host. Otherwise, and for short inputs, slicing-
// by-16 in plain TypeScript (~1.4 GB/s): the Lambda bundles leave the binary out and use it.
// Both give the same results (test/crc32c.test.ts checks them against each other).

type Crc32cFn = (buf: Uint8Array, crc?: number) => number;

/** The hardware CRC-32C, or undefined where its binary does not load. */
export const nativeCrc32c: Crc32cFn | undefined = (() => {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const f = (require('@node-rs/crc32') as { crc32c: Crc32cFn }).crc32c;
    return f(Buffer.from('123456789')) === 0xe3069283 ? f : undefined;
  } catch {
    return undefined;
  }
})();

/** Below this many bytes the call into the binary costs more than the table code. */
const NATIVE_MIN_BYTES = 256;

const POLY = 0x82f63b78;
/** 16 tables of 256 entries, flattened: T[k * 256 + n]. Exported for the decoding workers' copy of the table code (replica/chunk-verifier.ts). */
export const CRC32C_TABLES: Uint32Array = (() => {
  const t = new Uint32Array(16 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    for (let k = 1; k < 16; k++) t[k * 256 + n] = (t[(k - 1) * 256 + n] >>> 8) ^ t[t[(k - 1) * 256 + n] & 0xff];
  }
  return t;
})();

/** CRC-32C of `buf`, continuing from `crc` (pass a previous result to checksum in pieces). */
export function crc32c(buf: Uint8Array, crc = 0): number {
  return nativeCrc32c && buf.length >= NATIVE_MIN_BYTES ? nativeCrc32c(buf, crc) : crc32cPortable(buf, crc);
}

/** The table code, in plain TypeScript. */
export function crc32cPortable(buf: Uint8Array, crc = 0): number {
  const T = CRC32C_TABLES;
  let c = ~crc >>> 0;
  let i = 0;
  const len = buf.length;
  // Byte by byte up to 4-byte alignment, so the bulk can be read as little-endian words.
  for (; i < len && ((buf.byteOffset + i) & 3) !== 0; i++) c = T[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  const blocks = (len - i) >>> 4;
  if (blocks > 0) {
    const w = new Uint32Array(buf.buffer, buf.byteOffset + i, blocks * 4);
    for (let j = 0; j < w.length; j += 4) {
      const a = w[j] ^ c;
      const b = w[j + 1];
      const d = w[j + 2];
      const e = w[j + 3];
      c =
        T[3840 + (a & 0xff)] ^ T[3584 + ((a >>> 8) & 0xff)] ^ T[3328 + ((a >>> 16) & 0xff)] ^ T[3072 + (a >>> 24)] ^
        T[2816 + (b & 0xff)] ^ T[2560 + ((b >>> 8) & 0xff)] ^ T[2304 + ((b >>> 16) & 0xff)] ^ T[2048 + (b >>> 24)] ^
        T[1792 + (d & 0xff)] ^ T[1536 + ((d >>> 8) & 0xff)] ^ T[1280 + ((d >>> 16) & 0xff)] ^ T[1024 + (d >>> 24)] ^
        T[768 + (e & 0xff)] ^ T[512 + ((e >>> 8) & 0xff)] ^ T[256 + ((e >>> 16) & 0xff)] ^ T[e >>> 24];
    }
    i += blocks * 16;
  }
  for (; i < len; i++) c = T[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

// Combining: the CRC of A‖B from crc(A), crc(B) and |B|, without reading A or B again
// (zlib's crc32_combine, over the Castagnoli polynomial). Polynomials are reflected: bit 31
// is x^0.

/** a(x)·b(x) mod P. */
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** X2N[k] = x^(2^k) mod P. */
const X2N: Uint32Array = (() => {
  const t = new Uint32Array(32);
  let p = 0x40000000; // x^1
  for (let k = 0; k < 32; k++, p = multModP(p, p)) t[k] = p;
  return t;
})();

/** x^(8·n) mod P: the operator that shifts a CRC past n zero bytes, cached per length. */
const shiftCache = new Map<number, number>();
function shiftOperator(n: number): number {
  let p = shiftCache.get(n);
  if (p !== undefined) return p;
  p = 0x80000000; // x^0
  for (let k = 3, m = n; m > 0; m = Math.floor(m / 2), k++) if (m % 2) p = multModP(X2N[k & 31], p);
  if (shiftCache.size < 4096) shiftCache.set(n, p);
  return p;
}

/** CRC-32C of A‖B given crcA = crc32c(A), crcB = crc32c(B) and lengthB = |B|. */
export function crc32cCombine(crcA: number, crcB: number, lengthB: number): number {
  return (multModP(shiftOperator(lengthB), crcA) ^ crcB) >>> 0;
}
