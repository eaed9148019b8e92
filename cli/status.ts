// How the CLI and the demo show a pair's state and its seed run's progress.

import { shownState } from '../core/failover';
import type { Pair } from '../core/model';
import type { PairOperation } from '../replica/ports';
import { seedProgress, type SeedProgress } from '../replica/pairs';

const mib = (n: number): string => (n / 2 ** 20).toFixed(1);

/** `ranges 3/12, 48.0/192.0 MiB` (totals are '?' until the run has planned). */
export function seedProgressText(p: SeedProgress): string {
  return `ranges ${p.rangesDone}/${p.rangesTotal ?? '?'}, ${mib(p.bytesDone)}/${p.bytesTotal === undefined ? '?' : mib(p.bytesTotal)} MiB`;
}

/** One line: the pair's state (a failover operation's, with its age and why, while there is one), and its seed run's progress while there is one to show. */
export function formatStatus(pair: Pair, op?: PairOperation, nowMs = Date.now()): string {
  const p = seedProgress(pair);
  const operation = op ? `\t${op.kind} since ${ageText(nowMs - op.sinceMs)}${op.seq !== undefined ? ` (RP ${op.seq})` : ''}: ${op.reason}` : '';
  const head = `${pair.pairId}\t${shownState(pair.state, op?.phase)}\twatermark ${pair.watermark}${operation}`;
  if (!p || (p.status === 'DONE' && pair.state !== 'SEEDING')) return head;
  return `${head}\tseed ${p.seedId} ${p.status}\t${seedProgressText(p)}\t${mib(p.bytesPerSec)} MiB/s${p.reason ? `\treason: ${p.reason}` : ''}`;
}

/** `45 s`, `12 min`, `3.5 h`, `2.0 d`: how long an operation has run. */
export function ageText(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86_400).toFixed(1)} d`;
}
