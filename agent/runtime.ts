// The runtime the agent process needs: V8 flags and a malloc setting, both read only at
// process start. The benches and the tests that spawn an agent pass them; `livesync agent`
// started without them (as `npm run livesync` and the CLI's shebang start every command)
// re-executes itself with them. The other commands keep Node's defaults: with these settings
// a recovery into a file took 1.32 s instead of 1.03 (its buffers of MiBs each a new mapping,
// its young generation a quarter the size; docs/design.md, "Against restic, measured").
//
// --max-semi-space-size=4: V8 starts a full (mark-compact) GC once the old generation's
// headroom is smaller than the young generation's capacity. The agent's old generation is
// small (about 20 MiB live, so a limit near 40 MiB), while at tens of thousands of writes a
// second the young generation grows to its 16 MiB default semi-spaces: the headroom was
// always short, and full GCs ran back to back, 5-10 a second, their concurrent marking
// taking about a quarter of the agent's CPU. With 4 MiB semi-spaces the young collections
// are more frequent but cheap (little survives them) and full GCs become rare.
// Measured on rand4k: full GCs 35-40 → 2-8 per run, CPU off the main thread 0.40 → 0.15
// cores, IOPS 23.5k → 27k, and a lower RSS (see docs/design.md, "The agent's heap").
//
// --initial-old-space-size=64: under sequential writes the young collections promote a steady
// stream (promises, buffer views, request records) while only ~17 MiB stays live, and V8 sizes
// the old generation's first limits from that small live set: a V8 task started incremental
// marking at ~15 of ~27 MiB, 6-8 full GCs a second, 2.2-2.8 ms of GC-thread CPU per MiB
// written. Starting the old generation at 64 MiB lets garbage collect there longer between
// full GCs. Pinned seq1m, 3 runs alternated: GC threads 2.41/2.21/2.79 → 0.76/0.77/0.88 ms/MiB,
// agent CPU 10.7 → 9.2 ms/MiB (medians), peak RSS 205-234 → 234-237 MiB; 96 cut GC further
// (0.43-0.57) but peaked at 242-270 MiB, over the 256 MiB budget; 48 kept 1.5-1.9.
//
// MALLOC_MMAP_THRESHOLD_=131072: glibc serves blocks above its mmap threshold with their
// own mapping, returned to the system when freed, but raises the threshold to the size of
// each such block freed (up to 32 MiB). After the first large ArrayBuffer (a zstd output of
// up to 1 MiB) was freed, later ones came from the heap, where freed memory stays resident:
// 50-80 MiB more RSS after a sequential write burst. Setting the threshold fixes it at
// 128 KiB. Measured after seq1m: memory outside V8 131-165 MiB → 79-89 MiB.

/** The V8 flags the agent runs with. */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4', '--initial-old-space-size=64'];
/** The environment the agent runs with (glibc reads it at start; elsewhere it is ignored). */
export const AGENT_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '131072' };

/** Set in a re-executed agent: it does not try again. */
const REEXEC_MARK = 'LIVESYNC_AGENT_REEXEC';

/** What of the agent's runtime this process was started without: flags and NAME=VALUE. */
export function missingAgentRuntime(): string[] {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].map((f) => f.split('=')[0]);
  return [...AGENT_NODE_FLAGS.filter((f) => !given.includes(f.split('=')[0])), ...envWords(Object.entries(AGENT_ENV).filter(([k, v]) => process.env[k] !== v))];
}

/** The whole runtime as words: the flags, then NAME=VALUE (as the npm script and the shebang say it). */
export const AGENT_RUNTIME_WORDS: readonly string[] = [...AGENT_NODE_FLAGS, ...envWords(Object.entries(AGENT_ENV))];

function envWords(entries: [string, string][]): string[] {
  return entries.map(([k, v]) => `${k}=${v}`);
}

/**
 * Without its runtime, re-executes this process with it (same pid, arguments and open
 * stdio; it does not return then). Returns what is still missing if it cannot: no
 * `process.execve` here, or already re-executed once.
 */
export function ensureAgentRuntime(log: (line: string) => void): string[] {
  const missing = missingAgentRuntime();
  if (missing.length === 0 || process.env[REEXEC_MARK] || typeof process.execve !== 'function') return missing;
  log(`restarting with ${missing.join(' ')} (agent/runtime.ts says why)`);
  const flags = AGENT_NODE_FLAGS.filter((f) => missing.includes(f));
  process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, ...process.argv.slice(1)], { ...process.env, ...AGENT_ENV, [REEXEC_MARK]: '1' });
  return missing; // not reached
}
