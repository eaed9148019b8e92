// Node (V8) flags the agent process runs with: `npm run livesync`, the CLI's shebang, the
// benches and the tests that spawn an agent all pass these.
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
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

/** The agent's flags this process was started without (on its command line or in NODE_OPTIONS). */
export function missingAgentNodeFlags(): string[] {
  const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].map((f) => f.split('=')[0]);
  return AGENT_NODE_FLAGS.filter((f) => !given.includes(f.split('=')[0]));
}
