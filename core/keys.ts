// The S3 key layout (docs/design.md, "S3 key layout"). One canonical form per object kind.

import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from './errors';

const PAIR_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;
const DISK_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const SEQ_DIGITS = 20;
export const JOURNAL_SUFFIX = '.batch';
const JOURNAL_KEY = /^pairs\/([a-z0-9][a-z0-9-]{0,62})\/journal\/(\d{20})-([0-9a-f]{16})\.batch$/;

export function checkPairId(pair: string): string {
  if (!PAIR_ID.test(pair)) throw new InvalidArgumentError(`pair id '${pair}' must be 1-63 of [a-z0-9-], starting with a letter or digit`);
  return pair;
}

export function checkDiskName(disk: string): string {
  if (!DISK_NAME.test(disk)) throw new InvalidArgumentError(`disk name '${disk}' must be 1-63 of [A-Za-z0-9._-], starting with a letter or digit`);
  return disk;
}

/** The tag of an application-consistent point: 1-255 bytes (it is stored in the batch header). */
export function checkAppTag(tag: string, what = 'application tag'): string {
  if (tag.length === 0 || Buffer.byteLength(tag) > 255) throw new InvalidArgumentError(`${what} '${tag}' must be 1-255 bytes`);
  return tag;
}

export const seqKey = (seq: number): string => String(seq).padStart(SEQ_DIGITS, '0');

/**
 * Each upload attempt of a batch gets its own key (a random suffix): a corrupt copy
 * is never overwritten by the good one that replaces it, so it can be kept in quarantine.
 */
export function journalKey(pair: string, seq: number, nonce = randomBytes(8).toString('hex')): string {
  return `${journalPrefix(pair)}${seqKey(seq)}-${nonce}${JOURNAL_SUFFIX}`;
}

/** Where a pair's journal objects are, and the StartAfter that lists those with seqs above `seq` ('.' sorts after '-'). */
export const journalPrefix = (pair: string): string => `pairs/${pair}/journal/`;
export const journalStartAfter = (pair: string, seq: number): string => `${journalPrefix(pair)}${seqKey(seq)}.`;

export interface JournalKey {
  pair: string;
  seq: number;
}

/** Parses a journal key; undefined for any other key (not ours to apply). */
/**
 * The pair and seq of a journal key; undefined for any other key, and for a seq past 2^53 − 1
 * (20 digits hold more than a double keeps exactly: such a key would parse as another seq).
 */
export function parseJournalKey(key: string): JournalKey | undefined {
  const m = JOURNAL_KEY.exec(key);
  if (!m || BigInt(m[2]) > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  return { pair: m[1], seq: Number(m[2]) };
}

/**
 * The prefix one compaction unit attempt writes under: the manifest version it intends to
 * publish and a fresh nonce, so no attempt overwrites another's objects (docs/design.md, "History").
 */
export const historyPrefix = (pair: string, version: number, nonce = randomBytes(8).toString('hex')): string => `pairs/${pair}/history/${seqKey(version)}-${nonce}/`;
export const historyRoot = (pair: string): string => `pairs/${pair}/history/`;
const HISTORY_KEY = /^pairs\/([a-z0-9][a-z0-9-]{0,62})\/history\/(\d{20})-([0-9a-f]{16})\/(.+)$/;
/** The version a history key's attempt intended to publish; undefined for any other key. */
export function parseHistoryKey(key: string): { pair: string; version: number; prefix: string; name: string } | undefined {
  const m = HISTORY_KEY.exec(key);
  if (!m) return undefined;
  return { pair: m[1], version: Number(m[2]), prefix: key.slice(0, key.length - m[4].length), name: m[4] };
}

/** Base chunks of a pair, content-addressed (core/chunk-format.ts). */
export const baseChunkKey = (pair: string, sha256: string): string => `pairs/${pair}/base/chunks/${sha256}`;
export const baseManifestKey = (pair: string, seedId: string): string => `pairs/${pair}/base/${seedId}.json`;
/** Work items of a seed run: range descriptors and the markers of finished ranges. */
export const seedRangeKey = (pair: string, seedId: string, range: number): string => `pairs/${pair}/seed/${seedId}/range-${String(range).padStart(6, '0')}.json`;
export const seedDoneKey = (pair: string, seedId: string, range: number): string => `pairs/${pair}/seed/${seedId}/done-${String(range).padStart(6, '0')}.json`;
/** The manifest of a backup the agent took (`livesync backup`); its chunks go to `chunks/` beside it. */
export const backupManifestKey = (pair: string, backupId: string): string => `pairs/${pair}/backups/${backupId}/manifest.json`;
/** The backup `pair create --backup agent` seeds from: the pair's agent takes it when it starts. */
export const seedBackupKey = (pair: string): string => backupManifestKey(pair, 'seed');

/** Parses `s3://bucket/key`. */
export function parseS3Url(url: string): { bucket: string; key: string } {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])\/(.+)$/.exec(url);
  if (!m) throw new InvalidArgumentError(`'${url}' is not an s3://bucket/key URL`);
  return { bucket: m[1], key: m[2] };
}
