// `livesync agent`: serves the pair's disk images over NBD and streams every write to the
// pair's journal through one batch writer (all disks of a pair: one seq stream).

import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { mkdir, open, readFile, stat, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { BLOCK_SIZE } from '../core/batch-format';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import type { ObjectStore, ReplicaIndex } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { takeAcrp, type AcrpHooks } from './acrp';
import { CapturedDisk } from './captured-disk';
import { startControlSocket } from './control';
import { startNbdServer } from './nbd-server';

export interface AgentOptions {
  pairId: string;
  /** Disk name → image path; the names and sizes must be the pair's. */
  disks: { name: string; path: string }[];
  host: string;
  port: number;
  store: ObjectStore;
  index: ReplicaIndex;
  /** Where the agent keeps its local state (the next seq); default .livesync/agent/{pair}. */
  stateDir?: string;
  hooks?: Partial<AcrpHooks>;
  /** Take an ACRP tagged `acrpTag` this often (0: only on request). */
  acrpIntervalMs?: number;
  acrpTag?: string;
  log?: (m: string) => void;
}

export interface RunningAgent {
  port: number;
  writer: BatchWriter;
  /** Takes an ACRP now (hooks, flush, mark); rejects with the hook's error. */
  acrp(tag: string): Promise<number>;
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
  // Continue the pair's seq stream after everything registered and everything this agent
  // ever cut (a batch may be uploaded but not yet registered when the agent restarts).
  const stateDir = o.stateDir ?? join(process.cwd(), '.livesync', 'agent', o.pairId);
  await mkdir(stateDir, { recursive: true });
  const seqFile = join(stateDir, 'next-seq');
  const registered = await o.index.batchesAfter(o.pairId, pair.watermark, Infinity);
  const cutBefore = Number((await readFile(seqFile, 'utf8').catch(() => '0')).trim()) || 0;
  const firstSeq = registered.reduce((n, b) => Math.max(n, b.seq + 1), Math.max(pair.watermark + 1, cutBefore));

  const files = new Map<string, FileHandle>();
  for (const d of pair.disks) files.set(d.name, await open(given.get(d.name)!, 'r+'));
  const writer = new BatchWriter({
    pairId: o.pairId,
    disks: pair.disks,
    store: o.store,
    firstSeq,
    // Recorded (and synced) before the batch is uploaded: a restarted agent never reuses it.
    onCut: (seq) => writeDurably(seqFile, String(seq + 1)),
    readBlock: async (disk, block) => (await files.get(disk)!.read(Buffer.alloc(BLOCK_SIZE), 0, BLOCK_SIZE, block * BLOCK_SIZE)).buffer,
  });
  const exports = pair.disks.map((d) => new CapturedDisk(d.name, d.sizeBytes, given.get(d.name)!, files.get(d.name)!, writer));
  const server = await startNbdServer(exports, o.host, o.port, o.log);
  const hooks: AcrpHooks = { ...o.hooks, timeoutMs: o.hooks?.timeoutMs ?? 60_000 };
  // One ACRP at a time: a periodic one and a requested one must not interleave their hooks.
  let acrpChain: Promise<unknown> = Promise.resolve();
  const acrp = (tag: string): Promise<number> => {
    const run = acrpChain.then(() => takeAcrp(writer, exports, tag, hooks));
    acrpChain = run.catch(() => {});
    return run;
  };
  const control = await startControlSocket(join(stateDir, 'control.sock'), { acrp, status: () => ({ pairId: o.pairId, lastCutSeq: writer.nextSeq - 1 }) });
  const periodic = o.acrpIntervalMs
    ? setInterval(() => acrp(o.acrpTag ?? 'periodic').catch((err: Error) => o.log?.(`periodic ACRP failed, replication goes on: ${err.message}`)), o.acrpIntervalMs)
    : undefined;
  o.log?.(`agent for pair '${o.pairId}' serving ${pair.disks.map((d) => d.name).join(', ')} on nbd://${o.host}:${server.port}, next seq ${firstSeq}`);
  return {
    port: server.port,
    writer,
    acrp,
    async stop() {
      if (periodic) clearInterval(periodic);
      await control.close();
      await acrpChain;
      await server.close();
      await writer.close();
      for (const fh of files.values()) await fh.close();
    },
  };
}

/** Replaces a small file atomically and durably (write, fsync, rename, fsync the directory). */
function writeDurably(path: string, text: string): void {
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}
