// replica/history-manifest.ts: the part cache keeps what was read most recently within its
// byte budget, and readManifest counts only the GETs it made.

import { MemoryObjectStore } from '../adapters/memory-object-store';
import { encodeManifest, initialManifest, type Manifest } from '../core/manifest';
import { PartCache, readManifest } from '../replica/history-manifest';

const PREFIX = 'pairs/p/history/00000000000000000001-0123456789abcdef/';

test('PartCache drops the least recently used part past its byte budget', () => {
  const c = new PartCache(10);
  c.set('a', Buffer.alloc(4));
  c.set('b', Buffer.alloc(4));
  expect(c.get('a')).toBeDefined(); // a is now the most recent
  c.set('c', Buffer.alloc(4)); // 12 > 10: b goes
  expect([c.get('a'), c.get('b'), c.get('c')].map(Boolean)).toEqual([true, false, true]);
  c.set('huge', Buffer.alloc(11));
  expect(c.get('huge')).toBeUndefined();
});

test('readManifest GETs the head and the parts it does not hold; what it holds is checked like what it reads', async () => {
  const m: Manifest = { ...initialManifest('p'), version: 1, generation: 1, frontierSeq: 5, retained: [5], ranges: { 'd:0': { images: [{ seq: 5, zero: true }], pieces: [] }, 'd:40': { images: [{ seq: 5, zero: true }], pieces: [] } } };
  const enc = encodeManifest(m, PREFIX, new Set(['d:0', 'd:2']));
  const store = new MemoryObjectStore();
  for (const [k, b] of enc.bodies) await store.put(k, b);
  await store.put(`${PREFIX}manifest.json`, enc.head);
  const cache = new PartCache();
  expect(await readManifest(store, `${PREFIX}manifest.json`, cache)).toMatchObject({ gets: 3, manifest: { ranges: m.ranges } });
  expect(await readManifest(store, `${PREFIX}manifest.json`, cache)).toMatchObject({ gets: 1, manifest: { ranges: m.ranges } });
  // A cached part that is not what the head names is refused, as a read one would be.
  const bad = new PartCache();
  bad.set(enc.parts[0].key, Buffer.from('not the part'));
  await expect(readManifest(store, `${PREFIX}manifest.json`, bad)).rejects.toThrow(/the head says/);
});
