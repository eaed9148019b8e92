// The agent under clients that misbehave or stack a real filesystem on it:
// - nbdsh (libnbd with strict mode off) sends requests the server must refuse; each gets the
//   NBD spec's error, the connection stays usable, and nothing refused reaches the image or
//   the replica;
// - ext4 made and used by the kernel through nbdfuse and a loop device; the RP recovered
//   through the cloud side is a clean filesystem, equal to the served image, with the files.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fc from 'fast-check';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { startAgent, type RunningAgent } from '../agent/agent';
import { createPair } from '../replica/pairs';
import { SourceModel, cloud, eventually, execNbdsh, firstDifference, have, newPairId, recover, runCli, takeRp } from './helpers';

const run = promisify(execFile);
const MiB = 1024 * 1024;

interface Served {
  dir: string;
  image: string;
  pairId: string;
  agent: RunningAgent;
}

/** A pair with one sparse disk0 image of `size` bytes, served by an agent. */
async function servedDisk(prefix: string, size: number, log?: (m: string) => void): Promise<Served> {
  const c = cloud();
  const pairId = newPairId(prefix);
  await createPair(c.index, { pairId, disks: [{ name: 'disk0', sizeBytes: size }] });
  const dir = await mkdtemp(join(tmpdir(), `livesync-${prefix}-`));
  const image = join(dir, 'disk0.img');
  await writeFile(image, '');
  await truncate(image, size);
  const agent = await startAgent({ pairId, disks: [{ name: 'disk0', path: image }], host: '127.0.0.1', port: 0, store: c.store, index: c.index, stateDir: join(dir, 'state'), log });
  return { dir, image, pairId, agent };
}

const nbdsh = have('nbdsh');
if (!nbdsh) console.warn('nbdsh tests skipped: nbdsh missing (apt-get install python3-libnbd; .ci/run does)');

(nbdsh ? describe : describe.skip)('agent under nbdsh: refused requests', () => {
  const size = 64 * MiB; // room for a read longer than the 32 MiB maximum block size
  const model = new SourceModel([{ name: 'disk0', sizeBytes: size }]);
  const serverLog: string[] = [];
  let served: Served;
  let uri: string;

  beforeAll(async () => {
    served = await servedDisk('nbdsh', size, (m) => serverLog.push(m));
    uri = `nbd://127.0.0.1:${served.agent.port}`;
  });

  afterAll(async () => {
    await served?.agent.stop();
    if (served) await rm(served.dir, { recursive: true, force: true });
  });

  /** Runs python in nbdsh (Debian's python3 has the nbd module, so /usr/bin goes first); returns its last line as JSON. */
  async function python<T>(code: string): Promise<T> {
    const prelude = `
import errno, json, nbd
MiB = ${MiB}
URI = ${JSON.stringify(uri)}
def connect(kind):
    c = nbd.NBD()
    c.set_strict_mode(0)  # send what libnbd would refuse, for the server to refuse
    c.set_request_structured_replies(kind != 'simple')
    if kind == 'meta':
        c.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    c.connect_uri(URI + '/disk0')
    return c
def attempt(f):
    try:
        f()
        return 'ok'
    except nbd.Error as e:
        return errno.errorcode.get(e.errnum, e.string)
`;
    const { stdout } = await execNbdsh('-c', prelude + code);
    return JSON.parse(stdout.trim().split('\n').pop()!) as T;
  }

  interface Probe {
    what: string;
    /** A python expression on the handle `c` and the export size `SIZE`. */
    py: string;
    /** The errno name libnbd reports, or 'ok'. */
    errno: string | ReturnType<typeof expect.stringMatching>;
    /** The connection: base:allocation selected (default), structured replies only, or simple replies. */
    conn?: 'meta' | 'structured' | 'simple';
  }

  let slots = 0; // each probe is followed by a correct write to a 4 KiB slot of its own

  /** Sends each probe, then a correct write and read-back on the same connection; records the writes that took. */
  async function probe(probes: Probe[]): Promise<void> {
    const follow = probes.map(() => ({ at: MiB + slots * 4096, byte: (slots++ % 255) + 1 }));
    const results = await python<{ errno: string; alive: true | string }[]>(`
conns = {}
out = []
for kind, f, at, byte in [${probes.map((p, i) => `(${JSON.stringify(p.conn ?? 'meta')}, lambda c, SIZE: ${p.py}, ${follow[i].at}, ${follow[i].byte})`).join(', ')}]:
    if kind not in conns:
        conns[kind] = connect(kind)
    c = conns[kind]
    r = {'errno': attempt(lambda: f(c, c.get_size()))}
    try:
        c.pwrite(bytes([byte]) * 4096, at)
        r['alive'] = c.pread(4096, at) == bytes([byte]) * 4096 or 'read back other bytes'
    except nbd.Error as e:
        r['alive'] = e.string
    out.append(r)
print(json.dumps(out))
`);
    results.forEach((r, i) => r.alive === true && model.write('disk0', follow[i].at, Buffer.alloc(4096, follow[i].byte)));
    expect(probes.map((p, i) => ({ what: p.what, ...results[i] }))).toEqual(probes.map((p) => ({ what: p.what, errno: p.errno, alive: true })));
  }

  test('requests beyond the export get EINVAL or ENOSPC and the connection stays usable', async () => {
    // Data at both ends, so that a refused write, zero or trim that took effect would show.
    await probe([
      { what: 'write the first 64 KiB', py: `c.pwrite(b'\\x5a' * 65536, 0)`, errno: 'ok' },
      { what: 'write the last 64 KiB', py: `c.pwrite(b'\\xa5' * 65536, SIZE - 65536)`, errno: 'ok' },
    ]);
    model.write('disk0', 0, Buffer.alloc(65536, 0x5a));
    model.write('disk0', size - 65536, Buffer.alloc(65536, 0xa5));
    await probe([
      { what: 'read past the end', py: 'c.pread(4096, SIZE - 512)', errno: 'EINVAL' },
      { what: 'read from the end', py: 'c.pread(512, SIZE)', errno: 'EINVAL' },
      { what: 'read at 2^63', py: 'c.pread(512, 2**63)', errno: 'EINVAL' },
      { what: 'read longer than the maximum block size', py: 'c.pread(33 * MiB, 0)', errno: 'EINVAL' },
      { what: 'write past the end', py: `c.pwrite(b'\\xee' * 4096, SIZE - 512)`, errno: 'ENOSPC' },
      { what: 'write whose end wraps past 2^64 (onto offset 0)', py: `c.pwrite(b'\\xee' * 4096, 2**64 - 512)`, errno: 'ENOSPC' },
      { what: 'write zeroes past the end', py: 'c.zero(4096, SIZE - 512)', errno: 'ENOSPC' },
      { what: 'write zeroes wrapping past 2^64', py: 'c.zero(4096, 2**64 - 512)', errno: 'ENOSPC' },
      { what: 'trim past the end', py: 'c.trim(4096, SIZE - 512)', errno: 'EINVAL' },
      { what: 'trim wrapping past 2^64', py: 'c.trim(4096, 2**64 - 512)', errno: 'EINVAL' },
      { what: 'block status past the end', py: 'c.block_status(4096, SIZE - 512, lambda *a: 0)', errno: 'EINVAL' },
      { what: 'cache (not advertised)', py: 'c.cache(512, 0)', errno: 'EINVAL' },
    ]);
  });

  test('zero-length writes, zeroes and trims change nothing and keep the connection', async () => {
    // Unspecified by the spec, except that the server should not disconnect.
    await probe([
      { what: 'zero-length write', py: `c.pwrite(b'', 4096)`, errno: expect.any(String) },
      { what: 'zero-length write zeroes', py: 'c.zero(0, 4096)', errno: expect.any(String) },
      { what: 'zero-length trim', py: 'c.trim(0, 4096)', errno: expect.any(String) },
    ]);
  });

  test('block status without base:allocation selected is refused, with structured and with simple replies', async () => {
    await probe([
      { what: 'block status, structured replies, no context', py: 'c.block_status(4096, 0, lambda *a: 0)', errno: 'EINVAL', conn: 'structured' },
      { what: 'block status, simple replies', py: 'c.block_status(4096, 0, lambda *a: 0)', errno: 'EINVAL', conn: 'simple' },
      { what: 'read past the end, simple replies', py: 'c.pread(4096, SIZE - 512)', errno: 'EINVAL', conn: 'simple' },
      { what: 'write past the end, simple replies', py: `c.pwrite(b'\\xee' * 4096, SIZE - 512)`, errno: 'ENOSPC', conn: 'simple' },
    ]);
  });

  test('option haggling: the exports are listed, an unknown one is refused, and the same connection then goes to disk0', async () => {
    const got = await python<Record<string, unknown>>(`
h.set_opt_mode(True)
h.connect_uri(URI)
names = []
h.opt_list(lambda name, description: names.append(name))
h.set_export_name('nope')
go, info = attempt(h.opt_go), attempt(h.opt_info)
h.set_export_name('disk0')
h.opt_go()
print(json.dumps({'names': names, 'go': go, 'info': info, 'size': h.get_size(), 'read': len(h.pread(4096, 0))}))
`);
    // libnbd reports NBD_REP_ERR_UNKNOWN as ENOENT.
    expect(got).toEqual({ names: ['disk0'], go: 'ENOENT', info: 'ENOENT', size, read: 4096 });
  });

  test('a write over the 32 MiB maximum payload ends only that connection; none of it is written', async () => {
    const got = await python<{ write: string; next: string }>(`
c = connect('meta')
w = attempt(lambda: c.pwrite(b'\\xee' * (32 * MiB + 4096), 0))
print(json.dumps({'write': w, 'next': attempt(lambda: connect('meta').pread(4096, 0))}))
`);
    expect(got).toEqual({ write: expect.not.stringMatching(/^ok$/), next: 'ok' });
    expect(serverLog.join('\n')).toMatch(/write of 33558528 bytes exceeds the advertised maximum/);
  });

  // Points of the NBD spec (doc/proto.md) the server once missed.
  test.each<Probe>([
    // "Each chunk MUST describe at least one byte": an OFFSET_DATA chunk of no data made
    // libnbd call it a server bug and hang up.
    { what: 'a zero-length read gets a well-formed reply', py: 'c.pread(0, 4096)', errno: 'ok' },
    // "It SHOULD return NBD_EINVAL if it receives a read or trim request including one or more
    // sectors beyond the size of the device" (ENOSPC is for writes).
    { what: 'a trim past the end gets EINVAL', py: 'c.trim(4096, SIZE - 512)', errno: 'EINVAL' },
    // "SHOULD report an NBD_EINVAL error if ... larger than the advertised maximum block size";
    // "SHOULD NOT return NBD_EOVERFLOW except ... when NBD_CMD_FLAG_DF is supported".
    { what: 'a read longer than the maximum block size gets EINVAL', py: 'c.pread(33 * MiB, 0)', errno: 'EINVAL' },
    // "SHOULD return NBD_EINVAL if it receives an unknown command flag".
    { what: 'a read with an unknown command flag gets EINVAL', py: 'c.pread(512, 0, flags=0x8000)', errno: 'EINVAL' },
  ])('spec: $what', async (p) => {
    await probe([p]);
  });

  test('the image and the RP recovered through the cloud side hold exactly the accepted writes', async () => {
    const seq = await takeRp(served.agent, served.pairId, 'nbdsh');
    const image = await readFile(served.image);
    expect(firstDifference(image, model.disks.get('disk0')!)).toBeUndefined();
    const got = (await recover(cloud(), served.pairId, seq)).get('disk0')!;
    expect(firstDifference(got, image)).toBeUndefined();
  });
});

(nbdsh ? describe : describe.skip)('agent under nbdsh: pipelined overlapping writes', () => {
  const size = 8 * MiB;
  const window = 64 * 4096; // each run writes into a window of its own, small enough to overlap a lot
  let served: Served;

  beforeAll(async () => {
    served = await servedDisk('pipelined', size);
  });

  afterAll(async () => {
    await served?.agent.stop();
    if (served) await rm(served.dir, { recursive: true, force: true });
  });

  interface Op {
    offset: number;
    length: number;
    fua: boolean;
  }
  /** Byte j of op i's data (the python side computes the same). */
  const opData = (i: number, length: number): Buffer => Buffer.from(Array.from({ length }, (_, j) => (i * 31 + j + 1) & 0xff));

  // Whole blocks take the agent's synchronous path; partial blocks and FUA take the queued one.
  // libnbd sends every request before reading any reply, so they are in flight together and
  // the server sees them in order: the image must hold the writes applied in that order.
  const op = fc.oneof(
    fc.record({ block: fc.nat(63), blocks: fc.integer({ min: 1, max: 3 }), fua: fc.boolean() }).map(({ block, blocks, fua }) => ({ offset: block * 4096, length: Math.min(blocks, 64 - block) * 4096, fua })),
    fc.record({ at: fc.nat(window - 2), length: fc.integer({ min: 1, max: 10_000 }), fua: fc.constant(false) }).map(({ at, length, fua }) => ({ offset: at, length: Math.min(length, window - at), fua })),
  );

  test('land in arrival order, fast and queued paths mixed; the replica equals the image', async () => {
    const image = Buffer.alloc(size);
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 20, maxLength: 80 }), async (ops: Op[]) => {
        const base = run++ * window;
        const { stdout } = await execNbdsh('-c', `
import json, nbd
c = nbd.NBD()
c.connect_uri(${JSON.stringify(`nbd://127.0.0.1:${served.agent.port}/disk0`)})
for i, (offset, length, fua) in enumerate(json.loads(${JSON.stringify(JSON.stringify(ops.map((o) => [base + o.offset, o.length, o.fua])))})):
    c.aio_pwrite(bytes(((i * 31 + j + 1) & 255) for j in range(length)), offset, flags=nbd.CMD_FLAG_FUA if fua else 0)
while c.aio_in_flight() > 0:
    c.poll(-1)
c.flush()
c.shutdown()
print("done")
`);
        expect(stdout.trim()).toBe('done');
        ops.forEach((o, i) => opData(i, o.length).copy(image, base + o.offset));
        const onImage = await readFile(served.image);
        expect(firstDifference(onImage.subarray(base, base + window), image.subarray(base, base + window))).toBeUndefined();
      }),
      { numRuns: 12 },
    );
    const seq = await takeRp(served.agent, served.pairId, 'pipelined');
    const got = (await recover(cloud(), served.pairId, seq)).get('disk0')!;
    expect(firstDifference(got, image)).toBeUndefined();
  });
});

// The kernel's ext4 over the agent: nbdfuse exposes the export as a file, a loop device makes
// it a block device. Needs root, /dev/fuse and loop devices.
const kernelTier =
  process.getuid?.() === 0 && existsSync('/dev/fuse') && existsSync('/dev/loop-control') && ['nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'debugfs', 'mount', 'umount'].every(have);
if (!kernelTier) console.warn('ext4-over-agent tests skipped: they need root, /dev/fuse, loop devices, nbdfuse (libnbd-bin) and e2fsprogs');

(kernelTier ? describe : describe.skip)('ext4 over the agent (nbdfuse, loop device)', () => {
  let served: Served;
  let fuseDir: string;
  let mnt: string;
  let nbdfuse: ChildProcess | undefined;
  /** Path in the filesystem → content, of the files that should be there. */
  const kept = new Map<string, Buffer>();

  beforeAll(async () => {
    served = await servedDisk('ext4', 256 * MiB);
    fuseDir = join(served.dir, 'fuse');
    mnt = join(served.dir, 'mnt');
    await mkdir(fuseDir);
    await mkdir(mnt);
  });

  afterAll(async () => {
    // Idempotent: after a failure anywhere, nothing stays mounted or attached.
    await unmount(mnt).catch(() => run('umount', ['-l', mnt])).catch(() => {});
    for (const dev of await loopsOf(join(fuseDir, 'nbd'))) await run('losetup', ['-d', dev]).catch(() => {});
    await unmount(fuseDir).catch(() => run('umount', ['-l', fuseDir])).catch(() => {});
    if (nbdfuse?.exitCode === null) nbdfuse.kill();
    await served?.agent.stop();
    if (served) await rm(served.dir, { recursive: true, force: true });
  });

  const mounted = async (path: string): Promise<boolean> => (await readFile('/proc/self/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === path);
  const unmount = async (path: string): Promise<void> => void ((await mounted(path)) && (await run('umount', [path])));
  /** Loop devices backed by `file` (from sysfs: no stat of a file on a possibly dead FUSE mount). */
  const loopsOf = async (file: string): Promise<string[]> =>
    (await run('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'])).stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter(([, back]) => back === file)
      .map(([dev]) => dev);

  // Files inside the mount are touched only by child processes (cp, rm): an fs call from this
  // process would wait in libuv's thread pool on the agent, which needs that pool to serve it.
  test('mkfs.ext4, mount, files written and deleted, unmounted cleanly, all through the agent', async () => {
    nbdfuse = spawn('nbdfuse', ['-P', join(served.dir, 'nbdfuse.pid'), join(fuseDir, 'nbd'), `nbd://127.0.0.1:${served.agent.port}/disk0`], { stdio: 'inherit' });
    const exited = once(nbdfuse, 'exit');
    await eventually('nbdfuse to serve', async () => {
      if (nbdfuse!.exitCode !== null) throw new Error(`nbdfuse exited with ${nbdfuse!.exitCode}`);
      return existsSync(join(served.dir, 'nbdfuse.pid')) || undefined;
    });
    const dev = (await run('losetup', ['-f', '--show', join(fuseDir, 'nbd')])).stdout.trim();
    await run('mkfs.ext4', ['-q', dev]);
    await run('mount', [dev, mnt]);

    const staging = join(served.dir, 'staging');
    const stage = async (sizes: Record<string, number>): Promise<void> => {
      for (const [path, n] of Object.entries(sizes)) {
        const data = randomBytes(n);
        await mkdir(dirname(join(staging, path)), { recursive: true });
        await writeFile(join(staging, path), data);
        kept.set(path, data);
      }
      await run('cp', ['-a', `${staging}/.`, mnt]);
      await rm(staging, { recursive: true });
    };
    await stage({ '/a.bin': MiB + 123, '/b.bin': 700 * 1024, '/dir/c.bin': 2 * MiB, '/dir/d.bin': 300 * 1024, '/e.bin': 1.5 * MiB, '/empty': 0 });
    await run('sync');
    await run('rm', [join(mnt, 'dir/d.bin'), join(mnt, 'e.bin')]);
    kept.delete('/dir/d.bin');
    kept.delete('/e.bin');
    await stage({ '/dir/f.bin': 900 * 1024 + 7 }); // into the blocks just freed
    await run('sync');

    await run('umount', [mnt]);
    await run('losetup', ['-d', dev]);
    await run('umount', [fuseDir]);
    expect(await exited).toEqual([0, null]);
    expect(await mounted(mnt)).toBe(false);
    expect(await mounted(fuseDir)).toBe(false);
    expect(await loopsOf(join(fuseDir, 'nbd'))).toEqual([]);
  });

  test('the RP recovered with `livesync recover` equals the served image, passes e2fsck and holds the files', async () => {
    const seq = await takeRp(served.agent, served.pairId, 'ext4');
    const out = join(served.dir, 'recovered');
    const res = await runCli('recover', '--pair', served.pairId, '--seq', String(seq), '--out', out);
    expect(res).toMatchObject({ code: 0 });
    const recovered = join(out, 'disk0.img');
    expect(firstDifference(await readFile(recovered), await readFile(served.image))).toBeUndefined();
    await run('e2fsck', ['-fn', recovered]); // exit status 0: clean

    const debugfs = async (request: string): Promise<Buffer> =>
      (await run('debugfs', ['-R', request, recovered], { encoding: 'buffer', maxBuffer: 64 * MiB })).stdout;
    const names = async (path: string): Promise<string[]> =>
      (await debugfs(`ls -p ${path}`)).toString().split('\n').map((l) => l.split('/')[5]).filter((n) => n && n !== '.' && n !== '..').sort();
    expect(await names('/')).toEqual(['a.bin', 'b.bin', 'dir', 'empty', 'lost+found']);
    expect(await names('/dir')).toEqual(['c.bin', 'f.bin']);
    for (const [path, data] of kept) expect(firstDifference(await debugfs(`cat ${path}`), data)).toBeUndefined();
  });
});
