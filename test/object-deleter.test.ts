// The ObjectDeleter port (only the history's GC deletes): S3ObjectStore.deleteKeys sends
// DeleteObjects of ≤ 1000 keys, Quiet, retries the keys S3 reports failed and names the one
// that keeps failing; against the test stack's S3 (s3rver) the objects are gone and others stay.

import type { DeleteObjectsCommand, S3Client } from '@aws-sdk/client-s3';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { ObjectDeleteError, S3ObjectStore } from '../adapters/s3-object-store';
import { cloud, newPairId } from './helpers';

type Answer = { Errors?: { Key: string; Code: string; Message: string }[] };

/** An S3 client that records each DeleteObjects request and answers from `answer`. */
function fakeS3(answer: (keys: string[], call: number) => Answer): { client: S3Client; calls: { keys: string[]; quiet?: boolean }[] } {
  const calls: { keys: string[]; quiet?: boolean }[] = [];
  const client = {
    send: async (cmd: DeleteObjectsCommand) => {
      const keys = cmd.input.Delete!.Objects!.map((o) => o.Key!);
      calls.push({ keys, quiet: cmd.input.Delete!.Quiet });
      return answer(keys, calls.length);
    },
  } as unknown as S3Client;
  return { client, calls };
}

const keys = (n: number, prefix = 'k'): string[] => Array.from({ length: n }, (_, i) => `${prefix}/${String(i).padStart(5, '0')}`);

test('2,500 keys go as DeleteObjects of 1000, 1000 and 500, Quiet', async () => {
  const { client, calls } = fakeS3(() => ({}));
  await new S3ObjectStore('b', client).deleteKeys(keys(2500));
  expect(calls.map((c) => c.keys.length)).toEqual([1000, 1000, 500]);
  expect(calls.every((c) => c.quiet === true)).toBe(true);
  expect(calls.flatMap((c) => c.keys)).toEqual(keys(2500));
});

test('keys S3 reports failed are sent again, alone, until they go', async () => {
  const { client, calls } = fakeS3((ks, call) => (call <= 2 ? { Errors: ks.filter((k) => k.endsWith('7')).map((Key) => ({ Key, Code: 'InternalError', Message: 'try again' })) } : {}));
  await new S3ObjectStore('b', client).deleteKeys(keys(20));
  expect(calls.map((c) => c.keys)).toEqual([keys(20), ['k/00007', 'k/00017'], ['k/00007', 'k/00017']]);
});

test('a key that keeps failing throws an error naming it, after the retries', async () => {
  const { client, calls } = fakeS3((ks) => ({ Errors: ks.filter((k) => k === 'k/00003').map((Key) => ({ Key, Code: 'AccessDenied', Message: 'no' })) }));
  const err = await new S3ObjectStore('b', client).deleteKeys(keys(5)).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ObjectDeleteError);
  expect((err as Error).message).toBe("delete of 'k/00003' failed: AccessDenied: no");
  expect(calls.length).toBe(5);
});

test('the memory store deletes as S3 does: missing keys are no error', async () => {
  const m = new MemoryObjectStore();
  await m.put('a', Buffer.from('1'));
  await m.put('b', Buffer.from('2'));
  await m.deleteKeys(['a', 'zz']);
  expect([...m.objects.keys()]).toEqual(['b']);
});

test('on the test stack S3: 1,050 objects deleted in two requests, a missing key ignored, a neighbour kept', async () => {
  const { store } = cloud();
  const root = `pairs/${newPairId('del')}/history/`;
  // Two attempt prefixes of 525 each: s3rver cannot list past 1000 keys under Node 22 (its
  // continuation token uses DES, which OpenSSL 3 does not offer), so each is listed alone.
  const a = `${root}00000000000000000001-0123456789abcdef/`;
  const b = `${root}00000000000000000001-fedcba9876543210/`;
  const doomed = [...keys(525, `${a}run`), ...keys(525, `${b}run`)];
  for (let i = 0; i < doomed.length; i += 50) await Promise.all(doomed.slice(i, i + 50).map((k) => store.put(k, Buffer.from(k))));
  const keep = `${root}00000000000000000002-0123456789abcdef/manifest.json`;
  await store.put(keep, Buffer.from('keep'));
  expect((await store.listKeys(a)).length + (await store.listKeys(b)).length).toBe(1050);
  await store.deleteKeys([...doomed, `${root}never-written`]);
  expect(await store.listKeys(a)).toEqual([]);
  expect(await store.listKeys(b)).toEqual([]);
  expect(await store.listKeys(root)).toEqual([keep]);
});
