// In-memory ObjectStore (and KeyLister, ObjectDeleter): for unit tests of code above the port.

import type { Readable } from 'node:stream';
import { crc32c } from '../core/crc32c';
import { ObjectExistsError, ObjectNotFoundError, ObjectTooLargeError, type ByteRange, type KeyLister, type ObjectDeleter, type ObjectStore, type PutOptions } from '../replica/ports';

export class MemoryObjectStore implements ObjectStore, KeyLister, ObjectDeleter {
  readonly objects = new Map<string, Buffer>();
  /** The keys of each deleteKeys call, in order (tests check batching and ordering). */
  readonly deleteCalls: string[][] = [];
  /** With `versioned`, as a versioned bucket: every PUT is a new version, each readable by its id; a delete hides the key only. */
  private readonly versions?: Map<string, Map<string, Buffer>>;
  private readonly current = new Map<string, string>();
  private nextVersion = 1;

  constructor(opts: { versioned?: boolean } = {}) {
    if (opts.versioned) this.versions = new Map();
  }

  async put(key: string, body: Buffer, opts: PutOptions = {}): Promise<void> {
    // As S3 does with x-amz-checksum-crc32c: a body that does not match is refused.
    if (opts.crc32c !== undefined && crc32c(body) !== opts.crc32c) throw new Error(`put ${key}: the body's CRC-32C is ${crc32c(body)}, not ${opts.crc32c}`);
    if (opts.createOnly && this.objects.has(key)) throw new ObjectExistsError(key);
    this.store(key, Buffer.from(body));
  }

  async get(key: string, range?: ByteRange, maxBytes?: number, versionId?: string): Promise<Buffer> {
    const o = versionId === undefined ? this.objects.get(key) : this.versions?.get(key)?.get(versionId);
    if (!o) throw new ObjectNotFoundError(key);
    if (maxBytes !== undefined && o.length > maxBytes) throw new ObjectTooLargeError(key, o.length, maxBytes);
    return range ? o.subarray(range.start, range.end) : o;
  }

  async getVersion(key: string, maxBytes?: number): Promise<{ body: Buffer; versionId?: string }> {
    return { body: await this.get(key, undefined, maxBytes), versionId: this.current.get(key) };
  }

  private store(key: string, body: Buffer): void {
    this.objects.set(key, body);
    if (!this.versions) return;
    const id = `v${this.nextVersion++}`;
    if (!this.versions.has(key)) this.versions.set(key, new Map());
    this.versions.get(key)!.set(id, body);
    this.current.set(key, id);
  }

  async upload(key: string, body: Readable): Promise<void> {
    const parts: Buffer[] = [];
    for await (const chunk of body) parts.push(chunk as Buffer);
    this.store(key, Buffer.concat(parts));
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
    for (const k of keys) {
      this.objects.delete(k);
      this.current.delete(k);
    }
  }
}
