// A batch object as apply saw it: the SHA-256 of its bytes, recorded on its BATCH item when it
// is registered, and checked by whoever reads it later (compaction, recovery) against the
// bytes they got. The checksums inside a batch are the writer's; this one is the cloud
// side's own, so a batch replaced after it was applied is caught (docs/design.md, "Trust
// boundaries").

import { createHash } from 'node:crypto';
import { CorruptExtentError } from '../core/errors';
import type { BatchRecord } from '../core/model';

export function batchSha256(body: Buffer): string {
  return createHash('sha256').update(body).digest('hex');
}

/**
 * Throws CorruptExtentError, naming the object and its seq, when `body` is not the batch
 * registered as `b`. A batch registered before SHA-256s were recorded (no `sha256`) passes.
 */
export function checkAppliedBatch(body: Buffer, b: Pick<BatchRecord, 'key' | 'seq' | 'sha256'>): void {
  if (b.sha256 !== undefined) checkAppliedSha256(batchSha256(body), b);
}

/** The same check, for the SHA-256 `got` of the bytes read, taken elsewhere (a worker). */
export function checkAppliedSha256(got: string, b: Pick<BatchRecord, 'key' | 'seq' | 'sha256'>): void {
  if (b.sha256 !== undefined && got !== b.sha256) throw new CorruptExtentError(b.key, `SHA-256 ${got} of batch ${b.seq} is not the ${b.sha256} recorded when it was applied: the object was replaced`);
}
