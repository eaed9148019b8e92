// Compaction workflow handlers (lib/compaction-workflow.ts): `unit` runs one compaction unit
// of a pair and says whether another should follow; `gc` collects what old manifest versions
// stopped referencing; `sweep` (the schedule) starts a run for every pair. Three functions
// from one file: only the GC function's role may delete.

import { QueryCommand } from '@aws-sdk/lib-dynamodb';
import { documentClient } from '../adapters/dynamo-table';
import { DynamoHistory } from '../adapters/dynamo-history';
import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { compactionLauncherFromEnv } from '../adapters/sfn-compaction-launcher';
import { GC_GRACE_ENV, PAIRS_INDEX, PAIRS_KEYS, PAIRS_PK } from '../lib/names';
import { compactOnce } from '../replica/compactor';
import { gcOnce } from '../replica/gc';
import type { CompactionLauncher, HistoryIndex, KeyLister, ObjectDeleter, ObjectStore, ReplicaIndex } from '../replica/ports';
import { jsonLogger, readConfig } from './config';

/** Units one run does at most before it hands over to GC (a later trigger starts the next run). */
export const MAX_UNITS_PER_RUN = 32;

export interface RunState {
  pairId: string;
  /** Units done so far in this run. */
  units?: number;
  /** Whether the run ends with a GC pass (absent: yes). The apply path's runs say false. */
  gc?: boolean;
}

export interface CompactDeps {
  store: ObjectStore & ObjectDeleter & KeyLister;
  index: ReplicaIndex;
  history: HistoryIndex;
  /** Lists pairs for the schedule; starts runs. */
  listPairs: () => Promise<string[]>;
  launcher?: CompactionLauncher;
  /** GC's grace period (default core/gc-plan.ts DEFAULT_GC_GRACE_MS, 1 h). */
  gcGraceMs?: number;
}

/** The handlers over given ports (tests and the local runner bind other stores). */
export function compactHandlers(deps: CompactDeps, now: () => number = Date.now) {
  return {
    unit: async (state: RunState): Promise<RunState & { gc: boolean; more: boolean; published: boolean; frontierSeq: number }> => {
      const units = (state.units ?? 0) + 1;
      let out: Awaited<ReturnType<typeof compactOnce>>;
      try {
        out = await compactOnce(deps, state.pairId, { holder: `unit-${state.pairId}-${now()}`, nowMs: now() });
      } catch (err) {
        // The old manifest stays in force; the pair says why until a unit publishes.
        const e = err as Error;
        await deps.history.recordFailure(state.pairId, { reason: `${e.name}: ${e.message}`, atMs: now() }).catch(() => {});
        throw err;
      }
      const pair = await deps.index.getPair(state.pairId);
      // More to fold: an RP above the new frontier (a unit folds up to the newest RP).
      const more = out.published && units < MAX_UNITS_PER_RUN && (pair?.lastRpSeq ?? 0) > out.frontierSeq;
      jsonLogger.info('compaction unit done', { pairId: state.pairId, units, published: out.published, frontierSeq: out.frontierSeq, more });
      return { pairId: state.pairId, units, gc: state.gc !== false, more, published: out.published, frontierSeq: out.frontierSeq };
    },
    gc: async (state: RunState): Promise<{ pairId: string; units?: number; gc: unknown }> => {
      const out = await gcOnce({ ...deps, deleter: deps.store }, state.pairId, { nowMs: now(), graceMs: deps.gcGraceMs });
      jsonLogger.info('gc done', { pairId: state.pairId, out });
      return { pairId: state.pairId, units: state.units, gc: out };
    },
    sweep: async (): Promise<{ started: number }> => {
      if (!deps.launcher) throw new Error('the sweep needs the compaction state machine (LIVESYNC_COMPACTION_STATE_MACHINE_ARN)');
      const pairs = await deps.listPairs();
      for (const pairId of pairs) await deps.launcher.start(pairId, 'schedule', now());
      return { started: pairs.length };
    },
  };
}

/** Pair ids from the sparse `pairs` index (keys only: `pk` = PAIR#{id}). */
export function pairLister(table: string, doc = documentClient()): () => Promise<string[]> {
  return async () => {
    const ids: string[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const out = await doc.send(new QueryCommand({ TableName: table, IndexName: PAIRS_INDEX, KeyConditionExpression: '#p = :p', ExpressionAttributeNames: { '#p': PAIRS_KEYS.pk }, ExpressionAttributeValues: { ':p': PAIRS_PK }, ExclusiveStartKey: start }));
      for (const item of out.Items ?? []) ids.push(String(item[PAIRS_KEYS.sk]).replace(/^PAIR#/, ''));
      start = out.LastEvaluatedKey;
    } while (start);
    return ids;
  };
}

/** LIVESYNC_GC_GRACE_MS (set by the construct's gcGrace, or the local stack for the demo); undefined: the default. */
export function gcGraceFromEnv(env: NodeJS.ProcessEnv = process.env): number | undefined {
  const v = env[GC_GRACE_ENV];
  if (v === undefined || v === '') return undefined;
  const ms = Number(v);
  if (!Number.isInteger(ms) || ms < 0) throw new Error(`${GC_GRACE_ENV}=${v}: expected a whole number of milliseconds ≥ 0`);
  return ms;
}

let handlers: ReturnType<typeof compactHandlers> | undefined;
const bound = (): ReturnType<typeof compactHandlers> => {
  if (!handlers) {
    const config = readConfig();
    handlers = compactHandlers({
      store: new S3ObjectStore(config.bucket),
      index: new DynamoIndex(config.table),
      history: new DynamoHistory(config.table),
      listPairs: pairLister(config.table),
      launcher: compactionLauncherFromEnv(),
      gcGraceMs: gcGraceFromEnv(),
    });
  }
  return handlers;
};

export const unit = (state: RunState): Promise<unknown> => bound().unit(state);
export const gc = (state: RunState): Promise<unknown> => bound().gc(state);
export const sweep = (): Promise<unknown> => bound().sweep();
