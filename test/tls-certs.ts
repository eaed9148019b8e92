// Certificates for the NBD TLS tests, made by openssl: a CA, a server certificate for
// 127.0.0.1 (server-cert.pem, server-key.pem) and a client certificate (client-*.pem).

import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A CA, a server certificate for 127.0.0.1, and a client certificate, in `dir`. */
export async function makeCerts(dir: string): Promise<void> {
  const ssl = (...args: string[]): Promise<unknown> => run('openssl', args, { cwd: dir });
  await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=livesync test CA');
  for (const [who, ext] of [['server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'], ['client', 'extendedKeyUsage=clientAuth\n']] as const) {
    await writeFile(join(dir, `${who}.ext`), ext);
    await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${who}-key.pem`, '-out', `${who}.csr`, '-subj', `/CN=${who === 'server' ? 'localhost' : 'agent-client'}`);
    await ssl('x509', '-req', '-in', `${who}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${who}-cert.pem`, '-days', '2', '-extfile', `${who}.ext`);
  }
}

