#!/usr/bin/env -S npx tsx
// livesync command line. `livesync help` lists the commands; README.md describes them.
// The local stack and the demo (which pull in the CDK app, for the table schema) load only
// when asked for: the agent stays small.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { userInfo } from 'node:os';
import { rpStoreFromEnv } from '../adapters/from-env';
import { recoverCommand, recoveryTargetOf, rpChoiceOf, showRun } from './recover';
import { DynamoRecoveries } from '../adapters/dynamo-recoveries';
import { DynamoOperations } from '../adapters/dynamo-operations';
import { failoverCleanup, failoverPlanned, failoverTest, failoverToExport, failoverUnplanned, type FailoverContext } from './failover';
import { failbackFinish, failbackStart } from './failback';
import { exportCommand } from './export';
import { loadNbdTls, parseListen } from './listen';
import type { NbdTls } from '../agent/nbd-server';
import { shownState } from '../core/failover';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { seedBackupKey } from '../core/keys';

import { createPair, pinRp, setRetention, startSeed, unpinRp } from '../replica/pairs';
import { seedLauncherFromEnv } from '../adapters/sfn-seed-launcher';
import { compactionLauncherFromEnv } from '../adapters/sfn-compaction-launcher';
import { COMPACTION_STATE_MACHINE_ENV } from '../lib/names';
import { seedRunEnded, type RecoveryPoint } from '../core/model';
import { rpLives, rpUntil } from '../core/retention';
import { formatStatus } from './status';
import { parseDiskSpec, parseDuration, parseIntArg, parsePositiveDuration, parseSize, parseTier, required } from './args';
import { startAgent } from '../agent/agent';
import { callAgent } from '../agent/control';
import { ensureAgentRuntime } from '../agent/runtime';

const USAGE = `usage: livesync <command> [options]

  demo [--disk-size 256M] [--seconds 12] [--rate 8M] [--ccrp-interval 2s] [--seed N] [--keep]
        the main job on the embedded local stack: replicate, take RPs, recover, verify
  local up [--json] [--until-stdin-closes] [--template FILE]
        start DynamoDB Local, S3 and SQS on 127.0.0.1 with the apply event path; prints
        the environment to use (export lines, or one JSON line); stops on SIGINT/SIGTERM;
        --template: build from a synthesized template (e.g. cdk.out/Livesync.template.json)
  pair create --pair P --disk NAME=SIZE [--disk ...] [--ccrp-interval 5s] [--backup s3://BUCKET/KEY | --backup agent]
        with --backup the seed workflow starts: CONFIGURED → SEEDING → REPLICATING; with
        'agent' the pair's agent takes the backup when it starts and the workflow waits for it
  pair seed --pair P [--force]
        re-run seeding after SEED_FAILED (finished ranges are kept)
  pair status --pair P [--watch]
        state and seeding progress (ranges, bytes, rate); --watch until seeding ends
  pair show --pair P
        the pair item, its history (manifest version, frontier, GC, the last compaction failure) and quarantine
  pair compact --pair P
        start a compaction run now (compaction, then GC), as the schedule does every 15 min
  pair set-retention --pair P --tier WINDOW:SPACING [--tier ...] [--app-tier WINDOW:SPACING ...]
        a new retention policy (e.g. --tier 1h:0 --tier 1d:15m --tier 7d:1h --app-tier 30d:1d:
        every RP for 1 h, one per 15 min for 1 d, …); live RPs are judged again under it (an
        expired one stays expired); after a crash, run it again to finish
  rp list --pair P [--app] [--json]
        one line per live RP, tab-separated: seq, type, time, until (or 'pinned'), why it
        lives (the pin, or the tiers that keep it), tag; --json: one JSON object a line
  rp pin --pair P --seq N --reason TEXT [--by NAME]
        the RP lives until unpinned, whatever the policy (it must have > 60 s left)
  rp unpin --pair P --seq N
        judged again under the policy in force: it may expire at once
  recover --pair P (--rp SEQ | --latest | --at TIME | --acrp TAG) --to (ebs | s3://BUCKET/PREFIX | file:DIR)
        the RP: a live one by seq, the newest, the newest at or before TIME (ISO 8601 with zone,
        or epoch ms), or the newest ACRP tagged TAG; --to ebs: an EBS snapshot per disk (EBS
        direct APIs), incremental from the disk's last one, ready for CreateVolume or
        RegisterImage, ids printed; s3://: DISK.img objects under PREFIX (in the RP Store's
        bucket under recoveries/ only); file:DIR: DIR/DISK.img. ebs and s3:// run in the cloud
        (the recovery workflow, LIVESYNC_RECOVERY_STATE_MACHINE_ARN), followed until done
        unless --no-wait; --in-process does them from this process instead
        (--seq N, --out DIR and --to-s3 PREFIX, in the RP Store's bucket, still work)
        with --to ebs: [--create-volume AZ [--volume-type gp3]] [--register-image NAME
        [--architecture x86_64|arm64] [--boot-mode uefi|legacy-bios]]: then a volume per disk
        in the zone, and/or an AMI (first disk the root device /dev/xvda, then /dev/xvdb, …)
  export --pair P (--rp SEQ | --latest | --at TIME | --acrp TAG) --listen (unix:PATH | 127.0.0.1:PORT)
        [--tls-cert FILE --tls-key FILE [--tls-ca FILE]] (TLS only; then any --listen HOST:PORT)
        [--writable [--overlay DIR]] [--cache 256M] [--local-copy 2G]
        serve the RP's disks over NBD straight from the RP Store (one export per disk, named after
        it; one JSON line gives each disk's nbd URI) until SIGINT/SIGTERM, under a reader lease;
        read-only, or --writable into a local copy-on-write overlay (DIR kept; default a temporary
        one, removed); never writes to the RP Store. Windows read are copied to local disk (up to
        --local-copy bytes of data, 0 none; removed at the end) and served from there once the
        memory cache (--cache) let them go. A Unix socket (0600) or loopback only: no TLS yet
  recover --pair P --resume ID [--no-wait]
        resume a failed recovery run: only the ranges not done are recovered
  recovery list --pair P | recovery show --pair P --id ID
        recovery runs: target, status, progress (done of total, rate, time left), outputs
  failover test --pair P (--rp SEQ | --latest | --at TIME | --acrp TAG) (--to TARGET | --listen ADDRESS [--writable])
        recover the RP as a sandboxed copy while replication goes on, or (--listen) serve it
        at once over NBD as \`export\` does until SIGINT, which ends the test; the pair shows TEST
  failover cleanup --pair P [--reason R]
        end the test failover (what it made is printed, and kept)
  failover planned --pair P --to TARGET [--state-dir DIR] [--tag T] [--timeout 10m]
        the source's agent takes a final ACRP (pre-freeze hook) and refuses writes from then
        on; once applied, that exact RP is recovered: FAILING_OVER -> FAILED_OVER, no write lost
  failover unplanned --pair P (--rp SEQ | --latest | --at TIME | --acrp TAG) (--to TARGET | --listen ADDRESS [--writable])
        the source is gone: recover the chosen RP, or serve it at once over NBD (instant
        recovery; run \`recover\` meanwhile for a full copy); FAILING_OVER -> FAILED_OVER
  failback start --pair P --reverse R
        after a failover: pair R (created if absent) protects the recovered disks in reverse
        (run \`livesync agent --pair R --disk NAME=RECOVERED\` beside them); FAILED_OVER -> FAILING_BACK
  failback finish --pair P --disk NAME=SOURCE_IMAGE [...] [--reverse-state-dir DIR] [--region 64K]
        the reverse agent takes a final ACRP and refuses writes; the source's images get only
        the blocks that differ (their own writes after the failover RP set back, found by
        region checksums, and every block written on the recovery side); then restart the
        source's agent: it resyncs the pair to its images
  pair events --pair P
        every failover transition: when, from, to, who asked, why
  agent --pair P --disk NAME=PATH [--disk ...] [--listen unix:PATH | 127.0.0.1:PORT] [--state-dir DIR]
        [--tls-cert FILE --tls-key FILE [--tls-ca FILE]] (TLS only; then any --listen HOST:PORT)
        [--pre-freeze CMD] [--post-thaw CMD] [--hook-timeout 60s] [--acrp-interval 1h --acrp-tag T]
        [--spool-size 1G] [--bandwidth 20M (bytes/s)] [--upload-interval 1s] [--verify-replica] [--sync-marks]
        serve the images over NBD; every write goes to the image and to the journal, in about
        one object per upload interval (fewer while uploads are behind; more when batches fill)
  acrp --pair P --tag T [--state-dir DIR]
        ask the pair's running agent for an application-consistent RP now
  backup --pair P [--to KEY] [--app-tag T] [--state-dir DIR]
        take a full streaming backup through the running agent; prints its s3:// URL for
        \`pair create --backup\` (default key pairs/P/backups/ID/manifest.json; --app-tag: inside
        a freeze window, an ACRP)
  agent-status --pair P [--state-dir DIR]
        the running agent's state as JSON (last cut seq, spool, mode)

The RP Store is found through LIVESYNC_BUCKET and LIVESYNC_TABLE, the workflows through
LIVESYNC_SEED_STATE_MACHINE_ARN and LIVESYNC_RECOVERY_STATE_MACHINE_ARN, endpoints through AWS_ENDPOINT_URL* (unset in AWS).`;

type Opts = Record<string, string | boolean | string[] | undefined>;

/** --pair and the options that name an RP (core/rp-choice.ts; --seq is --rp's old name). */
const RP_OPTIONS = {
  pair: { type: 'string' },
  rp: { type: 'string' },
  seq: { type: 'string' },
  latest: { type: 'boolean' },
  at: { type: 'string' },
  acrp: { type: 'string' },
} as const;

/** NBD over TLS (cli/listen.ts): a server certificate and key, and the CA clients must show a certificate of. */
const TLS_OPTIONS = {
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
} as const;
const tlsOf = (o: Opts): NbdTls | undefined => loadNbdTls({ cert: o['tls-cert'] as string | undefined, key: o['tls-key'] as string | undefined, ca: o['tls-ca'] as string | undefined });

/** Who asks (recorded on pins and transitions): --by, else the user. */
const operatorName = (by: string | undefined): string => by ?? process.env.USER ?? userInfo().username;

/** What the failover and failback commands work with: the RP Store, the pair's operations, who asks, stderr. */
function operatorContext(by: string | undefined): FailoverContext {
  const rps = rpStoreFromEnv();
  return { rps, ops: new DynamoOperations(rps.table), by: operatorName(by), log: (l) => console.error(l) };
}

/** --disk NAME=PATH, repeated. */
function diskPaths(o: Opts): { name: string; path: string }[] {
  return ((o.disk as string[] | undefined) ?? []).map((v) => {
    const i = v.indexOf('=');
    if (i <= 0) throw new InvalidArgumentError(`--disk: '${v}' is not NAME=PATH`);
    return { name: v.slice(0, i), path: v.slice(i + 1) };
  });
}

async function main(argv: string[]): Promise<number> {
  const [cmd, sub] = argv;
  const grouped = ['pair', 'local', 'rp', 'recovery', 'failover', 'failback'].includes(cmd);
  const rest = argv.slice(grouped ? 2 : 1);
  const opts = (spec: ParseArgsConfig['options']): Opts => parseArgs({ args: rest, options: spec, strict: true, allowPositionals: false }).values as Opts;
  const str = (o: Opts, k: string): string | undefined => o[k] as string | undefined;

  const command = `${cmd}${grouped ? ` ${sub}` : ''}`;
  switch (command) {
    case 'demo': {
      const o = opts({ 'disk-size': { type: 'string' }, seconds: { type: 'string' }, rate: { type: 'string' }, 'ccrp-interval': { type: 'string' }, seed: { type: 'string' }, keep: { type: 'boolean' } });
      const { runDemo } = await import('./demo');
      const ok = await runDemo({
        diskBytes: parseSize('disk-size', str(o, 'disk-size') ?? '256M'),
        seconds: parseIntArg('seconds', str(o, 'seconds') ?? '12'),
        rate: parseSize('rate', str(o, 'rate') ?? '8M'),
        ccrpIntervalMs: parseDuration('ccrp-interval', str(o, 'ccrp-interval') ?? '2s'),
        seed: parseIntArg('seed', str(o, 'seed') ?? String(Date.now() % 1e6)),
        keep: Boolean(o.keep),
        log: (line) => console.log(line),
      });
      return ok ? 0 : 1;
    }
    case 'local up': {
      const o = opts({ json: { type: 'boolean' }, 'until-stdin-closes': { type: 'boolean' }, template: { type: 'string' } });
      const { startLocalStack } = await import('../local/stack');
      const templateFile = str(o, 'template');
      const template = templateFile ? await readTemplate(templateFile) : undefined;
      const stack = await startLocalStack({ log: (m) => console.error(m), template });
      if (o.json) console.log(JSON.stringify(stack.env));
      else for (const [k, v] of Object.entries(stack.env)) console.log(`export ${k}=${v}`);
      console.error('local stack up; Ctrl-C stops it');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
        if (o['until-stdin-closes']) {
          // The parent (a test runner) holds our stdin; when it dies, we stop too.
          process.stdin.once('end', resolve).resume();
        }
      });
      await stack.stop();
      return 0;
    }
    case 'pair create': {
      const o = opts({ pair: { type: 'string' }, disk: { type: 'string', multiple: true }, 'ccrp-interval': { type: 'string' }, backup: { type: 'string' } });
      const disks = ((o.disk as string[] | undefined) ?? []).map(parseDiskSpec);
      const interval = str(o, 'ccrp-interval');
      const { index, bucket } = rpStoreFromEnv();
      const pairId = required('pair', str(o, 'pair'));
      // `agent`: the pair's agent takes the backup when it starts; the workflow waits for it.
      const backup = str(o, 'backup') === 'agent' ? `s3://${bucket}/${seedBackupKey(pairId)}` : str(o, 'backup');
      // Checked before the pair exists, so a missing setting leaves nothing half-made.
      const launcher = backup ? seedLauncherFromEnv() : undefined;
      const pair = await createPair(index, {
        pairId,
        disks,
        ccrpIntervalMs: interval ? parseDuration('ccrp-interval', interval) : undefined,
        backup,
      });
      const seed = launcher ? await startSeed(index, launcher, pair.pairId) : undefined;
      console.log(JSON.stringify(seed ? { ...pair, seed: { ...pair.seed, ...seed } } : pair, null, 2));
      return 0;
    }
    case 'pair seed': {
      const o = opts({ pair: { type: 'string' }, force: { type: 'boolean' } });
      const pairId = required('pair', str(o, 'pair'));
      console.log(JSON.stringify(await startSeed(rpStoreFromEnv().index, seedLauncherFromEnv(), pairId, o.force === true)));
      return 0;
    }
    case 'pair status': {
      const o = opts({ pair: { type: 'string' }, watch: { type: 'boolean' } });
      const pairId = required('pair', str(o, 'pair'));
      const { index, table } = rpStoreFromEnv();
      const ops = new DynamoOperations(table);
      for (;;) {
        const pair = await index.getPair(pairId);
        if (!pair) throw new UnknownPairError(pairId);
        console.log(formatStatus(pair, (await ops.getOperation(pairId)).operation));
        if (!o.watch || seedRunEnded(pair)) return pair.state === 'SEED_FAILED' ? 1 : 0;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    case 'pair show': {
      const o = opts({ pair: { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const { index, history } = rpStoreFromEnv();
      const pair = await index.getPair(pairId);
      if (!pair) throw new InvalidArgumentError(`unknown pair '${pairId}'`);
      // history: the manifest version in force, its frontier, GC's progress, and why the last unit failed (if one did since).
      const { operation } = await new DynamoOperations(rpStoreFromEnv().table).getOperation(pairId);
      // shownState: a failover operation's phase while one is in progress; operation: what, since when, who, why.
      console.log(JSON.stringify({ ...pair, shownState: shownState(pair.state, operation?.phase), operation, history: await history.getHistory(pairId), quarantine: await index.listQuarantine(pairId) }, null, 2));
      return 0;
    }
    case 'pair compact': {
      const o = opts({ pair: { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      if (!(await rpStoreFromEnv().index.getPair(pairId))) throw new UnknownPairError(pairId);
      const launcher = compactionLauncherFromEnv();
      if (!launcher) throw new InvalidArgumentError(`${COMPACTION_STATE_MACHINE_ENV} must be set to start a compaction run (the stack output CompactionStateMachineArn; \`livesync local up\` prints it)`);
      console.log(JSON.stringify({ pairId, executionArn: await launcher.start(pairId, 'operator') }));
      return 0;
    }
    case 'pair set-retention': {
      const o = opts({ pair: { type: 'string' }, tier: { type: 'string', multiple: true }, 'app-tier': { type: 'string', multiple: true } });
      const pairId = required('pair', str(o, 'pair'));
      const all = ((o.tier as string[] | undefined) ?? []).map((t) => parseTier('tier', t));
      const app = ((o['app-tier'] as string[] | undefined) ?? []).map((t) => parseTier('app-tier', t));
      if (all.length === 0) throw new InvalidArgumentError('--tier is required (at least one, for all RPs)');
      console.log(JSON.stringify(await setRetention(rpStoreFromEnv().index, pairId, { all, app })));
      return 0;
    }
    case 'rp list': {
      const o = opts({ pair: { type: 'string' }, app: { type: 'boolean' }, json: { type: 'boolean' } });
      const pairId = required('pair', str(o, 'pair'));
      const { index } = rpStoreFromEnv();
      if (!(await index.getPair(pairId))) throw new UnknownPairError(pairId);
      const rps = await index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000), o.app ? 'APP' : undefined);
      for (const rp of rps) console.log(o.json ? JSON.stringify(rp) : rpLine(rp));
      return 0;
    }
    case 'rp pin': {
      const o = opts({ pair: { type: 'string' }, seq: { type: 'string' }, reason: { type: 'string' }, by: { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const seq = parseIntArg('seq', required('seq', str(o, 'seq')));
      const reason = required('reason', str(o, 'reason'));
      const by = operatorName(str(o, 'by'));
      console.log(rpLine(await pinRp(rpStoreFromEnv().index, pairId, seq, { by, reason })));
      return 0;
    }
    case 'rp unpin': {
      const o = opts({ pair: { type: 'string' }, seq: { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const seq = parseIntArg('seq', required('seq', str(o, 'seq')));
      const rp = await unpinRp(rpStoreFromEnv().index, pairId, seq);
      console.log(rpLine(rp));
      if (!rpLives(rp, Date.now())) console.error(`livesync: RP ${seq} of pair '${pairId}' expired at once under the policy in force (TTL deletes it)`);
      return 0;
    }
    case 'recover': {
      const o = opts({
        ...RP_OPTIONS,
        to: { type: 'string' },
        out: { type: 'string' },
        'to-s3': { type: 'string' },
        resume: { type: 'string' },
        'in-process': { type: 'boolean' },
        'no-wait': { type: 'boolean' },
        'create-volume': { type: 'string' },
        'volume-type': { type: 'string' },
        'register-image': { type: 'string' },
        architecture: { type: 'string' },
        'boot-mode': { type: 'string' },
      });
      const pairId = required('pair', str(o, 'pair'));
      const bootable = { volumeZone: str(o, 'create-volume'), volumeType: str(o, 'volume-type'), imageName: str(o, 'register-image'), architecture: str(o, 'architecture'), bootMode: str(o, 'boot-mode') };
      if ((bootable.volumeZone || bootable.imageName) && (o.to !== 'ebs' || o['no-wait'])) throw new InvalidArgumentError('--create-volume and --register-image follow a recovery into EBS: give --to ebs (and not --no-wait)');
      const flags = { resume: str(o, 'resume'), inProcess: o['in-process'] === true, wait: o['no-wait'] !== true, bootable };
      const choice = flags.resume ? undefined : rpChoiceOf(o);
      const target = flags.resume ? undefined : recoveryTargetOf(o);
      console.log(JSON.stringify(await recoverCommand(rpStoreFromEnv(), pairId, choice, target, flags), null, 2));
      return 0;
    }
    case 'failover test':
    case 'failover unplanned':
    case 'failover planned':
    case 'failover cleanup': {
      const o = opts({
        ...RP_OPTIONS,
        to: { type: 'string' },
        'state-dir': { type: 'string' },
        tag: { type: 'string' },
        timeout: { type: 'string' },
        reason: { type: 'string' },
        by: { type: 'string' },
        listen: { type: 'string' },
        writable: { type: 'boolean' },
        overlay: { type: 'string' },
      });
      const pairId = required('pair', str(o, 'pair'));
      const ctx = operatorContext(str(o, 'by'));
      if (o.listen !== undefined && (command === 'failover test' || command === 'failover unplanned')) {
        if (o.to !== undefined) throw new InvalidArgumentError('give --to TARGET (a copy) or --listen ADDRESS (an export), not both');
        const kind = command === 'failover test' ? 'test' : 'unplanned';
        const { operation, running } = await failoverToExport(ctx, pairId, kind, rpChoiceOf(o), { listen: str(o, 'listen')!, writable: o.writable === true, overlayDir: str(o, 'overlay'), log: (m) => console.error(`livesync: ${m}`) });
        console.log(JSON.stringify({ operation, disks: running.disks }));
        await new Promise<void>((done) => {
          process.once('SIGINT', done);
          process.once('SIGTERM', done);
        });
        await running.stop();
        if (kind === 'test') await failoverCleanup(ctx, pairId, 'the test export stopped');
        return 0;
      }
      let out: unknown;
      if (command === 'failover cleanup') out = await failoverCleanup(ctx, pairId, str(o, 'reason') ?? 'test failover ended');
      else if (command === 'failover planned') {
        const dir = str(o, 'state-dir') ?? join(process.cwd(), '.livesync', 'agent', pairId);
        out = await failoverPlanned(ctx, pairId, recoveryTargetOf(o), join(dir, 'control.sock'), { tag: str(o, 'tag'), timeoutMs: o.timeout ? parseDuration('timeout', str(o, 'timeout')!) : undefined });
      } else out = await (command === 'failover test' ? failoverTest : failoverUnplanned)(ctx, pairId, rpChoiceOf(o), recoveryTargetOf(o));
      console.log(JSON.stringify(out, null, 2));
      return 0;
    }
    case 'failback start':
    case 'failback finish': {
      const o = opts({ pair: { type: 'string' }, reverse: { type: 'string' }, disk: { type: 'string', multiple: true }, 'reverse-state-dir': { type: 'string' }, region: { type: 'string' }, by: { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const ctx = operatorContext(str(o, 'by'));
      if (command === 'failback start') console.log(JSON.stringify(await failbackStart(ctx, pairId, required('reverse', str(o, 'reverse'))), null, 2));
      else {
        const { operation } = await ctx.ops.getOperation(pairId);
        const dir = str(o, 'reverse-state-dir') ?? join(process.cwd(), '.livesync', 'agent', operation?.reversePair ?? `${pairId}-reverse`);
        const images = new Map(diskPaths(o).map((d) => [d.name, d.path]));
        console.log(JSON.stringify(await failbackFinish(ctx, pairId, images, join(dir, 'control.sock'), { regionBytes: o.region ? parseSize('region', str(o, 'region')!) : undefined }), null, 2));
      }
      return 0;
    }
    case 'export': {
      const o = opts({
        ...RP_OPTIONS,
        listen: { type: 'string' },
        writable: { type: 'boolean' },
        overlay: { type: 'string' },
        cache: { type: 'string' },
        'local-copy': { type: 'string' },
        ...TLS_OPTIONS,
      });
      const pairId = required('pair', str(o, 'pair'));
      await exportCommand(rpStoreFromEnv(), pairId, rpChoiceOf(o), {
        listen: required('listen', str(o, 'listen')),
        tls: tlsOf(o),
        writable: o.writable === true,
        overlayDir: str(o, 'overlay'),
        cacheBytes: o.cache ? parseSize('cache', str(o, 'cache')!) : undefined,
        localCopyBytes: o['local-copy'] !== undefined ? parseSize('local-copy', str(o, 'local-copy')!) : undefined,
      });
      return 0;
    }
    case 'pair events': {
      const o = opts({ pair: { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      console.log(JSON.stringify(await new DynamoOperations(rpStoreFromEnv().table).listEvents(pairId), null, 2));
      return 0;
    }
    case 'recovery list':
    case 'recovery show': {
      const o = opts({ pair: { type: 'string' }, id: { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const runs = new DynamoRecoveries(rpStoreFromEnv().table);
      if (command === 'recovery list') console.log(JSON.stringify((await runs.listRecoveries(pairId)).map((r) => showRun(r)), null, 2));
      else {
        const id = required('id', str(o, 'id'));
        const run = await runs.getRecovery(pairId, id);
        if (!run) throw new InvalidArgumentError(`pair '${pairId}' has no recovery run '${id}'`);
        console.log(JSON.stringify(showRun(run), null, 2));
      }
      return 0;
    }
    case 'agent': {
      const missing = ensureAgentRuntime((l) => console.error(`note: ${l}`));
      if (missing.length > 0) console.error(`note: node was started without ${missing.join(' ')} (agent/runtime.ts says why): expect frequent full GCs, less throughput and more memory`);
      const o = opts({
        pair: { type: 'string' },
        disk: { type: 'string', multiple: true },
        listen: { type: 'string' },
        'state-dir': { type: 'string' },
        'pre-freeze': { type: 'string' },
        'post-thaw': { type: 'string' },
        'hook-timeout': { type: 'string' },
        'acrp-interval': { type: 'string' },
        'acrp-tag': { type: 'string' },
        'spool-size': { type: 'string' },
        bandwidth: { type: 'string' },
        'upload-interval': { type: 'string' },
        'verify-replica': { type: 'boolean' },
        'sync-marks': { type: 'boolean' },
        ...TLS_OPTIONS,
      });
      const pairId = required('pair', str(o, 'pair'));
      const uploadInterval = parsePositiveDuration('upload-interval', str(o, 'upload-interval') ?? '1s');
      const disks = diskPaths(o);
      // Default: a Unix socket in the state directory (0600), for a VM on this host; TCP only
      // on loopback (no TLS yet: issue 17).
      const stateDir = str(o, 'state-dir') ?? join(process.cwd(), '.livesync', 'agent', pairId);
      const tls = tlsOf(o);
      const listen = parseListen(str(o, 'listen') ?? `unix:${join(stateDir, 'nbd.sock')}`, { tls: tls !== undefined });
      const { store, index, history } = rpStoreFromEnv();
      const interval = str(o, 'acrp-interval');
      const agent = await startAgent({
        pairId,
        disks,
        host: 'path' in listen ? listen : listen.host,
        port: 'path' in listen ? 0 : listen.port,
        tls,
        store,
        index,
        history,
        bucket: process.env.LIVESYNC_BUCKET,
        stateDir,
        hooks: { preFreeze: str(o, 'pre-freeze'), postThaw: str(o, 'post-thaw'), timeoutMs: parseDuration('hook-timeout', str(o, 'hook-timeout') ?? '60s') },
        acrpIntervalMs: interval ? parseDuration('acrp-interval', interval) : undefined,
        acrpTag: str(o, 'acrp-tag'),
        spoolBytes: o['spool-size'] ? parseSize('spool-size', str(o, 'spool-size')!) : undefined,
        bandwidthBytesPerSec: o.bandwidth ? parseSize('bandwidth', str(o, 'bandwidth')!) : undefined,
        maxBatchAgeMs: uploadInterval,
        verifyReplica: o['verify-replica'] === true,
        syncMarks: o['sync-marks'] === true,
        log: (l) => console.error(l),
      });
      console.log(JSON.stringify(agent.path ? { socket: agent.path, uri: `nbd+unix:///?socket=${agent.path}` } : { port: agent.port }));
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await agent.stop();
      return 0;
    }
    case 'acrp': {
      const o = opts({ pair: { type: 'string' }, tag: { type: 'string' }, 'state-dir': { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const tag = required('tag', str(o, 'tag'));
      const dir = str(o, 'state-dir') ?? join(process.cwd(), '.livesync', 'agent', pairId);
      const res = await callAgent(join(dir, 'control.sock'), { op: 'acrp', tag });
      if (!res.ok) {
        console.error(`livesync: no ACRP for pair '${pairId}': ${res.error}`);
        return 1;
      }
      console.log(JSON.stringify({ pairId, seq: 'seq' in res ? res.seq : undefined, tag }));
      return 0;
    }
    case 'backup': {
      const o = opts({ pair: { type: 'string' }, to: { type: 'string' }, 'app-tag': { type: 'string' }, 'state-dir': { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const dir = str(o, 'state-dir') ?? join(process.cwd(), '.livesync', 'agent', pairId);
      const res = await callAgent(join(dir, 'control.sock'), { op: 'backup', manifestKey: str(o, 'to'), appTag: str(o, 'app-tag') });
      if (!res.ok || !('backup' in res)) {
        console.error(`livesync: no backup of pair '${pairId}': ${res.ok ? 'unexpected answer' : res.error}`);
        return 1;
      }
      console.log(JSON.stringify(res.backup));
      return 0;
    }
    case 'agent-status': {
      const o = opts({ pair: { type: 'string' }, 'state-dir': { type: 'string' } });
      const pairId = required('pair', str(o, 'pair'));
      const dir = str(o, 'state-dir') ?? join(process.cwd(), '.livesync', 'agent', pairId);
      const res = await callAgent(join(dir, 'control.sock'), { op: 'status' });
      if (!res.ok || !('status' in res)) {
        console.error(`livesync: no status from the agent of pair '${pairId}': ${res.ok ? 'unexpected answer' : res.error}`);
        return 1;
      }
      console.log(JSON.stringify(res.status));
      return 0;
    }
    case 'help':
    case 'undefined':
      console.log(USAGE);
      return 0;
    default:
      throw new InvalidArgumentError(`unknown command '${argv.join(' ')}'\n\n${USAGE}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    const known = err instanceof InvalidArgumentError || err instanceof UnknownPairError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    console.error(`livesync: ${known ? err.message : err.stack ?? err}`);
    process.exit(known ? 2 : 1);
  },
);

/**
 * One RP on one line, tab-separated: seq, type, time, until (expiry or 'pinned'), why it lives
 * (the pin, or the tiers that keep it), tag (empty if none). Pin texts hold no tabs or newlines.
 */
function rpLine(rp: RecoveryPoint): string {
  const why = rp.pinned ? `pinned by ${rp.pinned.by} at ${new Date(rp.pinned.atMs).toISOString()}: ${rp.pinned.reason}` : `kept by ${rp.keptBy.join(', ')}`;
  return [rp.seq, rp.type, new Date(rp.atMs).toISOString(), rpUntil(rp), why, rp.tag ?? ''].join('\t');
}

/** A CloudFormation template (JSON, as `cdk synth` writes it) for `local up --template`. */
async function readTemplate(file: string): Promise<{ Resources: Record<string, any> }> {
  let parsed: { Resources?: unknown };
  try {
    parsed = JSON.parse(await readFile(file, 'utf8')) as { Resources?: unknown };
  } catch (err) {
    throw new InvalidArgumentError(`--template ${file}: ${(err as Error).message}`);
  }
  if (!parsed || typeof parsed.Resources !== 'object' || parsed.Resources === null) throw new InvalidArgumentError(`--template ${file}: not a CloudFormation template (no Resources)`);
  return parsed as { Resources: Record<string, any> };
}

