// In-memory ObjectStore (and KeyLister, ObjectDeleter): for unit tests of code above the port.

import type { Readable } from 'node:stream';
import { crc32c } from '../core/crc32c';
import { ObjectExistsError, ObjectNotFoundError, ObjectTooLargeError, type ByteRange, type KeyLister, type ObjectDeleter, type ObjectStore, type PutOptions } from '../replica/ports';

export class MemoryObjectStore implements ObjectStore, KeyLister, ObjectDeleter {
  readonly objects = new Map<string, Buffer>();
  /** The keys of each deleteKeys call, in order (tests check batching and ordering). */
  readonly deleteCalls: string[][] = [];

  async put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    // As S3 does with x-amz-checksum-crc32c: a body that does not match is refused.
    if (opts.crc32c !== undefined && crc32c(body) !== opts.crc32c) throw new Error(`put ${key}: the body's CRC-32C is ${crc32c(body)}, not ${opts.crc32c}`);
    if (opts.createOnly && this.objects.has(key)) throw new ObjectExistsError(key);
    this.objects.set(key, Buffer.from(body));
  }

  async get(key: string, range?: ByteRange, maxBytes?: number): Promise<Buffer> {
    const o = this.objects.get(key);
    if (!o) throw new ObjectNotFoundError(key);
    if (maxBytes !== undefined && o.length > maxBytes) throw new ObjectTooLargeError(key, o.length, maxBytes);
    return range ? o.subarray(range.start, range.end) : o;
  }

  async upload(key: string, body: Readable): Promise<void> {
    const parts: Buffer[] = [];
    for await (const chunk of body) parts.push(chunk as Buffer);
    this.objects.set(key, Buffer.concat(parts));
  }

  async size(key: string): Promise<number | undefined> {
    return this.objects.get(key)?.length;
  }

  async listKeys(prefix: string, startAfter = ''): Promise<string[]> {
    return [...this.objects.keys()].filter((k) => k.startsWith(prefix) && k > startAfter).sort();
  }

  /** As S3 DeleteObjects: missing keys are not an error. */
  async deleteKeys(keys: string[]): Promise<void> {
    this.deleteCalls.push([...keys]);
    for (const k of keys) this.objects.delete(k);
  }
}
