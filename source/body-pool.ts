// Buffers of one size reused instead of allocated each time: the agent's batch bodies (4 MiB)
// and its large NBD write payloads (1 MiB). A fresh one is an ArrayBuffer outside V8's heap;
// one that outlives a few young collections (a body lives until its upload ends) is freed
// only by a full (mark-compact) GC. The agent makes full GCs rare (see agent/runtime.ts);
// without reuse, dead buffers would pile up in its memory between them.
//
// Ownership is the caller's promise: a buffer is given back exactly once, when nothing holds
// it any more (for bodies the spool says when: see SpoolOptions.bodies).

export class BodyPool {
  private readonly spare: ArrayBuffer[] = [];
  private readonly ours = new WeakSet<ArrayBufferLike>();

  /**
   * @param capacity bytes of each pooled body; a larger request gets a body of its own
   * @param maxSpare free bodies kept (the rest are left to the GC)
   */
  constructor(
    readonly capacity: number,
    private readonly maxSpare = 2,
  ) {}

  /** A body of `size` bytes, contents undefined. */
  take(size: number): Buffer {
    if (size > this.capacity) return Buffer.allocUnsafeSlow(size);
    let ab = this.spare.pop();
    if (!ab) {
      ab = new ArrayBuffer(this.capacity);
      this.ours.add(ab);
    }
    return Buffer.from(ab, 0, size);
  }

  /** Gives a body back; one not taken from this pool is ignored. */
  give(body: Buffer): void {
    const ab = body.buffer;
    if (!this.ours.has(ab) || this.spare.length >= this.maxSpare || this.spare.includes(ab as ArrayBuffer)) return;
    this.spare.push(ab as ArrayBuffer);
  }

  /** The memory a body holds: its pool buffer's whole capacity if it came from this pool, else its length. */
  footprint(body: Buffer): number {
    return this.ours.has(body.buffer) ? this.capacity : body.length;
  }

  get spareCount(): number {
    return this.spare.length;
  }
}
