// In-memory ObjectStore: for unit tests of code above the port.

import type { Readable } from 'node:stream';
import { ObjectNotFoundError, ObjectTooLargeError, type ByteRange, type ObjectStore } from '../replica/ports';

export class MemoryObjectStore implements ObjectStore {
  readonly objects = new Map<string, Buffer>();

  async put(key: string, body: Buffer): Promise<void> {
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
}
