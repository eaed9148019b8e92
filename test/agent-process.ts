// `livesync agent` as an operator runs it: a child process the tests can stop (SIGTERM) or
// kill (SIGKILL). It prints one JSON line with its port when it serves.

import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { AGENT_ENV, AGENT_NODE_FLAGS } from '../agent/runtime';

export interface AgentProcess {
  child: ChildProcess;
  port: number;
  /** Its Unix socket, when it listens on one (its default: `{stateDir}/nbd.sock`). */
  socket?: string;
  /** Its stderr, line by line. */
  log: string[];
}

/** `listen`: its --listen (default a free loopback port; null: none given, the agent's default). `args`: more options. */
export async function spawnAgentProcess(pairId: string, disks: Record<string, string>, stateDir: string, o: { listen?: string | null; args?: string[] } = {}): Promise<AgentProcess> {
  const diskArgs = Object.entries(disks).flatMap(([name, path]) => ['--disk', `${name}=${path}`]);
  const listen = o.listen === null ? [] : ['--listen', o.listen ?? '127.0.0.1:0'];
  const child = spawn(
    join(__dirname, '../node_modules/.bin/node'),
    [...AGENT_NODE_FLAGS, '--no-warnings=ExperimentalWarning', '--import', 'tsx', join(__dirname, '../cli/livesync.ts'), 'agent', '--pair', pairId, ...diskArgs, ...listen, '--state-dir', stateDir, ...(o.args ?? [])],
    { env: { ...process.env, ...AGENT_ENV }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const log: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => log.push(l));
  const serving = await new Promise<{ port?: number; socket?: string }>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', (l) => resolve(JSON.parse(l) as { port?: number; socket?: string }));
    child.once('exit', (code, signal) => reject(new Error(`agent exited (${code ?? signal}) before serving: ${log.join('\n')}`)));
  });
  return { child, port: serving.port ?? 0, socket: serving.socket, log };
}

/** Resolves once the process has exited (at once if it has). */
export const exited = (child: ChildProcess): Promise<void> =>
  new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
