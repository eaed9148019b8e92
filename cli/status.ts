// How the CLI and the demo show a pair's state and its seed run's progress.

import type { Pair } from '../core/model';
import { seedProgress, type SeedProgress } from '../replica/pairs';

const mib = (n: number): string => (n / 2 ** 20).toFixed(1);

/** `ranges 3/12, 48.0/192.0 MiB` (totals are '?' until the run has planned). */
export function seedProgressText(p: SeedProgress): string {
  return `ranges ${p.rangesDone}/${p.rangesTotal ?? '?'}, ${mib(p.bytesDone)}/${p.bytesTotal === undefined ? '?' : mib(p.bytesTotal)} MiB`;
}

/** One line: the pair's state, and its seed run's progress while there is one to show. */
export function formatStatus(pair: Pair): string {
  const p = seedProgress(pair);
  const head = `${pair.pairId}\t${pair.state}\twatermark ${pair.watermark}`;
  if (!p || (p.status === 'DONE' && pair.state !== 'SEEDING')) return head;
  return `${head}\tseed ${p.seedId} ${p.status}\t${seedProgressText(p)}\t${mib(p.bytesPerSec)} MiB/s${p.reason ? `\treason: ${p.reason}` : ''}`;
}
