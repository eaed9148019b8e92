// `livesync failback start | finish`: production goes back to the original source, shipping
// only the blocks that differ (docs/design.md, "Failover operations").
//
// start: the pair must be FAILED_OVER; a reverse pair (same disks) is created if absent, and
// an agent on the recovery side (`livesync agent --pair REVERSE --disk …` on the recovered
// disks) protects them in reverse from then on: its journal holds exactly the writes made
// there since failover. FAILED_OVER → FAILING_BACK.
// finish: the reverse agent takes a final ACRP and refuses writes (as a planned failover
// does); the original source's images (its agent stopped) get (1) the regions where they
// differ from the RP the pair failed over to — the source's own writes after that RP,
// found by comparing region checksums of the image with the replica's (computed where the
// data is) — set back to that RP, then (2) every block the recovery side wrote, from the
// reverse pair. Nothing else is shipped. FAILING_BACK → (none): the roles switch back; the
// source's agent, restarted, finds its images changed and resyncs the pair to them.

import { open } from 'node:fs/promises';
import { callAgent } from '../agent/control';
import { InvalidArgumentError } from '../core/errors';
import { crc32c } from '../core/crc32c';
import { limiter } from '../replica/concurrency';
import { replicaDigests } from '../replica/digests';
import { transitionPair } from '../replica/failover';
import { materialize } from '../replica/materialize';
import { createPair, waitForWatermark } from '../replica/pairs';
import type { PairOperation } from '../replica/ports';
import { openRp } from '../replica/rp-reader';
import type { FailoverContext } from './failover';

export async function failbackStart(c: FailoverContext, pairId: string, reversePair: string): Promise<PairOperation | undefined> {
  const pair = await c.rps.index.getPair(pairId);
  const { operation } = await c.ops.getOperation(pairId);
  if (!pair || operation?.phase !== 'FAILED_OVER') return transitionPair(c.rps.index, c.ops, pairId, 'failback-start', { by: c.by, reason: 'failback' }); // refused, naming the phase
  const reverse = await c.rps.index.getPair(reversePair);
  if (!reverse) await createPair(c.rps.index, { pairId: reversePair, disks: pair.disks });
  else if (JSON.stringify(reverse.disks) !== JSON.stringify(pair.disks)) throw new InvalidArgumentError(`reverse pair '${reversePair}' has disks ${JSON.stringify(reverse.disks)}, pair '${pairId}' ${JSON.stringify(pair.disks)}`);
  return transitionPair(c.rps.index, c.ops, pairId, 'failback-start', { by: c.by, reason: `failback: the recovered disks protected in reverse by pair '${reversePair}'`, reversePair });
}

export interface FailbackResult {
  /** The reverse pair's final ACRP: everything the recovery side wrote. */
  reverseSeq: number;
  /** Per disk: bytes set back to the failover RP (the source's own later writes), bytes the recovery side wrote; their sum is all that was shipped. */
  disks: Record<string, { regionsBack: number; bytesBack: number; bytesWritten: number }>;
  shippedBytes: number;
  diskBytes: number;
  operation?: PairOperation;
}

export async function failbackFinish(c: FailoverContext, pairId: string, images: Map<string, string>, reverseSocket: string, o: { regionBytes?: number; timeoutMs?: number } = {}): Promise<FailbackResult> {
  const { operation } = await c.ops.getOperation(pairId);
  if (operation?.phase !== 'FAILING_BACK' || !operation.reversePair || operation.seq === undefined) {
    throw new InvalidArgumentError(`pair '${pairId}' is ${operation?.phase ?? 'not in an operation'}: \`failback finish\` follows \`failback start\``);
  }
  const pair = (await c.rps.index.getPair(pairId))!;
  for (const d of pair.disks) if (!images.has(d.name)) throw new InvalidArgumentError(`give the source's image of disk '${d.name}' (--disk ${d.name}=PATH)`);
  const reverse = operation.reversePair;
  const regionBytes = o.regionBytes ?? 64 * 1024;
  try {
    const answer = await callAgent(reverseSocket, { op: 'fence', tag: 'failback' });
    if (!answer.ok) throw new Error(`the reverse agent took no final ACRP: ${answer.error}`);
    const reverseSeq = (answer as { seq: number }).seq;
    await waitForWatermark(c.rps.index, reverse, reverseSeq, o.timeoutMs ?? 10 * 60_000);
    c.log(`livesync: recovery side fenced at ACRP ${reverseSeq} of '${reverse}'; shipping the differences back`);

    const result: FailbackResult = { reverseSeq, disks: {}, shippedBytes: 0, diskBytes: pair.disks.reduce((n, d) => n + d.sizeBytes, 0) };
    const files = new Map(await Promise.all(pair.disks.map(async (d) => [d.name, await open(images.get(d.name)!, 'r+')] as const)));
    try {
      // (1) The source's own writes after the failover RP: regions whose checksum differs from the replica's at that RP, set back to it.
      const theirs = await replicaDigests(c.rps.store, c.rps.index, { pairId, seq: operation.seq, regionBytes: () => regionBytes, history: c.rps.history });
      const reader = await openRp(c.rps.store, c.rps.index, { pairId, seq: operation.seq, history: c.rps.history });
      try {
        for (const d of pair.disks) {
          const fh = files.get(d.name)!;
          const stats = { regionsBack: 0, bytesBack: 0, bytesWritten: 0 };
          result.disks[d.name] = stats;
          const differ: number[] = [];
          const buf = Buffer.alloc(regionBytes);
          const digests = theirs.get(d.name)!;
          for (let r = 0; r * regionBytes < d.sizeBytes; r++) {
            const len = Math.min(regionBytes, d.sizeBytes - r * regionBytes);
            const { bytesRead } = await fh.read(buf, 0, len, r * regionBytes);
            if (bytesRead !== len) throw new Error(`image ${images.get(d.name)} ends before byte ${r * regionBytes + len}`);
            if (crc32c(buf.subarray(0, len)) !== digests[r]) differ.push(r);
          }
          // Read by whole windows of the history's alignment, written region by region.
          const align = Math.max(reader.alignBytes, regionBytes);
          const windows = [...new Set(differ.map((r) => Math.floor((r * regionBytes) / align)))];
          const run = limiter(8);
          for (const w of windows) {
            const start = w * align;
            const window = Buffer.from(new SharedArrayBuffer(Math.min(align, d.sizeBytes - start)));
            await reader.fill(d.name, start / 4096, window, run);
            for (const r of differ.filter((x) => Math.floor((x * regionBytes) / align) === w)) {
              const at = r * regionBytes - start;
              const len = Math.min(regionBytes, window.length - at);
              await fh.write(window, at, len, r * regionBytes);
              stats.regionsBack++;
              stats.bytesBack += len;
            }
          }
        }
      } finally {
        await reader.close();
      }
      // (2) Every block the recovery side wrote since failover: the reverse pair's data ranges, zeros included.
      await materialize(c.rps.store, c.rps.index, {
        pairId: reverse,
        seq: reverseSeq,
        history: c.rps.history,
        sinkFor: async (disk) => ({
          async write(offset, window, dataRanges) {
            for (const dr of dataRanges) {
              await files.get(disk)!.write(window, dr.start, dr.end - dr.start, offset + dr.start);
              result.disks[disk].bytesWritten += dr.end - dr.start;
            }
          },
          close: async () => {},
          abort: async () => {},
        }),
      });
      for (const fh of files.values()) await fh.sync();
    } finally {
      for (const fh of files.values()) await fh.close();
    }
    result.shippedBytes = Object.values(result.disks).reduce((n, d) => n + d.bytesBack + d.bytesWritten, 0);
    result.operation = await transitionPair(c.rps.index, c.ops, pairId, 'failback-done', {
      by: c.by,
      reason: `failed back from '${reverse}' ACRP ${reverseSeq}: ${result.shippedBytes} of ${result.diskBytes} bytes shipped; restart the source's agent, which resyncs the pair`,
    });
    return result;
  } catch (err) {
    await transitionPair(c.rps.index, c.ops, pairId, 'failback-failed', { by: c.by, reason: `failback failed: ${(err as Error).message}` }).catch(() => {});
    throw err;
  }
}
