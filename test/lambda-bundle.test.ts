// The Lambda bundles as lib/bundling.ts builds them (esbuild): they leave the agent's native
// CRC-32C binary out, and core/crc32c.ts then falls back to its table code.

import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildSync } from 'esbuild';
import { LAMBDA_BUNDLING } from '../lib/bundling';

const bundle = (entry: string, outDir: string) =>
  buildSync({
    entryPoints: [join(__dirname, '..', entry)],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: LAMBDA_BUNDLING.target,
    external: LAMBDA_BUNDLING.externalModules,
    outfile: join(outDir, 'index.js'),
    metafile: true,
    logLevel: 'silent',
  });

test.each(['lambdas/apply.ts', 'lambdas/seed.ts'])('%s bundles without the native binary', (entry) => {
  const { metafile } = bundle(entry, mkdtempSync(join(tmpdir(), 'livesync-bundle-')));
  expect(Object.keys(metafile!.inputs).filter((f) => f.includes('@node-rs'))).toEqual([]);
});

test('bundled, the CRC-32C runs on the table code where the binary is absent', () => {
  const dir = mkdtempSync(join(tmpdir(), 'livesync-bundle-')); // no node_modules above it
  bundle('core/crc32c.ts', dir);
  const out = execFileSync(process.execPath, ['-e', `const m = require('./index.js'); console.log(JSON.stringify([m.nativeCrc32c === undefined, m.crc32c(Buffer.alloc(4096, 7)) === m.crc32cPortable(Buffer.alloc(4096, 7)), m.crc32c(Buffer.from('123456789'))]))`], { cwd: dir });
  expect(JSON.parse(out.toString())).toEqual([true, true, 0xe3069283]);
});
