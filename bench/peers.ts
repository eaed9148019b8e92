// The programs a benchmark runs beside its own code (peers to compare against, load
// generators, placement): checked before anything starts, and installed from Debian's
// packages the way `.ci/run` installs the test tools when we are root with apt-get;
// otherwise the bench stops at once, naming each missing command and its package.

import { execFileSync, spawnSync } from 'node:child_process';

/** A command a bench needs, and the Debian package that provides it. */
export interface Peer {
  command: string;
  pkg: string;
}

/** The local stack's DynamoDB Local is a Java program. */
export const JAVA_PEER: Peer = { command: 'java', pkg: 'default-jre-headless' };

export class MissingPeersError extends Error {
  constructor(readonly missing: Peer[], why: string) {
    super(`missing ${missing.map((p) => `'${p.command}' (package ${p.pkg})`).join(', ')}: ${why}`);
    this.name = 'MissingPeersError';
  }
}

const have = (command: string): boolean => spawnSync('sh', ['-c', `command -v '${command}'`], { stdio: 'ignore' }).status === 0;

/** Makes sure every peer's command is on PATH: installs the missing packages (root + apt-get) or throws MissingPeersError. */
export function ensurePeers(peers: Peer[], log: (m: string) => void): void {
  for (const p of peers) if (!/^[\w.+-]+$/.test(p.command) || !/^[\w.+-]+$/.test(p.pkg)) throw new Error(`bad peer ${JSON.stringify(p)}`);
  const missing = peers.filter((p) => !have(p.command));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((p) => p.pkg))];
  if (process.getuid?.() !== 0 || !have('apt-get')) {
    throw new MissingPeersError(missing, `install them first (apt-get install ${pkgs.join(' ')}); this bench installs them itself only as root with apt-get`);
  }
  log(`installing ${pkgs.join(', ')} for ${missing.map((p) => p.command).join(', ')} (apt-get)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    execFileSync('apt-get', ['update', '-qq'], { env, stdio: ['ignore', 'ignore', 'inherit'] });
    execFileSync('apt-get', ['install', '-y', '-qq', ...pkgs], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  } catch (err) {
    throw new MissingPeersError(missing, `apt-get install ${pkgs.join(' ')} failed: ${(err as Error).message}`);
  }
  const still = missing.filter((p) => !have(p.command));
  if (still.length) throw new MissingPeersError(still, `still not on PATH after apt-get install ${pkgs.join(' ')}`);
}
