// Drains the spool into the pair's journal: lowest seqs first, a few PUTs at a time, retry
// with backoff for as long as it takes (the spool, then the dirty map, absorb an outage),
// an optional bandwidth limit. A batch leaves the spool only once the journal holds it;
// most never reach a file (agent/spool.ts).

import { setTimeout as wait } from 'node:timers/promises';
import { batchObjectCrc32c } from '../core/batch-format';
import { journalKey } from '../core/keys';
import type { ObjectStore } from '../replica/ports';
import { ObjectConflictError, putOnce } from '../replica/put-once';
import { backoffMs } from '../source/batch-writer';
import { SpoolCorruptError, type Spool } from './spool';

export interface UploaderOptions {
  pairId: string;
  spool: Spool;
  store: ObjectStore;
  /** PUTs in flight (default 4). */
  maxInFlight?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Average upload rate limit in bytes per second (0 or undefined: none). */
  bandwidthBytesPerSec?: number;
  /** Runs before a batch leaves the spool: the agent makes its next seq durable past it. */
  beforeRemove?: (seq: number) => Promise<void>;
  onUploaded?: (seq: number, bytes: number) => void;
  /** A spooled batch is unreadable: uploads stop (the journal cannot skip a seq). */
  onCorrupt?: (err: SpoolCorruptError) => void;
  /** The journal holds another object under a batch's key: uploads stop, nothing is overwritten. */
  onConflict?: (err: ObjectConflictError) => void;
  log?: (m: string) => void;
}

export class Uploader {
  private readonly active = new Set<number>();
  private stopped = false;
  /** Ends the waits (bandwidth, backoff) when the uploader stops. */
  private readonly stopping = new AbortController();
  /** Why uploads stopped for good (a corrupt spooled batch, a conflict in the journal): the journal cannot skip a seq. */
  private halted: SpoolCorruptError | ObjectConflictError | undefined;
  private idleWaiters: (() => void)[] = [];
  /** When the bandwidth budget lets the next upload start. */
  private nextSlotMs = 0;
  /** The last failed attempt's reason, for status; cleared by a success. */
  lastError: string | undefined;
  uploadedBatches = 0;
  uploadedBytes = 0;

  constructor(private readonly o: UploaderOptions) {}

  /** Starts uploads for spooled batches not yet in flight. Call after every spool add. */
  kick(): void {
    if (this.stopped || this.halted) return;
    const max = this.o.maxInFlight ?? 4;
    for (const seq of this.o.spool.seqs()) {
      if (this.active.size >= max) break;
      if (this.active.has(seq)) continue;
      this.active.add(seq);
      void this.uploadOne(seq).finally(() => {
        this.active.delete(seq);
        this.kick();
        if (this.active.size === 0 && (this.o.spool.count === 0 || this.stopped || this.halted)) this.wakeIdle();
      });
    }
    if (this.active.size === 0) this.wakeIdle();
  }

  /** Resolves when the spool is empty (or uploads stopped); rejects after `timeoutMs`. */
  idle(timeoutMs = Infinity): Promise<void> {
    if (this.active.size === 0 && (this.o.spool.count === 0 || this.stopped || this.halted)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = Number.isFinite(timeoutMs)
        ? setTimeout(() => reject(new Error(`${this.o.spool.count} spooled batches not uploaded after ${timeoutMs} ms${this.lastError ? `: ${this.lastError}` : ''}`)), timeoutMs)
        : undefined;
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /**
   * Stops starting uploads and retrying; in-flight PUTs finish or are abandoned, and uploads
   * waiting for their turn (bandwidth, backoff) give up at once: their batches stay spooled.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    await this.idle();
  }

  get inFlight(): number {
    return this.active.size;
  }

  private async uploadOne(seq: number): Promise<void> {
    let body: Buffer;
    try {
      body = await this.o.spool.read(seq);
    } catch (err) {
      if (!(err instanceof SpoolCorruptError)) throw err;
      this.halted ??= err;
      this.o.onCorrupt?.(err);
      return;
    }
    await this.waitForBandwidth(body.length);
    if (this.stopped) return; // stopped while waiting its turn: it stays spooled
    const crc32c = batchObjectCrc32c(body); // the spool checked a body read back from its file
    const key = journalKey(this.o.pairId, seq); // one key for every retry of this upload
    for (let attempt = 1; !this.stopped; attempt++) {
      try {
        // From memory as a rule (a held batch is never written to its file if this comes
        // first). A crash after this PUT and before state.json records its seq as used does
        // not get the seq cut again: the start-up lists the journal past the watermark.
        // Create-only: a retry after a lost reply finds its own batch there and is done; any
        // other batch under the key is a conflict, reported and never overwritten.
        await putOnce(this.o.store, key, body, { crc32c });
        this.lastError = undefined;
        this.uploadedBatches++;
        this.uploadedBytes += body.length;
        await this.o.beforeRemove?.(seq);
        await this.o.spool.remove(seq);
        this.o.onUploaded?.(seq, body.length);
        return;
      } catch (err) {
        if (err instanceof ObjectConflictError) {
          // The journal holds another batch for this seq: uploads stop here (the journal cannot
          // skip a seq) and the batch stays spooled; the pair needs the operator.
          this.halted ??= err;
          this.lastError = `batch ${seq}: ${err.message}`;
          this.o.onConflict?.(err);
          return;
        }
        this.lastError = `batch ${seq}: ${(err as Error).message}`;
        if (attempt === 1 || attempt % 10 === 0) this.o.log?.(`upload of batch ${seq} failed (attempt ${attempt}), retrying: ${(err as Error).message}`);
        await this.pause(backoffMs({ baseDelayMs: this.o.baseDelayMs ?? 100, maxDelayMs: this.o.maxDelayMs ?? 10_000 }, Math.min(attempt, 20)));
      }
    }
  }

  /** Spaces upload starts so that the average rate stays under the limit. */
  private async waitForBandwidth(bytes: number): Promise<void> {
    const rate = this.o.bandwidthBytesPerSec;
    if (!rate) return;
    const now = Date.now();
    const start = Math.max(now, this.nextSlotMs);
    this.nextSlotMs = start + (bytes / rate) * 1000;
    if (start > now) await this.pause(start - now);
  }

  /** Waits `ms`, or until the uploader stops. */
  private async pause(ms: number): Promise<void> {
    await wait(ms, undefined, { signal: this.stopping.signal }).catch(() => {});
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}
