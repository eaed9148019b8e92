// npm run bench:agent — the source agent as an NBD server against qemu-nbd and nbdkit (same
// sparse image, same fio job, alternated agent / qemu-nbd / nbdkit in one run, medians), and
// its recovery point objective on the embedded local stack with the event path on (batches
// in S3 → SQS → apply Lambda → RPs in the index). Prints one JSON line; progress on stderr.
//
//   rand4k_iops            fio nbd engine, random 4 KiB writes, iodepth 32, within the first
//                          1 GiB of the disk, BENCH_FIO_S seconds (time_based) → write IOPS
//   qemu_nbd_/nbdkit_…     the same job against `qemu-nbd -t` and `nbdkit file` on a fresh
//                          sparse image of the same size
//   ratio_vs_qemu_nbd      rand4k_iops / qemu_nbd_rand4k_iops (medians)
//   rand4k_iops_apply_on_host, ratio_apply_on_host
//                          the same rand4k job against a fresh agent and image, while the local
//                          stand-ins of the cloud side (apply handler, DynamoDB Local) also
//                          run on this host's 2 cores. For rand4k_iops and seq1m_mib_s the
//                          apply handler's event source is disabled (as UpdateEventSourceMapping
//                          would): the agent still cuts, spools and uploads every batch to the
//                          local S3, but the apply work, which runs in AWS and not beside the
//                          source, waits in the queue until the job ends
//   rand4k_iops_uploads_held, ratio_uploads_held
//                          the same rand4k job against a fresh agent started with
//                          `--bandwidth 1M`: it captures and spools every write as usual, but
//                          its uploads wait, so the local S3's share of these 2 cores (in AWS
//                          it is not on the source host) is left out: the agent's own cost
//   agent_cpu_us_per_write, qemu_nbd_…, nbdkit_…, ratio_cpu_vs_qemu_nbd
//                          CPU time (user + system, all threads, from /proc) the server's
//                          process used during its rand4k job, per write: the filter's own
//                          cost, less sensitive than IOPS to what else shares the cores
//   local_s3_cpu_us_per_write
//                          the same for this process (the local stack's S3, which receives
//                          the uploads) during the agent's rand4k job: work that in AWS is
//                          not on the source host, but here shares its 2 cores
//   seq1m_mib_s            fio, sequential 1 MiB writes, iodepth 8, from 1 GiB on → MiB/s
//   rpo_p50_s / rpo_p99_s  a fresh agent under a paced load of 20 MB/s (64 KiB writes at random
//                          offsets in the first 1 GiB) with an NBD FLUSH every ~250 ms, over
//                          BENCH_RPO_S seconds after a 2 s warm-up. Per FLUSH: t = when its
//                          reply arrived; s = the agent's lastCutSeq asked right after (the
//                          flushed writes are in batch s or earlier); the sample is the first
//                          time an RP with seq ≥ s was listed by the index (polled every
//                          ~50 ms) − t. Linear-interpolated percentiles, seconds.
//   rpo_samples            FLUSHes sampled (a sample whose RP never showed counts with the
//                          time waited; stderr says so)
//   ccrp_interval_s        the pairs' crash-consistent RP interval
//   agent_rss_mib          peak resident memory (VmHWM / max sampled VmRSS) of the agent's own
//                          node process over all its runs, on disks of disk_gib GiB
//   rp_store               'local': the embedded local stack, started here; 'external': the RP
//                          Store the environment names, as for the tests (AWS_ENDPOINT_URL* or
//                          LIVESYNC_TARGET=aws, with LIVESYNC_BUCKET and LIVESYNC_TABLE): its S3
//                          and apply path are not on this host, so the figures about the local
//                          stand-ins (…_apply_on_host, local_s3_cpu_us_per_write) are null
//
// The agent runs as a child process (Node 22 with the tsx loader, `livesync agent`), a new
// pair and image per run; after each run it is stopped and the pair's batches are applied
// before the next server runs, so the apply backlog does not load the peers. With the local
// stack, S3, SQS and the apply Lambda run in this process on the same 2 cores; the agent pays
// for them, the peers do not. BENCH_DISK_GIB (default 16), BENCH_REPS (3), BENCH_FIO_S (5),
// BENCH_RPO_S (20), BENCH_AGENT_NODE_ARGS (extra node flags for the agent, e.g. to profile it).

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, readlink, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { rpStoreFromEnv, usesExternalStack } from '../adapters/from-env';
import { callAgent } from '../agent/control';
import { AGENT_ENV, AGENT_NODE_FLAGS } from '../agent/runtime';
import { freePort, startLocalStack, type LocalStack } from '../local/stack';
import { sleep } from '../replica/concurrency';
import { createPair, waitForWatermark } from '../replica/pairs';
import type { ReplicaIndex } from '../replica/ports';
import { median, percentile, round, runBench } from './measure';
import { NbdClient } from './nbd-client';

const MiB = 2 ** 20;
/** /proc's clock ticks per second (USER_HZ). */
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));
const GiB = 2 ** 30;
const diskGib = Number(process.env.BENCH_DISK_GIB ?? 16);
const reps = Number(process.env.BENCH_REPS ?? 3);
const fioSeconds = Number(process.env.BENCH_FIO_S ?? 5);
const rpoSeconds = Number(process.env.BENCH_RPO_S ?? 20);
/** Extra node flags for the agent process, e.g. `--cpu-prof --cpu-prof-dir=DIR` to profile it. */
const nodeArgs = (process.env.BENCH_AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean);
const diskBytes = diskGib * GiB;
const CCRP_INTERVAL_MS = 1000;
const RPO_RATE = 20e6; // bytes per second
const RPO_WRITE = 64 * 1024;
const RPO_FLUSH_MS = 250;
const RPO_WARMUP_MS = 2000;
/** After the window, keep the load on at most this long for the last samples' RPs. */
const RPO_TAIL_MS = 60_000;
const RP_POLL_MS = 50;
/** How long a stopped agent's batches may take to apply before we move on. */
const DRAIN_TIMEOUT_MS = 180_000;
const EXPORT = 'disk0';
const root = join(__dirname, '..');
const nodeBin = join(root, 'node_modules', '.bin', 'node');

const log = (m: string): void => void process.stderr.write(`[bench:agent] ${m}\n`);

if (!(diskGib >= 2) || !(reps >= 1) || !(fioSeconds >= 1) || !(rpoSeconds >= 1)) {
  throw new Error('BENCH_DISK_GIB must be ≥ 2, BENCH_REPS, BENCH_FIO_S and BENCH_RPO_S ≥ 1');
}

// ---- child processes -----------------------------------------------------------------

/** Every child we started and have not seen exit: cleanup stops exactly these. */
const running = new Set<Proc>();

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

/** Waits until an NBD handshake for our export succeeds (then disconnects). */
async function waitForNbd(port: number, p: Proc, name: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (!running.has(p)) throw new Error(`${name} exited before serving: ${p.tail.join('\n')}`);
    try {
      await (await NbdClient.connect('127.0.0.1', port, EXPORT)).close();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${name} does not serve on port ${port}: ${(err as Error).message}`);
      await sleep(100);
    }
  }
}

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
  /** Stops the server (and, for the agent, waits for its batches to be applied). */
  close(): Promise<void>;
}

interface Server {
  name: string;
  start(image: string): Promise<Serving>;
}

/** Peers flush their page cache on exit (qemu-nbd: seconds after a sequential run). */
async function stopPeer(p: Proc, name: string): Promise<void> {
  const how = await stop(p, 30_000);
  if (how.killed) log(`${name} needed SIGKILL to stop`);
}

const qemuNbd: Server = {
  name: 'qemu-nbd',
  async start(image) {
    const port = await freePort();
    const p = launch('qemu-nbd', 'qemu-nbd', ['-f', 'raw', '-t', '-b', '127.0.0.1', '-p', String(port), '-x', EXPORT, image]);
    await waitForNbd(port, p, 'qemu-nbd');
    return { port, pid: p.pid, close: () => stopPeer(p, 'qemu-nbd') };
  },
};

const nbdkit: Server = {
  name: 'nbdkit',
  async start(image) {
    const port = await freePort();
    const p = launch('nbdkit', 'nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'file', image]);
    await waitForNbd(port, p, 'nbdkit');
    return { port, pid: p.pid, close: () => stopPeer(p, 'nbdkit') };
  },
};

interface AgentRun extends Serving {
  pairId: string;
  pid: number;
  controlSocket: string;
}

class AgentServer implements Server {
  readonly name = 'agent';
  /** Peak RSS in bytes over every agent process this bench started. */
  peakRss = 0;
  private runs = 0;

  constructor(
    private readonly stack: LocalStack,
    private readonly index: ReplicaIndex,
    private readonly tmp: string,
  ) {}

  /** `args`: extra agent flags; `drain` false: stop without waiting for the pair's batches to be applied. */
  async start(image: string, variant: { args?: string[]; drain?: boolean } = {}): Promise<AgentRun> {
    const pairId = `bench-agent-${Date.now().toString(36)}-${this.runs}`;
    const stateDir = join(this.tmp, `state-${this.runs++}`);
    await createPair(this.index, { pairId, disks: [{ name: EXPORT, sizeBytes: diskBytes }], ccrpIntervalMs: CCRP_INTERVAL_MS });
    // Node itself with the tsx loader: the PID we watch is the agent's own process.
    const p = launch(
      'agent',
      nodeBin,
      [...AGENT_NODE_FLAGS, ...nodeArgs, '--no-warnings=ExperimentalWarning', '--import', 'tsx', 'cli/livesync.ts', 'agent', '--pair', pairId, '--disk', `${EXPORT}=${image}`, '--listen', '127.0.0.1:0', '--state-dir', stateDir, ...(variant.args ?? [])],
      { env: { ...process.env, ...this.stack.env, ...AGENT_ENV }, echo: true },
    );
    let sampler: NodeJS.Timeout | undefined;
    let peak = 0; // this process's
    let idle = 0; // its RSS once serving, before any I/O
    const sample = async (): Promise<number> => {
      const status = await readFile(`/proc/${p.pid}/status`, 'utf8').catch(() => '');
      const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kib('VmRSS') * 1024, kib('VmHWM') * 1024);
      this.peakRss = Math.max(this.peakRss, peak);
      return kib('VmRSS') * 1024;
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
      await waitForNbd(port, p, 'agent');
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
        const now = ((await callAgent(join(stateDir, 'control.sock'), { op: 'status' }).catch(() => undefined)) as { status?: { memoryMiB?: object } } | undefined)?.status?.memoryMiB;
        return `agent peak RSS so far ${round(peak / MiB, 1)} MiB; now ${JSON.stringify(now ?? 'unknown')}`;
      };
      return { port, pairId, pid: p.pid, controlSocket: join(stateDir, 'control.sock'), close, note };
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

// ---- fio -------------------------------------------------------------------------------

type Job = 'rand4k' | 'seq1m';

/** Runs one fio job against nbd://127.0.0.1:port/disk0: IOPS (rand4k) or MiB/s (seq1m), and its writes. */
async function fio(port: number, job: Job, out: string): Promise<{ rate: number; writes: number }> {
  const common = ['--name=bench', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/${EXPORT}`, '--time_based', `--runtime=${fioSeconds}`, '--output-format=json', `--output=${out}`];
  const spec =
    job === 'rand4k'
      ? ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=1g']
      : ['--rw=write', '--bs=1M', '--iodepth=8', '--offset=1g', `--size=${Math.min(4, diskGib - 1)}g`];
  await run('fio', [...common, ...spec]);
  const res = JSON.parse(await readFile(out, 'utf8')) as { jobs: { error: number; write: { iops: number; bw_bytes: number; total_ios: number } }[] };
  const j = res.jobs[0];
  if (j.error !== 0 || j.write.total_ios === 0) throw new Error(`fio ${job} on port ${port}: error ${j.error}, ${j.write.total_ios} writes`);
  return { rate: job === 'rand4k' ? j.write.iops : j.write.bw_bytes / MiB, writes: j.write.total_ios };
}

/** CPU seconds (user + system, all threads) a process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // after "pid (comm) "
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS; // utime, stime: fields 14 and 15
}

// ---- rpo -------------------------------------------------------------------------------

/** Paced writes with periodic FLUSHes against a running agent; RPO samples in seconds. */
async function measureRpo(agent: AgentRun, index: ReplicaIndex): Promise<number[]> {
  const client = await NbdClient.connect('127.0.0.1', agent.port, EXPORT);
  const region = Math.min(GiB, client.size);
  const pool = randomBytes(32 * MiB); // random (incompressible), never repeated within a batch
  const seen = new Map<number, number>(); // RP seq → when it was first listed
  let polling = true;
  const poller = (async () => {
    while (polling) {
      const t0 = performance.now();
      const rps = await index.listRecoveryPoints(agent.pairId, Math.floor(Date.now() / 1000));
      const t = performance.now();
      for (const rp of rps) if (!seen.has(rp.seq)) seen.set(rp.seq, t);
      await sleep(Math.max(0, RP_POLL_MS - (t - t0)));
    }
  })();

  const flushes: { t: number; seq: number }[] = [];
  const start = performance.now();
  const windowStart = start + RPO_WARMUP_MS;
  const windowEnd = windowStart + rpoSeconds * 1000;
  let failure: Error | undefined;
  const fail = (err: Error): void => void (failure ??= err);
  let sent = 0;
  let acked = 0;
  let poolAt = 0;
  let flushing = false;
  let lastFlush = start;
  let maxSeen = 0;
  const resolved = (): boolean => flushes.length > 0 && Math.max(...seen.keys()) >= Math.max(...flushes.map((f) => f.seq));
  try {
    for (;;) {
      const now = performance.now();
      if (failure) throw failure;
      if (now >= windowEnd && (resolved() || now >= windowEnd + RPO_TAIL_MS)) break;
      // Keep up with the rate; if the agent falls behind, at most 16 writes (1 MiB) wait.
      while (sent < (RPO_RATE * (now - start)) / 1000 && client.inFlight < 16) {
        const offset = Math.floor(Math.random() * (region / RPO_WRITE)) * RPO_WRITE;
        if (poolAt + RPO_WRITE > pool.length) poolAt = 0;
        const data = pool.subarray(poolAt, (poolAt += RPO_WRITE));
        sent += RPO_WRITE;
        client.write(offset, data).then(() => void (acked += RPO_WRITE), fail);
      }
      if (!flushing && now - lastFlush >= RPO_FLUSH_MS) {
        flushing = true;
        lastFlush = now;
        client
          .flush()
          .then(async () => {
            const t = performance.now();
            const answer = await callAgent(agent.controlSocket, { op: 'status' });
            if (!answer.ok || !('status' in answer)) throw new Error(`agent status: ${JSON.stringify(answer)}`);
            maxSeen = Math.max(maxSeen, answer.status.lastCutSeq);
            if (t >= windowStart && t < windowEnd) flushes.push({ t, seq: answer.status.lastCutSeq });
          })
          .catch(fail)
          .finally(() => (flushing = false));
      }
      await sleep(5);
    }
  } finally {
    const end = performance.now();
    await client.close();
    polling = false;
    await poller;
    log(`rpo: ${round((acked / 1e6 / (end - start)) * 1000, 1)} MB/s acknowledged over ${round((end - start) / 1000, 1)} s, ${flushes.length} flushes sampled, last cut seq ${maxSeen}, ${seen.size} RPs listed`);
  }
  const ends = performance.now();
  let unresolved = 0;
  const samples = flushes.map(({ t, seq }) => {
    let first = Infinity;
    for (const [s, at] of seen) if (s >= seq && at < first) first = at;
    if (first === Infinity) {
      unresolved++;
      first = ends;
    }
    return (first - t) / 1000;
  });
  if (unresolved) log(`rpo: ${unresolved} flushes saw no RP within ${RPO_TAIL_MS / 1000} s after the window; counted with the time waited`);
  return samples;
}

// ---- main ------------------------------------------------------------------------------

/** The RP Store the environment names (LocalStack elsewhere, or AWS): nothing to start or stop here, and its apply path is its own. */
const environmentStack = (): LocalStack => ({ env: {}, deadLetterUrl: '', setEventPathEnabled: () => {}, stop: async () => {} });

async function main(): Promise<void> {
  process.env.LOG_LEVEL = 'warn';
  // Short: the agent's control socket path lives in here (Unix sockets allow ~107 bytes).
  const tmp = await mkdtemp(join(tmpdir(), 'lsb-'));
  const stackDir = join(root, '.livesync', 'bench-agent', 'stack');
  let stack: LocalStack | undefined;
  const external = usesExternalStack();
  /** Figures about the local stand-ins of the cloud side: none with an external RP Store. */
  const onHost = (figure: () => number): number | null => (external ? null : figure());
  const cleanup = async (): Promise<void> => {
    await Promise.allSettled([...running].map((p) => stop(p, 5000)));
    await stack?.stop();
    await rm(tmp, { recursive: true, force: true });
    await rm(stackDir, { recursive: true, force: true }); // the journal objects of this run
  };
  await runBench(log, cleanup, async () => {
    if (external) log('using the RP Store the environment names (AWS_ENDPOINT_URL*, LIVESYNC_*): its S3 and apply path are not on this host');
    else log('starting the local stack (event path on)');
    stack = external ? environmentStack() : await startLocalStack({ dir: stackDir, log });
    const { index } = rpStoreFromEnv();
    const agent = new AgentServer(stack, index, tmp);
    // The agent again, each on a fresh image: with the apply side live on these cores too; and
    // with its uploads held back (paced to 1 MiB/s, into the spool) so that the local S3's work,
    // which in AWS is not on the source host, is not on these cores either. Left unapplied.
    const agentApplyLive: Server = { name: 'agent (apply on this host)', start: (image) => agent.start(image) };
    const agentUploadsHeld: Server = { name: 'agent (uploads held back)', start: (image) => agent.start(image, { args: ['--bandwidth', '1M'], drain: false }) };
    const servers: Server[] = external ? [agent, qemuNbd, nbdkit, agentUploadsHeld] : [agent, qemuNbd, nbdkit, agentApplyLive, agentUploadsHeld];
    const rand = new Map<string, number[]>(servers.map((s) => [s.name, []]));
    const seq = new Map<string, number[]>(servers.map((s) => [s.name, []]));
    // µs of CPU per rand4k write: the server's process, and this one (the local stack's S3 and,
    // when on, its apply path; DynamoDB Local is a process of its own and idle meanwhile).
    const cpu = new Map<string, number[]>(servers.map((s) => [s.name, []]));
    const localStackCpu = new Map<string, number[]>(servers.map((s) => [s.name, []]));

    for (let rep = 0; rep < reps; rep++) {
      for (const server of servers) {
        const image = await sparseImage(join(tmp, `${server.name}.img`));
        // Each server starts with no dirty page cache left by the one before (its writeback
        // would land in this run: qemu-nbd measured 12k or 33k IOPS depending on it).
        await run('sync', []);
        const t0 = performance.now();
        const serving = await server.start(image);
        const t1 = performance.now();
        try {
          // The apply work runs in AWS, not beside the source: it waits in the queue meanwhile.
          if (server === agent || server === agentUploadsHeld) stack.setEventPathEnabled(false);
          // Each server's rand4k runs first, on its fresh sparse image.
          const [cpu0, here0] = [await cpuSeconds(serving.pid), process.cpuUsage()];
          const { rate: r, writes } = await fio(serving.port, 'rand4k', join(tmp, 'fio.json'));
          const here = process.cpuUsage(here0);
          rand.get(server.name)!.push(r);
          cpu.get(server.name)!.push(((await cpuSeconds(serving.pid)) - cpu0) * 1e6 / writes);
          localStackCpu.get(server.name)!.push((here.user + here.system) / writes);
          if (serving.note) log(`rep ${rep + 1}/${reps} ${server.name} after rand4k: ${await serving.note()}`);
          if (server !== agentApplyLive && server !== agentUploadsHeld) {
            const { rate: s } = await fio(serving.port, 'seq1m', join(tmp, 'fio.json'));
            seq.get(server.name)!.push(s);
            if (serving.note) log(`rep ${rep + 1}/${reps} ${server.name} after seq1m: ${await serving.note()}`);
            log(`rep ${rep + 1}/${reps} ${server.name}: rand4k ${Math.round(r)} IOPS, seq1m ${round(s, 1)} MiB/s`);
          } else log(`rep ${rep + 1}/${reps} ${server.name}: rand4k ${Math.round(r)} IOPS`);
        } finally {
          const t2 = performance.now();
          stack.setEventPathEnabled(true); // the agent's batches are applied before the next server runs
          await serving.close();
          await rm(image, { force: true });
          const secs = (a: number, b: number): number => round((b - a) / 1000, 1);
          log(`rep ${rep + 1}/${reps} ${server.name}: ${secs(t0, t1)} s to serve, ${secs(t1, t2)} s of fio, ${secs(t2, performance.now())} s to stop and clean up`);
        }
      }
    }

    log(`rpo: ${rpoSeconds} s at ${RPO_RATE / 1e6} MB/s, FLUSH every ${RPO_FLUSH_MS} ms, ccrp interval ${CCRP_INTERVAL_MS} ms`);
    const image = await sparseImage(join(tmp, 'rpo.img'));
    const serving = await agent.start(image);
    let rpo: number[];
    try {
      rpo = await measureRpo(serving, index);
    } finally {
      await serving.close();
      await rm(image, { force: true });
    }
    if (rpo.length === 0) throw new Error('no RPO samples');

    const m = (xs: Map<string, number[]>, name: string): number => median(xs.get(name)!);
    console.log(
      JSON.stringify({
        bench: 'agent',
        rand4k_iops: Math.round(m(rand, 'agent')),
        qemu_nbd_rand4k_iops: Math.round(m(rand, 'qemu-nbd')),
        nbdkit_rand4k_iops: Math.round(m(rand, 'nbdkit')),
        ratio_vs_qemu_nbd: round(m(rand, 'agent') / m(rand, 'qemu-nbd'), 3),
        rand4k_iops_apply_on_host: onHost(() => Math.round(m(rand, agentApplyLive.name))),
        ratio_apply_on_host: onHost(() => round(m(rand, agentApplyLive.name) / m(rand, 'qemu-nbd'), 3)),
        rand4k_iops_uploads_held: Math.round(m(rand, agentUploadsHeld.name)),
        ratio_uploads_held: round(m(rand, agentUploadsHeld.name) / m(rand, 'qemu-nbd'), 3),
        agent_cpu_us_per_write: round(m(cpu, 'agent'), 1),
        qemu_nbd_cpu_us_per_write: round(m(cpu, 'qemu-nbd'), 1),
        nbdkit_cpu_us_per_write: round(m(cpu, 'nbdkit'), 1),
        ratio_cpu_vs_qemu_nbd: round(m(cpu, 'agent') / m(cpu, 'qemu-nbd'), 3),
        local_s3_cpu_us_per_write: onHost(() => round(m(localStackCpu, 'agent'), 1)),
        seq1m_mib_s: round(m(seq, 'agent'), 1),
        qemu_nbd_seq1m_mib_s: round(m(seq, 'qemu-nbd'), 1),
        nbdkit_seq1m_mib_s: round(m(seq, 'nbdkit'), 1),
        rpo_p50_s: round(percentile(rpo, 0.5)),
        rpo_p99_s: round(percentile(rpo, 0.99)),
        rpo_samples: rpo.length,
        ccrp_interval_s: CCRP_INTERVAL_MS / 1000,
        agent_rss_mib: round(agent.peakRss / MiB, 1),
        disk_gib: diskGib,
        reps,
        rp_store: external ? 'external' : 'local',
      }),
    );
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
