// Handler configuration, read once per cold start from the environment that the CDK
// construct (or the local stack) sets. Endpoints are never configured here: the AWS SDK
// reads AWS_ENDPOINT_URL* itself, so the same bundle runs in AWS, LocalStack and locally.

export interface HandlerConfig {
  bucket: string;
  table: string;
  /** The apply queue's URL (the apply handler sends the RP timer's checks to it); other handlers have none. */
  applyQueueUrl?: string;
}

/** The variable that carries the apply queue's URL to the apply handler (set by lib/apply-pipeline.ts and the local stack). */
export const APPLY_QUEUE_URL_ENV = 'LIVESYNC_APPLY_QUEUE_URL';

export function readConfig(env: NodeJS.ProcessEnv = process.env, opts: { applyQueue?: boolean } = {}): HandlerConfig {
  const missing = ['LIVESYNC_BUCKET', 'LIVESYNC_TABLE', ...(opts.applyQueue ? [APPLY_QUEUE_URL_ENV] : [])].filter((k) => !env[k]);
  if (missing.length) throw new Error(`handler environment lacks ${missing.join(', ')}`);
  return { bucket: env.LIVESYNC_BUCKET!, table: env.LIVESYNC_TABLE!, ...(env[APPLY_QUEUE_URL_ENV] ? { applyQueueUrl: env[APPLY_QUEUE_URL_ENV] } : {}) };
}

/** LOG_LEVEL as it is now (a process that sets it after importing a handler is obeyed). */
const quiet = (): boolean => (process.env.LOG_LEVEL ?? 'info').toLowerCase() !== 'info';

/** One JSON line per event, the shape CloudWatch Logs Insights queries well. LOG_LEVEL=warn quiets info. */
export const jsonLogger = {
  info: (msg: string, data?: object): void => {
    if (!quiet()) console.log(JSON.stringify({ level: 'info', msg, ...data }));
  },
  warn: (msg: string, data?: object): void => console.warn(JSON.stringify({ level: 'warn', msg, ...data })),
};
