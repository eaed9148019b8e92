// The manifest a HISTORY head names: version 0 is the implicit one (the pair's base, if any;
// nothing folded), any other is read from its object and checked against the head.

import { CorruptHistoryError } from '../core/errors';
import { decodeManifest, initialManifest, manifestPartKeys, type Manifest } from '../core/manifest';
import { mapLimit } from './concurrency';
import type { Pair } from '../core/model';
import type { HistoryHead, ObjectStore } from './ports';

export interface ManifestRead {
  manifest: Manifest;
  /** Its object (absent at version 0). */
  key?: string;
  /** Bytes read (0 at version 0): the head and the parts not cached. */
  bytes: number;
  /** Objects read (0 at version 0): 1 + the parts not cached. */
  gets: number;
}

/**
 * Manifest part objects by key, least recently used dropped past `maxBytes`: a part is never
 * overwritten (a new one gets a new key), so a process that reads the manifest again and
 * again (the compactor, one unit after another) GETs only the parts it has not seen. What
 * is cached is checked like what is read (length and CRC-32C against the head).
 */
export class PartCache {
  private readonly parts = new Map<string, Buffer>();
  private bytes = 0;
  constructor(readonly maxBytes = 64 * 1024 * 1024) {}
  get(key: string): Buffer | undefined {
    const body = this.parts.get(key);
    if (body) {
      this.parts.delete(key);
      this.parts.set(key, body);
    }
    return body;
  }
  set(key: string, body: Buffer): void {
    if (this.parts.has(key) || body.length > this.maxBytes) return;
    this.parts.set(key, body);
    this.bytes += body.length;
    for (const [k, b] of this.parts) {
      if (this.bytes <= this.maxBytes) break;
      this.parts.delete(k);
      this.bytes -= b.length;
    }
  }
}

/** Reads a stored manifest: its head, then (format 2) every part it names (from `cache` if there), 8 at a time; decoded and checked (decodeManifest). */
export async function readManifest(store: ObjectStore, key: string, cache?: PartCache): Promise<ManifestRead> {
  const head = await store.get(key);
  const parts = manifestPartKeys(head, key);
  const bodies = new Map<string, Buffer>();
  let gets = 1;
  let bytes = head.length;
  await mapLimit(parts, 8, async (p) => {
    let body = cache?.get(p.key);
    if (!body) {
      body = await store.get(p.key);
      gets++;
      bytes += body.length;
    }
    bodies.set(p.key, body);
  });
  const manifest = decodeManifest(head, key, bodies);
  for (const [k, b] of bodies) cache?.set(k, b);
  return { manifest, key, bytes, gets };
}

/** Version 0 of a pair: its base (if any) at the base's seq, nothing folded. */
export const pairInitialManifest = (pair: Pick<Pair, 'pairId' | 'base'>): Manifest => initialManifest(pair.pairId, pair.base && { key: pair.base.key, seq: pair.base.baseSeq });

/** Reads and checks (decodeManifest, then version and pair against the head) the manifest `head` names. */
export async function manifestOf(store: ObjectStore, pair: Pick<Pair, 'pairId' | 'base'>, head: HistoryHead, cache?: PartCache): Promise<ManifestRead> {
  if (head.version === 0) return { manifest: pairInitialManifest(pair), bytes: 0, gets: 0 };
  const key = head.manifestKey;
  if (!key) throw new CorruptHistoryError(`pair '${pair.pairId}' HISTORY`, `version ${head.version} names no manifest`);
  const read = await readManifest(store, key, cache);
  const { manifest } = read;
  if (manifest.version !== head.version || manifest.pairId !== pair.pairId) throw new CorruptHistoryError(key, `is version ${manifest.version} of pair '${manifest.pairId}', HISTORY says version ${head.version} of '${pair.pairId}'`);
  return read;
}
