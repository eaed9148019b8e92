// Deterministic random block workloads (seeded), shared by the demo, tests and benchmarks.

export type Rng = () => number;

/** mulberry32: small, fast, seedable. */
export function rng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const randInt = (r: Rng, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

export interface WriteOp {
  kind: 'write' | 'zero';
  offset: number;
  length: number;
  /** For writes: the bytes (half-compressible: a random head, a repeated tail). */
  data?: Buffer;
}

/**
 * One random operation on a disk of `size` bytes: mostly 4 KiB-aligned writes of 4 KiB
 * to `maxBytes`, some sector-aligned (512 B) partial-block writes, some zeroing (TRIM).
 */
export function randomOp(r: Rng, size: number, maxBytes = 256 * 1024): WriteOp {
  const roll = r();
  const unit = roll < 0.15 ? 512 : 4096;
  const length = unit * randInt(r, 1, Math.max(1, Math.floor(maxBytes / unit)));
  const offset = unit * randInt(r, 0, Math.floor((size - length) / unit));
  if (roll > 0.93) return { kind: 'zero', offset, length };
  const data = Buffer.allocUnsafe(length);
  const head = Math.floor(length / 2);
  for (let i = 0; i < head; i += 4) data.writeUInt32LE((r() * 4294967296) >>> 0, i);
  data.fill(randInt(r, 1, 255), head);
  return { kind: 'write', offset, length, data };
}
