// Recovery workflow handlers (lib/recovery-workflow.ts): `recoveryStep` plans (or resumes),
// finishes and fails a run, chosen by the task's `step`; `recoveryRange` recovers one Map item.
// Two functions from one file: the range function gets more memory.

import { ebsClient } from '../adapters/aws-clients';
import { DynamoHistory } from '../adapters/dynamo-history';
import { DynamoIndex } from '../adapters/dynamo-index';
import { DynamoRecoveries } from '../adapters/dynamo-recoveries';
import { ebsSnapshots } from '../adapters/ebs-snapshot-sink';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { failRecovery, finishRecovery, recoverRange, startRecovery, type RangeItem, type RecoveryDeps } from '../replica/recovery-run';
import { jsonLogger, readConfig } from './config';

/** What a step task sends: `{"step": "start", "input.$": "$"}` in the state machine. */
export interface RecoveryStepEvent {
  step: keyof typeof STEPS;
  input: any;
}

const STEPS = { start: startRecovery, finish: finishRecovery, fail: failRecovery } as const;

/** The handlers over given ports (tests and the local runner bind other stores). */
export function recoveryHandlers(deps: RecoveryDeps): { recoveryStep: (e: RecoveryStepEvent) => Promise<unknown>; recoveryRange: (item: RangeItem) => Promise<unknown> } {
  return {
    recoveryStep: async (event) => {
      const step = STEPS[event.step];
      if (!step) throw new Error(`unknown recovery step '${String(event.step)}'`);
      const out = await step(deps, event.input);
      jsonLogger.info('recovery step done', { step: event.step, pairId: event.input?.pairId, recoveryId: event.input?.recoveryId });
      return out;
    },
    recoveryRange: (item) => recoverRange(deps, item),
  };
}

/** The deployed ports: the RP Store, any target bucket (one client per bucket), the EBS direct APIs. */
export function recoveryDepsFromConfig(config = readConfig()): RecoveryDeps {
  const store = new S3ObjectStore(config.bucket);
  const targets = new Map<string, S3ObjectStore>([[config.bucket, store]]);
  return {
    store,
    index: new DynamoIndex(config.table),
    history: new DynamoHistory(config.table),
    runs: new DynamoRecoveries(config.table),
    targetStore: (bucket) => targets.get(bucket) ?? targets.set(bucket, new S3ObjectStore(bucket, store.client)).get(bucket)!,
    snapshots: ebsSnapshots(ebsClient(), (m) => jsonLogger.warn(m)),
    log: (m) => jsonLogger.info(m),
  };
}

let handlers: ReturnType<typeof recoveryHandlers> | undefined;
const bound = (): ReturnType<typeof recoveryHandlers> => (handlers ??= recoveryHandlers(recoveryDepsFromConfig()));

export const recoveryStep = (event: RecoveryStepEvent): Promise<unknown> => bound().recoveryStep(event);
export const recoveryRange = (item: RangeItem): Promise<unknown> => bound().recoveryRange(item);
