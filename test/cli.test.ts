// The CLI as an operator runs it, against the same RP Store as the other tests.

import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_ENV, AGENT_RUNTIME_WORDS } from '../agent/runtime';
import { waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { cloud, newPairId, runCli, runCliWithEnv } from './helpers';

describe('livesync CLI', () => {
  test("the npm script and the shebang start every command with Node's defaults: the agent's runtime is the agent's alone", async () => {
    // Its settings (agent/runtime.ts) made a recovery into a file ~28 % slower (docs/design.md, "Against restic, measured").
    const script = (JSON.parse(await readFile(join(__dirname, '../package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.livesync;
    const shebang = (await readFile(join(__dirname, '../cli/livesync.ts'), 'utf8')).split('\n')[0];
    for (const word of AGENT_RUNTIME_WORDS) {
      expect(script.split(' ')).not.toContain(word);
      expect(shebang.split(' ')).not.toContain(word);
    }
  });

  test('an agent started without its runtime re-executes itself with it', async () => {
    // runCli starts node with none of it; the re-executed process finds it all and goes on.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !(k in AGENT_ENV)));
    const res = await runCliWithEnv(env, 'agent', '--pair', 'p', '--disk', 'd=/tmp/x', '--listen', 'nope');
    expect(res.stderr).toContain(`restarting with ${AGENT_RUNTIME_WORDS.join(' ')}`);
    expect(res.stderr).not.toContain('node was started without');
    expect(res.stderr).toContain('--listen nope: expected unix:PATH or 127.0.0.1:PORT');
    expect(res.code).toBe(2);
  });

  test.each([
    [['pair', 'create', '--disk', 'd=1M'], '--pair is required'],
    [['pair', 'create', '--pair', 'p', '--disk', 'd:1M'], "--disk: 'd:1M' is not NAME=SIZE"],
    [['pair', 'create', '--pair', 'p', '--disk', 'd=12Q'], "--disk: '12Q' is not a size"],
    [['pair', 'create', '--pair', 'Not OK', '--disk', 'd=1M'], "pair id 'Not OK'"],
    [['pair', 'create', '--pair', 'p', '--disk', 'd=1000'], 'must be a positive multiple of 4 KiB'],
    [['pair', 'create', '--pair', 'p', '--disk', 'd=1M', '--ccrp-interval', 'soon'], "--ccrp-interval: 'soon' is not a duration"],
    [['recover', '--pair', 'p', '--seq', 'x', '--out', '/tmp'], "--seq: 'x' is not a non-negative integer"],
    [['recover', '--pair', 'p', '--seq', '1'], 'give exactly one of --to (ebs | s3://BUCKET/PREFIX | file:DIR), --out DIR or --to-s3 PREFIX'],
    [['recover', '--pair', 'p', '--to', 'file:/tmp/x'], 'name the RP with exactly one of --rp SEQ, --latest, --at TIME, --acrp TAG'],
    [['recover', '--pair', 'p', '--latest', '--rp', '3', '--to', 'file:/tmp/x'], '(given: --rp, --latest)'],
    [['recover', '--pair', 'p', '--at', 'yesterday', '--to', 'file:/tmp/x'], '--at yesterday: expected an ISO 8601 time with its zone'],
    [['recover', '--pair', 'p', '--latest', '--to', 'tape:/dev/st0'], '--to tape:/dev/st0: expected ebs, s3://BUCKET/PREFIX or file:DIR'],
    [['recover', '--pair', 'no-such-pair', '--latest', '--to', 'file:/tmp/x'], "unknown pair 'no-such-pair'"],
    [['pair', 'show', '--pair', 'no-such-pair'], "unknown pair 'no-such-pair'"],
    [['export', '--pair', 'p', '--latest'], '--listen is required'],
    [['export', '--pair', 'p', '--latest', '--listen', '0.0.0.0:10809'], 'NBD is served only on a Unix socket or a loopback address'],
    [['export', '--pair', 'no-such-pair', '--latest', '--listen', '127.0.0.1:0'], "unknown pair 'no-such-pair'"],
    [['failover', 'test', '--pair', 'p', '--latest', '--to', 'file:/tmp/x', '--listen', '127.0.0.1:0'], 'give --to TARGET (a copy) or --listen ADDRESS (an export), not both'],
    [['failover', 'cleanup', '--pair', 'no-such-pair'], "unknown pair 'no-such-pair'"],
    [['failback', 'start', '--pair', 'p'], '--reverse is required'],
    [['recover', '--pair', 'p', '--latest', '--to', 's3://b/recoveries/x', '--register-image', 'x'], '--create-volume and --register-image follow a recovery into EBS'],
    [['rp', 'list', '--pair', 'p', '--bogus'], "Unknown option '--bogus'"],
    [['frobnicate'], "unknown command 'frobnicate'"],
    [['agent', '--pair', 'p', '--disk', 'foo'], "--disk: 'foo' is not NAME=PATH"],
    [['agent', '--pair', 'p', '--disk', 'd=/tmp/x', '--listen', 'nope'], '--listen nope: expected unix:PATH or 127.0.0.1:PORT'],
    [['agent', '--pair', 'p', '--disk', 'd=/tmp/x', '--listen', '0.0.0.0:10809'], '--listen 0.0.0.0:10809: NBD is served only on a Unix socket or a loopback address'],
    [['agent', '--pair', 'no-such-pair', '--disk', 'd=/tmp/x'], "unknown pair 'no-such-pair'"],
  ])('livesync %j fails with exit 2: %s', async (args, message) => {
    const res = await runCli(...args);
    expect(res.stderr).toContain(message);
    expect(res.code).toBe(2);
  });

  test('pair create, rp list and recover --out work end to end', async () => {
    const c = cloud();
    const pairId = newPairId('cli');
    expect((await runCli('pair', 'create', '--pair', pairId, '--disk', 'sda=1M', '--ccrp-interval', '1s')).code).toBe(0);
    const data = Buffer.alloc(8192, 0x5a);
    const w = new BatchWriter({ pairId, disks: [{ name: 'sda', sizeBytes: 1 << 20 }], store: c.store, maxBatchAgeMs: 0 });
    await w.write('sda', 65536, data);
    const seq = await w.flush({ appTag: 'app=cli' });
    await waitForWatermark(c.index, pairId, seq, 30_000);
    const list = await runCli('rp', 'list', '--pair', pairId, '--app');
    expect(list.stdout).toMatch(new RegExp(`^${seq}\\tAPP\\t.*\\tapp=cli$`, 'm'));
    const dir = await mkdtemp(join(tmpdir(), 'livesync-cli-'));
    expect((await runCli('recover', '--pair', pairId, '--seq', String(seq), '--out', dir)).code).toBe(0);
    const image = await readFile(join(dir, 'sda.img'));
    expect(image.length).toBe(1 << 20);
    expect(image.subarray(65536, 65536 + 8192).equals(data)).toBe(true);
    expect(image.subarray(0, 65536).every((b) => b === 0)).toBe(true);
    const show = JSON.parse((await runCli('pair', 'show', '--pair', pairId)).stdout);
    expect(show).toMatchObject({ pairId, state: 'REPLICATING', watermark: seq, quarantine: [] });
  });
});
