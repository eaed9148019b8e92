// Starts compaction runs (lib/compaction-workflow.ts) with Step Functions StartExecution:
// AWS, LocalStack or the local runner, by AWS_ENDPOINT_URL(_SFN) like every client.

import { ExecutionAlreadyExists, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { COMPACTION_STATE_MACHINE_ENV } from '../lib/names';
import type { CompactionLauncher, CompactionReason } from '../replica/ports';
import { sfnClient } from './aws-clients';

export class SfnCompactionLauncher implements CompactionLauncher {
  constructor(
    private readonly stateMachineArn: string,
    private readonly sfn = sfnClient(),
  ) {}

  async start(pairId: string, reason: CompactionReason, nowMs = Date.now()): Promise<string | undefined> {
    // One name per pair, reason and minute (≤ 80 chars): concurrent appliers, a retried
    // event or a retried schedule start one run, not several. An operator's, one per request.
    // A run for the apply path's backlog does not end in GC (`gc` false): GC's grace is an hour,
    // and the schedule's run every 15 minutes collects.
    const name = `${pairId}-${reason}-${reason === 'operator' ? nowMs : Math.floor(nowMs / 60_000)}`.slice(0, 80);
    try {
      const out = await this.sfn.send(new StartExecutionCommand({ stateMachineArn: this.stateMachineArn, name, input: JSON.stringify({ pairId, units: 0, gc: reason !== 'backlog' }) }));
      return out.executionArn;
    } catch (err) {
      if (!(err instanceof ExecutionAlreadyExists)) throw err;
      return undefined;
    }
  }
}

/** The launcher the environment configures, if any (a stack without the workflow has none). */
export function compactionLauncherFromEnv(env: NodeJS.ProcessEnv = process.env): SfnCompactionLauncher | undefined {
  const arn = env[COMPACTION_STATE_MACHINE_ENV];
  return arn ? new SfnCompactionLauncher(arn) : undefined;
}
