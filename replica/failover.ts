// A pair's failover operations moved one action at a time (core/failover.ts says which lead
// where): the OPERATION item and the event that records the transition, in one conditional
// transaction, so two operators acting at once cannot both move it.

import { nextPhase, type OperationAction } from '../core/failover';
import { UnknownPairError } from '../core/errors';
import type { PairOperation, PairOperations, ReplicaIndex } from './ports';

export interface TransitionRequest {
  by: string;
  reason: string;
  /** For an action that starts an operation: its kind. */
  kind?: PairOperation['kind'];
  seq?: number;
  recoveryId?: string;
  outputs?: Record<string, string>;
  reversePair?: string;
}

/** Moves the pair's operation by `action`; the operation now in progress (undefined: none). */
export async function transitionPair(index: ReplicaIndex, ops: PairOperations, pairId: string, action: OperationAction, r: TransitionRequest, nowMs = Date.now()): Promise<PairOperation | undefined> {
  const pair = await index.getPair(pairId);
  if (!pair) throw new UnknownPairError(pairId);
  for (let attempt = 0; attempt < 3; attempt++) {
    const { operation: current, rev } = await ops.getOperation(pairId);
    const phase = nextPhase(pairId, current?.phase, action);
    const next: PairOperation | undefined = phase && {
      ...current, // what the operation recorded so far (its RP, its recovery) stays
      phase,
      kind: r.kind ?? current?.kind ?? 'unplanned',
      // An operation's age counts from its start; a step within it keeps that.
      sinceMs: action.endsWith('-start') || !current ? nowMs : current.sinceMs,
      by: r.by,
      reason: r.reason,
      ...(r.seq !== undefined ? { seq: r.seq } : {}),
      ...(r.recoveryId ? { recoveryId: r.recoveryId } : {}),
      ...(r.outputs ? { outputs: r.outputs } : {}),
      ...(r.reversePair ? { reversePair: r.reversePair } : {}),
    };
    const from = current?.phase ?? pair.state;
    const event = { atMs: nowMs, action, from, to: phase ?? pair.state, by: r.by, reason: r.reason, ...(r.seq !== undefined ? { seq: r.seq } : {}), ...(r.recoveryId ? { recoveryId: r.recoveryId } : {}) };
    if (await ops.transition(pairId, rev, next, event)) return next;
  }
  throw new Error(`pair '${pairId}': its operation kept changing while ${action} was recorded; look at \`livesync pair events\` and try again`);
}
