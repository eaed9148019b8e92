// Where an NBD server (the agent, an export) listens: `--listen unix:PATH` or a loopback
// HOST:PORT. NBD here has no TLS or authentication yet (issue 17), so nothing else is taken;
// a Unix socket is made 0600 (agent/nbd-server.ts): only its user may connect.

import { isAbsolute, resolve } from 'node:path';
import { InvalidArgumentError } from '../core/errors';

export type ListenAddress = { path: string } | { host: string; port: number };

/** sockaddr_un's path holds 108 bytes with its terminating NUL. */
const UNIX_PATH_MAX = 107;

/** --listen's value: `unix:PATH`, or HOST:PORT with a loopback HOST. */
export function parseListen(value: string): ListenAddress {
  if (value.startsWith('unix:')) {
    const path = value.slice('unix:'.length);
    if (!path) throw new InvalidArgumentError(`--listen ${value}: expected unix:PATH`);
    const full = isAbsolute(path) ? path : resolve(path);
    const bytes = Buffer.byteLength(full);
    if (bytes > UNIX_PATH_MAX) throw new InvalidArgumentError(`--listen unix:${full}: a Unix socket path holds at most ${UNIX_PATH_MAX} bytes, this one ${bytes}; give a shorter --listen unix:PATH (or --state-dir)`);
    return { path: full };
  }
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(value);
  if (!m || Number(m[2]) > 65535) throw new InvalidArgumentError(`--listen ${value}: expected unix:PATH or 127.0.0.1:PORT`);
  const host = m[1].replace(/^\[(.*)\]$/, '$1');
  if (!/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) && host !== '::1') {
    throw new InvalidArgumentError(`--listen ${value}: NBD is served only on a Unix socket or a loopback address (127.0.0.1, ::1): it has no TLS or authentication yet (issue 17)`);
  }
  return { host, port: Number(m[2]) };
}
