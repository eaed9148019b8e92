// A full streaming backup of a pair's disks into S3 (docs/design.md, "Seeding"): each disk
// read in chunks, zero chunks skipped, the rest compressed, checksummed and stored
// content-addressed next to a manifest. The agent runs it while it keeps capturing writes
// (the manifest's startSeq/endSeq say which journal makes it consistent).

import { CHUNK_BYTES, encodeChunk, isAllZero, type ChunkRef } from '../core/chunk-format';
import { backupChunkKey, type BackupManifest } from '../core/seed-manifests';
import { mapLimit } from '../replica/concurrency';
import type { ObjectStore } from '../replica/ports';
import { putOnce } from '../replica/put-once';

export interface BackupDiskSource {
  name: string;
  sizeBytes: number;
  /** Reads [offset, offset+length) of the disk as it is now. */
  read(offset: number, length: number): Promise<Buffer>;
}

export interface BackupOptions {
  store: ObjectStore;
  /** Key of the manifest; chunks go to `chunks/` beside it. */
  manifestKey: string;
  pairId: string;
  backupId: string;
  disks: BackupDiskSource[];
  /** Called before the first read: the seq from which the journal must be applied over the backup. */
  startSeq: () => Promise<number>;
  /** Called after the last read: the last seq cut (the backup is consistent with the journal from there). */
  endSeq: () => Promise<number>;
  appConsistent?: boolean;
  appTag?: string;
  /** Chunks read and stored at once (default 4). */
  concurrency?: number;
}

export interface BackupResult {
  manifest: BackupManifest;
  bytesRead: number;
  bytesStored: number;
  chunksStored: number;
  zeroChunks: number;
}

export async function writeBackup(o: BackupOptions): Promise<BackupResult> {
  const startSeq = await o.startSeq();
  const stats = { bytesRead: 0, bytesStored: 0, chunksStored: 0, zeroChunks: 0 };
  const disks: BackupManifest['disks'] = [];
  for (const disk of o.disks) {
    const count = Math.ceil(disk.sizeBytes / CHUNK_BYTES);
    const chunks: (ChunkRef | undefined)[] = new Array(count);
    await mapLimit(
      Array.from({ length: count }, (_, i) => i),
      o.concurrency ?? 4,
      async (index) => {
        const offset = index * CHUNK_BYTES;
        const data = await disk.read(offset, Math.min(CHUNK_BYTES, disk.sizeBytes - offset));
        stats.bytesRead += data.length;
        if (isAllZero(data)) {
          stats.zeroChunks++;
          return;
        }
        const { body, ref } = await encodeChunk(index, data);
        await putOnce(o.store, backupChunkKey(o.manifestKey, ref.sha256), body);
        chunks[index] = ref;
        stats.chunksStored++;
        stats.bytesStored += body.length;
      },
    );
    disks.push({ name: disk.name, sizeBytes: disk.sizeBytes, chunks: chunks.filter((c): c is ChunkRef => c !== undefined) });
  }
  const endSeq = await o.endSeq();
  const manifest: BackupManifest = {
    format: 'livesync-backup',
    version: 1,
    pairId: o.pairId,
    backupId: o.backupId,
    createdMs: Date.now(),
    chunkBytes: CHUNK_BYTES,
    startSeq,
    endSeq: Math.max(endSeq, startSeq - 1),
    appConsistent: o.appConsistent ?? false,
    ...(o.appTag ? { appTag: o.appTag } : {}),
    disks,
  };
  // The manifest last: a backup without one is not a backup (its chunks are just orphans).
  await putOnce(o.store, o.manifestKey, Buffer.from(JSON.stringify(manifest)));
  return { manifest, ...stats };
}
