import { open } from 'node:fs/promises';

/** First differing byte offset of two files (a length difference counts), or undefined if equal. */
export async function compareFiles(a: string, b: string, chunk = 8 * 1024 * 1024): Promise<number | undefined> {
  const [fa, fb] = await Promise.all([open(a), open(b)]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    const ba = Buffer.alloc(chunk);
    const bb = Buffer.alloc(chunk);
    for (let at = 0; at < Math.min(sa.size, sb.size); at += chunk) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, chunk, at), fb.read(bb, 0, chunk, at)]);
      const n = Math.min(ra.bytesRead, rb.bytesRead);
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
        for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return at + i;
      }
    }
    return sa.size === sb.size ? undefined : Math.min(sa.size, sb.size);
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
