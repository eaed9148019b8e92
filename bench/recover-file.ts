// The CLI's recovery into a file, for bench:recover: in a process of its own, as an operator
// runs `livesync recover --to file:DIR` (and as restic runs beside it), not in the bench's
// process, whose event loop also serves the local S3. It loads everything, prints "ready",
// waits for a line on stdin, recovers, and prints {"seconds": …, "cpuS": …} (the recovery
// alone: its wall time, and the CPU time of all its threads, the decoding workers' too).
// Usage: recover-file.ts PAIR SEQ DIR (the RP Store from the environment).

import { createInterface } from 'node:readline';
import { rpStoreFromEnv } from '../adapters/from-env';
import { recoverCommand } from '../cli/recover';

async function main([pairId, seq, dir]: string[]): Promise<void> {
  const rps = rpStoreFromEnv();
  await rps.index.getPair(pairId); // connections up before the clock starts
  process.stdout.write('ready\n');
  await new Promise((r) => createInterface({ input: process.stdin }).once('line', r));
  const t = performance.now();
  const cpu = process.cpuUsage();
  await recoverCommand(rps, pairId, { seq: Number(seq) }, { kind: 'file', dir });
  const seconds = (performance.now() - t) / 1000;
  const used = process.cpuUsage(cpu);
  process.stdout.write(`${JSON.stringify({ seconds, cpuS: (used.user + used.system) / 1e6 })}\n`);
  process.exit(0);
}

main(process.argv.slice(2)).catch((err) => {
  console.error(err);
  process.exit(1);
});
