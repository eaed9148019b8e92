import fc from 'fast-check';
import { BATCH_FLAGS, BLOCK_SIZE, decodeBatch, decodeExtent, encodeBatch, MAX_BATCH_DATA_BYTES, type BatchHeader, type ExtentInput } from '../core/batch-format';
import { BatchError } from '../core/errors';
import { crc32c } from '../core/crc32c';

const header = (over: Partial<BatchHeader> = {}): BatchHeader => ({
  pairId: 'pair-a', seq: 7, prevSeq: 6, firstWriteMs: 1_700_000_000_000, cutMs: 1_700_000_000_500, flags: 0, disks: ['disk0', 'disk1'], ...over,
});

/** Random non-overlapping extents: data (compressible or not) and zero runs. */
const extentsArb = fc
  .array(
    fc.record({
      disk: fc.integer({ min: 0, max: 1 }),
      gap: fc.integer({ min: 0, max: 40 }),
      blocks: fc.integer({ min: 1, max: 300 }),
      kind: fc.constantFrom('random', 'pattern', 'zero'),
      seed: fc.integer({ min: 0, max: 255 }),
    }),
    { maxLength: 12 },
  )
  .map((specs) => {
    const next = [0, 0];
    return specs.map((s): ExtentInput => {
      const blockIndex = next[s.disk] + s.gap;
      next[s.disk] = blockIndex + s.blocks;
      if (s.kind === 'zero') return { disk: s.disk, blockIndex, zeroBlocks: s.blocks };
      const data = Buffer.alloc(s.blocks * BLOCK_SIZE, s.seed);
      if (s.kind === 'random') for (let i = 0; i < data.length; i += 7) data[i] = (i * 31 + s.seed) & 0xff;
      return { disk: s.disk, blockIndex, data };
    });
  });

/** Expands extents into a map of block -> content, for comparison. */
function blocksOf(extents: { disk: number; blockIndex: number; blocks: Buffer }[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of extents) {
    for (let i = 0; i < e.blocks.length / BLOCK_SIZE; i++) m.set(`${e.disk}:${e.blockIndex + i}`, e.blocks.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE).toString('base64'));
  }
  return m;
}

describe('batch format', () => {
  test('round-trips random workloads exactly', () => {
    fc.assert(
      fc.property(extentsArb, fc.boolean(), (extents, app) => {
        const h = header(app ? { flags: BATCH_FLAGS.APP_CONSISTENT, appTag: 'app=postgres' } : {});
        const buf = encodeBatch(h, extents);
        const d = decodeBatch(buf, 'k');
        expect(d.header).toEqual({ ...h, appTag: app ? 'app=postgres' : undefined });
        const got = d.extents.map((e) => ({ disk: e.disk, blockIndex: e.blockIndex, blocks: decodeExtent(e, buf.subarray(e.payloadOffset, e.payloadOffset + e.payloadLength), 'k') }));
        const want = extents.map((e) => ({ disk: e.disk, blockIndex: e.blockIndex, blocks: e.data ?? Buffer.alloc(e.zeroBlocks! * BLOCK_SIZE) }));
        expect(blocksOf(got)).toEqual(blocksOf(want));
        expect(d.dataBytes).toBe(want.reduce((n, e) => n + e.blocks.length, 0));
      }),
      { numRuns: 150 },
    );
  });

  test('every truncation is a typed TRUNCATED/MALFORMED/CHECKSUM error naming the batch', () => {
    fc.assert(
      fc.property(extentsArb, fc.nat(), (extents, cut) => {
        const buf = encodeBatch(header(), extents);
        const len = cut % buf.length;
        const err = catchError(() => decodeBatch(buf.subarray(0, len), 'pairs/pair-a/journal/x'));
        expect(err).toBeInstanceOf(BatchError);
        expect((err as BatchError).where).toBe('pairs/pair-a/journal/x');
      }),
      { numRuns: 300 },
    );
  });

  test('every single bit flip is detected, never decoded into wrong data', () => {
    fc.assert(
      fc.property(extentsArb, fc.nat(), fc.integer({ min: 0, max: 7 }), (extents, at, bit) => {
        const buf = Buffer.from(encodeBatch(header(), extents));
        buf[at % buf.length] ^= 1 << bit;
        const err = catchError(() => decodeBatch(buf, 'b'));
        expect(err).toBeInstanceOf(BatchError);
        expect(['CHECKSUM_MISMATCH', 'TRUNCATED']).toContain((err as BatchError).code);
      }),
      { numRuns: 500 },
    );
  });

  test('appended garbage and foreign objects are refused', () => {
    const buf = encodeBatch(header(), [{ disk: 0, blockIndex: 3, data: Buffer.alloc(BLOCK_SIZE, 1) }]);
    expect(catchError(() => decodeBatch(Buffer.concat([buf, Buffer.from('xx')]), 'b'))).toMatchObject({ code: 'TRUNCATED' });
    expect(catchError(() => decodeBatch(Buffer.alloc(4096, 0x41), 'b'))).toMatchObject({ code: 'TRUNCATED' });
    expect(catchError(() => decodeBatch(Buffer.alloc(0), 'b'))).toMatchObject({ code: 'TRUNCATED', message: expect.stringContaining('batch b') });
  });

  test('a small object whose extents claim more than MAX_BATCH_DATA_BYTES of data is refused before any is decompressed', () => {
    // 1 MiB of one byte compresses to a few dozen bytes: 129 such extents would be 129 MiB to decompress.
    const mib = Buffer.alloc(256 * BLOCK_SIZE, 7);
    const extents = (n: number): ExtentInput[] => Array.from({ length: n }, (_, i) => ({ disk: 0, blockIndex: i * 256, data: mib }));
    const over = encodeBatch(header(), extents(MAX_BATCH_DATA_BYTES / mib.length + 1));
    expect(over.length).toBeLessThan(64 * 1024);
    expect(catchError(() => decodeBatch(over, 'b'))).toMatchObject({ code: 'MALFORMED', reason: expect.stringContaining(`over the limit of ${MAX_BATCH_DATA_BYTES}`) });
    expect(decodeBatch(encodeBatch(header(), extents(MAX_BATCH_DATA_BYTES / mib.length)), 'b').dataBytes).toBe(MAX_BATCH_DATA_BYTES);
  });

  test('a 64-bit field beyond 2^53 is refused as malformed, one just below decodes', () => {
    const buf = Buffer.from(encodeBatch(header(), []));
    // prevSeq (header bytes 16–23): its high half at 2^21 is 2^53, past a JS-safe integer.
    buf.writeUInt32LE(2 ** 21, 20);
    resign(buf);
    expect(catchError(() => decodeBatch(buf, 'b'))).toMatchObject({ code: 'MALFORMED', reason: expect.stringContaining('64-bit field at byte 16') });
    expect(decodeBatch(Buffer.from(encodeBatch(header({ prevSeq: Number.MAX_SAFE_INTEGER }), [])), 'b').header.prevSeq).toBe(Number.MAX_SAFE_INTEGER);
    expect(() => encodeBatch(header({ prevSeq: 2 ** 53 }), [])).toThrow(RangeError);
  });

  test('reserved header bytes and duplicate disk names are refused', () => {
    const buf = Buffer.from(encodeBatch(header(), []));
    buf[52] = 0xff;
    resign(buf);
    expect(catchError(() => decodeBatch(buf, 'b'))).toMatchObject({ code: 'MALFORMED', reason: expect.stringContaining('reserved') });
    expect(() => encodeBatch(header({ disks: ['d0', 'd0'] }), [])).toThrow(/names a disk twice/);
  });

  test('the encoder refuses overlapping extents and a tag without the flag', () => {
    expect(() => encodeBatch(header(), [{ disk: 0, blockIndex: 0, zeroBlocks: 4 }, { disk: 0, blockIndex: 3, zeroBlocks: 1 }])).toThrow(/overlap/);
    expect(() => encodeBatch(header({ appTag: 'x' }), [])).toThrow(/APP_CONSISTENT/);
  });
});

/** Recomputes header and object checksums after a deliberate edit (a forged batch). */
function resign(buf: Buffer): void {
  const headerLen = buf.readUInt32LE(40);
  buf.writeUInt32LE(0, 60);
  buf.writeUInt32LE(crc32c(buf.subarray(0, headerLen)), 60);
  buf.writeUInt32LE(crc32c(buf.subarray(0, buf.length - 8)), buf.length - 8);
}

function catchError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error, got a result');
}
