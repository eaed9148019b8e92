// What both HistoryIndex adapters (memory-history.ts, dynamo-history.ts) refuse before
// writing anything: caller bugs, as typed errors naming the pair, not conditions that lose a race.

import { InvalidArgumentError } from '../core/errors';
import type { ReaderLease, VersionRecord } from '../replica/ports';

const READER_LEASE_ID = /^[A-Za-z0-9._-]{1,100}$/;
/** The compactor's lease is `LEASE#compactor`; a reader's id must not collide with it. */
export const COMPACTOR_LEASE_ID = 'compactor';

export function checkReaderLease(pairId: string, lease: ReaderLease): ReaderLease {
  if (!READER_LEASE_ID.test(lease.id) || lease.id === COMPACTOR_LEASE_ID) {
    throw new InvalidArgumentError(`pair '${pairId}': reader lease id '${lease.id}' must be 1-100 of [A-Za-z0-9._-] and not '${COMPACTOR_LEASE_ID}'`);
  }
  if (!Number.isSafeInteger(lease.seq) || lease.seq < 0 || !Number.isSafeInteger(lease.manifestVersion) || lease.manifestVersion < 0) {
    throw new InvalidArgumentError(`pair '${pairId}': reader lease '${lease.id}' needs a seq and a manifest version >= 0 (got ${lease.seq}, ${lease.manifestVersion})`);
  }
  return lease;
}

export function checkPublish(pairId: string, fromVersion: number, record: VersionRecord, frontierSeq: number): void {
  if (record.version !== fromVersion + 1) {
    throw new InvalidArgumentError(`pair '${pairId}': publish from version ${fromVersion} must write version ${fromVersion + 1}, not ${record.version}`);
  }
  if (!Number.isSafeInteger(frontierSeq) || frontierSeq < 0) throw new InvalidArgumentError(`pair '${pairId}': publish of version ${record.version}: frontier ${frontierSeq} is not a seq`);
}

export function checkAdvanceGc(pairId: string, fromVersion: number, toVersion: number): void {
  if (!(toVersion > fromVersion)) throw new InvalidArgumentError(`pair '${pairId}': the GC horizon moves forward only (asked ${fromVersion} -> ${toVersion})`);
}

/** The pair's compactedThrough would move backwards: every publish's frontier is at least the last one's. */
export class FrontierBackwardsError extends Error {
  constructor(readonly pairId: string, readonly frontierSeq: number, readonly compactedThrough: number | undefined) {
    super(`pair '${pairId}': publish with frontier ${frontierSeq} refused: the pair ${compactedThrough === undefined ? 'does not exist' : `is compacted through ${compactedThrough}`}`);
    this.name = 'FrontierBackwardsError';
  }
}
