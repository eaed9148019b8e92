// Whether to spend zstd on the next extent. Data that did not compress (media, encrypted or
// already-compressed files, random test data) tends to stay that way for a while, as btrfs and
// ZFS assume too: after `misses` extents in a row that zstd did not shrink by a tenth, the
// next `skip` extents are stored raw without trying; then it tries again.

/** At least this much smaller, or zstd did not earn its CPU. */
const WORTHWHILE = 0.9;

export class CompressionGate {
  private streak = 0;
  private skipping = 0;

  constructor(
    private readonly misses = 8,
    private readonly skip = 64,
  ) {}

  /** Whether to try compressing the next extent (a "no" counts against the skip). */
  shouldTry(): boolean {
    if (this.skipping === 0) return true;
    this.skipping--;
    return false;
  }

  /** What a try gave: the extent's raw and compressed sizes. */
  record(rawBytes: number, compressedBytes: number): void {
    if (compressedBytes <= rawBytes * WORTHWHILE) this.streak = 0;
    else if (++this.streak >= this.misses) {
      this.streak = 0;
      this.skipping = this.skip;
    }
  }
}
