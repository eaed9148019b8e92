// Peak memory of applying one batch object at the size cap (MAX_BATCH_OBJECT_BYTES), as one
// apply Lambda invocation would: the object read, decoded and verified (every extent's
// CRC-32C, the SHA-256) and registered. Each case's object is built first, then applied in a
// fresh process that reads it from a file, so the peak RSS is the apply's (and the runtime's).
// Prints one JSON line per case. `npx tsx scripts/apply-memory.ts` (docs/design.md, "Apply path").

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryIndex } from '../adapters/memory-index';
import { MemoryObjectStore } from '../adapters/memory-object-store';
import { BLOCK_SIZE, encodeBatch, type ExtentInput } from '../core/batch-format';
import { journalKey } from '../core/keys';
import { ApplyService, MAX_BATCH_OBJECT_BYTES } from '../replica/apply';
import { createPair } from '../replica/pairs';

const PAIR = 'mem-probe';
const CASES = {
  /** Incompressible data in extents of 256 blocks (1 MiB), up to the cap. */
  data: (): ExtentInput[] => {
    const n = Math.floor((MAX_BATCH_OBJECT_BYTES - 64 * 1024) / (256 * BLOCK_SIZE));
    return Array.from({ length: n }, (_, i) => ({ disk: 0, blockIndex: i * 512, data: randomBytes(256 * BLOCK_SIZE) }));
  },
  /** Index entries only: as many one-block zero extents as the cap holds (the most extents a batch can name). */
  extents: (): ExtentInput[] => Array.from({ length: Math.floor(MAX_BATCH_OBJECT_BYTES / 33) }, (_, i) => ({ disk: 0, blockIndex: i * 2, zeroBlocks: 1 })),
};

async function apply(file: string, name: string): Promise<void> {
  const store = new MemoryObjectStore();
  const index = new MemoryIndex();
  await createPair(index, { pairId: PAIR, disks: [{ name: 'd0', sizeBytes: 64 * 1024 ** 4 }] });
  const key = journalKey(PAIR, 1);
  await store.put(key, readFileSync(file));
  global.gc?.();
  const before = process.memoryUsage().rss;
  const t0 = Date.now();
  const res = await new ApplyService(store, index).applyObject(key);
  const ms = Date.now() - t0;
  const peak = process.resourceUsage().maxRSS * 1024;
  const mib = (n: number): number => +(n / 2 ** 20).toFixed(1);
  console.log(JSON.stringify({ case: name, outcome: res.outcome, object_mib: mib((await store.size(key))!), rss_before_mib: mib(before), peak_rss_mib: mib(peak), apply_ms: ms }));
}

if (process.argv[2]) void apply(process.argv[2], process.argv[3]);
else {
  const dir = mkdtempSync(join(tmpdir(), 'livesync-applymem-'));
  try {
    for (const [name, extents] of Object.entries(CASES)) {
      const body = encodeBatch({ pairId: PAIR, seq: 1, prevSeq: 0, firstWriteMs: 1, cutMs: 1, flags: 0, disks: ['d0'] }, extents());
      if (body.length > MAX_BATCH_OBJECT_BYTES) throw new Error(`case ${name}: ${body.length} bytes is over the cap`);
      const file = join(dir, `${name}.batch`);
      writeFileSync(file, body);
      execFileSync(process.execPath, [...process.execArgv, '--expose-gc', __filename, file, name], { stdio: 'inherit' });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
