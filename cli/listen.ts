// Where an NBD server (the agent, an export) listens: `--listen unix:PATH` (made 0600 by
// agent/nbd-server.ts: only its user may connect), a loopback HOST:PORT, or, only with TLS
// (`--tls-cert`/`--tls-key`, clients must STARTTLS; `--tls-ca`: and show a certificate it
// signed), any HOST:PORT.

import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { createSecureContext } from 'node:tls';
import type { NbdTls } from '../agent/nbd-server';
import { InvalidArgumentError } from '../core/errors';

export type ListenAddress = { path: string } | { host: string; port: number };

/** sockaddr_un's path holds 108 bytes with its terminating NUL. */
const UNIX_PATH_MAX = 107;

/** --listen's value: `unix:PATH`, or HOST:PORT with a loopback HOST (any HOST with `tls`). */
export function parseListen(value: string, o: { tls?: boolean } = {}): ListenAddress {
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
  if (!o.tls && !/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) && host !== '::1') {
    throw new InvalidArgumentError(`--listen ${value}: NBD is served only on a Unix socket or a loopback address (127.0.0.1, ::1) unless it is TLS (--tls-cert and --tls-key)`);
  }
  return { host, port: Number(m[2]) };
}

/** `--tls-cert FILE --tls-key FILE [--tls-ca FILE]` → the server's TLS, or undefined without them. */
export function loadNbdTls(o: { cert?: string; key?: string; ca?: string }): NbdTls | undefined {
  if (o.cert === undefined && o.key === undefined && o.ca === undefined) return undefined;
  if (o.cert === undefined || o.key === undefined) throw new InvalidArgumentError('--tls-cert and --tls-key go together (and --tls-ca needs them)');
  const read = (flag: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new InvalidArgumentError(`${flag} ${path}: ${(err as Error).message}`);
    }
  };
  const cert = read('--tls-cert', o.cert);
  const key = read('--tls-key', o.key);
  const ca = o.ca === undefined ? undefined : read('--tls-ca', o.ca);
  try {
    return { context: createSecureContext({ cert, key, ca }), requireClientCert: ca !== undefined };
  } catch (err) {
    throw new InvalidArgumentError(`--tls-cert ${o.cert} / --tls-key ${o.key}: ${(err as Error).message}`);
  }
}
