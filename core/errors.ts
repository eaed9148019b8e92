// Typed errors: each says what was wrong and where, so an operator can act on it.

/** Why a batch object was refused. Stable codes: they are stored on quarantine items. */
export type BatchErrorCode =
  | 'TRUNCATED'
  | 'BAD_MAGIC'
  | 'BAD_VERSION'
  | 'CHECKSUM_MISMATCH'
  | 'MALFORMED'
  | 'FOREIGN_PAIR'
  | 'SEQ_MISMATCH'
  | 'CONFLICT'
  | 'REPLAY';

/** A batch that must not be applied. `where` names the batch (key or pair/seq). */
export class BatchError extends Error {
  constructor(
    readonly code: BatchErrorCode,
    readonly where: string,
    readonly reason: string,
  ) {
    super(`batch ${where}: ${code}: ${reason}`);
    this.name = 'BatchError';
  }
}

export class UnknownPairError extends Error {
  constructor(readonly pair: string) {
    super(`unknown pair '${pair}'`);
    this.name = 'UnknownPairError';
  }
}

/** Bad caller input (CLI arguments, API parameters). */
export class InvalidArgumentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidArgumentError';
  }
}

/** A stored extent whose bytes do not match their checksum on the read path. */
export class CorruptExtentError extends Error {
  constructor(readonly where: string, readonly reason: string) {
    super(`extent ${where}: ${reason}`);
    this.name = 'CorruptExtentError';
  }
}

/** Why a backup cannot seed a pair. Stable codes: they are shown on the pair (SEED_FAILED). */
export type BackupErrorCode = 'MALFORMED' | 'MISMATCH' | 'MISSING_CHUNK' | 'TRUNCATED' | 'CHECKSUM_MISMATCH' | 'FORBIDDEN';

/** A backup (manifest, chunk or raw image) refused. `where` names the object and, where it helps, the offset. */
export class BackupError extends Error {
  constructor(
    readonly code: BackupErrorCode,
    readonly where: string,
    readonly reason: string,
  ) {
    super(`backup ${where}: ${code}: ${reason}`);
    this.name = 'BackupError';
  }
}

/** A seq the pair's history no longer holds: not a retained point of its manifest and at or below the frontier. */
export class HistoryPrunedError extends Error {
  constructor(readonly pair: string, readonly seq: number, readonly frontierSeq: number) {
    super(`pair '${pair}': seq ${seq} is no longer readable: compaction kept only the retained points at or below seq ${frontierSeq}`);
    this.name = 'HistoryPrunedError';
  }
}

/** A stored history object (piece, image, manifest) whose bytes or structure are wrong. `where` names the key and offset. */
export class CorruptHistoryError extends Error {
  constructor(readonly where: string, readonly reason: string) {
    super(`history object ${where}: ${reason}`);
    this.name = 'CorruptHistoryError';
  }
}

/** A reader lease that lapsed (or was removed) before its reader renewed it: what it held may be collected, so the read stops and starts over under a new lease. */
export class ReaderLeaseLostError extends Error {
  constructor(readonly pair: string, readonly id: string) {
    super(`pair '${pair}': reader lease ${id} lapsed before it was renewed; start the read again`);
    this.name = 'ReaderLeaseLostError';
  }
}
