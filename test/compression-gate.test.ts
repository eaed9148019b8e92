// The compression gate: zstd is skipped for a while on data that has not been compressing,
// and an encoded batch says per extent what was done, so decoding never depends on it.

import { randomBytes } from 'node:crypto';
import { EXTENT_FLAGS, decodeBatch, decodeExtent, encodeBatchAsync, MIN_COMPRESS_BYTES } from '../core/batch-format';
import { CompressionGate } from '../core/compression-gate';

describe('CompressionGate', () => {
  test.each([
    { what: 'misses below the limit keep trying', sizes: [[100, 100], [100, 95]], tries: [true, true, true] },
    { what: 'three misses in a row skip the next two, then it tries again', sizes: [[100, 100], [100, 101], [100, 91]], tries: [false, false, true] },
    { what: 'a worthwhile saving resets the streak', sizes: [[100, 100], [100, 100], [100, 50], [100, 100], [100, 100]], tries: [true, true, true] },
  ])('$what', ({ sizes, tries }) => {
    const gate = new CompressionGate(3, 2);
    for (const [raw, packed] of sizes) {
      expect(gate.shouldTry()).toBe(true);
      gate.record(raw, packed);
    }
    expect(tries.map(() => gate.shouldTry())).toEqual(tries);
  });
});

test('a probe after a skip that misses again skips at once, each time twice as long up to the cap; a saving starts over', () => {
  const gate = new CompressionGate(2, 3, 10);
  /** Feeds misses: what the gate did, 'try' or 'skip N', until `n` skips. */
  const run = (n: number): string[] => {
    const out: string[] = [];
    for (let skips = 0; skips < n; ) {
      let skipped = 0;
      while (!gate.shouldTry()) skipped++;
      if (skipped) out.push(`skip ${skipped}`), skips++;
      out.push('try');
      gate.record(100, 100);
    }
    return out;
  };
  expect(run(5)).toEqual(['try', 'try', 'skip 3', 'try', 'skip 6', 'try', 'skip 10', 'try', 'skip 10', 'try', 'skip 10', 'try']);
  while (!gate.shouldTry()); // to the end of the skip the last miss began
  gate.record(100, 50); // the probe compressed: back to the start
  expect(run(2)).toEqual(['try', 'try', 'skip 3', 'try', 'skip 6', 'try']);
});

test('a batch encoded through the gate stores extents raw while it skips, compresses again after, and decodes exactly', async () => {
  const n = MIN_COMPRESS_BYTES;
  const noise = (i: number) => ({ disk: 0, blockIndex: i * 16, data: randomBytes(n) });
  const text = (i: number) => ({ disk: 0, blockIndex: i * 16, data: Buffer.alloc(n, i) });
  const header = { pairId: 'p1', seq: 1, prevSeq: 0, firstWriteMs: 1, cutMs: 2, flags: 0, disks: ['disk0'] };
  const gate = new CompressionGate(2, 3);
  // Two incompressible extents, then five compressible ones: three skipped, then two compressed.
  const extents = [noise(0), noise(1), text(2), text(3), text(4), text(5), text(6)];
  const body = await encodeBatchAsync(header, extents, { concurrency: 1, gate });
  const b = decodeBatch(body, 'gated');
  expect(b.extents.map((e) => (e.flags & EXTENT_FLAGS.ZSTD ? 'zstd' : 'raw'))).toEqual(['raw', 'raw', 'raw', 'raw', 'raw', 'zstd', 'zstd']);
  b.extents.forEach((e, i) => expect(decodeExtent(e, body.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), 'gated').equals(extents[i].data)).toBe(true));
});
