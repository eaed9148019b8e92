import fc from 'fast-check';
import { crc32c, crc32cCombine, crc32cPortable, nativeCrc32c } from '../core/crc32c';

/** Bitwise reference: slow and obviously right. */
function reference(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

describe('crc32c', () => {
  test('check value and RFC 3720 vectors', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
  });

  test('matches the bitwise reference at any offset and length, and continues across pieces', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(7), fc.nat(300), (bytes, offset, split) => {
        const buf = Buffer.concat([Buffer.alloc(offset), Buffer.from(bytes)]).subarray(offset);
        const at = Math.min(split, buf.length);
        expect(crc32c(buf)).toBe(reference(buf));
        expect(crc32c(buf.subarray(at), crc32c(buf.subarray(0, at)))).toBe(reference(buf));
      }),
      { numRuns: 500 },
    );
  });

  test('the hardware CRC-32C loads on this host, and agrees with the table code at any offset, length and start value', () => {
    // .ci/run installs the prebuilt binary (npm ci); elsewhere the table code stands in.
    if (process.env.CI || process.platform === 'linux') expect(nativeCrc32c).toBeDefined();
    if (!nativeCrc32c) return;
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 5000 }), fc.nat(7), fc.nat(), (bytes, offset, start) => {
        const buf = Buffer.concat([Buffer.alloc(offset), Buffer.from(bytes)]).subarray(offset);
        expect(nativeCrc32c!(buf, start)).toBe(crc32cPortable(buf, start));
        expect(crc32c(buf, start)).toBe(crc32cPortable(buf, start));
      }),
      { numRuns: 500 },
    );
  });

  test('combine gives the checksum of the concatenation, whatever the lengths', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 5000 }), (a, b) => {
        expect(crc32cCombine(crc32c(a), crc32c(b), b.length)).toBe(reference(Buffer.concat([a, b])));
      }),
      { numRuns: 300 },
    );
    // A long length with many bits set.
    const a = Buffer.from('livesync');
    const zeros = Buffer.alloc(1_234_567);
    expect(crc32cCombine(crc32c(a), crc32c(zeros), zeros.length)).toBe(crc32c(Buffer.concat([a, zeros])));
  });
});
