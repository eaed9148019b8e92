// Starts recovery workflow runs (lib/recovery-workflow.ts) and reads their executions' status,
// with Step Functions: AWS, LocalStack or the local runner, by AWS_ENDPOINT_URL(_SFN).

import { DescribeExecutionCommand, StartExecutionCommand } from '@aws-sdk/client-sfn';
import { RECOVERY_STATE_MACHINE_ENV } from '../lib/names';
import type { RecoveryTargetSpec } from '../replica/ports';
import { sfnClient } from './aws-clients';

export interface RecoveryStart {
  pairId: string;
  recoveryId: string;
  seq?: number;
  target?: RecoveryTargetSpec;
  by?: string;
}

export class SfnRecoveryLauncher {
  constructor(
    private readonly stateMachineArn: string,
    private readonly sfn = sfnClient(),
  ) {}

  /** Starts a run (or a resume: the same recoveryId, a new attempt); the execution's ARN. Named `{recoveryId}-{attempt}`. */
  async start(input: RecoveryStart, attempt: number): Promise<string> {
    const name = `${input.recoveryId}-${attempt}`.slice(0, 80);
    const out = await this.sfn.send(new StartExecutionCommand({ stateMachineArn: this.stateMachineArn, name, input: JSON.stringify(input) }));
    return out.executionArn!;
  }

  async status(executionArn: string): Promise<{ status: string; error?: string; cause?: string }> {
    const out = await this.sfn.send(new DescribeExecutionCommand({ executionArn }));
    return { status: out.status ?? 'UNKNOWN', error: out.error, cause: out.cause };
  }

  destroy(): void {
    this.sfn.destroy();
  }
}

/** The launcher the environment configures (the stack output RecoveryStateMachineArn), if any. */
export function recoveryLauncherFromEnv(env: NodeJS.ProcessEnv = process.env): SfnRecoveryLauncher | undefined {
  const arn = env[RECOVERY_STATE_MACHINE_ENV];
  return arn ? new SfnRecoveryLauncher(arn) : undefined;
}
