// `livesync export`: serve an RP's disks over NBD straight from the RP Store
// (replica/rp-export.ts), on a Unix socket (0600) or a loopback TCP port, until SIGINT or
// SIGTERM; the `export` reader lease is held all the while and deleted at the end.

import type { RpStore } from '../adapters/from-env';
import { startNbdServer, type NbdServer, type NbdTls } from '../agent/nbd-server';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { chooseRp, type RpChoice } from '../core/rp-choice';
import { parseListen, type ListenAddress } from './listen';
import { openRpExport, type ExportStats, type RpExport } from '../replica/rp-export';


export interface ExportCommandOptions {
  /** `unix:PATH` or `127.0.0.1:PORT` (any 127.x.y.z, or `[::1]:PORT`; port 0: any free one), or parsed. */
  listen: string | ListenAddress;
  /** TLS only (clients STARTTLS first); a non-loopback listen needs it. */
  tls?: NbdTls;
  writable?: boolean;
  /** Writable: the overlays' directory, kept at the end (default: a temporary one, removed). */
  overlayDir?: string;
  /** The window cache's bound (default 256 MiB). */
  cacheBytes?: number;
  /** The local copy's bound, bytes of data (default 2 GiB; 0: none). */
  localCopyBytes?: number;
  log?: (m: string) => void;
}

/** An export running: what it serves (the line `livesync export` prints) and how to stop it. */
export interface RunningExport {
  pairId: string;
  seq: number;
  writable: boolean;
  overlayDir?: string;
  disks: { name: string; sizeBytes: number; uri: string }[];
  server: NbdServer;
  export: RpExport;
  stats(): ExportStats;
  /** Stops serving, waits for reads in flight, closes the overlays and deletes the lease. */
  stop(): Promise<void>;
}

/** The NBD URI of export `disk` on `server`. */
export function nbdUri(server: NbdServer, listen: ListenAddress, disk: string): string {
  const name = encodeURIComponent(disk);
  if ('path' in listen) return `nbd+unix:///${name}?socket=${listen.path}`;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host;
  return `nbd://${host}:${server.port}/${name}`;
}

/** Opens the RP `choice` names of `pairId` and serves its disks over NBD. */
export async function startExport(rps: RpStore, pairId: string, choice: RpChoice, o: ExportCommandOptions): Promise<RunningExport> {
  const listen = typeof o.listen === 'string' ? parseListen(o.listen, { tls: o.tls !== undefined }) : o.listen;
  if (o.overlayDir !== undefined && !o.writable) throw new InvalidArgumentError('--overlay DIR is for a --writable export');
  const { store, index, history } = rps;
  if (!(await index.getPair(pairId))) throw new UnknownPairError(pairId);
  const seq = chooseRp(await index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000)), choice, pairId);
  const exp = await openRpExport(store, index, {
    pairId,
    seq,
    history,
    cacheBytes: o.cacheBytes,
    localCopyBytes: o.localCopyBytes,
    writable: o.writable ? { dir: o.overlayDir } : undefined,
    log: o.log,
  });
  let server: NbdServer;
  try {
    server = await startNbdServer(exp.exports, 'path' in listen ? { path: listen.path } : listen.host, 'path' in listen ? 0 : listen.port, o.log, { tls: o.tls });
  } catch (err) {
    await exp.close();
    throw err;
  }
  let stopping: Promise<void> | undefined;
  return {
    pairId,
    seq,
    writable: Boolean(o.writable),
    overlayDir: o.overlayDir,
    disks: exp.exports.map((e) => ({ name: e.name, sizeBytes: e.size, uri: nbdUri(server, listen, e.name) })),
    server,
    export: exp,
    stats: () => exp.stats(),
    stop: () =>
      (stopping ??= (async () => {
        await server.close();
        await exp.close();
      })()),
  };
}

/** `livesync export`: prints one JSON line of what it serves, then serves until SIGINT or SIGTERM. */
export async function exportCommand(rps: RpStore, pairId: string, choice: RpChoice, o: ExportCommandOptions): Promise<void> {
  const log = o.log ?? ((m: string) => console.error(`livesync: ${m}`));
  const running = await startExport(rps, pairId, choice, { ...o, log });
  const { seq, writable, overlayDir, disks } = running;
  console.log(JSON.stringify({ pair: pairId, seq, writable, ...(overlayDir ? { overlayDir } : {}), disks }));
  await new Promise<void>((done) => {
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
  await running.stop();
}
