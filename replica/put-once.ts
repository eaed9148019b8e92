// Writes of what the source hands the cloud (journal batches, backups): create-only, so that
// nothing stored is ever replaced. A PUT whose reply was lost is retried; the retry then finds
// its own object under the key (412) and counts as done only when the stored bytes are the
// ones it sent. Any other object there is a conflict to report, never to overwrite
// (docs/design.md, "Create-only writes").

import { ObjectExistsError, type ObjectStore, type PutOptions } from './ports';

/** The key holds another object than the one a create-only write was asked to store. */
export class ObjectConflictError extends Error {
  constructor(readonly key: string, readonly storedBytes: number, readonly sentBytes: number) {
    super(`object '${key}' exists with other contents (${storedBytes} bytes stored, ${sentBytes} sent): it is left as it is, not overwritten`);
    this.name = 'ObjectConflictError';
  }
}

/**
 * Stores `body` under `key` unless the key is taken. Resolves when the store holds exactly
 * `body` there (written now, or by an earlier attempt); throws ObjectConflictError when it
 * holds something else.
 */
export async function putOnce(store: ObjectStore, key: string, body: Buffer, opts: Omit<PutOptions, 'createOnly'> = {}): Promise<void> {
  try {
    await store.put(key, body, { ...opts, createOnly: true });
  } catch (err) {
    if (!(err instanceof ObjectExistsError)) throw err;
    const stored = await store.get(key);
    if (!stored.equals(body)) throw new ObjectConflictError(key, stored.length, body.length);
  }
}
