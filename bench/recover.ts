// npm run bench:recover — recovery of one RP, against peers doing the same work in the same run.
// Prints one JSON line on stdout; progress on stderr.
//
// Setup (untimed): the embedded local stack (S3, DynamoDB Local, SQS, the local Step Functions
// running the synthesized state machines, the local EBS direct APIs); one pair with one disk
// of BENCH_RECOVER_MIB (default 1024) MiB, written through the BatchWriter in 8 MiB batches:
// random (incompressible) data over half the disk in 1 MiB extents at seeded places, then a
// second pass rewriting a quarter of those, then an RP; the apply path registers every batch
// and a compaction run folds them into the history (images and pieces), as a pair that has run
// for a while is read. The RP's image is written once more as one plain object (raw/src.img)
// and into a restic repository in the same local S3 (restic's s3 backend) for the peers.
//
// Timed, BENCH_RECOVER_REPS (default 3) rounds, the order of the kinds rotated each round:
//   cloud_s3    `livesync recover --to s3://…/recoveries/…`: the recovery workflow (a range
//               Lambda per 64 MiB, 16 at once) writes the raw image as a multipart upload
//   raw         a plain copy of the same bytes through the same S3: ranged GETs of raw/src.img
//               in 64 MiB parts, 16 at once, each PUT as a part of a multipart upload (what a
//               recovery would cost if the image were stored whole)
//   cloud_ebs   the same RP into an EBS snapshot (full: the earlier records are removed first)
//   file        `livesync recover --to file:DIR` of the same RP, in a process of its own as an
//               operator runs it (bench/recover-file.ts; its start-up not timed), like restic:
//               with Node's defaults, as the CLI runs every command but the agent
//   restic      `restic restore latest --target DIR` of the same image from its repository
//   export      a test failover onto an export (`failover test --listen`), as an operator starts
//               one: an NBD client's first 4 KiB read of data, then the whole disk in 1 MiB reads
//               (8 in flight, compared with the source), then fio random 4 KiB reads (iodepth 32,
//               BENCH_RECOVER_FIO_SECONDS, default 10 s): after the sequential pass, so every
//               window was read once and is in the export's local copy (docs/design.md,
//               "Instant access"); then the test is cleaned up
//   qemu_nbd    the same fio job against qemu-nbd serving the source's image read-only
// BENCH_RECOVER_PARTS (comma-separated kinds) runs some only; the others' figures are null.
// file and restic, each a few seconds, run BENCH_RECOVER_PAIR_REPS (default 3) times a round,
// as one block of pairs where the first of them comes, the order in a pair alternating
// (file, restic; restic, file; …): a run right after a heavy kind can be up to ~0.9 s slower
// for either (the written file's page-cache copy, perf), so the medians need more runs.
// Before each timed run the machine settles (bench/measure.ts settle(): dirty pages written
// back, this process's garbage collected), the same for every kind.
// Fields: rto_s (from the failover command to the first read's data), export_first_read_ms,
// export_seq_mib_s, export_rand4k_iops and ratio_vs_qemu_nbd (reported, no target);
// recover_mib_s (disk MiB / cloud_s3 s), ratio_vs_raw (raw s / cloud_s3 s, target
// >= 0.8), ebs_blocks_per_s, ratio_vs_restic (restic s / file s, target >= 1.5), medians of
// the rounds; every recovered image is compared with the source's bytes (a mismatch fails).
// restic_open_s: what restic spends opening its repository (keys, scrypt, config: `restic cat
// config`, timed after each restore), which its restore time includes and the file recovery's
// does not (its clock starts with the process loaded and connected); ratio_vs_restic_opened:
// (restic s - restic_open_s) / file s, the two compared from the same point.
// What file and restic cost, medians (`file_vs_restic`): cpu_s, the CPU time of the recovering
// process (every thread; restic's through bash's `times`); stack_cpu_s, this process's in the
// same span (the local S3 serving it, and the rest of the stack); s3_gets, the GETs S3 served.
// Placement (`file_placement`): while file or restic runs, the stack (this process, with the
// local S3 in it, and the processes it started: DynamoDB Local, Lambda processes) is pinned to
// the first CPU this process may use and the peer to the others (taskset), the same for both:
// in AWS the S3 side is not on the recovering host. BENCH_RECOVER_PLACEMENT=shared (or a single
// CPU) pins nothing. The other kinds run on every CPU: the cloud recovery's Lambdas and its raw
// peer are the stack's own work, and the export is served from this process.

import { execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { ebsClient } from '../adapters/aws-clients';
import { readSnapshot } from '../adapters/ebs-snapshot-sink';
import { rpStoreFromEnv } from '../adapters/from-env';
import { compactionLauncherFromEnv } from '../adapters/sfn-compaction-launcher';
import { recoveryLauncherFromEnv } from '../adapters/sfn-recovery-launcher';
import { DynamoOperations } from '../adapters/dynamo-operations';
import { failoverCleanup, failoverToExport } from '../cli/failover';
import { recoverInCloud } from '../cli/recover-cloud';
import { snapshotRecordPrefix } from '../core/snapshot-record';
import { freePort, requestsBetween, startLocalStack, type LocalStack } from '../local/stack';
import { limiter } from '../replica/concurrency';
import { createPair, waitForWatermark } from '../replica/pairs';
import type { RecoveryRun } from '../replica/ports';
import { BatchWriter } from '../source/batch-writer';
import { rng } from '../source/workload';
import { median, onCpus, partsFromEnv, pinTree, placement, round, runBench, settle, timed } from './measure';
import { NbdClient, waitForNbd } from './nbd-client';
import { ensurePeers, JAVA_PEER } from './peers';

const MiB = 2 ** 20;
const FIO_SECONDS = Number(process.env.BENCH_RECOVER_FIO_SECONDS ?? 10);
/** file and restic runs a round, each (their medians are over reps × PAIR_REPS runs). */
const PAIR_REPS = Number(process.env.BENCH_RECOVER_PAIR_REPS ?? 3);
const log = (m: string): void => console.error(`bench:recover: ${m}`);
const KINDS = ['cloud_s3', 'raw', 'cloud_ebs', 'file', 'restic', 'export', 'qemu_nbd'] as const;
type Kind = (typeof KINDS)[number];

async function main(): Promise<void> {
  const diskBytes = Number(process.env.BENCH_RECOVER_MIB ?? 1024) * MiB;
  const reps = Number(process.env.BENCH_RECOVER_REPS ?? 3);
  const parts = partsFromEnv('BENCH_RECOVER_PARTS', KINDS);
  const place = placement('BENCH_RECOVER_PLACEMENT');
  ensurePeers([JAVA_PEER, { command: 'restic', pkg: 'restic' }, { command: 'fio', pkg: 'fio' }, { command: 'qemu-nbd', pkg: 'qemu-utils' }], log);
  const dir = await mkdtemp(join(tmpdir(), 'bench-recover-'));
  let stack: LocalStack | undefined;
  await runBench(
    log,
    async () => {
      await stack?.stop();
      await rm(dir, { recursive: true, force: true });
    },
    async () => {
      process.env.LOG_LEVEL ??= 'warn';
      stack = await startLocalStack({ dir: join(dir, 'stack') });
      const rps = rpStoreFromEnv();
      const pairId = `bench-${randomBytes(3).toString('hex')}`;
      const disks = [{ name: 'disk0', sizeBytes: diskBytes }];
      const source = Buffer.alloc(diskBytes);
      await createPair(rps.index, { pairId, disks });
      const w = new BatchWriter({ pairId, disks, store: rps.store, maxBatchAgeMs: 0, maxBatchBytes: 8 * MiB });
      const random = rng(7);
      const extents = Array.from({ length: diskBytes / MiB / 2 }, () => Math.floor(random() * (diskBytes / MiB)));
      for (const [i, at] of [...extents, ...extents.slice(0, extents.length / 4)].entries()) {
        const data = randomBytes(MiB);
        data.copy(source, at * MiB);
        await w.write('disk0', at * MiB, data);
        if (i % 64 === 63) w.cut();
      }
      const seq = w.cut({ rp: true })!;
      await w.close();
      await waitForWatermark(rps.index, pairId, seq, 300_000);
      await compactionLauncherFromEnv()!.start(pairId, 'operator', Date.now());
      await stack.workflowsIdle();
      const head = await rps.history.getHistory(pairId);
      log(`pair ${pairId}: ${diskBytes / MiB} MiB disk, RP ${seq}, history version ${head.version} (frontier ${head.frontierSeq})`);

      // The peers' copies of the same bytes: one plain object, and a restic repository in the same S3.
      await rps.store.put('raw/src.img', source);
      const srcFile = join(dir, 'disk0.img');
      await writeFile(srcFile, source);
      const s3 = stack.env.AWS_ENDPOINT_URL_S3;
      const restic = { ...process.env, RESTIC_REPOSITORY: `s3:${s3}/${rps.bucket}/restic`, RESTIC_PASSWORD: 'bench', AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_DEFAULT_REGION: 'us-east-1' };
      await run('restic', ['init'], restic);
      await run('restic', ['backup', '--quiet', srcFile], restic, dir);
      await rm(srcFile);

      const launcher = recoveryLauncherFromEnv()!;
      const ctx = { rps, ops: new DynamoOperations(rps.table), by: 'bench', log: () => {} };
      const firstData = extents[0] * MiB;
      const exportFigures = { firstReadMs: [] as number[], rtoS: [] as number[], seqS: [] as number[], rand4k: [] as number[] };
      const qemuRand4k: number[] = [];
      const seconds = new Map<Kind, number[]>(KINDS.map((k) => [k, []]));
      let ebsBlocks = 0;
      /** Per peer of the file recovery, per round: its CPU, the stack's CPU meanwhile, the GETs S3 served. */
      const costs = { file: [] as PeerCost[], restic: [] as PeerCost[] };
      const resticOpenS: number[] = [];
      /** Runs `run` with the stack on its CPUs and `run`'s peer on the others (the placement), then gives the stack every CPU again. */
      const onPeerCpus = async <T>(run: (cpus?: string) => Promise<T>): Promise<T> => {
        if (place) pinTree(place.stack);
        try {
          return await run(place?.peer);
        } finally {
          if (place) pinTree(place.all);
        }
      };
      const costOf = async (run: (cpus?: string) => Promise<{ seconds: number; cpuS: number }>): Promise<{ seconds: number; cost: PeerCost }> => {
        const before = stack!.requests()!;
        let used: NodeJS.CpuUsage | undefined;
        const out = await onPeerCpus(async (cpus) => {
          const stackCpu = process.cpuUsage();
          try {
            return await run(cpus);
          } finally {
            used = process.cpuUsage(stackCpu); // before the pins are undone (their ps and taskset are not the stack's work)
          }
        });
        const gets = requestsBetween(before, stack!.requests()!).s3.GET ?? 0;
        return { seconds: out.seconds, cost: { cpuS: out.cpuS, stackCpuS: (used!.user + used!.system) / 1e6, gets } };
      };
      const check = (what: string, got: Buffer): void => {
        if (!got.equals(source)) throw new Error(`${what}: the recovered image differs from the source`);
      };
      const runs: Record<Kind, (r: number) => Promise<void>> = {
        cloud_s3: async (r) => {
          const prefix = `recoveries/bench/${r}`;
          const out = await timed(() => recoverInCloud(rps, launcher, { pairId, choice: { seq }, target: { kind: 's3', prefix }, log: () => {} }));
          seconds.get('cloud_s3')!.push(out.seconds);
          check('cloud_s3', await rps.store.get(`${prefix}/disk0.img`));
        },
        raw: async (r) => {
          const key = `raw/copy-${r}.img`;
          const out = await timed(() => rawCopy(rps.store, 'raw/src.img', key, diskBytes));
          seconds.get('raw')!.push(out.seconds);
          check('raw', await rps.store.get(key));
        },
        cloud_ebs: async () => {
          // A full snapshot each round: no earlier record to start from.
          const records = await rps.store.listKeys(snapshotRecordPrefix(pairId, 'disk0'));
          if (records.length) await rps.deleter.deleteKeys(records);
          const out = await timed(() => recoverInCloud(rps, launcher, { pairId, choice: { seq }, target: { kind: 'ebs' }, log: () => {} }));
          seconds.get('cloud_ebs')!.push(out.seconds);
          const disk = (out.value as RecoveryRun).disks[0];
          ebsBlocks = disk.blocksWritten ?? 0;
          const ebs = ebsClient();
          const image = Buffer.alloc(diskBytes);
          await readSnapshot(ebs, disk.snapshotId!, async (offset, data) => void data.copy(image, offset));
          ebs.destroy();
          check('cloud_ebs', image);
        },
        file: async (r) => {
          const to = join(dir, `file-${r}`);
          const { seconds: s, cost } = await costOf((cpus) => recoverFileInChild(pairId, seq, to, cpus));
          seconds.get('file')!.push(s);
          costs.file.push(cost);
          check('file', await readFile(join(to, 'disk0.img')));
          await rm(to, { recursive: true });
        },
        export: async () => {
        // A test failover onto an export, as an operator starts one: the clock runs from the command to the first read's data.
        const t0 = performance.now();
        const { running } = await failoverToExport(ctx, pairId, 'test', { seq }, { listen: { host: '127.0.0.1', port: 0 } });
        try {
          const client = await NbdClient.connect('127.0.0.1', running.server.port, 'disk0');
          const t1 = performance.now();
          const first = await client.read(firstData, 4096);
          exportFigures.firstReadMs.push(performance.now() - t1);
          exportFigures.rtoS.push((performance.now() - t0) / 1000);
          if (!first.equals(source.subarray(firstData, firstData + 4096))) throw new Error('export: the first read differs from the source');
          // The whole disk in 1 MiB reads, 8 in flight, compared with the source.
          const ts = performance.now();
          const limit = limiter(8);
          await Promise.all(Array.from({ length: diskBytes / MiB }, (_, i) => limit(async () => {
            if (!(await client.read(i * MiB, MiB)).equals(source.subarray(i * MiB, (i + 1) * MiB))) throw new Error(`export: MiB ${i} differs from the source`);
          })));
          exportFigures.seqS.push((performance.now() - ts) / 1000);
          await client.close();
          seconds.get('export')!.push((performance.now() - t0) / 1000);
          exportFigures.rand4k.push(await fioRandRead(running.server.port, dir));
        } finally {
          await running.stop();
          await failoverCleanup(ctx, pairId, 'bench round done');
        }
      },
      qemu_nbd: async () => {
        // The peer of the export's random reads: qemu-nbd serving the recovered image read-only, same fio job.
        const image = join(dir, 'qemu-nbd.img');
        await writeFile(image, source);
        const port = await freePort();
        const server = spawn('qemu-nbd', ['-r', '-f', 'raw', '-x', 'disk0', '-b', '127.0.0.1', '-p', String(port), '--persistent', image], { stdio: 'ignore' });
        try {
          await waitForNbd(port, 'disk0', 'qemu-nbd', () => (server.exitCode !== null || server.signalCode !== null ? `exit ${server.exitCode ?? server.signalCode}` : undefined));
          const t0 = performance.now();
          qemuRand4k.push(await fioRandRead(port, dir));
          seconds.get('qemu_nbd')!.push((performance.now() - t0) / 1000);
        } finally {
          server.kill('SIGTERM');
          if (server.exitCode === null && server.signalCode === null) await new Promise((r) => server.once('exit', r));
          await rm(image, { force: true });
        }
      },
      restic: async (r) => {
          const to = join(dir, `restic-${r}`);
          await mkdir(to);
          const { seconds: s, cost } = await costOf((cpus) => resticRestore(to, restic, cpus));
          seconds.get('restic')!.push(s);
          costs.restic.push(cost);
          check('restic', await readFile(join(to, srcFile)));
          await rm(to, { recursive: true });
          // What restic's restore spends before it reads anything: opening the repository (its
          // keys, the scrypt key derivation, the config), which `restic cat config` does alone.
          // The file recovery's clock starts with its process loaded and connected.
          const open = await onPeerCpus((cpus) => timed(() => promisify(execFile)(...onCpus(cpus, 'restic', ['cat', 'config']), { env: restic })));
          resticOpenS.push(open.seconds);
        },
      };
      // Rotated among the kinds run, so that each goes first in turn however few are chosen.
      const chosen = KINDS.filter((k) => parts.has(k));
      const timedRun = async (k: Kind, r: number, n: number): Promise<void> => {
        await stack!.workflowsIdle();
        settle();
        await runs[k](n);
        log(`round ${r + 1}/${reps} ${k}: ${round(seconds.get(k)!.at(-1)!)} s`);
      };
      const headToHead = parts.has('file') && parts.has('restic');
      let n = 0;
      for (let r = 0; r < reps; r++) {
        const order = chosen.map((_, i) => chosen[(i + r) % chosen.length]);
        for (const k of order) {
          if (!headToHead || (k !== 'file' && k !== 'restic')) {
            await timedRun(k, r, n++);
            continue;
          }
          // file and restic as one block, where the first of them comes: PAIR_REPS pairs, the
          // order within a pair alternating, so each as often follows the kind before.
          if (order.indexOf(k === 'file' ? 'restic' : 'file') < order.indexOf(k)) continue; // the block ran at the other's turn
          for (let i = 0; i < PAIR_REPS; i++) for (const p of (i + r) % 2 === 0 ? (['file', 'restic'] as const) : (['restic', 'file'] as const)) await timedRun(p, r, n++);
        }
      }
      launcher.destroy();
      const m = (k: Kind): number => (seconds.get(k)!.length ? median(seconds.get(k)!) : NaN);
      const figure = (x: number, digits = 2): number | null => (Number.isFinite(x) ? round(x, digits) : null);
      console.log(
        JSON.stringify({
          disk_mib: diskBytes / MiB,
          data_mib: round(new Set(extents).size, 0),
          reps,
          pair_reps: headToHead ? PAIR_REPS : null,
          recover_mib_s: figure(diskBytes / MiB / m('cloud_s3'), 1),
          ratio_vs_raw: figure(m('raw') / m('cloud_s3')),
          ebs_blocks_per_s: figure(ebsBlocks / m('cloud_ebs'), 1),
          ebs_blocks: ebsBlocks,
          ratio_vs_restic: figure(m('restic') / m('file')),
          restic_open_s: figure(med(resticOpenS)),
          ratio_vs_restic_opened: figure((m('restic') - med(resticOpenS)) / m('file')),
          file_placement: place ? { stack_cpus: place.stack, peer_cpus: place.peer } : 'shared',
          file_vs_restic: Object.fromEntries(
            (['file', 'restic'] as const).map((k) => [k, { cpu_s: figure(med(costs[k].map((c) => c.cpuS))), stack_cpu_s: figure(med(costs[k].map((c) => c.stackCpuS))), s3_gets: figure(med(costs[k].map((c) => c.gets)), 0) }]),
          ),
          export_first_read_ms: figure(med(exportFigures.firstReadMs), 1),
          export_seq_mib_s: figure(diskBytes / MiB / med(exportFigures.seqS), 1),
          export_rand4k_iops: figure(med(exportFigures.rand4k), 0),
          qemu_nbd_rand4k_iops: figure(med(qemuRand4k), 0),
          ratio_vs_qemu_nbd: figure(med(exportFigures.rand4k) / med(qemuRand4k), 3),
          rto_s: figure(med(exportFigures.rtoS)),
          seconds: Object.fromEntries(KINDS.map((k) => [k, seconds.get(k)!.map((s) => round(s))])),
        }),
      );
    },
  );
}

/** The raw peer: the object copied in 64 MiB parts, 16 at once, each a ranged GET then an UploadPart. */
async function rawCopy(store: ReturnType<typeof rpStoreFromEnv>['store'], from: string, to: string, size: number): Promise<void> {
  const part = 64 * MiB;
  const id = await store.startUpload(to);
  const limit = limiter(16);
  const parts = await Promise.all(
    Array.from({ length: Math.ceil(size / part) }, (_, i) =>
      limit(async () => {
        const body = await store.get(from, { start: i * part, end: Math.min(size, (i + 1) * part) });
        const stream = new PassThrough();
        stream.end(body);
        return { partNumber: i + 1, etag: await store.uploadPart(to, id, i + 1, stream, body.length) };
      }),
    ),
  );
  await store.completeUpload(to, id, parts);
}

const med = (xs: number[]): number => (xs.length ? median(xs) : NaN);

/** fio's nbd engine, random 4 KiB reads, iodepth 32, 10 s over the whole disk: IOPS. */
async function fioRandRead(port: number, dir: string): Promise<number> {
  const out = join(dir, 'fio.json');
  await run('fio', ['--name=rand4k', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/disk0`, '--rw=randread', '--bs=4k', '--iodepth=32', '--time_based', `--runtime=${FIO_SECONDS}`, '--output-format=json', `--output=${out}`], process.env);
  const j = (JSON.parse(await readFile(out, 'utf8')) as { jobs: { error: number; read: { iops: number; total_ios: number } }[] }).jobs[0];
  if (j.error !== 0 || j.read.total_ios === 0) throw new Error(`fio on port ${port}: error ${j.error}, ${j.read.total_ios} reads`);
  return j.read.iops;
}

/** What one recovery into a file cost: see the header. */
interface PeerCost {
  cpuS: number;
  stackCpuS: number;
  gets: number;
}

/** `restic restore latest --target DIR` under bash, whose `times` gives its children's CPU time: wall seconds and CPU seconds. */
async function resticRestore(to: string, env: NodeJS.ProcessEnv, cpus?: string): Promise<{ seconds: number; cpuS: number }> {
  const out = await timed(() => promisify(execFile)(...onCpus(cpus, 'bash', ['-c', 'restic restore latest --target "$1" >/dev/null && times', 'restore', to]), { env, maxBuffer: 64 * MiB }));
  // `times`: the shell's user and system time, then its children's: "0m1.680s 0m0.280s".
  const children = /(\d+)m([\d.]+)s (\d+)m([\d.]+)s\s*$/.exec(out.value.stdout.trim());
  if (!children) throw new Error(`restic restore: no CPU times in ${JSON.stringify(out.value.stdout)}`);
  const [, um, us, sm, ss] = children.map(Number);
  return { seconds: out.seconds, cpuS: um * 60 + us + sm * 60 + ss };
}

/** `livesync recover --to file:` in a process of its own (bench/recover-file.ts): the seconds of the recovery alone, and its CPU seconds. */
async function recoverFileInChild(pairId: string, seq: number, to: string, cpus?: string): Promise<{ seconds: number; cpuS: number }> {
  const nodeArgs = (process.env.BENCH_RECOVER_NODE_ARGS ?? '').split(' ').filter(Boolean); // e.g. --cpu-prof --cpu-prof-dir=DIR
  const child = spawn(...onCpus(cpus, join(__dirname, '../node_modules/.bin/node'), [...nodeArgs, '--no-warnings=ExperimentalWarning', '--import', 'tsx', join(__dirname, 'recover-file.ts'), pairId, String(seq), to]), { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const next = (): Promise<string> => new Promise((resolve, reject) => {
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`recover-file exited with ${code}`)));
  });
  if ((await next()) !== 'ready') throw new Error('recover-file did not start');
  child.stdin!.write('go\n');
  return JSON.parse(await next()) as { seconds: number; cpuS: number };
}

async function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd?: string): Promise<void> {
  await promisify(execFile)(cmd, args, { env, cwd, maxBuffer: 64 * MiB });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
