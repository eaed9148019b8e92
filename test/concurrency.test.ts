// replica/concurrency.ts: mapLimit keeps its limit, keeps order, and starts nothing after a failure.

import { limiter, mapLimit, sleep } from '../replica/concurrency';

test('mapLimit: at most `limit` in flight, results in order', async () => {
  let inFlight = 0;
  let most = 0;
  const out = await mapLimit([5, 1, 4, 2, 3], 2, async (x) => {
    most = Math.max(most, ++inFlight);
    await sleep(x * 3);
    inFlight--;
    return x * 10;
  });
  expect(out).toEqual([50, 10, 40, 20, 30]);
  expect(most).toBe(2);
});

test('mapLimit: the first failure rejects, and no item starts after it', async () => {
  const started: number[] = [];
  await expect(
    mapLimit([0, 1, 2, 3, 4, 5, 6, 7], 2, async (x) => {
      started.push(x);
      await sleep(5);
      if (x === 1) throw new Error('item 1 failed');
    }),
  ).rejects.toThrow('item 1 failed');
  await sleep(50); // what was in flight ends
  // 0 and 1 start; 0 ends first and its worker takes 2; 1 fails: nothing more.
  expect(started).toEqual([0, 1, 2]);
});

test('limiter: refuses tasks after stop()', async () => {
  const run = limiter(1);
  await expect(run(async () => 1)).resolves.toBe(1);
  run.stop();
  await expect(run(async () => 2)).rejects.toThrow('stopped');
});
