// Starts seed workflow runs with Step Functions StartExecution. The endpoint comes from
// AWS_ENDPOINT_URL(_SFN) like every other client: AWS, LocalStack or the local runner.

import { StartExecutionCommand } from '@aws-sdk/client-sfn';
import type { SeedLauncher } from '../replica/ports';
import { sfnClient } from './aws-clients';

export class SfnSeedLauncher implements SeedLauncher {
  constructor(
    private readonly stateMachineArn: string,
    private readonly sfn = sfnClient(),
  ) {}

  async start(run: { pairId: string; seedId: string }, attempt: number): Promise<string> {
    // One name per attempt (≤ 80 chars: pair ≤ 63, seed id 13): a retried call is idempotent.
    const name = `${run.pairId}-${run.seedId}-${attempt}`.slice(0, 80);
    const out = await this.sfn.send(new StartExecutionCommand({ stateMachineArn: this.stateMachineArn, name, input: JSON.stringify({ pairId: run.pairId, seedId: run.seedId }) }));
    return out.executionArn!;
  }
}

/** The launcher the environment configures (LIVESYNC_SEED_STATE_MACHINE_ARN: the stack output SeedStateMachineArn). */
export function seedLauncherFromEnv(env: NodeJS.ProcessEnv = process.env): SfnSeedLauncher {
  const arn = env.LIVESYNC_SEED_STATE_MACHINE_ARN;
  if (!arn) throw new Error('LIVESYNC_SEED_STATE_MACHINE_ARN must be set to seed a pair (the stack output SeedStateMachineArn; `livesync local up` prints it)');
  return new SfnSeedLauncher(arn);
}
