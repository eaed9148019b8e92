// Failover operations as a pair lives through them (docs/design.md, "Failover operations"):
// which operation phase an action leads to from which, and what an operator sees. Pure: the
// table is the contract, tested as one.
//
//   (none) --test-start--> TEST --test-ready--> TEST --test-cleanup--> (none)
//   (none) --failover-start--> FAILING_OVER --failover-done--> FAILED_OVER
//                              FAILING_OVER --failover-failed--> (none)
//   FAILED_OVER --failback-start--> FAILING_BACK --failback-done--> (none)
//                                   FAILING_BACK --failback-failed--> FAILED_OVER
// Replication's own states (REPLICATING, PAUSED, RESYNCING, ERROR, …) stay on the pair; an
// operation phase, while there is one, is what the pair shows.

import { InvalidArgumentError } from './errors';

export type OperationPhase = 'TEST' | 'FAILING_OVER' | 'FAILED_OVER' | 'FAILING_BACK';
export type OperationAction = 'test-start' | 'test-ready' | 'test-cleanup' | 'failover-start' | 'failover-done' | 'failover-failed' | 'failback-start' | 'failback-done' | 'failback-failed';

const NONE = 'NONE';
type From = OperationPhase | typeof NONE;

const NEXT: Record<From, Partial<Record<OperationAction, From>>> = {
  NONE: { 'test-start': 'TEST', 'failover-start': 'FAILING_OVER' },
  TEST: { 'test-ready': 'TEST', 'test-cleanup': NONE },
  FAILING_OVER: { 'failover-done': 'FAILED_OVER', 'failover-failed': NONE },
  FAILED_OVER: { 'failback-start': 'FAILING_BACK' },
  FAILING_BACK: { 'failback-done': NONE, 'failback-failed': 'FAILED_OVER' },
};

/** What an operator should do instead, when an action does not apply. */
const HINT: Partial<Record<From, string>> = {
  NONE: 'no operation is in progress',
  TEST: 'a test failover is running: end it with `livesync failover cleanup` first',
  FAILING_OVER: 'a failover is in progress',
  FAILED_OVER: 'the pair has failed over: fail back first',
  FAILING_BACK: 'a failback is in progress',
};

/** The phase `action` leads to from `current` (undefined: none); an action that does not apply is refused, naming both. */
export function nextPhase(pairId: string, current: OperationPhase | undefined, action: OperationAction): OperationPhase | undefined {
  const from: From = current ?? NONE;
  const to = NEXT[from][action];
  if (!to) throw new InvalidArgumentError(`pair '${pairId}' is ${from === NONE ? 'not in an operation' : from}: cannot ${action} (${HINT[from]})`);
  return to === NONE ? undefined : to;
}

/** What the pair shows: the operation's phase while there is one, else replication's state. */
export const shownState = (replicationState: string, phase: OperationPhase | undefined): string => phase ?? replicationState;
