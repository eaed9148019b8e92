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
  /** Bytes read (0 at version 0): the head and its parts. */
  bytes: number;
  /** Objects read (0 at version 0): 1 + its parts. */
  gets: number;
}

/** Reads a stored manifest: its head, then (format 2) every part it names, 8 at a time; decoded and checked (decodeManifest). */
export async function readManifest(store: ObjectStore, key: string): Promise<ManifestRead> {
  const head = await store.get(key);
  const parts = manifestPartKeys(head, key);
  const bodies = new Map<string, Buffer>();
  await mapLimit(parts, 8, async (p) => void bodies.set(p.key, await store.get(p.key)));
  const manifest = decodeManifest(head, key, bodies);
  return { manifest, key, bytes: head.length + [...bodies.values()].reduce((n, b) => n + b.length, 0), gets: 1 + parts.length };
}

/** Version 0 of a pair: its base (if any) at the base's seq, nothing folded. */
export const pairInitialManifest = (pair: Pick<Pair, 'pairId' | 'base'>): Manifest => initialManifest(pair.pairId, pair.base && { key: pair.base.key, seq: pair.base.baseSeq });

/** Reads and checks (decodeManifest, then version and pair against the head) the manifest `head` names. */
export async function manifestOf(store: ObjectStore, pair: Pick<Pair, 'pairId' | 'base'>, head: HistoryHead): Promise<ManifestRead> {
  if (head.version === 0) return { manifest: pairInitialManifest(pair), bytes: 0, gets: 0 };
  const key = head.manifestKey;
  if (!key) throw new CorruptHistoryError(`pair '${pair.pairId}' HISTORY`, `version ${head.version} names no manifest`);
  const read = await readManifest(store, key);
  const { manifest } = read;
  if (manifest.version !== head.version || manifest.pairId !== pair.pairId) throw new CorruptHistoryError(key, `is version ${manifest.version} of pair '${manifest.pairId}', HISTORY says version ${head.version} of '${pair.pairId}'`);
  return read;
}
