// The least bytes compaction must PUT per byte ingested while a range stays readable within a
// read bound: the yardstick bench:history holds put_bytes_ratio against (design doc, "What
// compaction must write"). Pure.
//
// The model is one range while every version written to it stays visible (5-s RPs see nearly
// every version of a block written minutes apart). Writes arrive as items of equal size: one
// per batch that touches the range. A read at the newest point touches every object that holds
// a version above the range's newest image, so at most `budget − 1` such objects may stand
// (one source is the image). Two objects can be merged into one only by writing both again
// (a merge keeps every version: all are visible), and a merge takes adjacent items (pieces
// cover disjoint seq spans). An image resets the count and costs the range's size.

/**
 * `table[k][n]`: the least total bytes merges write, in items, to take n equal items in order
 * while at most k objects stand after each arrival and its merges; an item that is never
 * merged costs nothing. Exact over every schedule of adjacent merges (a brute-force search
 * agrees for small n and k: test/merge-floor.test.ts).
 *
 * Why the recurrence: let the oldest object end holding items 1..j. Until item j arrives
 * nothing newer exists, so items 1..j are taken with k objects and then merged whole by the
 * merge that forms that object (j items written, unless j = 1); items j+1..n are then taken
 * with the k − 1 objects left.
 */
export function mergeCostTable(maxItems: number, maxSlots: number): Float64Array[] {
  if (!Number.isInteger(maxItems) || maxItems < 0 || !Number.isInteger(maxSlots) || maxSlots < 0) throw new RangeError(`mergeCostTable: items and slots must be non-negative integers, not ${maxItems} and ${maxSlots}`);
  const table = Array.from({ length: maxSlots + 1 }, () => new Float64Array(maxItems + 1).fill(Infinity));
  for (const row of table) row[0] = 0;
  for (let k = 1; k <= maxSlots; k++) {
    const row = table[k];
    const fewer = table[k - 1];
    for (let n = 1; n <= maxItems; n++) {
      let best = Infinity;
      for (let j = 1; j <= n; j++) {
        const whole = j === 1 ? 0 : j + row[j - 1];
        const cost = whole + fewer[n - j];
        if (cost < best) best = cost;
      }
      row[n] = best;
    }
  }
  return table;
}

export interface FloorInput {
  /** Bytes an item brings to the range: the data a batch that touches it writes there. */
  itemBytes: number;
  /** What an image costs: the range's bytes. */
  imageBytes: number;
  /** Objects a read of the range may touch, the image included (the design's bound: 13). */
  budget: number;
  /** Most items between two images considered (the search's reach). */
  maxItems?: number;
}

export interface Floor {
  /** Least (merge + image) bytes per byte ingested. */
  perByte: number;
  /** Items between two images at that least cost. */
  itemsPerImage: number;
}

export interface FoldFloor extends Floor {
  /** Batches folded at once, and pieces left standing, at that least cost (L0 + pieces = budget − 1). */
  batchesPerFold: number;
  pieces: number;
}

/**
 * The floor when a batch may stand as a read source for as long as the range needs it (it is
 * never folded): no design that lets batch objects be collected can do better.
 */
export function freeFloor(input: FloorInput, table = mergeCostTable(input.maxItems ?? 2000, input.budget - 1)): Floor {
  const { itemBytes, imageBytes, budget } = checkInput(input);
  const slots = budget - 1;
  let best: Floor = { perByte: Infinity, itemsPerImage: 0 };
  for (let n = 1; n < table[slots].length; n++) {
    const perByte = imageBytes / (n * itemBytes) + table[slots][n] / n;
    if (perByte < best.perByte) best = { perByte, itemsPerImage: n };
  }
  return best;
}

/**
 * The floor when every batch is folded into a piece (1 write per byte) once `batchesPerFold`
 * of them stand, and at most `pieces` pieces stand beside them, over the best split of the
 * budget: the L0 backlog and the pieces share budget − 1 sources. This design is one of them
 * (its split: 8 batches of L0 allowance, 4 pieces).
 */
export function foldFloor(input: FloorInput, table = mergeCostTable(input.maxItems ?? 2000, input.budget - 2)): FoldFloor {
  const { itemBytes, imageBytes, budget } = checkInput(input);
  let best: FoldFloor = { perByte: Infinity, itemsPerImage: 0, batchesPerFold: 0, pieces: 0 };
  for (let l0 = 1; l0 <= budget - 2; l0++) {
    const f = splitFloor({ itemBytes, imageBytes, batchesPerFold: l0, pieces: budget - 1 - l0 }, table);
    if (f.perByte < best.perByte) best = f;
  }
  return best;
}

/** The floor of one split: folds of `batchesPerFold` batches, at most `pieces` pieces between images. */
export function splitFloor(s: { itemBytes: number; imageBytes: number; batchesPerFold: number; pieces: number }, table: Float64Array[]): FoldFloor {
  const row = table[s.pieces];
  if (!row) throw new RangeError(`splitFloor: the table has no row for ${s.pieces} pieces`);
  let best: FoldFloor = { perByte: Infinity, itemsPerImage: 0, batchesPerFold: s.batchesPerFold, pieces: s.pieces };
  for (let folds = 1; folds < row.length; folds++) {
    const perByte = s.imageBytes / (folds * s.batchesPerFold * s.itemBytes) + 1 + row[folds] / folds;
    if (perByte < best.perByte) best = { ...best, perByte, itemsPerImage: folds * s.batchesPerFold };
  }
  return best;
}

function checkInput(input: FloorInput): FloorInput {
  const { itemBytes, imageBytes, budget } = input;
  if (!(itemBytes > 0) || !(imageBytes > 0)) throw new RangeError(`merge floor: itemBytes and imageBytes must be positive, not ${itemBytes} and ${imageBytes}`);
  if (!Number.isInteger(budget) || budget < 3) throw new RangeError(`merge floor: the budget must be an integer of at least 3 sources, not ${budget}`);
  return input;
}
