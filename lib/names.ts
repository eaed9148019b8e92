// Names shared by the CDK stack, the Lambda handlers and the local emulators, so that
// the deployed schema and the code that reads it cannot disagree.

export const TABLE_KEYS = { pk: 'pk', sk: 'sk' } as const;
/** GSI over recovery points (acrpPk / acrpSk). */
export const ACRP_INDEX = 'acrp';
export const TTL_ATTRIBUTE = 'expiresAt';
export const JOURNAL_SUFFIX = '.batch';
export const PAIRS_PREFIX = 'pairs/';
/** Raw images the recovery workflow writes into the replica bucket go under this prefix (nothing else may). */
export const RECOVERIES_PREFIX = 'recoveries/';
export const RECOVERY_STATE_MACHINE_ENV = 'LIVESYNC_RECOVERY_STATE_MACHINE_ARN';
/**
 * The agent role's pair: the principal tag IAM Roles Anywhere sets from the Common Name of
 * the host's certificate (a certificate per source host, CN = its pair id), as an IAM policy
 * variable in every resource the role may reach and in dynamodb:LeadingKeys.
 */
export const AGENT_PAIR_TAG = 'x509Subject/CN';
export const AGENT_PAIR = `\${aws:PrincipalTag/${AGENT_PAIR_TAG}}`;
/** Environment variables the apply handler reads its resource names from. */
export const ENV = { bucket: 'LIVESYNC_BUCKET', table: 'LIVESYNC_TABLE' } as const;
/** The CDK context key that picks the functions' architecture (`arm64`, the default, or `x86_64`). */
export const LAMBDA_ARCHITECTURE_CONTEXT = 'lambdaArchitecture';
/** Key attributes of the `acrp` GSI. */
export const ACRP_KEYS = { pk: 'acrpPk', sk: 'acrpSk' } as const;
/** The compaction state machine's ARN, for the functions that start runs (apply, the schedule's sweep). */
export const COMPACTION_STATE_MACHINE_ENV = 'LIVESYNC_COMPACTION_STATE_MACHINE_ARN';
/** Sparse GSI over pair items only (`pairsPk` = PAIRS_PK on every pair item): the schedule's list of pairs. */
export const PAIRS_INDEX = 'pairs';
export const PAIRS_KEYS = { pk: 'pairsPk', sk: 'pk' } as const;
export const PAIRS_PK = 'PAIRS';
/** GC's grace period in ms, for the GC function (the construct's `gcGrace`; the local stack's demo shortens it). */
export const GC_GRACE_ENV = 'LIVESYNC_GC_GRACE_MS';
