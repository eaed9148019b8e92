// The agent's control socket (a Unix socket in its state directory): one JSON request per
// line, one JSON answer per line. `livesync acrp` and `livesync backup` talk to it.

import { createConnection, createServer, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { listenOwnerOnly } from './owner-socket';
import type { CaptureStatus } from './pair-capture';

/** What `livesync agent-status` shows; fields are only ever added. */
export interface AgentStatus extends CaptureStatus {
  pairId: string;
  /** The agent process's memory (MiB): resident, JS heap, external, buffers. */
  memoryMiB?: { rss: number; heap: number; external: number; buffers: number };
}

/** A full streaming backup the agent took (`livesync backup`); fields are only ever added. */
export interface AgentBackup {
  /** Key of the manifest in the agent's bucket (chunks at `chunks/` beside it). */
  manifestKey: string;
  /** `s3://{bucket}/{manifestKey}`, for `pair create --backup`; absent when the agent does not know its bucket. */
  url?: string;
  backupId: string;
  /** Every write in a batch below this seq is in the backup (baseSeq = startSeq − 1). */
  startSeq: number;
  /** Cut after the last read: base + journal are consistent from here (the first RP). */
  endSeq: number;
  appConsistent: boolean;
  appTag?: string;
  bytesRead: number;
  bytesStored: number;
  chunksStored: number;
  zeroChunks: number;
}

export interface BackupRequest {
  /** Where the manifest goes (a key, or an s3:// URL of the agent's bucket); default `pairs/{pair}/backups/{id}/manifest.json`. */
  manifestKey?: string;
  /** Take it inside a freeze window (pre-freeze/post-thaw hooks): the backup is an ACRP with this tag. */
  appTag?: string;
}

export interface ControlHandlers {
  acrp(tag: string): Promise<number>;
  /** A planned failover's final ACRP: the disks refuse writes from it on (agent/acrp.ts takeFinalAcrp). */
  fence(tag: string): Promise<number>;
  backup(req: BackupRequest): Promise<AgentBackup>;
  status(): AgentStatus;
}

export type ControlRequest = { op: 'acrp'; tag: string } | { op: 'fence'; tag: string } | ({ op: 'backup' } & BackupRequest) | { op: 'status' };
export type ControlAnswer = { ok: true; seq: number } | { ok: true; backup: AgentBackup } | { ok: true; status: AgentStatus } | { ok: false; error: string };

/** A request line longer than this is refused and its connection closed (requests are a few hundred bytes). */
export const CONTROL_LINE_MAX = 64 * 1024;

/**
 * Serves the control socket at `path`, mode 0600 (in the agent's 0700 state directory): only
 * the agent's user may ask it for ACRPs, backups or a fence.
 */
export async function startControlSocket(path: string, h: ControlHandlers): Promise<{ close(): Promise<void> }> {
  await rm(path, { force: true }); // a stale socket of a killed agent
  const server = createServer((sock) => {
    readLines(sock, (line) => void answer(line, h).then((a) => sock.write(`${JSON.stringify(a)}\n`)));
    sock.on('error', () => {});
  });
  await listenOwnerOnly(server, path);
  return { close: () => new Promise<void>((r) => server.close(() => r())) };
}

/** Calls `onLine` per request line; a line past CONTROL_LINE_MAX gets an error answer and the connection ends. */
function readLines(sock: Socket, onLine: (line: string) => void): void {
  let pending = '';
  sock.setEncoding('utf8');
  sock.on('data', (chunk: string) => {
    pending += chunk;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      onLine(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
    if (pending.length > CONTROL_LINE_MAX) {
      const a: ControlAnswer = { ok: false, error: `request line over ${CONTROL_LINE_MAX} bytes: refused` };
      sock.end(`${JSON.stringify(a)}\n`);
      sock.removeAllListeners('data');
      pending = '';
    }
  });
}

async function answer(line: string, h: ControlHandlers): Promise<ControlAnswer> {
  try {
    const req = JSON.parse(line) as ControlRequest;
    if (req.op === 'status') return { ok: true, status: h.status() };
    if (req.op === 'backup') {
      if ((req.manifestKey !== undefined && typeof req.manifestKey !== 'string') || (req.appTag !== undefined && typeof req.appTag !== 'string')) {
        return { ok: false, error: 'backup: manifestKey and appTag must be strings' };
      }
      return { ok: true, backup: await h.backup({ manifestKey: req.manifestKey, appTag: req.appTag }) };
    }
    if ((req.op !== 'acrp' && req.op !== 'fence') || typeof req.tag !== 'string') return { ok: false, error: `unknown request ${line.slice(0, 100)}` };
    return { ok: true, seq: await (req.op === 'fence' ? h.fence(req.tag) : h.acrp(req.tag)) };
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}

/** Sends one request to a running agent's control socket. */
export function callAgent(path: string, req: ControlRequest): Promise<ControlAnswer> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    sock.on('error', (err) => reject(new Error(`no agent answers on ${path}: ${err.message}`)));
    createInterface({ input: sock }).once('line', (line) => {
      sock.end();
      resolve(JSON.parse(line) as ControlAnswer);
    });
    sock.write(`${JSON.stringify(req)}\n`);
  });
}
