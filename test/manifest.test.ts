// The manifest codec and its checks (core/manifest.ts): a sound manifest round-trips; each
// broken field or rule is refused naming the object and what is wrong; the read bound (I1)
// is reported by checkManifest but does not make a manifest unreadable.

import { CorruptHistoryError } from '../core/errors';
import { baseChunkKey } from '../core/keys';
import { gunzipSync, gzipSync } from 'node:zlib';
import { crc32c } from '../core/crc32c';
import { BITMAP_BYTES, bitmapHas, checkManifest, decodeManifest, encodeManifest, encodeManifestV1, initialManifest, manifestPartKeys, MAX_PIECES_PER_SPAN, partGroup, type Manifest, type PieceEntry } from '../core/manifest';

const WHERE = 'pairs/demo/history/00000000000000000007-0123456789abcdef/manifest.json';
const PREFIX = 'pairs/demo/history/00000000000000000007-0123456789abcdef/';
const SHA = 'ab'.repeat(32);
const SHA2 = 'cd'.repeat(32);
const bitmap = (...blocks: number[]): string => {
  const b = Buffer.alloc(BITMAP_BYTES);
  for (const i of blocks) b[i >> 3] |= 1 << (i & 7);
  return b.toString('base64');
};
const piece = (seqLo: number, seqHi: number, offset = seqLo * 1000, key = `${PREFIX}run-0000.run`): PieceEntry => ({ key, offset, length: 500, crc32c: 7, seqLo, seqHi, blocks: bitmap(0, 5), dataBytes: 8192 });

/** A sound manifest: two ranges, a base image, a history image, pieces either side of it. */
function sample(): Manifest {
  return {
    format: 1,
    pairId: 'demo',
    version: 7,
    generation: 3,
    publishedMs: 1795521700000,
    frontierSeq: 420,
    base: { key: 'pairs/demo/base/seed-1.json', seq: 10 },
    retained: [401, 406, 411, 420],
    ranges: {
      'disk0:12': {
        images: [
          { seq: 10, key: baseChunkKey('demo', SHA), sha256: SHA, crc32c: 12345, length: 4194304 },
          { seq: 380, key: `${PREFIX}image-${SHA2}.chunk`, sha256: SHA2, crc32c: 1, length: 8192 },
        ],
        pieces: [piece(11, 200), piece(201, 380), piece(381, 420)],
      },
      'disk0:13': { images: [{ seq: 300, zero: true }], pieces: [piece(301, 410, 999_000)] },
    },
  };
}

type Edit = (m: Manifest) => void;
const json = (m: unknown): Buffer => Buffer.from(JSON.stringify(m));
const r12 = (m: Manifest) => m.ranges['disk0:12'];

describe('manifest codec', () => {
  test('a sound manifest round-trips and has no violations', () => {
    const m = sample();
    expect(checkManifest(m)).toEqual([]);
    expect(decodeManifest(encodeManifestV1(m), WHERE)).toEqual(m);
    // Version 0 (nothing compacted), with and without a base.
    for (const v0 of [initialManifest('demo'), initialManifest('demo', { key: 'pairs/demo/base/s.json', seq: 5 })]) {
      expect(checkManifest(v0)).toEqual([]);
      expect(decodeManifest(encodeManifestV1(v0), WHERE)).toEqual({ ...JSON.parse(JSON.stringify(v0)), format: 1 });
    }
  });

  // Each row breaks one thing; the error must name the object and say what.
  const refused: [string, Edit | unknown, string][] = [
    ['not JSON', '{"format":1,', 'not JSON'],
    ['a later format', (m: Manifest) => ((m as { format: number }).format = 3), 'format: 3, this build reads 1 and 2'],
    ['a bad pair id', (m: Manifest) => (m.pairId = 'Demo!'), 'pairId: "Demo!" is not a pair id'],
    ['a negative version', (m: Manifest) => (m.version = -1), 'version: -1 is not a non-negative integer'],
    ['a fractional frontier', (m: Manifest) => (m.frontierSeq = 4.5), 'frontierSeq: 4.5'],
    ['a string seq in retained', (m: Manifest) => ((m.retained as unknown[])[1] = '406'), 'retained[1]: "406"'],
    ['ranges not an object', (m: Manifest) => ((m as { ranges: unknown }).ranges = []), 'ranges: is not an object'],
    ['an image without a sha', (m: Manifest) => delete (r12(m).images[1] as { sha256?: string }).sha256, 'ranges["disk0:12"].images[1].sha256: is not a non-empty string'],
    ['an image of odd length', (m: Manifest) => ((r12(m).images[1] as { length: number }).length = 5000), 'images[1].length: 5000 is not a positive multiple of 4096'],
    ['a zero image with a key', (m: Manifest) => ((m.ranges['disk0:13'].images[0] as unknown as { key: string }).key = 'x'), 'images[0]: a zero image has no key'],
    ['a crc over 32 bits', (m: Manifest) => (r12(m).pieces[0].crc32c = 2 ** 32), 'pieces[0].crc32c: 4294967296 is not a 32-bit checksum'],
    ['a bitmap that is not base64', (m: Manifest) => (r12(m).pieces[0].blocks = '!!'), 'pieces[0].blocks: is not base64'],
    ['a piece of length 0', (m: Manifest) => (r12(m).pieces[0].length = 0), 'pieces[0].length: is 0'],
    // Rules (manifestFaults):
    ['images not ascending', (m: Manifest) => r12(m).images.reverse(), 'image 1 at seq 10 does not ascend from 380'],
    ['an image above the frontier', (m: Manifest) => (r12(m).images[1].seq = 421), 'image 1 at seq 421 is above the frontier 420'],
    ['pieces not ascending', (m: Manifest) => r12(m).pieces.reverse(), 'does not start above piece 0'],
    ['overlapping piece spans', (m: Manifest) => (r12(m).pieces[1].seqLo = 200), "does not start above piece 0's span [11, 200]"],
    ['a piece straddling an image', (m: Manifest) => (r12(m).pieces[1].seqHi = 381) && (r12(m).pieces[2].seqLo = 382), 'straddles the image at seq 380'],
    ['a piece starting at an image', (m: Manifest) => (m.ranges['disk0:13'].pieces[0].seqLo = 300), 'straddles the image at seq 300'],
    ['an empty span', (m: Manifest) => (r12(m).pieces[2].seqLo = 419) && (r12(m).pieces[2].seqHi = 400), 'empty span'],
    ['a piece above the frontier', (m: Manifest) => (r12(m).pieces[2].seqHi = 430), 'above the frontier 420'],
    ['a short bitmap', (m: Manifest) => (r12(m).pieces[0].blocks = Buffer.alloc(64).toString('base64')), 'blocks bitmap is 64 bytes, not 128'],
    ['a piece key of another pair', (m: Manifest) => (r12(m).pieces[0].key = 'pairs/other/history/00000000000000000007-0123456789abcdef/run-0000.run'), 'key is not a run-NNNN.run under pairs/demo/history/'],
    ['a piece key that is not a run', (m: Manifest) => (r12(m).pieces[0].key = `${PREFIX}image-${SHA}.chunk`), 'key is not a run-NNNN.run'],
    ['an image key of another pair', (m: Manifest) => ((r12(m).images[0] as { key: string }).key = baseChunkKey('other', SHA)), `is neither pairs/demo/base/chunks/${SHA}`],
    ['an image key not named by its sha', (m: Manifest) => ((r12(m).images[1] as { key: string }).key = `${PREFIX}image-${SHA}.chunk`), 'nor a history image-'],
    ['two pieces sharing bytes of a run', (m: Manifest) => (m.ranges['disk0:13'].pieces[0].offset = r12(m).pieces[0].offset + 499), 'overlaps the bytes of range disk0:12: piece 0'],
    ['a bad range id', (m: Manifest) => (m.ranges['disk0:x'] = { images: [], pieces: [] }), "range id 'disk0:x' is not {disk}:{index}"],
    ['a non-canonical range id', (m: Manifest) => (m.ranges['disk0:012'] = { images: [], pieces: [] }), "range id 'disk0:012'"],
    ['retained not ascending', (m: Manifest) => (m.retained = [401, 401, 420]), 'retained: 401 does not ascend from 401'],
    ['retained above the frontier', (m: Manifest) => (m.retained = [401, 425]), 'retained: 425 is above the frontier 420'],
    ['the cut not retained', (m: Manifest) => (m.retained = [401, 406]), 'retained does not end with the frontier 420'],
    ['a base of another pair', (m: Manifest) => (m.base = { key: 'pairs/x/base/s.json', seq: 10 }), 'base pairs/x/base/s.json is not under pairs/demo/base/'],
    ['a base above the frontier', (m: Manifest) => (m.base!.seq = 500), 'base seq 500 is above the frontier 420'],
  ];
  test.each(refused)('refuses %s', (_what, edit, message) => {
    let bytes: Buffer;
    if (typeof edit === 'function') {
      const m = sample();
      (edit as Edit)(m);
      bytes = json(m);
    } else {
      bytes = Buffer.from(edit as string);
    }
    let caught: unknown;
    try {
      decodeManifest(bytes, WHERE);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(CorruptHistoryError);
    expect((caught as CorruptHistoryError).where).toBe(WHERE);
    expect((caught as Error).message).toContain(message);
  });

  test('I1: more than MAX_PIECES_PER_SPAN pieces between two images is a violation, yet still reads', () => {
    const m = sample();
    // Below the history image (seq 380): 4 pieces between the base image (10) and it is the limit.
    r12(m).pieces = [piece(11, 100), piece(101, 200), piece(201, 300), piece(301, 380), piece(381, 420)];
    expect(checkManifest(m)).toEqual([]);
    r12(m).pieces = [piece(11, 100), piece(101, 200), piece(201, 300), piece(301, 350), piece(351, 380), piece(381, 420)];
    expect(checkManifest(m)).toEqual([`range disk0:12: 5 pieces above its image at seq 10, over I1's ${MAX_PIECES_PER_SPAN}`]);
    expect(decodeManifest(encodeManifestV1(m), WHERE)).toEqual(m);
    // Below a range's first image counts as a span too.
    m.ranges['disk0:14'] = { images: [], pieces: [piece(11, 20, 1), piece(21, 30, 2), piece(31, 40, 3), piece(41, 50, 4), piece(51, 60, 5)] };
    expect(checkManifest(m)).toContain(`range disk0:14: 5 pieces below its first image, over I1's ${MAX_PIECES_PER_SPAN}`);
  });

  describe('format 2: a head and per-group parts', () => {
    const PREFIX8 = 'pairs/demo/history/00000000000000000008-0123456789abcdef/';
    /** The sample as format 2 with a third range in another group (disk0:40 is group disk0:2). */
    const sample2 = (): Manifest => {
      const m = { ...sample(), format: 2 as const };
      m.ranges['disk0:40'] = { images: [], pieces: [piece(11, 420, 0, `${PREFIX}run-0001.run`)] };
      return m;
    };
    const all = (m: Manifest): Set<string> => new Set(Object.keys(m.ranges).map(partGroup));

    test('round-trips through a head and one gzip part per group of 16 ranges; the head names each part with its length and CRC-32C', () => {
      const m = sample2();
      const enc = encodeManifest(m, PREFIX, all(m));
      expect(enc.parts.map((p) => [p.group, p.key])).toEqual([['disk0:0', `${PREFIX}part-0000.json.gz`], ['disk0:2', `${PREFIX}part-0001.json.gz`]]);
      expect(manifestPartKeys(enc.head, WHERE)).toEqual(enc.parts);
      expect(JSON.parse(gunzipSync(enc.head).toString('utf8')).ranges).toBeUndefined();
      for (const p of enc.parts) expect([enc.bodies.get(p.key)!.length, crc32c(enc.bodies.get(p.key)!)]).toEqual([p.length, p.crc32c]);
      expect(decodeManifest(enc.head, WHERE, enc.bodies)).toEqual({ ...m, parts: enc.parts });
      // A format-1 object names no parts.
      expect(manifestPartKeys(encodeManifestV1(m), WHERE)).toEqual([]);
    });

    test('a group no planned range is in keeps its part object: only changed groups are written', () => {
      const m = sample2();
      const v7 = encodeManifest(m, PREFIX, all(m));
      const next: Manifest = { ...m, version: 8, ranges: { ...m.ranges, 'disk0:13': { images: [{ seq: 300, zero: true as const }], pieces: [] } } };
      const v8 = encodeManifest(next, PREFIX8, new Set(['disk0:0']), v7.parts);
      expect([...v8.bodies.keys()]).toEqual([`${PREFIX8}part-0000.json.gz`]);
      expect(v8.parts.map((p) => p.key)).toEqual([`${PREFIX8}part-0000.json.gz`, `${PREFIX}part-0001.json.gz`]);
      const bodies = new Map([...v7.bodies, ...v8.bodies]);
      expect(decodeManifest(v8.head, WHERE, bodies).ranges).toEqual(next.ranges);
      // A group left without ranges has no part.
      const emptied = { ...next, ranges: { 'disk0:40': next.ranges['disk0:40'] } };
      expect(encodeManifest(emptied, PREFIX8, new Set(['disk0:0']), v8.parts).parts.map((p) => p.group)).toEqual(['disk0:2']);
    });

    const refusedParts: [string, (enc: ReturnType<typeof encodeManifest>) => { head?: Buffer; bodies?: Map<string, Buffer> }, string, string][] = [
      ['a part not read', (e) => ({ bodies: new Map([...e.bodies].slice(1)) }), WHERE, 'part disk0:0 (pairs/demo/history/00000000000000000007-0123456789abcdef/part-0000.json.gz) was not read'],
      ['a part with a flipped byte', (e) => ({ bodies: new Map([...e.bodies].map(([k, b], i) => [k, i === 1 ? Buffer.from(b).fill(1, 20, 21) : b])) }), `${PREFIX}part-0001.json.gz`, 'the head says'],
      ['a part holding a range of another group', (e) => {
        const body = gzipSync(JSON.stringify({ format: 2, pairId: 'demo', group: 'disk0:2', ranges: { 'disk0:12': { images: [], pieces: [] } } }));
        const head = JSON.parse(gunzipSync(e.head).toString('utf8'));
        head.parts[1] = { ...head.parts[1], length: body.length, crc32c: crc32c(body) };
        return { head: Buffer.from(JSON.stringify(head)), bodies: new Map([...e.bodies, [head.parts[1].key, body]]) };
      }, `${PREFIX}part-0001.json.gz`, 'ranges["disk0:12"]: is not in group disk0:2'],
      ['a part key that is not a part', (e) => {
        const head = JSON.parse(gunzipSync(e.head).toString('utf8'));
        const body = e.bodies.get(head.parts[1].key)!;
        head.parts[1].key = `${PREFIX}run-0009.run`;
        return { head: Buffer.from(JSON.stringify(head)), bodies: new Map([...e.bodies, [head.parts[1].key, body]]) };
      }, WHERE, 'part disk0:2: key pairs/demo/history/00000000000000000007-0123456789abcdef/run-0009.run is not a part-NNNN.json.gz'],
      ['a head whose gzip is cut short', (e) => ({ head: e.head.subarray(0, e.head.length - 8) }), WHERE, 'not gzip'],
      ['a head with ranges', (e) => ({ head: Buffer.from(JSON.stringify({ ...JSON.parse(gunzipSync(e.head).toString('utf8')), ranges: {} })) }), WHERE, 'ranges: a format-2 head holds parts, not ranges'],
    ];
    test.each(refusedParts)('refuses %s, naming the object', (_what, edit, where, message) => {
      const m = sample2();
      const enc = encodeManifest(m, PREFIX, all(m));
      const e = edit(enc);
      let caught: unknown;
      try {
        decodeManifest(e.head ?? enc.head, WHERE, e.bodies ?? enc.bodies);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(CorruptHistoryError);
      expect((caught as CorruptHistoryError).where).toBe(where);
      expect((caught as Error).message).toContain(message);
    });
  });

  test('bitmapHas reads bit i of the range from byte i>>3, bit i&7', () => {
    const b = bitmap(0, 9, 1023);
    expect([0, 1, 8, 9, 10, 1022, 1023].map((i) => bitmapHas(b, i))).toEqual([true, false, false, true, false, false, true]);
  });
});
