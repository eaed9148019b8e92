// cli/progress.ts: a recovery's progress line, and the sink wrapper that counts bytes.

import { progressLine, recoveryProgress } from '../cli/progress';

const GiB = 2 ** 30;

test.each([
  [12 * GiB, 100 * GiB, 60_000, 'r: 12.0 of 100.0 GiB (12 %), 204.8 MiB/s, about 7 min left'],
  [99 * GiB, 100 * GiB, 60_000, 'r: 99.0 of 100.0 GiB (99 %), 1689.6 MiB/s, about 1 s left'],
  [1 * GiB, 100 * GiB, 600_000, 'r: 1.0 of 100.0 GiB (1 %), 1.7 MiB/s, about 16.5 h left'],
  [0, 100 * GiB, 5_000, 'r: 0.0 of 100.0 GiB (0 %), 0.0 MiB/s, time left unknown'],
])('%d of %d bytes after %d ms', (done, total, ms, line) => {
  expect(progressLine('r', done, total, ms)).toBe(line);
});

test('the wrapper counts what each disk\'s sink took and passes everything through', async () => {
  let t = 0;
  const lines: string[] = [];
  const p = recoveryProgress('r', (l) => lines.push(l), 10, () => t);
  const written: number[] = [];
  const inner = { write: async (o: number) => void written.push(o), close: async () => void written.push(-1), abort: async () => void written.push(-2) };
  const a = p.wrap(4096, inner);
  const b = p.wrap(4096, inner);
  await a.write(0, Buffer.alloc(1024), []);
  await b.write(4096, Buffer.alloc(3072), []);
  await a.close();
  await b.abort(new Error('x'));
  expect(written).toEqual([0, 4096, -1, -2]);
  t = 1000;
  await new Promise((r) => setTimeout(r, 30));
  p.stop();
  expect(lines.length).toBeGreaterThan(0);
  expect(lines[lines.length - 1]).toMatch(/^r: 0\.0 of 0\.0 GiB \(50 %\), 0\.0 MiB\/s, about 1 s left$/); // 4 KiB of 8 KiB in 1 s
});

test('a sink the reader writes into directly (an image file) is passed on as one, and counted by what it wrote', async () => {
  let t = 0;
  const lines: string[] = [];
  const p = recoveryProgress('r', (l) => lines.push(l), 10, () => t);
  const wrote: number[] = [];
  const inner = { direct: { fd: 7, wrote: async (o: number) => void wrote.push(o) }, write: async () => {}, close: async () => {}, abort: async () => {} };
  const a = p.wrap(8192, inner);
  expect(a.direct?.fd).toBe(7);
  await a.direct!.wrote(0, 2048, []);
  expect(wrote).toEqual([0]);
  expect(p.wrap(4096, { write: async () => {}, close: async () => {}, abort: async () => {} }).direct).toBeUndefined();
  t = 1000;
  await new Promise((r) => setTimeout(r, 30));
  p.stop();
  expect(lines[lines.length - 1]).toMatch(/\(16 %\)/); // 2 KiB of 12 KiB
});
