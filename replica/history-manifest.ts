// The manifest a HISTORY head names: version 0 is the implicit one (the pair's base, if any;
// nothing folded), any other is read from its object and checked against the head.

import { CorruptHistoryError } from '../core/errors';
import { decodeManifest, initialManifest, type Manifest } from '../core/manifest';
import type { Pair } from '../core/model';
import type { HistoryHead, ObjectStore } from './ports';

export interface ManifestRead {
  manifest: Manifest;
  /** Its object (absent at version 0). */
  key?: string;
  /** Bytes read (0 at version 0). */
  bytes: number;
}

/** Version 0 of a pair: its base (if any) at the base's seq, nothing folded. */
export const pairInitialManifest = (pair: Pick<Pair, 'pairId' | 'base'>): Manifest => initialManifest(pair.pairId, pair.base && { key: pair.base.key, seq: pair.base.baseSeq });

/** Reads and checks (decodeManifest, then version and pair against the head) the manifest `head` names. */
export async function manifestOf(store: ObjectStore, pair: Pick<Pair, 'pairId' | 'base'>, head: HistoryHead): Promise<ManifestRead> {
  if (head.version === 0) return { manifest: pairInitialManifest(pair), bytes: 0 };
  const key = head.manifestKey;
  if (!key) throw new CorruptHistoryError(`pair '${pair.pairId}' HISTORY`, `version ${head.version} names no manifest`);
  const body = await store.get(key);
  const manifest = decodeManifest(body, key);
  if (manifest.version !== head.version || manifest.pairId !== pair.pairId) throw new CorruptHistoryError(key, `is version ${manifest.version} of pair '${manifest.pairId}', HISTORY says version ${head.version} of '${pair.pairId}'`);
  return { manifest, key, bytes: body.length };
}
