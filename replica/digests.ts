// Region checksums of the replica at an applied seq, for a source whose local state cannot
// be trusted: it compares them with its image's and resends only the regions that differ.
// Regions no segment touches are zeros: their checksum is computed once, not read.

import { crc32c } from '../core/crc32c';
import { materialize } from './materialize';
import type { HistoryIndex, ObjectStore, ReplicaIndex } from './ports';

export interface DigestRequest {
  pairId: string;
  /** An applied seq (at most the watermark). */
  seq: number;
  /** Region size of each disk (a power of two of at least 4 KiB). */
  regionBytes: (disk: string) => number;
  /** The pair's history index (RpStore.history): the read goes through its manifest under a 'digests' reader lease. */
  history?: HistoryIndex;
  /** false: without a reader lease (the agent, which may not write index items; replica/materialize.ts says why that is safe). */
  lease?: boolean;
}

/**
 * CRC-32C of every region of every disk (the last region may be shorter). A seq the history
 * no longer holds (at or below its frontier and not a retained point) is refused with
 * HistoryPrunedError: the caller reads at the watermark, which is always above the frontier
 * or the frontier itself.
 */
export async function replicaDigests(store: ObjectStore, index: ReplicaIndex, r: DigestRequest): Promise<Map<string, Uint32Array>> {
  const out = new Map<string, Uint32Array>();
  const regionSizes = new Map<string, number>();
  const pair = await index.getPair(r.pairId);
  for (const d of pair?.disks ?? []) regionSizes.set(d.name, r.regionBytes(d.name));
  const windowBytes = Math.max(32 * 1024 * 1024, ...regionSizes.values());
  await materialize(store, index, {
    pairId: r.pairId,
    seq: r.seq,
    anyAppliedSeq: true,
    history: r.history,
    readerKind: 'digests',
    lease: r.lease,
    windowBytes,
    // In the agent's process, whose memory is bounded: checked batches' extents are read again instead of kept.
    checkedBatchBytes: 0,
    sinkFor: async (disk, size) => {
      const region = regionSizes.get(disk)!;
      const digests = new Uint32Array(Math.ceil(size / region));
      out.set(disk, digests);
      return {
        doneWithWindow: true, // digested within write()
        async write(offset, window, dataRanges) {
          for (let at = 0; at < window.length; at += region) {
            const end = Math.min(at + region, window.length);
            const touched = dataRanges.some((d) => d.start < end && at < d.end); // window-relative
            digests[(offset + at) / region] = touched ? crc32c(window.subarray(at, end)) : zeroDigest(end - at);
          }
        },
        close: async () => {},
        abort: async () => {},
      };
    },
  });
  return out;
}

const zeroDigests = new Map<number, number>();

/** CRC-32C of `length` zero bytes. */
function zeroDigest(length: number): number {
  let d = zeroDigests.get(length);
  if (d === undefined) zeroDigests.set(length, (d = crc32c(new Uint8Array(length))));
  return d;
}
