// The apply path asks for compaction as a pair's L0 backlog crosses 4, 8, … batches
// (core/compaction-trigger.ts), once per crossing; a launcher that fails costs the batch
// nothing (the schedule starts the run instead). Through the real apply path.

import { MemoryObjectStore } from '../adapters/memory-object-store';
import { ApplyService, type Logger } from '../replica/apply';
import { createPair } from '../replica/pairs';
import type { CompactionLauncher } from '../replica/ports';
import { cloud, journalBatches, newPairId } from './helpers';

const disks = [{ name: 'disk0', sizeBytes: 1024 * 1024 }];

async function batches(pairId: string, n: number): Promise<{ mem: MemoryObjectStore; keys: string[] }> {
  const mem = new MemoryObjectStore();
  return { mem, keys: await journalBatches(mem, pairId, disks, n) };
}

test('a run is asked for when the backlog reaches 4 and 8, not at every batch', async () => {
  const { index } = cloud();
  const pairId = newPairId('creq');
  await createPair(index, { pairId, disks });
  const { mem, keys } = await batches(pairId, 9);
  const asked: number[] = [];
  const launcher: CompactionLauncher = { start: async () => (asked.push((await index.getPair(pairId))!.watermark), 'arn') };
  const apply = new ApplyService(mem, index, undefined, Date.now, undefined, undefined, launcher);
  for (const k of keys) expect((await apply.applyObject(k)).outcome).toBe('applied');
  expect(asked).toEqual([4, 8]);
});

test('a launcher that fails is logged; the batch is applied all the same', async () => {
  const { index } = cloud();
  const pairId = newPairId('creqf');
  await createPair(index, { pairId, disks });
  const { mem, keys } = await batches(pairId, 4);
  const warned: string[] = [];
  const log: Logger = { info: () => {}, warn: (msg) => warned.push(msg) };
  const launcher: CompactionLauncher = { start: async () => { throw new Error('ThrottlingException'); } };
  const apply = new ApplyService(mem, index, log, Date.now, undefined, undefined, launcher);
  for (const k of keys) expect((await apply.applyObject(k)).outcome).toBe('applied');
  expect((await index.getPair(pairId))!.watermark).toBe(4);
  expect(warned).toEqual(['compaction request failed; the schedule will start it']);
});
