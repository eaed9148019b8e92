// A handler module for test/lambda-process.test.ts, run in a process of its own.

import { getPriority } from 'node:os';

export const echo = async (input: unknown): Promise<unknown> => ({ input, pid: process.pid, env: process.env.LAMBDA_FIXTURE_MARK ?? null });
export const niceness = async (): Promise<number> => getPriority();
export const fail = async (): Promise<never> => {
  throw Object.assign(new Error('the fixture failed on purpose'), { name: 'FixtureError' });
};
/** Dies mid-invocation, as a Lambda sandbox that crashes. */
export const die = async (): Promise<never> => process.exit(3);
/** Answers after `ms` (an invocation that is still running when the test kills its process). */
export const slow = async (input: { ms: number }): Promise<number> => new Promise((resolve) => setTimeout(() => resolve(process.pid), input.ms));
