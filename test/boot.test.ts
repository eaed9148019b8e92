// A real guest boots from an export (issue 16, instant access): an ext4 disk image with a
// marker file is replicated into a pair (RP 1), changed (RP 2, another marker), and RP 1 is
// exported; qemu (TCG) boots a kernel with a busybox initramfs the test builds, whose init
// mounts /dev/vda read-only from the export over NBD and prints the marker. The time from the
// export's start to the marker on the console is the issue's `rto_s`.
//
// Slow (a TCG boot takes tens of seconds) and needs qemu-system-x86_64, a Debian kernel
// (/boot/vmlinuz-*, its modules) and busybox-static: run with
//   LIVESYNC_BOOT_TEST=1 npx jest test/boot.test.ts
// and skipped otherwise.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { BLOCK_SIZE } from '../core/batch-format';
import { createPair, waitForWatermark } from '../replica/pairs';
import { BatchWriter } from '../source/batch-writer';
import { startExport } from '../cli/export';
import { cloud, newPairId } from './helpers';

const enabled = process.env.LIVESYNC_BOOT_TEST === '1';
const MiB = 1024 * 1024;
const DISK_BYTES = 64 * MiB;

/** An ext4 image of DISK_BYTES holding marker.txt = `marker`. */
function ext4Image(dir: string, name: string, marker: string): Buffer {
  const root = join(dir, `${name}-root`);
  execFileSync('mkdir', ['-p', root]);
  execFileSync('sh', ['-c', `printf '%s\\n' "$1" > "$2"`, 'sh', marker, join(root, 'marker.txt')]);
  const img = join(dir, `${name}.img`);
  // Fixed UUID and hash seed: the two images differ only where the marker's file does.
  execFileSync('/usr/sbin/mkfs.ext4', ['-q', '-F', '-U', '6a1f7c2e-0000-4000-8000-000000000001', '-E', 'hash_seed=6a1f7c2e-0000-4000-8000-000000000002,root_owner=0:0', '-d', root, img, `${DISK_BYTES / 1024}k`], { env: { ...process.env, E2FSPROGS_FAKE_TIME: '1800000000' } });
  return readFileSync(img);
}

/** The kernel modules (from modules.dep) that `wanted` needs, dependencies first, as paths under /lib/modules/KV. */
function modulesFor(kv: string, wanted: string[]): string[] {
  const dep = new Map<string, string[]>();
  for (const line of readFileSync(`/lib/modules/${kv}/modules.dep`, 'utf8').split('\n')) {
    const [mod, deps] = line.split(':');
    if (mod) dep.set(mod, deps.trim() ? deps.trim().split(/\s+/) : []);
  }
  const byName = new Map([...dep.keys()].map((p) => [p.replace(/^.*\//, '').replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_'), p]));
  const order: string[] = [];
  const visit = (p: string): void => {
    if (order.includes(p)) return;
    for (const d of dep.get(p) ?? []) visit(d);
    order.push(p);
  };
  for (const w of wanted) {
    const p = byName.get(w);
    if (p) visit(p); // absent: built into the kernel
  }
  return order;
}

/** A newc cpio archive of `files` (path → contents and mode), directories included. */
function cpio(files: { path: string; mode: number; data: Buffer }[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const entry = (name: string, mode: number, data: Buffer): void => {
    const fields = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, name.length + 1, 0];
    const head = Buffer.from(`070701${fields.map((f) => f.toString(16).padStart(8, '0')).join('')}${name}\0`);
    parts.push(head, Buffer.alloc((4 - (head.length % 4)) % 4), data, Buffer.alloc((4 - (data.length % 4)) % 4));
  };
  for (const f of files) entry(f.path, f.mode, f.data);
  entry('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

(enabled ? test : test.skip)(
  'a guest boots from an export of an RP that is not the latest and reads its marker file (rto_s)',
  async () => {
    const dir = await mkdtemp(join(tmpdir(), 'livesync-boot-'));
    const c = cloud();
    try {
      const kv = readdirSync('/lib/modules').sort().pop()!;
      const kernel = `/boot/vmlinuz-${kv}`;
      expect(existsSync(kernel)).toBe(true);
      const markerA = `livesync-boot-${randomBytes(6).toString('hex')}`;
      const markerB = `livesync-boot-${randomBytes(6).toString('hex')}`;
      const imgA = ext4Image(dir, 'a', markerA);
      const imgB = ext4Image(dir, 'b', markerB);

      // Replicate: RP 1 is image A (its blocks with data), RP 2 changes the blocks where B differs.
      const pairId = newPairId('boot');
      const disks = [{ name: 'disk0', sizeBytes: DISK_BYTES }];
      await createPair(c.index, { pairId, disks });
      const w = new BatchWriter({ pairId, disks, store: c.store, maxBatchAgeMs: 0, maxBatchBytes: 64 * MiB });
      for (let at = 0; at < DISK_BYTES; at += 64 * 1024) {
        const chunk = imgA.subarray(at, at + 64 * 1024);
        if (chunk.some((x) => x !== 0)) await w.write('disk0', at, Buffer.from(chunk));
      }
      const rp1 = await w.flush({ rp: true });
      let changed = 0;
      for (let at = 0; at < DISK_BYTES; at += BLOCK_SIZE) {
        if (imgA.subarray(at, at + BLOCK_SIZE).equals(imgB.subarray(at, at + BLOCK_SIZE))) continue;
        await w.write('disk0', at, Buffer.from(imgB.subarray(at, at + BLOCK_SIZE)));
        changed++;
      }
      expect(changed).toBeGreaterThan(0);
      const rp2 = await w.flush({ rp: true });
      await w.close();
      await waitForWatermark(c.index, pairId, rp2, 60_000);

      // The initramfs: busybox, the modules for virtio and ext4, and an init that prints the marker.
      const mods = modulesFor(kv, ['virtio_pci', 'virtio_blk', 'crc32c_generic', 'ext4']);
      const init = [
        '#!/bin/busybox sh',
        '/bin/busybox --install -s /bin',
        'mkdir -p /proc /sys /dev /mnt',
        'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev',
        ...mods.map((m) => `insmod /lib/modules/${m.replace(/^.*\//, '')}`),
        'for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done',
        'mount -t ext4 -o ro /dev/vda /mnt && echo "MARKER: $(cat /mnt/marker.txt)"',
        'poweroff -f',
      ].join('\n');
      const files = [
        { path: 'bin', mode: 0o40755, data: Buffer.alloc(0) },
        { path: 'lib', mode: 0o40755, data: Buffer.alloc(0) },
        { path: 'lib/modules', mode: 0o40755, data: Buffer.alloc(0) },
        { path: 'bin/busybox', mode: 0o100755, data: await readFile('/bin/busybox') },
        { path: 'init', mode: 0o100755, data: Buffer.from(init + '\n') },
        ...(await Promise.all(mods.map(async (m) => ({ path: `lib/modules/${m.replace(/^.*\//, '')}`, mode: 0o100644, data: await readFile(`/lib/modules/${kv}/${m}`) })))),
      ];
      const initrd = join(dir, 'initrd.cpio');
      await writeFile(initrd, cpio(files));
      await mkdir(join(dir, 'run'), { recursive: true });

      // Fail over to RP 1: the export starts, the guest boots from it.
      const t0 = Date.now();
      const exp = await startExport(c, pairId, { seq: rp1 }, { listen: '127.0.0.1:0' });
      let qemu: ReturnType<typeof spawn> | undefined;
      try {
        qemu = spawn('qemu-system-x86_64', [
          '-accel', 'tcg', '-m', '256', '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio',
          '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 panic=-1 quiet',
          '-drive', `file=${exp.disks[0].uri},format=raw,if=virtio,readonly=on`,
        ], { stdio: ['ignore', 'pipe', 'pipe'] });
        let console_ = '';
        const marker = await new Promise<string>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no marker after 300 s; console:\n${console_.slice(-3000)}`)), 300_000);
          const onData = (b: Buffer): void => {
            console_ += b.toString('utf8');
            const m = /MARKER: (\S+)\r?\n/.exec(console_); // the whole line: the console comes in pieces
            if (m) {
              clearTimeout(timer);
              resolve(m[1]);
            }
          };
          qemu!.stdout!.on('data', onData);
          qemu!.stderr!.on('data', onData);
          qemu!.once('exit', (code) => {
            clearTimeout(timer);
            if (!/MARKER: (\S+)/.test(console_)) reject(new Error(`qemu exited (${code}) before the marker; console:\n${console_.slice(-3000)}`));
          });
        });
        const rtoS = (Date.now() - t0) / 1000;
        expect(marker).toBe(markerA);
        console.log(JSON.stringify({ rto_s: rtoS, fills: exp.stats().fills, gets: exp.stats().gets }));
      } finally {
        qemu?.kill('SIGKILL');
        await exp.stop();
      }
      expect(await c.history.listReaderLeases(pairId, Date.now())).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
  420_000,
);
