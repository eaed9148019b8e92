// The guest of bench:agent's rpo and idle jobs, in a process of its own so that it runs where
// fio runs (the server's core under the pinned placement), not on the local stack's: random
// 64 KiB writes of incompressible data over the first GiB of the export at a paced rate, at
// most 16 in flight, and a FLUSH every `flushMs`. After each FLUSH's reply it asks the agent
// (control socket) which seq holds what the FLUSH covered, and prints one JSON line:
// {"flush": {"t": <epoch ms of the reply>, "status": <the agent's status>}}.
// It writes until SIGTERM, or for `writeMs` and then sends one last FLUSH (printed with
// "last": true); it ends with {"done": {"acked": <bytes acknowledged>, "ms": <writing time>}}.
// Usage (bench/agent.ts runs it): paced-load.ts '<JSON of PacedLoadArgs>'

import { randomBytes } from 'node:crypto';
import { callAgent } from '../agent/control';
import { sleep } from '../replica/concurrency';
import { NbdClient } from './nbd-client';

export interface PacedLoadArgs {
  port: number;
  exportName: string;
  controlSocket: string;
  /** Bytes per second. */
  rate: number;
  /** Bytes per write (aligned to it). */
  writeBytes: number;
  /** A FLUSH every this many ms while writing; 0: only the last. */
  flushMs: number;
  /** Write this long, then one last FLUSH, then end (default: until SIGTERM). */
  writeMs?: number;
}

const GiB = 2 ** 30;
const MAX_IN_FLIGHT = 16;
const epochMs = (): number => performance.timeOrigin + performance.now();
const print = (o: object): void => void process.stdout.write(`${JSON.stringify(o)}\n`);

async function main(args: PacedLoadArgs): Promise<void> {
  const client = await NbdClient.connect('127.0.0.1', args.port, args.exportName);
  const pool = randomBytes(32 * 2 ** 20); // random (incompressible), never repeated within a batch
  let poolAt = 0;
  let sent = 0;
  let acked = 0;
  let failure: Error | undefined;
  let stop = false;
  process.once('SIGTERM', () => void (stop = true));
  const region = Math.min(GiB, client.size);

  const flush = async (last: boolean): Promise<void> => {
    await client.flush();
    const t = epochMs();
    const answer = await callAgent(args.controlSocket, { op: 'status' });
    if (!answer.ok || !('status' in answer)) throw new Error(`agent status: ${JSON.stringify(answer)}`);
    print({ flush: { t, status: answer.status, ...(last ? { last } : {}) } });
  };

  const start = performance.now();
  let lastFlush = start;
  let flushing: Promise<void> | undefined;
  while (!stop && (args.writeMs === undefined || performance.now() - start < args.writeMs)) {
    if (failure) throw failure;
    const now = performance.now();
    while (sent < (args.rate * (now - start)) / 1000 && client.inFlight < MAX_IN_FLIGHT) {
      const offset = Math.floor(Math.random() * (region / args.writeBytes)) * args.writeBytes;
      if (poolAt + args.writeBytes > pool.length) poolAt = 0;
      const data = pool.subarray(poolAt, (poolAt += args.writeBytes));
      sent += args.writeBytes;
      client.write(offset, data).then(
        () => void (acked += args.writeBytes),
        (err: Error) => void (failure ??= err),
      );
    }
    if (args.flushMs > 0 && !flushing && now - lastFlush >= args.flushMs) {
      lastFlush = now;
      flushing = flush(false)
        .catch((err: Error) => void (failure ??= err))
        .finally(() => (flushing = undefined));
    }
    await sleep(5);
  }
  const ms = performance.now() - start;
  await flushing;
  if (args.writeMs !== undefined) await flush(true); // after every write sent: it covers what was acknowledged before it
  if (failure) throw failure;
  await client.close();
  print({ done: { acked, ms } });
}

main(JSON.parse(process.argv[2] ?? 'null') as PacedLoadArgs).then(
  () => process.exit(0),
  (err: Error) => {
    process.stderr.write(`paced-load: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
