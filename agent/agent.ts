// `livesync agent`: serves the pair's disk images over NBD and captures every write for the
// pair's journal (agent/pair-capture.ts). Start-up decides how far its local state can be
// trusted: a clean stop resumes from the spool; an unclean stop also resyncs the regions
// the dirty map holds; lost or doubtful state resyncs the regions whose checksums differ
// from the replica's (docs/design.md, "Agent"). It also takes full streaming backups of the
// images as served (`livesync backup`, docs/design.md "Seeding").

import { chmod, mkdir, open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { BATCH_FLAGS, batchBodyBound, encodeBatch } from '../core/batch-format';
import { BodyPool } from '../source/body-pool';
import { crc32c } from '../core/crc32c';
import { InvalidArgumentError, UnknownPairError } from '../core/errors';
import { backupManifestKey, checkAppTag, JOURNAL_SUFFIX, journalPrefix, journalStartAfter, parseJournalKey, parseS3Url } from '../core/keys';
import { MAX_SEQ_LEAD, type Pair } from '../core/model';
import { replicaDigests } from '../replica/digests';
import { sleep } from '../replica/concurrency';
import { waitForWatermark } from '../replica/pairs';
import type { HistoryIndex, KeyLister, ObjectStore, ReplicaIndex } from '../replica/ports';
import { writeBackup } from '../source/backup';
import type { CutOptions } from '../source/batch-writer';
import { inFreezeWindow, takeAcrp, takeFinalAcrp, type AcrpHooks } from './acrp';
import { currentBootId, identityChange, imageIdentity, readState, writeState, type AgentState } from './agent-state';
import { CapturedDisk } from './captured-disk';
import { startControlSocket, type AgentBackup, type AgentStatus, type BackupRequest } from './control';
import { DirtyMap, type Region } from './dirty-map';
import { FlushLog, replayFlushLogs } from './flush-log';
import { startNbdServer, type NbdTls } from './nbd-server';
import { PairCapture, readRange } from './pair-capture';
import { Spool, SpoolCorruptError } from './spool';

export interface AgentOptions {
  pairId: string;
  /** Disk name → image path; the names and sizes must be the pair's. */
  disks: { name: string; path: string }[];
  /** Where NBD clients connect: a TCP host (loopback, cli/listen.ts) with `port`, or a Unix socket (mode 0600). */
  host: string | { path: string };
  port: number;
  /** NBD over TLS only (STARTTLS before anything else). */
  tls?: NbdTls;
  store: ObjectStore & KeyLister;
  index: ReplicaIndex;
  /** The pair's history index (read only): the checksum resync reads the replica through it. */
  history?: HistoryIndex;
  /** The bucket `store` writes to (LIVESYNC_BUCKET), for the s3:// URL of a backup; unknown: no URL. */
  bucket?: string;
  /** Where the agent keeps its spool, dirty map and state; default .livesync/agent/{pair}. */
  stateDir?: string;
  /** Spool limit (default 1 GiB); beyond it the agent tracks dirty regions instead. */
  spoolBytes?: number;
  /** Upload rate limit, bytes per second (default none). */
  bandwidthBytesPerSec?: number;
  /** Compare every region with the replica and resend those that differ, whatever the local state says. */
  verifyReplica?: boolean;
  /** Sync each new dirty mark before the image write, so the map survives a host crash (slower random writes). */
  syncMarks?: boolean;
  hooks?: Partial<AcrpHooks>;
  /** Take an ACRP tagged `acrpTag` this often (0: only on request). */
  acrpIntervalMs?: number;
  acrpTag?: string;
  /** How long a clean stop waits for the spool to drain (default 10 s). */
  drainMs?: number;
  maxBatchBytes?: number;
  /** The upload interval (`--upload-interval`): a batch is cut once its first write is this old, unless uploads are behind (default 1000 ms). */
  maxBatchAgeMs?: number;
  /** Retry pacing of uploads (tests make outages short). */
  retryBaseDelayMs?: number;
  log?: (m: string) => void;
}

export interface RunningAgent {
  port: number;
  /** The Unix socket NBD clients connect to, when it listens on one. */
  path?: string;
  capture: PairCapture;
  /** Cuts (with `opts`) once every write so far is in the images; resolves when spooled. Returns the seq. (An NBD FLUSH does not cut: PairCapture.flush.) */
  flush(opts?: CutOptions): Promise<number>;
  /** Resolves when the spool is empty (everything cut is in the journal). */
  drained(timeoutMs?: number): Promise<void>;
  /** Takes an ACRP now (hooks, flush, mark); rejects with the hook's error. */
  acrp(tag: string): Promise<number>;
  /** Takes a full streaming backup of the images as served (an ACRP with `appTag`); resolves once its manifest is stored. */
  backup(req?: BackupRequest): Promise<AgentBackup>;
  status(): AgentStatus;
  stop(): Promise<void>;
}

const GiB = 2 ** 30;

export async function startAgent(o: AgentOptions): Promise<RunningAgent> {
  // What a start that fails half-way has opened is closed again (a running agent's stop closes it).
  const opened: { close(): Promise<void> }[] = [];
  try {
    return await start(o, opened);
  } catch (err) {
    await Promise.allSettled(opened.map((r) => r.close()));
    throw err;
  }
}

async function start(o: AgentOptions, opened: { close(): Promise<void> }[]): Promise<RunningAgent> {
  const log = o.log ?? (() => {});
  const pair = await o.index.getPair(o.pairId);
  if (!pair) throw new UnknownPairError(o.pairId);
  const paths = await checkDisks(pair, o);
  const stateDir = o.stateDir ?? join(process.cwd(), '.livesync', 'agent', o.pairId);
  // Owner-only: the spool, the flush logs, the dirty map, state.json and the control socket
  // hold the VM's data or drive the agent (an existing directory is narrowed too).
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await chmod(stateDir, 0o700);
  const statePath = join(stateDir, 'state.json');
  const previous = await readState(statePath);
  if (previous && previous.pairId !== o.pairId) throw new InvalidArgumentError(`state directory ${stateDir} belongs to pair '${previous.pairId}', not '${o.pairId}'`);
  // Smaller batches than the writer's default: less memory in flight, sooner uploads.
  const maxBatchBytes = o.maxBatchBytes ?? 4 * 1024 * 1024;
  // Batch bodies: the writer takes them, the spool gives them back (source/body-pool.ts).
  const bodies = new BodyPool(batchBodyBound(maxBatchBytes));
  const spool = await Spool.open(join(stateDir, 'spool'), o.spoolBytes ?? GiB, { bodies });
  const syncMarks = o.syncMarks === true;
  const { map: dirty, trusted: mapTrusted } = await DirtyMap.open(join(stateDir, 'dirty.map'), pair.disks, syncMarks);
  opened.push(dirty);
  const bootId = await currentBootId();

  // Continue the seq stream past everything registered, spooled or ever cut here.
  let registered = await o.index.batchesAfter(o.pairId, pair.watermark, Infinity);
  // Acknowledged FLUSHes whose batch was not spooled yet: their logs become those batches.
  const flushLogDir = join(stateDir, 'flushlog');
  const journalHas = Math.max(pair.watermark, ...registered.map((b) => b.seq), (previous?.nextSeq ?? 1) - 1);
  await replayFlushLogs(flushLogDir, o.pairId, pair.disks.map((d) => d.name), spool, journalHas, log);
  const dropped = await dropCorruptSpool(spool, log);
  const doubt = dropped.length > 0 ? `${dropped.length} spooled batches were corrupt` : await whyUntrusted(o, pair, previous, mapTrusted, registered.length > 0, paths, bootId);
  if (doubt && !previous && (pair.watermark > 0 || registered.length > 0)) {
    // Without local state, uploads of a lost run may still be on their way to the index.
    await sleep(5000);
    registered = await o.index.batchesAfter(o.pairId, pair.watermark, Infinity);
  }
  // In the journal and not registered yet: uploads of the last run (most go from memory and are
  // never spooled), which may have ended before state.json recorded their seqs as used.
  // Objects apply refused (quarantined: corrupt, foreign, another writer's) hold no seq,
  // whatever their key says: counted as this agent's uploads, one would leave its seq unsent
  // for good (nothing past it could apply), and one far ahead would stop the agent starting.
  const refused = new Set((await o.index.listQuarantine(o.pairId)).map((q) => q.key));
  const inJournal = (await journalAfter(o.store, o.pairId, pair.watermark)).filter((j) => !refused.has(j.key));
  refuseForeignSeqs(o.pairId, Math.max(pair.watermark, (previous?.nextSeq ?? 1) - 1, ...spool.seqs()), [...registered, ...inJournal]);
  const uploaded = inJournal.map((j) => j.seq);
  const firstSeq = Math.max(pair.watermark + 1, ...registered.map((b) => b.seq + 1), previous?.nextSeq ?? 1, ...spool.seqs().map((s) => s + 1), ...uploaded.map((s) => s + 1));
  const state: AgentState = { version: 1, pairId: o.pairId, nextSeq: firstSeq, running: true, bootId, syncMarks };
  // One write of the state file at a time (they share its temporary name).
  let stateWrites: Promise<void> = writeState(statePath, state);
  const saveState = (): Promise<void> => (stateWrites = stateWrites.catch(() => {}).then(() => writeState(statePath, { ...state })));
  await stateWrites;
  if (doubt) log(`local state not trusted (${doubt}): comparing every region with the replica`);
  // A seq below the first one that nothing holds (not registered, spooled or in the journal)
  // was lost: a batch held in memory when the process died, or a spooled one dropped as
  // corrupt. Its writes are in regions still marked dirty (its marks clear only once it is on
  // file or in the journal), or, when the state is doubted, in the comparison with the replica.
  const holds = new Set([...registered.map((b) => b.seq), ...spool.seqs(), ...uploaded]);
  await fillGaps(o.pairId, pair, spool, range(pair.watermark + 1, firstSeq).filter((seq) => !holds.has(seq)), log);

  const files: FileHandle[] = [];
  for (const d of pair.disks) {
    files.push(await open(paths.get(d.name)!, 'r+'));
    opened.push(files[files.length - 1]);
  }
  const capture = new PairCapture({
    pairId: o.pairId,
    disks: pair.disks,
    files,
    store: o.store,
    spool,
    flushLog: await FlushLog.open(flushLogDir),
    dirty,
    firstSeq,
    maxBatchBytes,
    bodies,
    maxBatchAgeMs: o.maxBatchAgeMs,
    bandwidthBytesPerSec: o.bandwidthBytesPerSec,
    retryBaseDelayMs: o.retryBaseDelayMs,
    persistNextSeq: (n) => {
      state.nextSeq = Math.max(state.nextSeq, n);
      return saveState();
    },
    log,
  });
  if (doubt) capture.startResync(() => markDifferences(o, capture, dirty, files, log));
  else if (dirty.pendingResync > 0) {
    log(`${previous?.running ? 'unclean stop' : 'dirty regions left'}: resyncing ${dirty.pendingResync} regions`);
    capture.startResync();
  }

  const exports = pair.disks.map((d, i) => new CapturedDisk(d.name, d.sizeBytes, i, paths.get(d.name)!, files[i], capture));
  const server = await startNbdServer(exports, o.host, o.port, log, { tls: o.tls });
  const flush = async (opts: CutOptions = {}): Promise<number> => {
    for (const e of exports) await e.settle();
    return capture.cut(opts);
  };
  const hooks: AcrpHooks = { ...o.hooks, timeoutMs: o.hooks?.timeoutMs ?? 60_000 };
  // One ACRP or backup at a time: a periodic one and a requested one must not interleave their hooks.
  let acrpChain: Promise<unknown> = Promise.resolve();
  const serialized = <T>(f: () => Promise<T>): Promise<T> => {
    const run = acrpChain.then(f);
    acrpChain = run.catch(() => {});
    return run;
  };
  const notStreaming = (what: string): Error =>
    new Error(`pair '${o.pairId}' is ${capture.mode === 'overflow' ? 'tracking dirty regions (spool full)' : 'resyncing'}: no ${what} until it streams again`);
  const acrp = (tag: string): Promise<number> =>
    serialized(() => {
      if (capture.mode !== 'streaming') throw notStreaming('application-consistent RP');
      return takeAcrp(capture, exports, tag, hooks);
    });
  const fence = (tag: string): Promise<number> =>
    serialized(async () => {
      if (capture.mode !== 'streaming') throw notStreaming('failover ACRP');
      const seq = await takeFinalAcrp(capture, exports, tag, hooks);
      log(`pair '${o.pairId}' fenced for failover: its last RP is ACRP ${seq} ('${tag}'); writes are refused from now on`);
      return seq;
    });
  const backup = (req: BackupRequest = {}): Promise<AgentBackup> =>
    serialized(() => {
      if (capture.mode !== 'streaming') throw notStreaming('backup');
      return takeBackup(o, capture, exports, flush, hooks, req, log);
    });
  const status = (): AgentStatus => {
    const m = process.memoryUsage();
    const mib = (n: number): number => Math.round(n / 2 ** 20);
    return { pairId: o.pairId, ...capture.status(), memoryMiB: { rss: mib(m.rss), heap: mib(m.heapUsed), external: mib(m.external), buffers: mib(m.arrayBuffers) } };
  };
  const control = await startControlSocket(join(stateDir, 'control.sock'), { acrp, fence, backup, status });
  const periodic = o.acrpIntervalMs
    ? setInterval(() => acrp(o.acrpTag ?? 'periodic').catch((err: Error) => log(`periodic ACRP failed, replication goes on: ${err.message}`)), o.acrpIntervalMs)
    : undefined;
  log(`agent for pair '${o.pairId}' serving ${pair.disks.map((d) => d.name).join(', ')} on ${typeof o.host === 'string' ? `nbd://${o.host}:${server.port}` : `nbd+unix:///?socket=${o.host.path}`}, next seq ${firstSeq}, ${spool.count} batches spooled`);
  // A pair waiting for a backup in its own prefix (`pair create --backup agent`) gets it from
  // here: now, or once the capture streams (after a resync), retried every 10 s until taken.
  let seedBackupTimer: NodeJS.Timeout | undefined;
  let seedBackupBusy = false;
  const takeSeedBackup = async (): Promise<void> => {
    if (seedBackupBusy) return;
    seedBackupBusy = true;
    try {
      const key = await seedBackupToTake(o, (await o.index.getPair(o.pairId)) ?? pair);
      if (key && capture.mode === 'streaming') {
        log(`pair '${o.pairId}' is to be seeded from a backup at ${key}: taking it`);
        await backup({ manifestKey: key });
      } else if (key) return; // not streaming yet: the next tick tries again
      clearInterval(seedBackupTimer);
    } catch (err) {
      log(`seeding backup failed, trying again in 10 s: ${(err as Error).message}`);
    } finally {
      seedBackupBusy = false;
    }
  };
  if (pair.seed?.status === 'RUNNING') {
    // The first call finds out whether there is a backup to take; without one it stops the timer.
    seedBackupTimer = setInterval(() => void takeSeedBackup(), 10_000);
    void takeSeedBackup();
  }

  return {
    port: server.port,
    path: server.path,
    capture,
    flush,
    drained: (timeoutMs) => capture.uploader.idle(timeoutMs),
    acrp,
    backup,
    status,
    async stop() {
      if (periodic) clearInterval(periodic);
      clearInterval(seedBackupTimer);
      await control.close();
      await acrpChain;
      await server.close();
      for (const e of exports) await e.settle();
      await capture.close(o.drainMs ?? 10_000);
      for (const fh of files) await fh.close();
      state.running = false;
      state.images = await Promise.all(pair.disks.map((d) => imageIdentity(d.name, paths.get(d.name)!)));
      await saveState();
    },
  };
}

/**
 * A full streaming backup of the images as served (docs/design.md, "Seeding"): a cut, then
 * every disk read through its export (under the range lock, so each block is read before or
 * after a write, never half-way) while writes go on, then a cut. With an application tag it
 * all runs inside one freeze window and the end cut carries the tag: the backup is an ACRP.
 * The manifest is written last, and only if the capture streamed throughout (an overflow
 * drops writes from the journal, which then cannot make the backup consistent).
 */
async function takeBackup(
  o: AgentOptions,
  capture: PairCapture,
  exports: CapturedDisk[],
  flush: (opts?: CutOptions) => Promise<number>,
  hooks: AcrpHooks,
  req: BackupRequest,
  log: (m: string) => void,
): Promise<AgentBackup> {
  const appTag = req.appTag === undefined ? undefined : checkAppTag(req.appTag, 'backup tag'); // before any hook runs
  const backupId = `b-${Date.now().toString(36)}`;
  const manifestKey = backupKeyOf(o, req.manifestKey, backupId);
  if ((await o.store.size(manifestKey)) !== undefined) throw new InvalidArgumentError(`a backup manifest already exists at ${manifestKey}: choose another key`);
  const url = o.bucket ? `s3://${o.bucket}/${manifestKey}` : undefined;
  const overflows = capture.stats.overflows;
  const started = Date.now();
  log(`backup ${backupId} of pair '${o.pairId}' started${appTag ? ` inside a freeze window (tag '${appTag}')` : ''}: ${url ?? manifestKey}`);
  const run = (thaw?: () => Promise<void>) =>
    writeBackup({
      store: o.store,
      manifestKey,
      pairId: o.pairId,
      backupId,
      disks: exports.map((e) => ({ name: e.name, sizeBytes: e.size, read: (offset: number, length: number) => e.read(offset, length) })),
      // Every write acknowledged before the backup is in a batch up to this cut.
      startSeq: async () => (await flush()) + 1,
      endSeq: async () => {
        const seq = await flush(appTag ? { appTag } : {});
        if (capture.mode !== 'streaming' || capture.stats.overflows !== overflows) {
          throw new Error(`pair '${o.pairId}' stopped streaming during backup ${backupId} (spool full: writes went to the dirty map, not the journal): no backup; take it again`);
        }
        await thaw?.(); // the freeze window ends at the tagged cut, before the manifest is written
        return seq;
      },
      appConsistent: appTag !== undefined,
      appTag,
    });
  try {
    const res = appTag ? await inFreezeWindow(appTag, hooks, run) : await run();
    const m = res.manifest;
    log(
      `backup ${backupId} of pair '${o.pairId}' done in ${((Date.now() - started) / 1000).toFixed(1)} s: seqs ${m.startSeq}..${m.endSeq}, ` +
        `${res.chunksStored} chunks (${res.bytesStored} bytes) stored, ${res.zeroChunks} zero chunks skipped: ${url ?? manifestKey}`,
    );
    return {
      manifestKey,
      ...(url ? { url } : {}),
      backupId,
      startSeq: m.startSeq,
      endSeq: m.endSeq,
      appConsistent: m.appConsistent,
      ...(m.appTag ? { appTag: m.appTag } : {}),
      bytesRead: res.bytesRead,
      bytesStored: res.bytesStored,
      chunksStored: res.chunksStored,
      zeroChunks: res.zeroChunks,
    };
  } catch (err) {
    log(`backup ${backupId} of pair '${o.pairId}' failed, no manifest written: ${(err as Error).message}`);
    throw err;
  }
}

/** The key of the backup the pair's seed run waits for in the pair's own prefix, if it is not there yet. */
async function seedBackupToTake(o: AgentOptions, pair: Pair): Promise<string | undefined> {
  if (!pair.seed || pair.seed.status !== 'RUNNING') return undefined;
  const { key } = parseS3Url(pair.seed.source);
  if (!key.startsWith(`pairs/${o.pairId}/backups/`)) return undefined;
  return (await o.store.size(key)) === undefined ? key : undefined;
}

/** Where a backup's manifest goes: the given key (or s3:// URL of the agent's own bucket), or the pair's default. */
function backupKeyOf(o: AgentOptions, given: string | undefined, backupId: string): string {
  if (given === undefined) return backupManifestKey(o.pairId, backupId);
  let key = given;
  if (given.startsWith('s3://')) {
    const url = parseS3Url(given);
    if (!o.bucket) throw new InvalidArgumentError(`backup to '${given}': the agent does not know its bucket's name (LIVESYNC_BUCKET): give a key`);
    if (url.bucket !== o.bucket) throw new InvalidArgumentError(`backup to '${given}': the agent writes only to its own bucket '${o.bucket}'`);
    key = url.key;
  }
  if (key === '' || key.startsWith('/') || key.endsWith('/') || key.endsWith(JOURNAL_SUFFIX)) {
    throw new InvalidArgumentError(`backup key '${given}' must name an object (not empty, no leading or trailing '/', not ending in '${JOURNAL_SUFFIX}')`);
  }
  return key;
}

async function checkDisks(pair: Pair, o: AgentOptions): Promise<Map<string, string>> {
  const given = new Map(o.disks.map((d) => [d.name, d.path]));
  for (const d of pair.disks) if (!given.has(d.name)) throw new InvalidArgumentError(`--disk ${d.name}=PATH missing: pair '${o.pairId}' has disk '${d.name}'`);
  for (const name of given.keys()) if (!pair.disks.some((d) => d.name === name)) throw new InvalidArgumentError(`pair '${o.pairId}' has no disk '${name}'`);
  for (const d of pair.disks) {
    const size = (await stat(given.get(d.name)!)).size;
    if (size !== d.sizeBytes) throw new InvalidArgumentError(`image ${given.get(d.name)} is ${size} bytes; disk '${d.name}' of pair '${o.pairId}' is ${d.sizeBytes}`);
  }
  return given;
}

/** Why the spool and dirty map may not describe the images, or undefined if they do. */
async function whyUntrusted(
  o: AgentOptions,
  pair: Pair,
  previous: AgentState | undefined,
  mapTrusted: boolean,
  hasPending: boolean,
  paths: Map<string, string>,
  bootId: string | undefined,
): Promise<string | undefined> {
  if (o.verifyReplica) return 'asked to verify against the replica';
  if (!previous) return pair.watermark > 0 || hasPending ? `no local state, but the pair's journal reaches seq ${pair.watermark} or beyond` : undefined;
  if (!mapTrusted) return 'the dirty map is missing or describes other disks';
  // After a host crash, marks that were only in the page cache may be lost with it.
  if (previous.running && !previous.syncMarks && previous.bootId !== bootId) return 'the host restarted after an unclean stop, and dirty marks were not synced';
  if (!previous.running && previous.images) {
    return identityChange(previous.images, await Promise.all(pair.disks.map((d) => imageIdentity(d.name, paths.get(d.name)!))));
  }
  return undefined;
}

/** The batches above seq `after` the pair's journal holds (uploaded, registered or not), ascending. */
async function journalAfter(store: KeyLister, pairId: string, after: number): Promise<{ seq: number; key: string }[]> {
  let keys: string[];
  try {
    keys = await store.listKeys(journalPrefix(pairId), journalStartAfter(pairId, after));
  } catch (err) {
    throw new Error(`cannot list the journal of pair '${pairId}' (${journalPrefix(pairId)}; the agent needs s3:ListBucket on it): ${(err as Error).message}`);
  }
  return keys.flatMap((key) => {
    const seq = parseJournalKey(key)?.seq;
    return seq !== undefined && seq > after ? [{ seq, key }] : [];
  });
}

/** Drops spooled batches that fail their checksums; returns their seqs (gaps that fillGaps closes). */
async function dropCorruptSpool(spool: Spool, log: (m: string) => void): Promise<number[]> {
  const dropped: number[] = [];
  for (const seq of spool.seqs()) {
    try {
      await spool.check(seq);
    } catch (err) {
      if (!(err instanceof SpoolCorruptError)) throw err;
      log(`${err.message}: dropped (the comparison with the replica finds its regions)`);
      await spool.remove(seq);
      dropped.push(seq);
    }
  }
  return dropped;
}

/**
 * Seqs lost with the local state: an empty RESYNC batch takes each one, so the journal has
 * no gap and no RP is made until the resync that follows ends.
 */
async function fillGaps(pairId: string, pair: Pair, spool: Spool, lost: number[], log: (m: string) => void): Promise<void> {
  const now = Date.now();
  const disks = pair.disks.map((d) => d.name);
  for (const seq of lost) {
    log(`seq ${seq} was lost with the local state: filled with a resync marker`);
    await spool.add(seq, encodeBatch({ pairId, seq, prevSeq: seq - 1, firstWriteMs: now, cutMs: now, flags: BATCH_FLAGS.RESYNC, disks }, []));
  }
}

/**
 * A seq in the journal or the index that far past anything this agent wrote is not its own
 * (another writer on the pair): starting would fill every seq up to it with a resync marker,
 * a PUT each. Refused instead, naming them.
 */
function refuseForeignSeqs(pairId: string, known: number, found: { seq: number; key: string }[]): void {
  const bySeq = new Map<number, string>();
  for (const f of found) if (f.seq > known + MAX_SEQ_LEAD && !bySeq.has(f.seq)) bySeq.set(f.seq, f.key);
  const foreign = [...bySeq].map(([seq, key]) => ({ seq, key })).sort((a, b) => a.seq - b.seq);
  if (foreign.length === 0) return;
  const named = foreign.slice(0, 3).map((f) => `${f.seq} (${f.key})`).join(', ');
  throw new InvalidArgumentError(
    `pair '${pairId}' has batches ${named}${foreign.length > 3 ? ` and ${foreign.length - 3} more` : ''} over ${MAX_SEQ_LEAD} seqs past anything this agent wrote (seq ${known}): another writer's; not starting, which would fill the gap with that many empty batches. Check which agent or host writes this pair`,
  );
}

const range = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);

/**
 * Waits until the replica holds every batch cut so far, then marks for resync each region
 * whose checksum differs from the image's. Writes made meanwhile are captured; a region
 * they touch at worst compares unequal and is resent.
 */
async function markDifferences(o: AgentOptions, capture: PairCapture, dirty: DirtyMap, files: FileHandle[], log: (m: string) => void): Promise<void> {
  const upTo = capture.writer.nextSeq - 1;
  const pair = await waitForWatermark(o.index, o.pairId, upTo, 24 * 3600 * 1000);
  const digests = await replicaDigests(o.store, o.index, {
    pairId: o.pairId,
    seq: pair.watermark,
    regionBytes: (disk) => dirty.regionBytes(pair.disks.findIndex((d) => d.name === disk)),
    // Through the pair's history (batches at or below its frontier are folded, later collected), without a reader lease: the agent's role only reads its pair.
    history: o.history,
    lease: false,
  });
  const differ: Region[] = [];
  let regions = 0;
  for (let disk = 0; disk < pair.disks.length; disk++) {
    const want = digests.get(pair.disks[disk].name)!;
    for (let r = 0; r < dirty.regionCount(disk); r++) {
      const region = dirty.region(disk, r);
      regions++;
      if (crc32c(await readRange(files[disk], region.offset, region.length)) !== want[r]) differ.push(region);
    }
  }
  log(`${differ.length} of ${regions} regions differ from the replica at seq ${pair.watermark}: resending them`);
  await dirty.markResync(differ);
}
