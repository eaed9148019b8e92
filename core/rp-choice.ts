// Which RP an operator means (`livesync recover --rp SEQ | --latest | --at TIME | --acrp TAG`),
// chosen from the pair's live RPs (ascending by seq, as listRecoveryPoints gives them). Pure.

import { InvalidArgumentError } from './errors';
import type { RecoveryPoint } from './model';

export type RpChoice = { seq: number } | { latest: true } | { atMs: number } | { acrp: string };

/** The seq of the RP `choice` names among `rps` (live, ascending); throws InvalidArgumentError saying why none fits. */
export function chooseRp(rps: readonly RecoveryPoint[], choice: RpChoice, pairId: string): number {
  const newest = (xs: readonly RecoveryPoint[]): RecoveryPoint | undefined => xs[xs.length - 1];
  if ('seq' in choice) {
    if (!rps.some((r) => r.seq === choice.seq)) throw new InvalidArgumentError(`pair '${pairId}' has no live RP at seq ${choice.seq}${rps.length ? ` (live: ${rps[0].seq}…${newest(rps)!.seq}, see rp list)` : ''}`);
    return choice.seq;
  }
  if ('latest' in choice) {
    const r = newest(rps);
    if (!r) throw new InvalidArgumentError(`pair '${pairId}' has no live RP`);
    return r.seq;
  }
  if ('atMs' in choice) {
    // The newest RP at or before the time: what the disk was at that moment, as far as RPs tell.
    const r = newest(rps.filter((x) => x.atMs <= choice.atMs));
    if (!r) throw new InvalidArgumentError(`pair '${pairId}' has no live RP at or before ${new Date(choice.atMs).toISOString()}${rps.length ? ` (the oldest is at ${new Date(rps[0].atMs).toISOString()})` : ''}`);
    return r.seq;
  }
  const r = newest(rps.filter((x) => x.type === 'APP' && x.tag === choice.acrp));
  if (!r) throw new InvalidArgumentError(`pair '${pairId}' has no live application-consistent RP tagged '${choice.acrp}'`);
  return r.seq;
}

/** --at's value: an ISO 8601 time with a zone (2026-12-05T10:00:00Z) or epoch milliseconds. */
export function parseRpTime(value: string): number {
  const ms = /^\d+$/.test(value) ? Number(value) : /(Z|[+-]\d\d:?\d\d)$/.test(value) ? Date.parse(value) : NaN;
  if (!Number.isFinite(ms)) throw new InvalidArgumentError(`--at ${value}: expected an ISO 8601 time with its zone (2026-12-05T10:00:00Z) or epoch milliseconds`);
  return ms;
}
