import { InvalidArgumentError } from '../core/errors';

/**
 * S3 Object Lock on the replica bucket, a deploy-time option (`cdk deploy -c objectLock=governance:30`):
 * every object version is kept for `days` after it is written, whoever asks (COMPLIANCE), or
 * whoever lacks s3:BypassGovernanceRetention (GOVERNANCE, the default mode; no role of the
 * stack has it). Object Lock needs versioning, so GC's deletes then only add delete markers:
 * the object reads as gone at once, and a lifecycle rule removes the version itself a day
 * after it became noncurrent once its retention is over. The price: every byte, pruned or
 * not, is stored for at least `days` (docs/design.md, "Trust boundaries").
 */
export interface ObjectLockOption {
  mode: 'GOVERNANCE' | 'COMPLIANCE';
  days: number;
}

/** `governance:30`, `compliance:7`, or `30` (governance); undefined or '' for none. */
export function parseObjectLock(value: unknown): ObjectLockOption | undefined {
  if (value === undefined || value === '') return undefined;
  const m = /^(?:(governance|compliance):)?(\d{1,5})$/i.exec(String(value).trim());
  const days = m ? Number(m[2]) : NaN;
  if (!m || days < 1 || days > 36500) {
    throw new InvalidArgumentError(`context objectLock=${String(value)}: expected [governance|compliance:]DAYS, DAYS from 1 to 36500`);
  }
  return { mode: (m[1] ?? 'governance').toUpperCase() as ObjectLockOption['mode'], days };
}
