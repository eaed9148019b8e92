// npm run bench:agent — the source agent as an NBD server against qemu-nbd and nbdkit (same
// sparse image, same fio job, medians over BENCH_REPS reps, the servers' order rotated each
// rep), under two placements of the processes on the cores; its recovery point objective on
// the embedded local stack with the event path on (batches in S3 → SQS → apply Lambda → RPs in
// the index); what a flush-heavy guest makes the RP Store do and cost; and how long the last
// flushed writes take to become an RP once the source goes quiet. Prints one JSON line;
// progress on stderr.
//
// Placement (BENCH_PLACEMENT = pinned | shared | both, default both). In AWS the RP Store (S3,
// SQS, DynamoDB, the apply Lambda) is not on the source host. 'pinned': the local stack (this
// process: s3rver, fauxqs, the apply handler, the counting proxies; and DynamoDB Local's Java,
// all threads: `taskset -a -cp 0`; the compaction function's process, forked by it later at a
// lower priority, inherits the core) runs on core 0, and fio with the server under test
// (`taskset -c 1 …`; for the files job also nbdfuse and the writing loop; for the rpo and idle
// jobs their guest, bench/paced-load.ts) on core 1, the same for every server. Only light
// observers stay in this process: the RP watcher (a Query for RPs above the highest it saw,
// every ~50 ms) and the flush jobs' FLUSH sampler. 'shared': no pinning, everything
// shares the cores (the placement of the figures before pinning was added). With 'both' the
// figures without a suffix are the pinned ones and the rand4k/seq1m/CPU figures of agent,
// qemu-nbd and nbdkit are given again with a `_shared` suffix; the other jobs run pinned
// only. `placement` says which placement the unsuffixed figures are; with fewer than 2 cores
// it is 'shared' (stderr says so).
//
//   rand4k_iops            fio nbd engine, random 4 KiB writes, iodepth 32, within the first
//                          1 GiB of the disk, BENCH_FIO_S seconds (time_based) → write IOPS
//   qemu_nbd_/nbdkit_…     the same job against `qemu-nbd -t` and `nbdkit file` on a fresh
//                          sparse image of the same size
//   ratio_vs_qemu_nbd      rand4k_iops / qemu_nbd_rand4k_iops (medians)
//   rand4k_iops_apply_on_host, ratio_apply_on_host
//                          the same rand4k job against a fresh agent and image with the local
//                          apply path live (pinned: on the stack's core; shared: on the same
//                          cores as the agent). For rand4k_iops and seq1m_mib_s the apply
//                          handler's event source is disabled (as UpdateEventSourceMapping
//                          would): the agent still cuts, spools and uploads every batch to the
//                          local S3, but the apply work, which runs in AWS and not beside the
//                          source, waits in the queue until the job ends
//   rand4k_iops_uploads_held, ratio_uploads_held
//                          the same rand4k job against a fresh agent started with
//                          `--bandwidth 1M` (every agent has a spool of JOB_SPOOL, room for
//                          the whole job): it captures and spools every write as usual, but
//                          its uploads wait, so the local S3's work is left out: the agent's
//                          own cost. Only if the spool never overflowed during the job (the
//                          agent's `overflows` counter unchanged and its mode 'streaming' after,
//                          from its control socket); else null, and stderr says so: an overflow
//                          turns capture into the cheaper dirty-map mode. The same check holds
//                          for every agent job (rand4k_iops, seq1m_mib_s, …): a figure taken
//                          while the spool overflowed is null
//   agent_cpu_us_per_write, qemu_nbd_…, nbdkit_…, ratio_cpu_vs_qemu_nbd
//                          CPU time (user + system, all threads, from /proc) the server's
//                          process used during its rand4k job, per write: the filter's own
//                          cost, less sensitive than IOPS to what else shares the cores
//   local_s3_cpu_us_per_write
//                          the same for this process (the local stack's S3, which receives
//                          the uploads, and the bench itself) during the agent's rand4k job
//   seq1m_mib_s            fio, sequential 1 MiB writes, iodepth 8, from 1 GiB on → MiB/s
//   seq1m_ratio_vs_qemu_nbd  seq1m_mib_s / qemu_nbd_seq1m_mib_s (medians)
//   agent_cpu_ms_per_seq1m_mib, qemu_nbd_cpu_ms_per_seq1m_mib
//                          CPU (user + system, all threads) of the server process during its
//                          seq1m job per MiB written: what the throughput figures' noise hides
//                          (the agent's includes spooling and uploading what the job wrote)
//   …_shared               the figures above for agent, qemu-nbd and nbdkit under 'shared'
//   rpo_p50_s / rpo_p99_s  a fresh agent under a paced load of 20 MB/s (64 KiB writes at random
//                          offsets in the first 1 GiB; bench/paced-load.ts, a process of its
//                          own) with an NBD FLUSH every ~250 ms, over
//                          BENCH_RPO_S seconds after a 2 s warm-up. Per FLUSH: t = when its
//                          reply arrived; s = the seq holding the writes it covered (the agent's
//                          status right after: FLUSH_SEQ_FIELD below); the sample is the first
//                          time an RP with seq ≥ s was listed by the index (polled every
//                          ~50 ms) − t. Linear-interpolated percentiles, seconds.
//   rpo_samples            FLUSHes sampled (a sample whose RP never showed counts with the
//                          time waited; stderr says so)
//   ccrp_interval_s        the crash-consistent RP interval of the pairs of all jobs but idle
//   puts_per_s, ddb_writes_per_s, flush_rpo_p99_s, cost_per_vm_month_usd
//                          the flush-heavy job, the worse of its two parts (each a fresh agent,
//                          apply path live; details of each in flush_jobs):
//                            fio    fio nbd engine, random 4 KiB writes, iodepth 1, fsync=1 (an
//                                   NBD FLUSH after every write; the nbd engine refuses
//                                   fdatasync=1, which would send the same), BENCH_FIO_S seconds
//                            files  ext4 made on the agent's disk through nbdfuse and a loop
//                                   device (untimed), then for BENCH_FIO_S seconds a loop of new
//                                   4 KiB files, each written and fsynced (`dd conv=fsync`);
//                                   needs root, /dev/fuse and loop devices, else skipped (null,
//                                   stderr says why)
//                          puts_per_s: journal PUTs the local S3 received, from the start of
//                          the load until the agent's spool is empty and its batches applied,
//                          per second of load. ddb_writes_per_s: DynamoDB write requests
//                          (PutItem, UpdateItem, DeleteItem, TransactWriteItems,
//                          BatchWriteItem) the local DynamoDB received in that window, per
//                          second of load. flush_rpo_p99_s: as rpo_p99_s, for FLUSHes a second
//                          NBD connection sends every ~250 ms during the load.
//                          cost_per_vm_month_usd: every request the local stack counted in the
//                          window (S3 by class, DynamoDB write/read units, SQS requests other
//                          than empty receives, apply invocations), per second of load, priced
//                          for a 730-hour month at us-east-1 list prices (core/cost-model.ts,
//                          docs/cost.md). With an external RP Store all four are null
//   flush_jobs             per part (fio, files; null if skipped): load_s (seconds of load),
//                          flushes_per_s (fio's FLUSHes) or files_per_s (files written and
//                          fsynced), the four figures above, flush_rpo_p50_s, the number of
//                          FLUSHes sampled, and requests_per_s: every request the window
//                          counted, by service and operation (`s3 PUT journal`, `dynamodb
//                          TransactWriteItems.items`, `sqs ReceiveMessage.empty`, …)
//   idle_rpo_s, idle_ccrp_interval_s
//                          a fresh agent on a pair with the default ccrp interval (5 s) takes
//                          2 s of the 20 MB/s load, ends with an acknowledged FLUSH, then gets
//                          no more writes (it keeps running): the time from that FLUSH's reply
//                          until an RP with seq ≥ the seq holding it is listed. Waits at most
//                          the interval + 30 s; null if no such RP came by then (stderr says so)
//   agent_rss_mib          peak resident memory (VmHWM / max sampled VmRSS) of the agent's own
//                          node process over all its runs under the primary placement (every
//                          job of the pinned runs), on disks of disk_gib GiB; with 'both',
//                          agent_rss_mib_shared is the same over the shared runs (their
//                          rand4k and seq1m). Before 2026-12-05 one figure over both
//   rp_store               'local': the embedded local stack, started here; 'external': the RP
//                          Store the environment names, as for the tests (AWS_ENDPOINT_URL* or
//                          LIVESYNC_TARGET=aws, with LIVESYNC_BUCKET and LIVESYNC_TABLE): its S3
//                          and apply path are not on this host, so the figures about the local
//                          stand-ins (…_apply_on_host, local_s3_cpu_us_per_write, the request
//                          counts and cost) are null
//
// The agent runs as a child process (Node 22 with the tsx loader, `livesync agent`), a new
// pair and image per run; after each run it is stopped and the pair's batches are applied
// before the next server runs, so the apply backlog does not load the peers. The bench checks
// its peers first (qemu-nbd, nbdkit, fio, taskset; java for the local stack; nbdfuse, losetup,
// mkfs.ext4 for the files job) and installs the missing ones with apt-get when root, else
// stops naming them (bench/peers.ts). BENCH_DISK_GIB (default 16), BENCH_REPS (3), BENCH_FIO_S
// (5), BENCH_RPO_S (20), BENCH_PLACEMENT (both), BENCH_AGENT_NODE_ARGS (extra node flags for
// the agent, e.g. to profile it), BENCH_AGENT_PARTS (default peers,rpo,flush-fio,flush-files,idle:
// the parts to run; the figures of the others are null), BENCH_AGENT_SERVERS (the peers part's
// servers by name, comma-separated, e.g. `agent,qemu-nbd`: default all; the others' figures are null).

import './quiet-handlers'; // first: before anything imports the handlers' logger
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, readlink, realpath, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { dynamoClient } from '../adapters/aws-clients';
import { DynamoIndex } from '../adapters/dynamo-index';
import { rpStoreFromEnv, usesExternalStack } from '../adapters/from-env';
import { callAgent, type AgentStatus } from '../agent/control';
import { AGENT_ENV, AGENT_NODE_FLAGS } from '../agent/runtime';
import { dynamoRequestUnits, monthlyCost } from '../core/cost-model';
import { freePort, requestsBetween, startLocalStack, type LocalStack, type StackRequests } from '../local/stack';
import { EdgeFaults } from '../local/edge-faults';
import { sleep } from '../replica/concurrency';
import { createPair, DEFAULT_CCRP_INTERVAL_MS, waitForWatermark } from '../replica/pairs';
import type { ReplicaIndex } from '../replica/ports';
import { median, partsFromEnv, percentile, round, runBench } from './measure';
import { NbdClient, waitForNbd } from './nbd-client';
import type { PacedLoadArgs } from './paced-load';
import { ensurePeers, JAVA_PEER, type Peer } from './peers';

const MiB = 2 ** 20;
/** /proc's clock ticks per second (USER_HZ). */
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));
const GiB = 2 ** 30;
const diskGib = Number(process.env.BENCH_DISK_GIB ?? 16);
const reps = Number(process.env.BENCH_REPS ?? 3);
const fioSeconds = Number(process.env.BENCH_FIO_S ?? 5);
const rpoSeconds = Number(process.env.BENCH_RPO_S ?? 20);
const placementSetting = process.env.BENCH_PLACEMENT ?? 'both';
const PARTS = ['peers', 'rpo', 'flush-fio', 'flush-files', 'idle'] as const;
type Part = (typeof PARTS)[number];
const parts = partsFromEnv('BENCH_AGENT_PARTS', PARTS);
/** Extra node flags for the agent process, e.g. `--cpu-prof --cpu-prof-dir=DIR` to profile it. */
const nodeArgs = (process.env.BENCH_AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean);
/** BENCH_AGENT_SERVERS: the servers of the peers part to run, by name, comma-separated (default all; for quick comparisons). */
const onlyServers = process.env.BENCH_AGENT_SERVERS?.split(',').map((x) => x.trim());
const diskBytes = diskGib * GiB;
const CCRP_INTERVAL_MS = 1000;
const RPO_RATE = 20e6; // bytes per second
const RPO_WRITE = 64 * 1024;
const RPO_FLUSH_MS = 250;
const RPO_WARMUP_MS = 2000;
/** After the window, keep the load on at most this long for the last samples' RPs. */
const RPO_TAIL_MS = 60_000;
const RP_POLL_MS = 50;
/** The idle job: the pair's ccrp interval (the default), how long it writes, and how long past the interval it waits for the RP. */
const IDLE_CCRP_INTERVAL_MS = DEFAULT_CCRP_INTERVAL_MS;
const IDLE_WRITE_MS = 2000;
const IDLE_CAP_MS = IDLE_CCRP_INTERVAL_MS + 30_000;
/**
 * Every agent's spool: room for a whole job's writes (~100k IOPS × 4 KiB, or 400 MiB/s of
 * seq1m, for BENCH_FIO_S s, with half again), so that no job overflows it while the local S3
 * on one core falls behind: a figure taken in the dirty-map mode would be null. An operator
 * sizes the spool for the VM's bursts the same way (the agent's default is 1 GiB).
 */
const JOB_SPOOL = `${Math.max(1, Math.ceil((fioSeconds * 100_000 * 4096 * 1.5) / GiB))}G`;
/** How long a stopped agent's batches may take to apply before we move on. */
const DRAIN_TIMEOUT_MS = 180_000;
/**
 * The agent-status field naming the seq whose batch holds the writes a just-acknowledged FLUSH
 * covered. Until the agent has it, `lastCutSeq` (a FLUSH cut a batch, so it was that one).
 */
const FLUSH_SEQ_FIELD = 'lastFlushSeq';
const FLUSH_SEQ_FALLBACK = 'lastCutSeq';
const EXPORT = 'disk0';
const STACK_CORE = '0';
const SERVER_CORE = '1';
const root = join(__dirname, '..');
const nodeBin = join(root, 'node_modules', '.bin', 'node');

const log = (m: string): void => void process.stderr.write(`[bench:agent] ${m}\n`);

if (!(diskGib >= 2) || !(reps >= 1) || !(fioSeconds >= 1) || !(rpoSeconds >= 1)) {
  throw new Error('BENCH_DISK_GIB must be ≥ 2, BENCH_REPS, BENCH_FIO_S and BENCH_RPO_S ≥ 1');
}
const runs = (part: Part): boolean => parts.has(part);
if (!['pinned', 'shared', 'both'].includes(placementSetting)) throw new Error(`BENCH_PLACEMENT must be pinned, shared or both, not '${placementSetting}'`);

// ---- placement --------------------------------------------------------------------------

type Placement = 'pinned' | 'shared';
const cores = availableParallelism();

function placementsToRun(): Placement[] {
  const wanted: Placement[] = placementSetting === 'both' ? ['pinned', 'shared'] : [placementSetting as Placement];
  if (wanted.includes('pinned') && cores < 2) {
    log(`only ${cores} core: no pinned placement (the stack and the server cannot have a core each); shared only`);
    return ['shared'];
  }
  return wanted;
}

/** Pins the local stack (this process and the stack's other processes, all threads) to its core, or lets them use every core. */
async function placeStack(placement: Placement, stack: LocalStack): Promise<void> {
  const cpus = placement === 'pinned' ? STACK_CORE : `0-${cores - 1}`;
  for (const pid of [process.pid, ...stack.pids]) await run('taskset', ['-a', '-cp', cpus, String(pid)]);
}

/** The command line that runs `cmd` on the server's core under `placement`. */
const onServerCore = (placement: Placement, cmd: string, args: string[]): [string, string[]] =>
  placement === 'pinned' ? ['taskset', ['-c', SERVER_CORE, cmd, ...args]] : [cmd, args];

/** Which cores a process may run on (its main thread), for the log. */
const coresOf = async (pid: number): Promise<string> => /^Cpus_allowed_list:\s*(\S+)/m.exec(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''))?.[1] ?? '?';

// ---- child processes -----------------------------------------------------------------

/** Every child we started and have not seen exit: cleanup stops exactly these. */
const running = new Set<Proc>();
/** Undo steps (unmount, detach) that must run before the processes stop and the files go. */
const teardowns = new Set<() => Promise<void>>();

interface Proc {
  child: ChildProcess;
  pid: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last lines of its stderr, for error messages. */
  tail: string[];
}

function launch(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; echo?: boolean } = {}): Proc {
  const child = spawn(cmd, args, { cwd: root, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (line) => {
    tail.push(line);
    if (tail.length > 20) tail.shift();
    if (opts.echo) process.stderr.write(`[${name}] ${line}\n`);
  });
  let settle!: (how: { code: number | null; signal: NodeJS.Signals | null }) => void;
  const p: Proc = { child, pid: child.pid ?? -1, exited: new Promise((r) => (settle = r)), tail };
  const gone = (how: { code: number | null; signal: NodeJS.Signals | null }): void => {
    running.delete(p);
    settle(how);
  };
  child.once('exit', (code, signal) => gone({ code, signal }));
  child.once('error', (err) => {
    tail.push(`${name}: ${err.message}`);
    gone({ code: null, signal: null });
  });
  if (child.pid === undefined) throw new Error(`${name}: could not start ${cmd}`);
  running.add(p);
  return p;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves with how it exited. */
async function stop(p: Proc, graceMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; killed: boolean }> {
  if (!running.has(p)) return { ...(await p.exited), killed: false };
  p.child.kill('SIGTERM');
  const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
  if ((await Promise.race([p.exited, timer])) !== 'timeout') return { ...(await p.exited), killed: false };
  p.child.kill('SIGKILL');
  return { ...(await p.exited), killed: true };
}

/** Runs a command to completion (async); rejects on a non-zero exit with its stderr. */
async function run(cmd: string, args: string[]): Promise<string> {
  const p = launch(cmd, cmd, args);
  let out = '';
  p.child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  const { code, signal } = await p.exited;
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${code ?? signal}: ${p.tail.join('\n')}`);
  return out;
}

/** Waits until an NBD handshake for our export succeeds on `port` (bench/nbd-client.ts), while `p` runs. */
const serving = (port: number, p: Proc, name: string): Promise<void> => waitForNbd(port, EXPORT, name, () => (running.has(p) ? undefined : p.tail.join('\n')));

/** A fresh sparse image of the disk size. */
async function sparseImage(path: string): Promise<string> {
  const fh = await open(path, 'w');
  await fh.truncate(diskBytes);
  await fh.close();
  return path;
}

// ---- the servers -----------------------------------------------------------------------

interface Serving {
  port: number;
  /** The server's process, whose CPU time is counted. */
  pid: number;
  /** Progress note for stderr after a job (the agent: its peak RSS so far). */
  note?(): Promise<string>;
  /** The agent's status (capture mode, overflows): a job is only valid if the spool did not overflow. */
  status?(): Promise<AgentStatus>;
  /** Stops the server (and, for the agent, waits for its batches to be applied). */
  close(): Promise<void>;
}

interface Server {
  name: string;
  start(image: string, placement: Placement): Promise<Serving>;
}

/** Peers flush their page cache on exit (qemu-nbd: seconds after a sequential run). */
async function stopPeer(p: Proc, name: string): Promise<void> {
  const how = await stop(p, 30_000);
  if (how.killed) log(`${name} needed SIGKILL to stop`);
}

const qemuNbd: Server = {
  name: 'qemu-nbd',
  async start(image, placement) {
    const port = await freePort();
    const p = launch('qemu-nbd', ...onServerCore(placement, 'qemu-nbd', ['-f', 'raw', '-t', '-b', '127.0.0.1', '-p', String(port), '-x', EXPORT, image]));
    await serving(port, p, 'qemu-nbd');
    return { port, pid: p.pid, close: () => stopPeer(p, 'qemu-nbd') };
  },
};

const nbdkit: Server = {
  name: 'nbdkit',
  async start(image, placement) {
    const port = await freePort();
    const p = launch('nbdkit', ...onServerCore(placement, 'nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', image]));
    await serving(port, p, 'nbdkit');
    return { port, pid: p.pid, close: () => stopPeer(p, 'nbdkit') };
  },
};

interface AgentRun extends Serving {
  pairId: string;
  controlSocket: string;
  status(): Promise<AgentStatus>;
}

interface AgentVariant {
  /** Extra agent flags. */
  args?: string[];
  /** false: stop without waiting for the pair's batches to be applied. */
  drain?: boolean;
  ccrpIntervalMs?: number;
}

class AgentServer implements Server {
  readonly name = 'agent';
  /** Peak RSS in bytes over the agent processes this bench started, by the placement they ran under. */
  readonly peakRss: Record<Placement, number> = { pinned: 0, shared: 0 };
  private runs = 0;

  constructor(
    private readonly stack: LocalStack,
    private readonly index: ReplicaIndex,
    private readonly tmp: string,
  ) {}

  async start(image: string, placement: Placement, variant: AgentVariant = {}): Promise<AgentRun> {
    const pairId = `bench-agent-${Date.now().toString(36)}-${this.runs}`;
    const stateDir = join(this.tmp, `state-${this.runs++}`);
    await createPair(this.index, { pairId, disks: [{ name: EXPORT, sizeBytes: diskBytes }], ccrpIntervalMs: variant.ccrpIntervalMs ?? CCRP_INTERVAL_MS });
    // Node itself with the tsx loader: the PID we watch is the agent's own process (taskset execs it).
    const p = launch(
      'agent',
      ...onServerCore(placement, nodeBin, [...AGENT_NODE_FLAGS, ...nodeArgs, '--no-warnings=ExperimentalWarning', '--import', 'tsx', 'cli/livesync.ts', 'agent', '--pair', pairId, '--disk', `${EXPORT}=${image}`, '--listen', '127.0.0.1:0', '--state-dir', stateDir, '--spool-size', JOB_SPOOL, ...(variant.args ?? [])]),
      { env: { ...process.env, ...this.stack.env, ...AGENT_ENV }, echo: true },
    );
    let sampler: NodeJS.Timeout | undefined;
    let peak = 0; // this process's
    let idle = 0; // its RSS once serving, before any I/O
    const sample = async (): Promise<number> => {
      const status = await readFile(`/proc/${p.pid}/status`, 'utf8').catch(() => '');
      const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kib('VmRSS') * 1024, kib('VmHWM') * 1024);
      this.peakRss[placement] = Math.max(this.peakRss[placement], peak);
      return kib('VmRSS') * 1024;
    };
    const controlSocket = join(stateDir, 'control.sock');
    const status = async (): Promise<AgentStatus> => {
      const answer = await callAgent(controlSocket, { op: 'status' });
      if (!answer.ok || !('status' in answer)) throw new Error(`agent status: ${JSON.stringify(answer)}`);
      return answer.status;
    };
    try {
      const port = await new Promise<number>((resolve, reject) => {
        createInterface({ input: p.child.stdout! }).once('line', (line) => {
          try {
            resolve((JSON.parse(line) as { port: number }).port);
          } catch {
            reject(new Error(`agent printed '${line}', not its port`));
          }
        });
        void p.exited.then(({ code, signal }) => reject(new Error(`agent exited with ${code ?? signal} before serving: ${p.tail.join('\n')}`)));
      });
      const exe = await readlink(`/proc/${p.pid}/exe`);
      const cmdline = (await readFile(`/proc/${p.pid}/cmdline`, 'utf8')).split('\0');
      if (exe !== (await realpath(nodeBin)) || !cmdline.includes('cli/livesync.ts')) throw new Error(`PID ${p.pid} is ${exe} ${cmdline.join(' ')}, not the agent`);
      sampler = setInterval(() => void sample(), 100);
      await serving(port, p, 'agent');
      idle = await sample();
      const close = async (): Promise<void> => {
        clearInterval(sampler);
        await sample(); // VmHWM: the peak over the whole life of the process
        log(`agent of ${pairId}: RSS ${round(idle / MiB, 1)} MiB serving idle, peak ${round(peak / MiB, 1)} MiB`);
        const how = await stop(p);
        if (how.code !== 0 || how.killed) log(`agent of ${pairId} did not stop cleanly: exit ${how.code ?? how.signal}${how.killed ? ' after SIGKILL' : ''}\n${p.tail.join('\n')}`);
        if (variant.drain !== false) await this.drain(pairId, stateDir);
      };
      // With what the agent says of its memory now (where a peak came from: heap, buffers, the rest native).
      const note = async (): Promise<string> => {
        await sample();
        const st = await status().catch(() => undefined);
        const spool = st ? `; spool files written ${st.spool.filesWritten}, ${st.spool.batches} batches held, overflows ${st.overflows}` : '';
        return `agent peak RSS so far ${round(peak / MiB, 1)} MiB; now ${JSON.stringify(st?.memoryMiB ?? 'unknown')}${spool}`;
      };
      return { port, pairId, pid: p.pid, controlSocket, close, note, status };
    } catch (err) {
      clearInterval(sampler);
      await stop(p, 5000);
      throw err;
    }
  }

  /** Waits until every batch the agent cut is applied (the next-seq file names the last). */
  private async drain(pairId: string, stateDir: string): Promise<void> {
    const last = Number((await readFile(join(stateDir, 'next-seq'), 'utf8').catch(() => '1')).trim()) - 1;
    if (last < 1) return;
    const t = performance.now();
    try {
      await waitForWatermark(this.index, pairId, last, DRAIN_TIMEOUT_MS);
      log(`agent: ${last} batches of ${pairId} applied ${round((performance.now() - t) / 1000, 1)} s after it stopped`);
    } catch (err) {
      log(`agent: batches of ${pairId} not applied: ${(err as Error).message}`);
    }
  }
}

/** The seq holding the writes of the FLUSH acknowledged just before `status` was asked. */
let flushSeqFieldLogged = false;
function flushSeqOf(status: AgentStatus): number {
  const fields = status as unknown as Record<string, unknown>;
  const field = typeof fields[FLUSH_SEQ_FIELD] === 'number' ? FLUSH_SEQ_FIELD : FLUSH_SEQ_FALLBACK;
  if (!flushSeqFieldLogged) log(`the seq holding a FLUSH's writes: agent status '${field}'`);
  flushSeqFieldLogged = true;
  const seq = fields[field];
  if (typeof seq !== 'number') throw new Error(`agent status has no number '${field}': ${JSON.stringify(status)}`);
  return seq;
}

/** Waits until the agent has cut the batch holding its last FLUSH, uploaded everything it spooled, and the pair's watermark reached its last cut seq. */
async function quiesce(agent: AgentRun, index: ReplicaIndex): Promise<void> {
  const deadline = Date.now() + DRAIN_TIMEOUT_MS;
  for (;;) {
    const s = await agent.status();
    if (s.lastCutSeq >= flushSeqOf(s) && s.spool.batches === 0 && s.upload.inFlight === 0) {
      if (s.lastCutSeq > 0) await waitForWatermark(index, agent.pairId, s.lastCutSeq, Math.max(1000, deadline - Date.now()));
      return;
    }
    if (Date.now() > deadline) throw new Error(`agent of ${agent.pairId} still has ${s.spool.batches} batches spooled after ${DRAIN_TIMEOUT_MS / 1000} s`);
    await sleep(100);
  }
}

/** Waits until the stack runs no workflow (compaction of what earlier jobs wrote). */
async function settle(stack: LocalStack): Promise<void> {
  const t0 = performance.now();
  await stack.workflowsIdle();
  const s = (performance.now() - t0) / 1000;
  if (s >= 0.1) log(`waited ${round(s, 1)} s for the stack's workflows to finish`);
}

// ---- fio -------------------------------------------------------------------------------

type Job = 'rand4k' | 'seq1m' | 'flush4k';

const FIO_JOBS: Record<Job, string[]> = {
  rand4k: ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=1g'],
  seq1m: ['--rw=write', '--bs=1M', '--iodepth=8', '--offset=1g', `--size=${Math.min(4, diskGib - 1)}g`],
  // An NBD FLUSH after every write, one write at a time: a guest that fsyncs everything. fio's
  // nbd engine refuses fdatasync=1 (EINVAL); fsync=1 is the same NBD FLUSH.
  flush4k: ['--rw=randwrite', '--bs=4k', '--iodepth=1', '--fsync=1', '--size=1g'],
};

/** Runs one fio job against nbd://127.0.0.1:port/disk0: IOPS (rand4k, flush4k) or MiB/s (seq1m), its writes and syncs. */
async function fio(port: number, job: Job, out: string, placement: Placement): Promise<{ rate: number; writes: number; syncs: number }> {
  const common = ['--name=bench', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/${EXPORT}`, '--time_based', `--runtime=${fioSeconds}`, '--output-format=json', `--output=${out}`];
  await run(...onServerCore(placement, 'fio', [...common, ...FIO_JOBS[job]]));
  const res = JSON.parse(await readFile(out, 'utf8')) as { jobs: { error: number; write: { iops: number; bw_bytes: number; total_ios: number }; sync?: { total_ios?: number } }[] };
  const j = res.jobs[0];
  if (j.error !== 0 || j.write.total_ios === 0) throw new Error(`fio ${job} on port ${port}: error ${j.error}, ${j.write.total_ios} writes`);
  return { rate: job === 'seq1m' ? j.write.bw_bytes / MiB : j.write.iops, writes: j.write.total_ios, syncs: j.sync?.total_ios ?? 0 };
}

/** CPU seconds (user + system, all threads) a process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // after "pid (comm) "
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS; // utime, stime: fields 14 and 15
}

// ---- rpo -------------------------------------------------------------------------------

/** Lists a pair's RPs every ~50 ms and remembers when each seq was first listed. */
class RpWatcher {
  private readonly seen = new Map<number, number>();
  private top: number | undefined;
  private polling = true;
  private readonly loop: Promise<void>;

  constructor(index: ReplicaIndex, pairId: string) {
    this.loop = (async () => {
      while (this.polling) {
        const t0 = performance.now();
        try {
          // Only RPs above the highest seen: firstAtOrAbove asks about higher seqs alone, and a
          // poll that lists every RP again loads DynamoDB Local (on the stack's core) more with
          // each RP, an observer effect on what it observes.
          const rps = await index.listRecoveryPoints(pairId, Math.floor(Date.now() / 1000), undefined, this.top === undefined ? {} : { afterSeq: this.top });
          const t = performance.now();
          for (const rp of rps) {
            if (!this.seen.has(rp.seq)) this.seen.set(rp.seq, t);
            this.top = Math.max(this.top ?? rp.seq, rp.seq);
          }
        } catch (err) {
          if (this.polling) log(`listing the RPs of ${pairId}: ${(err as Error).message}`);
        }
        await sleep(Math.max(0, RP_POLL_MS - (performance.now() - t0)));
      }
    })();
  }

  /** When an RP with seq ≥ `seq` was first listed (performance.now() time), if one was. */
  firstAtOrAbove(seq: number): number | undefined {
    let first: number | undefined;
    for (const [s, at] of this.seen) if (s >= seq && (first === undefined || at < first)) first = at;
    return first;
  }

  get count(): number {
    return this.seen.size;
  }

  async stop(): Promise<void> {
    this.polling = false;
    await this.loop;
  }
}

interface FlushPoint {
  /** When the FLUSH's reply arrived (performance.now()). */
  t: number;
  /** The seq whose batch holds the writes it covered. */
  seq: number;
}

/** Sends a FLUSH and asks the agent which seq holds what it covered. */
async function flushPoint(client: NbdClient, agent: AgentRun): Promise<FlushPoint> {
  await client.flush();
  const t = performance.now();
  return { t, seq: flushSeqOf(await agent.status()) };
}

/** Seconds from each FLUSH's reply to the first RP that holds it; one never seen counts until `end`. */
function rpoSamples(flushes: FlushPoint[], watcher: RpWatcher, end: number, what: string): number[] {
  let unresolved = 0;
  const samples = flushes.map(({ t, seq }) => {
    const first = watcher.firstAtOrAbove(seq);
    if (first === undefined) unresolved++;
    return ((first ?? end) - t) / 1000;
  });
  if (unresolved) log(`${what}: ${unresolved} of ${flushes.length} flushes saw no RP; counted with the time waited`);
  return samples;
}

/** The paced guest (bench/paced-load.ts) against an agent, where fio would run (the server's core when pinned). */
function pacedLoad(agent: AgentRun, placement: Placement, load: Pick<PacedLoadArgs, 'flushMs' | 'writeMs'>, onFlush: (f: FlushPoint & { last?: boolean }) => void): { stop(): Promise<void>; done: Promise<{ acked: number; ms: number }> } {
  const args: PacedLoadArgs = { port: agent.port, exportName: EXPORT, controlSocket: agent.controlSocket, rate: RPO_RATE, writeBytes: RPO_WRITE, ...load };
  const p = launch('paced-load', ...onServerCore(placement, nodeBin, ['--no-warnings=ExperimentalWarning', '--import', 'tsx', 'bench/paced-load.ts', JSON.stringify(args)]));
  let summary: { acked: number; ms: number } | undefined;
  let bad: Error | undefined;
  createInterface({ input: p.child.stdout! }).on('line', (line) => {
    try {
      const m = JSON.parse(line) as { flush?: { t: number; status: AgentStatus; last?: boolean }; done?: { acked: number; ms: number } };
      // Epoch ms → this process's performance.now() scale (both clocks are the system's).
      if (m.flush) onFlush({ t: m.flush.t - performance.timeOrigin, seq: flushSeqOf(m.flush.status), last: m.flush.last });
      if (m.done) summary = m.done;
    } catch (err) {
      bad ??= new Error(`paced-load printed '${line}': ${(err as Error).message}`);
    }
  });
  const done = p.exited.then(({ code, signal }) => {
    if (bad) throw bad;
    if (code !== 0 || !summary) throw new Error(`paced-load exited with ${code ?? signal}: ${p.tail.join('\n')}`);
    return summary;
  });
  done.catch(() => {}); // awaited by the caller; not an unhandled rejection meanwhile
  return { done, stop: async () => void (await stop(p)) };
}

/** Paced writes with periodic FLUSHes against a running agent; RPO samples in seconds. */
async function measureRpo(agent: AgentRun, index: ReplicaIndex, placement: Placement): Promise<number[]> {
  const watcher = new RpWatcher(index, agent.pairId);
  const flushes: FlushPoint[] = [];
  const start = performance.now();
  const windowStart = start + RPO_WARMUP_MS;
  const windowEnd = windowStart + rpoSeconds * 1000;
  let maxSeq = 0;
  const load = pacedLoad(agent, placement, { flushMs: RPO_FLUSH_MS }, (f) => {
    maxSeq = Math.max(maxSeq, f.seq);
    if (f.t >= windowStart && f.t < windowEnd) flushes.push(f);
  });
  let failure: Error | undefined;
  load.done.catch((err: Error) => (failure = err));
  const resolved = (): boolean => flushes.length > 0 && watcher.firstAtOrAbove(Math.max(...flushes.map((f) => f.seq))) !== undefined;
  let end = start;
  let acked = 0;
  try {
    for (;;) {
      const now = performance.now();
      if (failure) throw failure;
      if (now >= windowEnd && (resolved() || now >= windowEnd + RPO_TAIL_MS)) break;
      await sleep(RP_POLL_MS);
    }
  } finally {
    await load.stop();
    end = performance.now();
    acked = (await load.done.catch(() => ({ acked: 0 }))).acked;
    await watcher.stop();
    log(`rpo: ${round((acked / 1e6 / (end - start)) * 1000, 1)} MB/s acknowledged over ${round((end - start) / 1000, 1)} s, ${flushes.length} flushes sampled, last flush seq ${maxSeq}, ${watcher.count} RPs listed`);
  }
  await load.done; // a load that failed fails the job
  return rpoSamples(flushes, watcher, performance.now(), 'rpo');
}

/**
 * The idle RPO: 2 s of the paced load ending in an acknowledged FLUSH, then no writes (the
 * agent keeps running); seconds from that FLUSH's reply to an RP that holds it, or null if
 * none was listed within IDLE_CAP_MS.
 */
async function measureIdleRpo(agent: AgentRun, index: ReplicaIndex, placement: Placement): Promise<number | null> {
  const watcher = new RpWatcher(index, agent.pairId);
  try {
    let last: FlushPoint | undefined;
    const load = pacedLoad(agent, placement, { flushMs: 0, writeMs: IDLE_WRITE_MS }, (f) => f.last && (last = f));
    const { acked } = await load.done;
    if (!last) throw new Error('idle: the paced load printed no last FLUSH');
    log(`idle: ${round(acked / 1e6, 1)} MB written, last FLUSH held by seq ${last.seq}; no writes from now on`);
    while (watcher.firstAtOrAbove(last.seq) === undefined && performance.now() - last.t < IDLE_CAP_MS) await sleep(RP_POLL_MS);
    const first = watcher.firstAtOrAbove(last.seq);
    if (first === undefined) {
      const status = await agent.status();
      log(`idle: no RP with seq ≥ ${last.seq} within ${IDLE_CAP_MS / 1000} s of the last FLUSH (ccrp interval ${IDLE_CCRP_INTERVAL_MS / 1000} s; agent: last cut seq ${status.lastCutSeq}, ${status.spool.batches} spooled): idle_rpo_s null`);
      return null;
    }
    return (first - last.t) / 1000;
  } finally {
    await watcher.stop();
  }
}

// ---- the flush-heavy job ---------------------------------------------------------------

type FlushLoad = 'fio' | 'files';

interface FlushFigures {
  load_s: number;
  /** FLUSHes the load sent (fio's syncs) or files it wrote and fsynced. */
  flushes_per_s?: number;
  files_per_s?: number;
  puts_per_s: number | null;
  ddb_writes_per_s: number | null;
  flush_rpo_p50_s: number;
  flush_rpo_p99_s: number;
  flush_rpo_samples: number;
  cost_per_vm_month_usd: number | null;
  /** Every request counted in the window, per second of load. */
  requests_per_s?: Record<string, number>;
}

/** Whether the files job can run here: the kernel's ext4 over the agent needs root, FUSE and loop devices. */
function filesJobBlocker(): string | undefined {
  if (process.getuid?.() !== 0) return 'it needs root (mount, losetup)';
  if (!existsSync('/dev/fuse')) return 'it needs /dev/fuse (nbdfuse)';
  if (!existsSync('/dev/loop-control')) return 'it needs loop devices (/dev/loop-control)';
  return undefined;
}

/** ext4 on the agent's disk: nbdfuse exposes the export as a file, a loop device makes it a block device. */
async function mountExt4(port: number, dir: string, placement: Placement): Promise<{ mnt: string; unmount(): Promise<void> }> {
  const fuseDir = join(dir, 'fuse');
  const mnt = join(dir, 'mnt');
  await mkdir(fuseDir, { recursive: true });
  await mkdir(mnt, { recursive: true });
  const pidFile = join(dir, 'nbdfuse.pid');
  const fuse = launch('nbdfuse', ...onServerCore(placement, 'nbdfuse', ['-P', pidFile, join(fuseDir, 'nbd'), `nbd://127.0.0.1:${port}/${EXPORT}`]));
  let dev: string | undefined;
  let mounted = false;
  const quietly = (p: Promise<unknown>): Promise<void> => p.then(() => {}, (err: Error) => log(`files: ${err.message}`));
  const unmount = async (): Promise<void> => {
    teardowns.delete(unmount);
    if (mounted) await quietly(run('umount', [mnt]).catch(() => run('umount', ['-l', mnt])));
    mounted = false;
    if (dev) await quietly(run('losetup', ['-d', dev]));
    dev = undefined;
    if (running.has(fuse)) await quietly(run('umount', [fuseDir]).catch(() => run('umount', ['-l', fuseDir])));
    await stop(fuse, 5000);
  };
  teardowns.add(unmount);
  try {
    const deadline = Date.now() + 15_000;
    while (!existsSync(pidFile)) {
      if (!running.has(fuse)) throw new Error(`nbdfuse exited: ${fuse.tail.join('\n')}`);
      if (Date.now() > deadline) throw new Error('nbdfuse did not serve within 15 s');
      await sleep(100);
    }
    dev = (await run('losetup', ['-f', '--show', join(fuseDir, 'nbd')])).trim();
    // 1 GiB of the disk, every table written now (not by ext4lazyinit during the load).
    await run('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0,nodiscard', dev, '1G']);
    await run('mount', [dev, mnt]);
    mounted = true;
    await run('sync', []);
    return { mnt, unmount };
  } catch (err) {
    await unmount();
    throw err;
  }
}

/** A loop of new 4 KiB files, each written and fsynced, for `seconds`; prints how many. */
const FILES_SCRIPT =
  'cd "$1" || exit 1; i=0; end=$(( ${EPOCHREALTIME/./} + $2 * 1000000 )); while [ "${EPOCHREALTIME/./}" -lt "$end" ]; do dd if=/dev/urandom of="f$i" bs=4k count=1 conv=fsync status=none || exit 1; i=$((i+1)); done; echo "$i"';

async function flushHeavy(load: FlushLoad, agentServer: AgentServer, index: ReplicaIndex, stack: LocalStack, tmp: string, placement: Placement): Promise<FlushFigures> {
  const image = await sparseImage(join(tmp, `flush-${load}.img`));
  const agent = await agentServer.start(image, placement);
  let ext4: { mnt: string; unmount(): Promise<void> } | undefined;
  let client: NbdClient | undefined;
  let watcher: RpWatcher | undefined;
  try {
    if (load === 'files') {
      ext4 = await mountExt4(agent.port, join(tmp, 'files'), placement);
      await quiesce(agent, index); // mkfs's batches are not the load's,
      await settle(stack); // nor their compaction
    }
    client = await NbdClient.connect('127.0.0.1', agent.port, EXPORT);
    watcher = new RpWatcher(index, agent.pairId);
    // A FLUSH every ~250 ms on a connection of its own, sampled as in the RPO job.
    const flushes: FlushPoint[] = [];
    let loading = true;
    const sampler = (async () => {
      while (loading) {
        const f = await flushPoint(client!, agent);
        if (loading) flushes.push(f);
        await sleep(RPO_FLUSH_MS);
      }
    })();
    const before = stack.requests();
    const t0 = performance.now();
    let done: { flushes?: number; files?: number };
    try {
      if (load === 'fio') done = { flushes: (await fio(agent.port, 'flush4k', join(tmp, 'fio.json'), placement)).syncs };
      else done = { files: Number((await run(...onServerCore(placement, 'bash', ['-c', FILES_SCRIPT, 'files', ext4!.mnt, String(fioSeconds)]))).trim()) };
    } finally {
      loading = false;
      await sampler.catch((err: Error) => log(`flush ${load}: sampler: ${err.message}`));
    }
    const seconds = (performance.now() - t0) / 1000;
    // Everything the load caused: its batches uploaded and applied, and the last sampled FLUSH in an RP.
    await quiesce(agent, index);
    const last = Math.max(0, ...flushes.map((f) => f.seq));
    const deadline = performance.now() + RPO_TAIL_MS;
    while (watcher.firstAtOrAbove(last) === undefined && performance.now() < deadline) await sleep(RP_POLL_MS);
    const after = stack.requests();
    const rpo = rpoSamples(flushes, watcher, performance.now(), `flush ${load}`);
    if (rpo.length === 0) throw new Error(`flush ${load}: no FLUSH sampled`);
    const figures: FlushFigures = {
      load_s: round(seconds, 1),
      ...(done.flushes !== undefined ? { flushes_per_s: round(done.flushes / seconds, 1) } : { files_per_s: round(done.files! / seconds, 1) }),
      ...requestFigures(before && after ? requestsBetween(before, after) : undefined, seconds),
      flush_rpo_p50_s: round(percentile(rpo, 0.5)),
      flush_rpo_p99_s: round(percentile(rpo, 0.99)),
      flush_rpo_samples: rpo.length,
    };
    log(`flush ${load}: ${JSON.stringify(figures)}`);
    return figures;
  } finally {
    await watcher?.stop();
    await client?.close();
    await ext4?.unmount();
    await agent.close();
    await rm(image, { force: true });
  }
}

/** Journal PUTs, DynamoDB writes and the monthly cost of a window's requests, per second of load; nulls with an external RP Store. */
function requestFigures(r: StackRequests | undefined, seconds: number): Pick<FlushFigures, 'puts_per_s' | 'ddb_writes_per_s' | 'cost_per_vm_month_usd' | 'requests_per_s'> {
  if (!r) return { puts_per_s: null, ddb_writes_per_s: null, cost_per_vm_month_usd: null };
  const per = (n: number): number => n / seconds;
  const s3 = (...ops: string[]): number => ops.reduce((n, op) => n + (r.s3[op] ?? 0), 0);
  const ddb = dynamoRequestUnits(r.dynamodb);
  const sqs = Object.entries(r.sqs).reduce((n, [op, c]) => n + (op.includes('.') ? 0 : c), 0) - (r.sqs['ReceiveMessage.empty'] ?? 0);
  const cost = monthlyCost({
    s3PutClass: per(s3('PUT', 'POST', 'LIST')),
    s3GetClass: per(s3('GET', 'HEAD')),
    ddbWriteUnits: per(ddb.writeUnits),
    ddbReadUnits: per(ddb.readUnits),
    sqsRequests: per(sqs),
    lambdaInvocations: per(r.lambdaInvocations),
  });
  const all: Record<string, number> = { lambdaInvocations: r.lambdaInvocations };
  for (const [svc, counts] of [['s3', r.s3], ['dynamodb', r.dynamodb], ['sqs', r.sqs]] as const) for (const [op, n] of Object.entries(counts)) all[`${svc} ${op}`] = n;
  return {
    puts_per_s: round(per(s3('PUT journal')), 2),
    ddb_writes_per_s: round(per(ddb.writeRequests), 2),
    cost_per_vm_month_usd: round(cost.totalUsd, 2),
    requests_per_s: Object.fromEntries(Object.entries(all).map(([k, n]) => [k, round(per(n), 2)])),
  };
}

// ---- main ------------------------------------------------------------------------------

/** The RP Store the environment names (LocalStack elsewhere, or AWS): nothing to start or stop here, nothing counted, and its apply path is its own. */
const environmentStack = (): LocalStack => ({ env: {}, deadLetterUrl: '', pids: [], setEventPathEnabled: () => {}, workflowsIdle: async () => {}, requests: () => undefined, faults: new EdgeFaults(), kill: () => -1, inFlight: () => 0, stop: async () => {} });

function peersNeeded(external: boolean, files: boolean): Peer[] {
  const peers: Peer[] = [
    { command: 'qemu-nbd', pkg: 'qemu-utils' },
    { command: 'nbdkit', pkg: 'nbdkit' },
    { command: 'fio', pkg: 'fio' },
    { command: 'taskset', pkg: 'util-linux' },
  ];
  if (!external) peers.push(JAVA_PEER);
  if (files) peers.push({ command: 'nbdfuse', pkg: 'libnbd-bin' }, { command: 'losetup', pkg: 'mount' }, { command: 'mkfs.ext4', pkg: 'e2fsprogs' });
  return peers;
}

async function main(): Promise<void> {
  const external = usesExternalStack();
  const filesBlocker = filesJobBlocker();
  ensurePeers(peersNeeded(external, !filesBlocker), log);
  const placements = placementsToRun();
  const primary = placements[0];
  // Short: the agent's control socket path lives in here (Unix sockets allow ~107 bytes).
  const tmp = await mkdtemp(join(tmpdir(), 'lsb-'));
  const stackDir = join(root, '.livesync', 'bench-agent', 'stack');
  let stack: LocalStack | undefined;
  /** Figures about the local stand-ins of the cloud side: none with an external RP Store. */
  const onHost = <T>(figure: () => T): T | null => (external ? null : figure());
  const cleanup = async (): Promise<void> => {
    for (const undo of [...teardowns]) await undo();
    await Promise.allSettled([...running].map((p) => stop(p, 5000)));
    await stack?.stop();
    await rm(tmp, { recursive: true, force: true });
    await rm(stackDir, { recursive: true, force: true }); // the journal objects of this run
  };
  await runBench(log, cleanup, async () => {
    if (external) log('using the RP Store the environment names (AWS_ENDPOINT_URL*, LIVESYNC_*): its S3 and apply path are not on this host');
    else log('starting the local stack (event path on)');
    stack = external ? environmentStack() : await startLocalStack({ dir: stackDir, log });
    const { index: envIndex, table } = rpStoreFromEnv();
    // The bench's own look-ups (RPs, watermark) go past the request counter: they are not the RP Store's work.
    const index = stack.uncountedDynamoEndpoint ? new DynamoIndex(table, dynamoClient({ endpoint: stack.uncountedDynamoEndpoint })) : envIndex;
    const agent = new AgentServer(stack, index, tmp);
    // The agent again, each on a fresh image: with the apply side live; and with its uploads
    // held back (paced to 1 MiB/s, into the spool) so that the local S3's work is not on these
    // cores either. Left unapplied.
    const agentApplyLive: Server = { name: 'agent (apply on this host)', start: (image, placement) => agent.start(image, placement) };
    const agentUploadsHeld: Server = { name: 'agent (uploads held back)', start: (image, placement) => agent.start(image, placement, { args: ['--bandwidth', '1M'], drain: false }) };
    const peers: Server[] = [agent, qemuNbd, nbdkit];
    const serversUnder = (placement: Placement): Server[] =>
      (placement !== primary ? peers : external ? [...peers, agentUploadsHeld] : [...peers, agentApplyLive, agentUploadsHeld]).filter(
        (s) => !onlyServers || onlyServers.includes(s.name),
      );

    // Samples by `${placement}|${server}|${figure}`; a key in `spoiled` was taken while the agent's spool overflowed.
    const samples = new Map<string, number[]>();
    const spoiled = new Set<string>();
    const add = (key: string, x: number): void => void samples.set(key, [...(samples.get(key) ?? []), x]);
    /** A job on an agent counts only if its spool did not overflow meanwhile. */
    const spoolHeld = async (serving: Serving, before: AgentStatus | undefined, key: string): Promise<void> => {
      if (!before || !serving.status) return;
      const after = await serving.status();
      if (after.overflows === before.overflows && after.mode === 'streaming') return;
      spoiled.add(key);
      log(`${key}: the agent's spool overflowed during the job (overflows ${before.overflows} → ${after.overflows}, mode ${after.mode}): it measured the dirty-map mode, so this figure is null`);
    };

    for (let rep = 0; rep < (runs('peers') ? reps : 0); rep++) {
      const placementOrder = rep % 2 ? [...placements].reverse() : placements;
      for (const placement of placementOrder) {
        await placeStack(placement, stack);
        const servers = serversUnder(placement);
        const order = servers.map((_, i) => servers[(i + rep) % servers.length]); // rotated each rep
        for (const server of order) {
          const at = `${placement}|${server.name}`;
          const image = await sparseImage(join(tmp, `${server.name}.img`));
          // Each server starts with no dirty page cache left by the one before (its writeback
          // would land in this run: qemu-nbd measured 12k or 33k IOPS depending on it), and on
          // a stack that no longer compacts what an agent before it wrote (the files that
          // writes are writeback too: a rep in which it ran was slower for every server).
          await settle(stack);
          await run('sync', []);
          const t0 = performance.now();
          const serving = await server.start(image, placement);
          const t1 = performance.now();
          if (rep === 0) log(`${placement}: ${server.name} on cores ${await coresOf(serving.pid)}, the local stack on ${await coresOf(process.pid)}`);
          try {
            // The apply work runs in AWS, not beside the source: it waits in the queue meanwhile.
            if (server !== agentApplyLive) stack.setEventPathEnabled(false);
            // Each server's rand4k runs first, on its fresh sparse image.
            let before = await serving.status?.();
            const [cpu0, here0] = [await cpuSeconds(serving.pid), process.cpuUsage()];
            const { rate: r, writes } = await fio(serving.port, 'rand4k', join(tmp, 'fio.json'), placement);
            const here = process.cpuUsage(here0);
            add(`${at}|rand`, r);
            add(`${at}|cpu`, (((await cpuSeconds(serving.pid)) - cpu0) * 1e6) / writes);
            add(`${at}|stackCpu`, (here.user + here.system) / writes);
            await spoolHeld(serving, before, `${at}|rand`);
            if (serving.note) log(`rep ${rep + 1}/${reps} ${placement} ${server.name} after rand4k: ${await serving.note()}`);
            if (server !== agentApplyLive && server !== agentUploadsHeld) {
              before = await serving.status?.();
              const seqCpu0 = await cpuSeconds(serving.pid);
              const { rate: s, writes: seqWrites } = await fio(serving.port, 'seq1m', join(tmp, 'fio.json'), placement);
              add(`${at}|seq`, s);
              const seqCpu = (((await cpuSeconds(serving.pid)) - seqCpu0) * 1e3) / seqWrites; // bs=1M: ms per MiB
              add(`${at}|seqCpu`, seqCpu);
              await spoolHeld(serving, before, `${at}|seq`);
              if (serving.note) log(`rep ${rep + 1}/${reps} ${placement} ${server.name} after seq1m: ${await serving.note()}`);
              log(`rep ${rep + 1}/${reps} ${placement} ${server.name}: rand4k ${Math.round(r)} IOPS, seq1m ${round(s, 1)} MiB/s (${round(seqCpu, 2)} CPU ms per MiB)`);
            } else log(`rep ${rep + 1}/${reps} ${placement} ${server.name}: rand4k ${Math.round(r)} IOPS`);
          } finally {
            const t2 = performance.now();
            stack.setEventPathEnabled(true); // the agent's batches are applied before the next server runs
            await serving.close();
            await rm(image, { force: true });
            const secs = (a: number, b: number): number => round((b - a) / 1000, 1);
            log(`rep ${rep + 1}/${reps} ${placement} ${server.name}: ${secs(t0, t1)} s to serve, ${secs(t1, t2)} s of fio, ${secs(t2, performance.now())} s to stop and clean up`);
          }
        }
      }
    }

    // The agent-only jobs, under the primary placement, each on a fresh agent and image, and
    // each on a quiet stack: an earlier job's compaction is not the next one's cost or delay.
    await placeStack(primary, stack);
    await settle(stack);
    log(`rpo: ${rpoSeconds} s at ${RPO_RATE / 1e6} MB/s, FLUSH every ${RPO_FLUSH_MS} ms, ccrp interval ${CCRP_INTERVAL_MS} ms`);
    if (runs('rpo') && !runs('peers')) {
      // The peers' reps warm the stack (DynamoDB Local's JIT: the same job on a cold JVM gave
      // an RPO p99 of 4.5 s against 0.35 s warm); without them a first run does, uncounted.
      log('rpo: a first, uncounted run warms the local stack');
      await withAgent(agent, tmp, 'rpo-warm-up', primary, {}, (a) => measureRpo(a, index, primary));
      await settle(stack);
    }
    const rpo = runs('rpo') ? await withAgent(agent, tmp, 'rpo', primary, {}, (a) => measureRpo(a, index, primary)) : [];
    if (runs('rpo') && rpo.length === 0) throw new Error('no RPO samples');

    const flushJobs: Partial<Record<FlushLoad, FlushFigures | null>> = {};
    for (const load of ['fio', 'files'] as const) {
      if (!runs(`flush-${load}`)) continue;
      if (load === 'files' && filesBlocker) {
        log(`flush files: skipped, ${filesBlocker}; its figures are null`);
        flushJobs.files = null;
        continue;
      }
      log(`flush ${load}: ${fioSeconds} s, the apply path live, ccrp interval ${CCRP_INTERVAL_MS} ms`);
      await settle(stack);
      flushJobs[load] = await flushHeavy(load, agent, index, stack, tmp, primary);
    }
    /** The worse of the parts that ran; null if none ran or one has no such figure (an external RP Store). */
    const worst = (figure: 'puts_per_s' | 'ddb_writes_per_s' | 'flush_rpo_p99_s' | 'cost_per_vm_month_usd'): number | null => {
      const xs = Object.values(flushJobs).flatMap((j) => (j ? [j[figure]] : []));
      return xs.length === 0 || xs.includes(null) ? null : Math.max(...(xs as number[]));
    };

    log(`idle: ${IDLE_WRITE_MS / 1000} s at ${RPO_RATE / 1e6} MB/s, a last FLUSH, then quiet; ccrp interval ${IDLE_CCRP_INTERVAL_MS} ms, waiting at most ${IDLE_CAP_MS / 1000} s`);
    await settle(stack);
    const idleRpo = !runs('idle') ? null : await withAgent(agent, tmp, 'idle', primary, { ccrpIntervalMs: IDLE_CCRP_INTERVAL_MS }, (a) => measureIdleRpo(a, index, primary));

    /** Median of a figure's samples; null if none or if any was taken during a spool overflow. */
    const m = (placement: Placement, server: string, figure: string): number | null => {
      const key = `${placement}|${server}|${figure}`;
      const xs = samples.get(key);
      return !xs?.length || spoiled.has(key) ? null : median(xs);
    };
    const r = (x: number | null, digits = 1): number | null => (x === null ? null : round(x, digits));
    const ratio = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : round(a / b, 3));
    const figures = (p: Placement, suffix: string): Record<string, number | null> => ({
      [`rand4k_iops${suffix}`]: r(m(p, 'agent', 'rand'), 0),
      [`qemu_nbd_rand4k_iops${suffix}`]: r(m(p, 'qemu-nbd', 'rand'), 0),
      [`nbdkit_rand4k_iops${suffix}`]: r(m(p, 'nbdkit', 'rand'), 0),
      [`ratio_vs_qemu_nbd${suffix}`]: ratio(m(p, 'agent', 'rand'), m(p, 'qemu-nbd', 'rand')),
      ...(suffix
        ? {}
        : {
            rand4k_iops_apply_on_host: onHost(() => r(m(p, agentApplyLive.name, 'rand'), 0)),
            ratio_apply_on_host: onHost(() => ratio(m(p, agentApplyLive.name, 'rand'), m(p, 'qemu-nbd', 'rand'))),
            rand4k_iops_uploads_held: r(m(p, agentUploadsHeld.name, 'rand'), 0),
            ratio_uploads_held: ratio(m(p, agentUploadsHeld.name, 'rand'), m(p, 'qemu-nbd', 'rand')),
          }),
      [`agent_cpu_us_per_write${suffix}`]: r(m(p, 'agent', 'cpu')),
      [`qemu_nbd_cpu_us_per_write${suffix}`]: r(m(p, 'qemu-nbd', 'cpu')),
      [`nbdkit_cpu_us_per_write${suffix}`]: r(m(p, 'nbdkit', 'cpu')),
      [`ratio_cpu_vs_qemu_nbd${suffix}`]: ratio(m(p, 'agent', 'cpu'), m(p, 'qemu-nbd', 'cpu')),
      [`local_s3_cpu_us_per_write${suffix}`]: onHost(() => r(m(p, 'agent', 'stackCpu'))),
      [`seq1m_mib_s${suffix}`]: r(m(p, 'agent', 'seq')),
      [`qemu_nbd_seq1m_mib_s${suffix}`]: r(m(p, 'qemu-nbd', 'seq')),
      [`nbdkit_seq1m_mib_s${suffix}`]: r(m(p, 'nbdkit', 'seq')),
      [`seq1m_ratio_vs_qemu_nbd${suffix}`]: ratio(m(p, 'agent', 'seq'), m(p, 'qemu-nbd', 'seq')),
      [`agent_cpu_ms_per_seq1m_mib${suffix}`]: r(m(p, 'agent', 'seqCpu'), 2),
      [`qemu_nbd_cpu_ms_per_seq1m_mib${suffix}`]: r(m(p, 'qemu-nbd', 'seqCpu'), 2),
    });
    console.log(
      JSON.stringify({
        bench: 'agent',
        placement: primary,
        ...figures(primary, ''),
        ...(placements.length > 1 ? figures(placements[1], `_${placements[1]}`) : {}),
        rpo_p50_s: rpo.length ? round(percentile(rpo, 0.5)) : null,
        rpo_p99_s: rpo.length ? round(percentile(rpo, 0.99)) : null,
        rpo_samples: rpo.length,
        ccrp_interval_s: CCRP_INTERVAL_MS / 1000,
        puts_per_s: worst('puts_per_s'),
        ddb_writes_per_s: worst('ddb_writes_per_s'),
        flush_rpo_p99_s: worst('flush_rpo_p99_s'),
        cost_per_vm_month_usd: worst('cost_per_vm_month_usd'),
        flush_jobs: flushJobs,
        idle_rpo_s: idleRpo === null ? null : round(idleRpo),
        idle_ccrp_interval_s: IDLE_CCRP_INTERVAL_MS / 1000,
        agent_rss_mib: round(agent.peakRss[primary] / MiB, 1),
        ...(placements.length > 1 ? { [`agent_rss_mib_${placements[1]}`]: round(agent.peakRss[placements[1]] / MiB, 1) } : {}),
        disk_gib: diskGib,
        reps,
        rp_store: external ? 'external' : 'local',
      }),
    );
  });
}

/** Runs `job` against a fresh agent on a fresh image, then stops it (its batches applied). */
async function withAgent<T>(agent: AgentServer, tmp: string, name: string, placement: Placement, variant: AgentVariant, job: (a: AgentRun) => Promise<T>): Promise<T> {
  const image = await sparseImage(join(tmp, `${name}.img`));
  const serving = await agent.start(image, placement, variant);
  try {
    return await job(serving);
  } finally {
    await serving.close();
    await rm(image, { force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
