import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { BLOCK_SIZE, EXTENT_FLAGS } from '../core/batch-format';
import { crc32c } from '../core/crc32c';
import { CorruptHistoryError } from '../core/errors';
import { RANGE_BLOCKS } from '../core/manifest';
import { MAX_PIECE_PAYLOAD, decodePiece, encodePiece, pieceBlocksBitmap, pieceVersionData, type PieceInput, type PieceVersionInput } from '../core/run-format';

const WHERE = 'pairs/p/history/x/run-0000.run@4096';
const blocks = (n: number, fill: number): Buffer => Buffer.alloc(n * BLOCK_SIZE, fill);

const sample = (): PieceInput => ({
  disk: 'disk0',
  rangeIndex: 12,
  seqLo: 381,
  seqHi: 420,
  versions: [
    { seq: 400, blockIndex: 0, blockCount: 2, data: blocks(2, 7) },
    { seq: 381, blockIndex: 0, blockCount: 8, data: blocks(8, 1) }, // 32 KiB of one byte: compressed
    { seq: 420, blockIndex: 100, blockCount: 4, zero: true },
    { seq: 390, blockIndex: 1023, blockCount: 1, data: randomBytes(BLOCK_SIZE) },
  ],
});

/** Header length of a piece whose disk name is `n` bytes. */
const headerLen = (n: number): number => 40 + ((n + 7) & ~7);

/** Rewrites the header and whole-piece CRCs after a field was changed: the structure checks must catch it. */
function reseal(buf: Buffer): Buffer {
  const n = buf.readUInt16LE(6);
  buf.writeUInt32LE(crc32c(buf.subarray(40, 40 + n), crc32c(buf.subarray(0, 36))), 36);
  buf.writeUInt32LE(crc32c(buf.subarray(0, buf.length - 4)), buf.length - 4);
  return buf;
}

const entryAt = (i: number): number => headerLen(5) + i * 32;

describe('piece codec', () => {
  test('round trip: entries sorted by (block, seq), zstd only where it pays, data and zeros back', () => {
    const input = sample();
    const buf = encodePiece(input);
    const d = decodePiece(buf, WHERE);
    expect(d).toMatchObject({ disk: 'disk0', rangeIndex: 12, seqLo: 381, seqHi: 420, dataBytes: 11 * BLOCK_SIZE, crc32c: crc32c(buf.subarray(0, buf.length - 4)) });
    expect(d.entries.map((e) => [e.blockIndex, e.seq])).toEqual([[0, 381], [0, 400], [100, 420], [1023, 390]]);
    expect(d.entries.map((e) => e.flags)).toEqual([EXTENT_FLAGS.ZSTD, 0, EXTENT_FLAGS.ZERO, 0]);
    expect(d.entries[0].payloadLength).toBeLessThan(8 * BLOCK_SIZE);
    expect(pieceVersionData(buf, d.entries[0], WHERE)).toEqual(blocks(8, 1));
    expect(pieceVersionData(buf, d.entries[1], WHERE)).toEqual(blocks(2, 7));
    expect(pieceVersionData(buf, d.entries[2], WHERE)).toEqual(Buffer.alloc(4 * BLOCK_SIZE));
    expect(pieceVersionData(buf, d.entries[3], WHERE)).toEqual(input.versions[3].data);
    expect(buf.readUInt32LE(buf.length - 4)).toBe(crc32c(buf.subarray(0, buf.length - 4)));
  });

  test('random pieces round trip (fast-check)', () => {
    const versionArb = fc.record({
      seq: fc.integer({ min: 10, max: 30 }),
      blockIndex: fc.integer({ min: 0, max: RANGE_BLOCKS - 1 }),
      blockCount: fc.integer({ min: 1, max: 40 }),
      kind: fc.constantFrom('random', 'pattern', 'zero'),
      fill: fc.integer({ min: 0, max: 255 }),
    });
    fc.assert(
      fc.property(fc.array(versionArb, { maxLength: 12 }), (specs) => {
        // Keep the first of any versions of one seq that overlap: a seq writes a block once.
        const kept: PieceVersionInput[] = [];
        for (const s of specs) {
          const count = Math.min(s.blockCount, RANGE_BLOCKS - s.blockIndex);
          if (kept.some((k) => k.seq === s.seq && k.blockIndex < s.blockIndex + count && s.blockIndex < k.blockIndex + k.blockCount)) continue;
          if (s.kind === 'zero') kept.push({ seq: s.seq, blockIndex: s.blockIndex, blockCount: count, zero: true });
          else kept.push({ seq: s.seq, blockIndex: s.blockIndex, blockCount: count, data: s.kind === 'random' ? randomBytes(count * BLOCK_SIZE) : blocks(count, s.fill) });
        }
        const buf = encodePiece({ disk: 'vda', rangeIndex: 3, seqLo: 10, seqHi: 30, versions: kept });
        const d = decodePiece(buf, WHERE, crc32c(buf.subarray(0, buf.length - 4)));
        expect(decodePiece(buf, WHERE, d.crc32c, { rawByEntry: true })).toEqual(d);
        expect(d.entries).toHaveLength(kept.length);
        const want = [...kept].sort((a, b) => a.blockIndex - b.blockIndex || a.seq - b.seq);
        d.entries.forEach((e, i) => {
          expect([e.seq, e.blockIndex, e.blockCount]).toEqual([want[i].seq, want[i].blockIndex, want[i].blockCount]);
          expect(pieceVersionData(buf, e, WHERE).equals(want[i].data ?? Buffer.alloc(e.blockCount * BLOCK_SIZE))).toBe(true);
        });
        expect(d.dataBytes).toBe(kept.reduce((n, v) => n + (v.data?.length ?? 0), 0));
      }),
      { numRuns: 150 },
    );
  });

  test.each([
    ['header (seqLo)', 10],
    ['disk name', 41],
    ['entries (an entry blockIndex)', entryAt(1) + 8],
    ['payload (first byte)', entryAt(4)],
    ['whole-piece CRC', -1],
  ])('a flipped byte in the %s is caught, naming where', (_what, at) => {
    const buf = encodePiece(sample());
    const i = at < 0 ? buf.length + at : at;
    buf[i] ^= 0x10;
    expect(() => decodePiece(buf, WHERE)).toThrow(CorruptHistoryError);
    expect(() => decodePiece(buf, WHERE)).toThrow(WHERE);
  });

  test('rawByEntry: every byte of the header, the entries and the compressed payloads is still checked; a raw payload is left to its data CRC', () => {
    const clean = encodePiece(sample());
    const d = decodePiece(clean, WHERE);
    const raw = new Set<number>();
    for (const e of d.entries) if (e.payloadLength > 0 && !(e.flags & 2)) for (let b = e.payloadOffset; b < e.payloadOffset + e.payloadLength; b++) raw.add(b);
    expect(raw.size).toBeGreaterThan(0);
    expect(d.entries.some((e) => e.flags & 2)).toBe(true); // a compressed payload too
    for (let i = 0; i < clean.length; i += i < 2048 ? 1 : 97) {
      const buf = Buffer.from(clean);
      buf[i] ^= 0x04;
      if (!raw.has(i)) {
        expect(() => decodePiece(buf, WHERE, undefined, { rawByEntry: true })).toThrow(CorruptHistoryError);
        continue;
      }
      // Decodes; the damaged version's data does not match its CRC when it is used.
      const lazy = decodePiece(buf, WHERE, undefined, { rawByEntry: true });
      const hit = lazy.entries.find((e) => i >= e.payloadOffset && i < e.payloadOffset + e.payloadLength)!;
      expect(() => pieceVersionData(buf, hit, WHERE)).toThrow(/data checksum/);
    }
  });

  test('a payload changed under a resealed piece is caught by its data CRC, naming the entry', () => {
    const buf = encodePiece(sample());
    const d = decodePiece(buf, WHERE);
    const raw = d.entries[1]; // seq 400 at block 0: raw
    buf[raw.payloadOffset + 5] ^= 1;
    reseal(buf);
    const again = decodePiece(buf, WHERE);
    expect(() => pieceVersionData(buf, again.entries[1], WHERE)).toThrow(CorruptHistoryError);
    expect(() => pieceVersionData(buf, again.entries[1], WHERE)).toThrow(/entry \(seq 400, block 0\).*data checksum/);
    // A compressed payload that no longer decompresses is caught too.
    const z = d.entries[0];
    buf[z.payloadOffset + 2] ^= 0xff;
    reseal(buf);
    expect(() => pieceVersionData(buf, decodePiece(buf, WHERE).entries[0], WHERE)).toThrow(/entry \(seq 381, block 0\)/);
  });

  test('the manifest CRC must match when given', () => {
    const buf = encodePiece(sample());
    expect(() => decodePiece(buf, WHERE, (crc32c(buf.subarray(0, buf.length - 4)) ^ 1) >>> 0)).toThrow(/the manifest's/);
  });

  const malformed: [string, (b: Buffer) => void, RegExp][] = [
    ['bad magic', (b) => b.write('LSP2', 0), /magic/],
    ['version 2', (b) => b.writeUInt16LE(2, 4), /format version 2/],
    ['empty seq span', (b) => b.writeBigUInt64LE(500n, 8), /seq span/],
    ['seq above seqHi', (b) => b.writeBigUInt64LE(421n, entryAt(2)), /entry 2 \(seq 421, block 100\).*outside the piece's span/],
    ['seq below seqLo', (b) => { b.writeBigUInt64LE(380n, entryAt(0)); }, /entry 0 \(seq 380, block 0\).*outside/],
    ['block past the range', (b) => b.writeUInt32LE(1023, entryAt(2) + 8), /entry 2 .*not inside the range/],
    ['zero block count', (b) => b.writeUInt16LE(0, entryAt(2) + 12), /entry 2 .*not inside the range/],
    ['out of (block, seq) order', (b) => b.writeUInt32LE(50, entryAt(3) + 8), /entry 3 .*not after entry 2/],
    ['same (block, seq) twice', (b) => b.writeBigUInt64LE(381n, entryAt(1)), /entry 1 .*not after entry 0/],
    ['overlap within one seq', (b) => { b.writeBigUInt64LE(381n, entryAt(3)); b.writeUInt32LE(5, entryAt(3) + 8); }, /entry 3 .*not after|entry 3 .*overlaps/],
    ['unknown flag', (b) => b.writeUInt16LE(0x8, entryAt(1) + 14), /entry 1 .*unknown flags/],
    ['reserved not zero', (b) => b.writeUInt32LE(1, entryAt(1) + 28), /entry 1 .*reserved/],
    ['payload offset gap', (b) => b.writeUInt32LE(b.readUInt32LE(entryAt(1) + 16) + 1, entryAt(1) + 16), /entry 1 .*payload at/],
    ['payload past the end', (b) => b.writeUInt32LE(1 << 20, entryAt(3) + 20), /entry 3 .*(raw payload|past the piece's end)/],
    ['zero version with a CRC', (b) => b.writeUInt32LE(5, entryAt(2) + 24), /entry 2 .*zero version/],
    ['too many entries', (b) => b.writeUInt32LE(1000, 28), /entries run past/],
  ];
  test.each(malformed)('%s: CorruptHistoryError naming where and the entry', (_what, change, message) => {
    const buf = encodePiece(sample());
    change(buf);
    reseal(buf);
    expect(() => decodePiece(buf, WHERE)).toThrow(CorruptHistoryError);
    expect(() => decodePiece(buf, WHERE)).toThrow(message);
  });

  test('overlap within one seq is refused even when the order holds', () => {
    // Entries (0,381)x8 and (3,381) are in (block, seq) order but overlap in seq 381.
    const buf = encodePiece({ disk: 'disk0', rangeIndex: 0, seqLo: 1, seqHi: 9, versions: [
      { seq: 1, blockIndex: 0, blockCount: 8, data: blocks(8, 1) },
      { seq: 2, blockIndex: 3, blockCount: 1, data: blocks(1, 2) },
    ] });
    buf.writeBigUInt64LE(1n, entryAt(1));
    reseal(buf);
    expect(() => decodePiece(buf, WHERE)).toThrow(/entry 1 \(seq 1, block 3\).*overlaps/);
  });

  test('a truncated piece, or one read at the wrong offset, is refused', () => {
    const buf = encodePiece(sample());
    expect(() => decodePiece(buf.subarray(0, buf.length - 1), WHERE)).toThrow(/piece length/);
    expect(() => decodePiece(buf.subarray(8), WHERE)).toThrow(/magic/);
    expect(() => decodePiece(Buffer.alloc(10), WHERE)).toThrow(/shorter than an empty piece/);
  });

  test('the encoder refuses what the decoder would', () => {
    const base = sample();
    expect(() => encodePiece({ ...base, versions: [...base.versions, { seq: 400, blockIndex: 1, blockCount: 1, data: blocks(1, 0) }] })).toThrow(/overlaps/);
    expect(() => encodePiece({ ...base, versions: [{ seq: 500, blockIndex: 0, blockCount: 1, data: blocks(1, 0) }] })).toThrow(/outside the piece's span/);
    expect(() => encodePiece({ ...base, versions: [{ seq: 400, blockIndex: 1020, blockCount: 5, zero: true }] })).toThrow(/not inside the range/);
    expect(() => encodePiece({ ...base, versions: [{ seq: 400, blockIndex: 0, blockCount: 2, data: blocks(1, 0) }] })).toThrow(/bytes for 2 blocks/);
    expect(() => encodePiece({ ...base, disk: 'x'.repeat(64) })).toThrow(/disk name/);
    // Same blocks at different seqs are fine: that is what a piece holds.
    expect(() => encodePiece({ ...base, versions: [{ seq: 400, blockIndex: 0, blockCount: 2, zero: true }, { seq: 401, blockIndex: 0, blockCount: 2, zero: true }] })).not.toThrow();
  });

  test('a payload over MAX_PIECE_PAYLOAD is refused; exactly at it is not', () => {
    const versions = (extra: number): PieceVersionInput[] => {
      const vs: PieceVersionInput[] = [];
      const total = MAX_PIECE_PAYLOAD / BLOCK_SIZE + extra;
      for (let i = 0, seq = 1; i < total; seq++) {
        const n = Math.min(RANGE_BLOCKS, total - i);
        vs.push({ seq, blockIndex: 0, blockCount: n, data: randomBytes(n * BLOCK_SIZE) });
        i += n;
      }
      return vs;
    };
    expect(() => encodePiece({ disk: 'd', rangeIndex: 0, seqLo: 1, seqHi: 100, versions: versions(0) })).not.toThrow();
    expect(() => encodePiece({ disk: 'd', rangeIndex: 0, seqLo: 1, seqHi: 100, versions: versions(1) })).toThrow(/MAX_PIECE_PAYLOAD/);
  });

  test('blocks bitmap: bit i of byte i>>3 per covered block', () => {
    const bits = Buffer.from(pieceBlocksBitmap([{ blockIndex: 0, blockCount: 2 }, { blockIndex: 9, blockCount: 1 }, { blockIndex: 1023, blockCount: 1 }, { blockIndex: 1, blockCount: 1 }]), 'base64');
    expect(bits).toHaveLength(128);
    expect([bits[0], bits[1], bits[127]]).toEqual([0b11, 0b10, 0x80]);
    expect(bits.subarray(2, 127).every((b) => b === 0)).toBe(true);
    expect(pieceBlocksBitmap([])).toBe(Buffer.alloc(128).toString('base64'));
  });
});
