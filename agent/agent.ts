// `livesync agent`: serves the pair's disk images over NBD and streams every write to the
// pair's journal through one batch writer (all disks of a pair: one seq stream).

import { open, stat, type FileHandle } from 'node:fs/promises';
import { BLOCK_SIZE } from '../core/batch-format';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import type { ObjectStore, ReplicaIndex } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { CapturedDisk } from './captured-disk';
import { startNbdServer } from './nbd-server';

export interface AgentOptions {
  pairId: string;
  /** Disk name → image path; the names and sizes must be the pair's. */
  disks: { name: string; path: string }[];
  host: string;
  port: number;
  store: ObjectStore;
  index: ReplicaIndex;
  log?: (m: string) => void;
}

export interface RunningAgent {
  port: number;
  writer: BatchWriter;
  stop(): Promise<void>;
}

export async function startAgent(o: AgentOptions): Promise<RunningAgent> {
  const pair = await o.index.getPair(o.pairId);
  if (!pair) throw new UnknownPairError(o.pairId);
  const given = new Map(o.disks.map((d) => [d.name, d.path]));
  for (const d of pair.disks) if (!given.has(d.name)) throw new InvalidArgumentError(`--disk ${d.name}=PATH missing: pair '${o.pairId}' has disk '${d.name}'`);
  for (const name of given.keys()) if (!pair.disks.some((d) => d.name === name)) throw new InvalidArgumentError(`pair '${o.pairId}' has no disk '${name}'`);
  for (const d of pair.disks) {
    const size = (await stat(given.get(d.name)!)).size;
    if (size !== d.sizeBytes) throw new InvalidArgumentError(`image ${given.get(d.name)} is ${size} bytes; disk '${d.name}' of pair '${o.pairId}' is ${d.sizeBytes}`);
  }
  // Continue the pair's seq stream after everything already registered.
  const registered = await o.index.batchesAfter(o.pairId, pair.watermark, Infinity);
  const firstSeq = Math.max(pair.watermark, ...registered.map((b) => b.seq)) + 1;

  const files = new Map<string, FileHandle>();
  for (const d of pair.disks) files.set(d.name, await open(given.get(d.name)!, 'r+'));
  const writer = new BatchWriter({
    pairId: o.pairId,
    disks: pair.disks,
    store: o.store,
    firstSeq,
    readBlock: async (disk, block) => (await files.get(disk)!.read(Buffer.alloc(BLOCK_SIZE), 0, BLOCK_SIZE, block * BLOCK_SIZE)).buffer,
  });
  const exports = pair.disks.map((d) => new CapturedDisk(d.name, d.sizeBytes, given.get(d.name)!, files.get(d.name)!, writer));
  const server = await startNbdServer(exports, o.host, o.port, o.log);
  o.log?.(`agent for pair '${o.pairId}' serving ${pair.disks.map((d) => d.name).join(', ')} on nbd://${o.host}:${server.port}, next seq ${firstSeq}`);
  return {
    port: server.port,
    writer,
    async stop() {
      await server.close();
      await writer.close();
      for (const fh of files.values()) await fh.close();
    },
  };
}
