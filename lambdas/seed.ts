// Seed workflow handlers (lib/seed-workflow.ts): `steps` runs validate, plan, finalize,
// catchUp, activate and fail, chosen by the task's `step`; `range` seeds one Map item.
// Two functions from one file: the range function gets more memory and time.

import { DynamoIndex } from '../adapters/dynamo-index';
import { S3ObjectStore } from '../adapters/s3-object-store';
import { activateSeed, catchUpSeed, failSeed, finalizeSeed, planSeed, seedRange, validateSeed, type SeedDeps } from '../replica/seeding';
import { jsonLogger, readConfig } from './config';

/** What a steps task sends: `{"step": "validate", "input.$": "$"}` in the state machine. */
export interface StepEvent {
  step: keyof typeof STEPS;
  input: any;
}

const STEPS = {
  validate: validateSeed,
  plan: planSeed,
  finalize: finalizeSeed,
  catchUp: catchUpSeed,
  activate: activateSeed,
  fail: failSeed,
} as const;

/** The handlers over given ports (tests and the local runner bind other stores). */
export function seedHandlers(deps: SeedDeps): { steps: (e: StepEvent) => Promise<unknown>; range: (item: { pairId: string; seedId: string; range: number }) => Promise<unknown> } {
  return {
    steps: async (event) => {
      const step = STEPS[event.step];
      if (!step) throw new Error(`unknown seed step '${String(event.step)}'`);
      const out = await step(deps, event.input);
      jsonLogger.info('seed step done', { step: event.step, pairId: event.input?.pairId, seedId: event.input?.seedId });
      return out ?? {};
    },
    range: (item) => seedRange(deps, item),
  };
}

let handlers: ReturnType<typeof seedHandlers> | undefined;
const bound = (): ReturnType<typeof seedHandlers> => {
  if (!handlers) {
    const config = readConfig();
    const store = new S3ObjectStore(config.bucket);
    // One client per bucket for the life of the function: its connections are reused.
    const sources = new Map<string, S3ObjectStore>([[config.bucket, store]]);
    const sourceStore = (bucket: string): S3ObjectStore => sources.get(bucket) ?? sources.set(bucket, new S3ObjectStore(bucket, store.client)).get(bucket)!;
    handlers = seedHandlers({ store, index: new DynamoIndex(config.table), sourceStore });
  }
  return handlers;
};

export const steps = (event: StepEvent): Promise<unknown> => bound().steps(event);
export const range = (item: { pairId: string; seedId: string; range: number }): Promise<unknown> => bound().range(item);
