// A Unix socket only its user may connect to (mode 0600): the agent's control socket and its
// NBD socket.

import { chmod } from 'node:fs/promises';
import type { Server } from 'node:net';

/**
 * Starts `server` listening on the Unix socket `path`, mode 0600. The socket is created so
 * (the umask while it binds: listen binds at once, in the main thread), and chmod'ed to it in
 * case the platform bound later. Rejects with the listen error.
 */
export function listenOwnerOnly(server: Server, path: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const umask = process.umask(0o177);
    try {
      server.listen(path, () => void chmod(path, 0o600).then(resolve, reject));
    } finally {
      process.umask(umask);
    }
  });
}
