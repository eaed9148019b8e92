// Whether to spend zstd on the next extent. Data that did not compress (media, encrypted or
// already-compressed files, random test data) tends to stay that way for a while, as btrfs and
// ZFS assume too: after `misses` extents in a row that zstd did not shrink by a fifth, the
// next `skip` extents are stored raw without trying; then one extent is tried. If that probe
// misses too, the next skip is twice as long (up to `maxSkip`); a worthwhile saving at any
// time starts over. On incompressible data zstd then runs on one extent in `maxSkip + 1`,
// not 8 in 72: level 1 costs about 4-9 ms per 1 MiB extent here, as much CPU as the rest of
// the agent's work on that MiB (docs/design.md, "Agent").

/**
 * At least this much smaller, or zstd did not earn its CPU. ZFS keeps a compressed block only
 * if it saves 12.5%; the agent asks 20% because its CPU is taken from the protected machine:
 * fio's default data, which zstd -1 takes to 0.87-0.96, kept zstd running on 181 of 256 MiB
 * at 0.9 (about 30% of the agent's CPU per MiB written sequentially); at 0.8 it is gated.
 */
const WORTHWHILE = 0.8;

export class CompressionGate {
  private streak = 0;
  private skipping = 0;
  /** Length of the next skip. */
  private skipNext: number;
  /** The last skip ended: the next try is a probe, and a miss skips again at once. */
  private probing = false;

  constructor(
    private readonly misses = 8,
    private readonly skip = 64,
    private readonly maxSkip = 1024,
  ) {
    this.skipNext = skip;
  }

  /** Whether to try compressing the next extent (a "no" counts against the skip). */
  shouldTry(): boolean {
    if (this.skipping === 0) return true;
    this.skipping--;
    return false;
  }

  /** What a try gave: the extent's raw and compressed sizes. */
  record(rawBytes: number, compressedBytes: number): void {
    if (compressedBytes <= rawBytes * WORTHWHILE) {
      this.streak = 0;
      this.skipNext = this.skip;
      this.probing = false;
    } else if (this.probing || ++this.streak >= this.misses) {
      this.streak = 0;
      if (this.probing) this.skipNext = Math.min(this.skipNext * 2, this.maxSkip);
      this.skipping = this.skipNext;
      this.probing = true;
    }
  }
}
