// The agent's small state file (`state.json` in its state directory): the next seq it may
// cut, whether it is running, and what its images looked like when it stopped cleanly, so
// that a restart can tell whether its spool and dirty map still describe the images.

import { open, readFile, rename, stat } from 'node:fs/promises';
import { syncDir } from './spool';
import { dirname } from 'node:path';

export interface ImageIdentity {
  name: string;
  sizeBytes: number;
  mtimeMs: number;
  ino: number;
}

export interface AgentState {
  version: 1;
  pairId: string;
  /** No seq below this is ever cut again. */
  nextSeq: number;
  /** True from start to clean stop: found true at start means the last stop was unclean. */
  running: boolean;
  /** Images at the last clean stop. */
  images?: ImageIdentity[];
  /** The host's boot while running: an unclean stop in another boot was a host crash. */
  bootId?: string;
  /** Dirty marks were synced before image writes (they survive a host crash). */
  syncMarks?: boolean;
}

/** This boot of the host (Linux); undefined elsewhere. */
export async function currentBootId(): Promise<string | undefined> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8').catch(() => undefined))?.trim();
}

export async function readState(path: string): Promise<AgentState | undefined> {
  const text = await readFile(path, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (text === undefined) return undefined;
  const s = JSON.parse(text) as AgentState;
  if (s.version !== 1 || !Number.isSafeInteger(s.nextSeq)) throw new Error(`${path}: not an agent state file of version 1`);
  return s;
}

/** Replaces the state file atomically and durably. */
export async function writeState(path: string, s: AgentState): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(JSON.stringify(s));
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await syncDir(dirname(path));
}

export async function imageIdentity(name: string, path: string): Promise<ImageIdentity> {
  const st = await stat(path);
  return { name, sizeBytes: st.size, mtimeMs: st.mtimeMs, ino: st.ino };
}

/** Why the images do not match the identities recorded at the last clean stop, if they do not. */
export function identityChange(before: ImageIdentity[], now: ImageIdentity[]): string | undefined {
  for (const n of now) {
    const b = before.find((x) => x.name === n.name);
    if (!b) return `disk '${n.name}' has no recorded image`;
    if (b.ino !== n.ino || b.sizeBytes !== n.sizeBytes || b.mtimeMs !== n.mtimeMs) return `image of disk '${n.name}' changed while the agent was stopped`;
  }
  return undefined;
}
