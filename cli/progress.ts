// Progress of a recovery from the CLI: every disk's sink is wrapped to count the bytes handed
// to it, and a line goes to stderr every `everyMs` (default 5 s) while it runs:
//   recover web01 RP 1234: 12.0 of 100.0 GiB (12 %), 150.2 MiB/s, about 10 min left
// A recovery shorter than `everyMs` prints nothing.

import { recoveryProgress as runProgress } from '../core/recovery-ranges';
import type { ImageSink } from '../replica/materialize';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

/** One progress line; pure. */
export function progressLine(what: string, doneBytes: number, totalBytes: number, elapsedMs: number): string {
  const pct = totalBytes > 0 ? Math.floor((doneBytes / totalBytes) * 100) : 100;
  const p = runProgress(doneBytes, totalBytes, 0, Math.max(0, elapsedMs));
  const rate = p.rateBps ?? 0;
  const left = p.etaMs === undefined ? Infinity : p.etaMs / 1000;
  const eta = !Number.isFinite(left) ? 'time left unknown' : left < 90 ? `about ${Math.max(1, Math.round(left))} s left` : left < 5400 ? `about ${Math.round(left / 60)} min left` : `about ${(left / 3600).toFixed(1)} h left`;
  return `${what}: ${(doneBytes / GiB).toFixed(1)} of ${(totalBytes / GiB).toFixed(1)} GiB (${pct} %), ${(rate / MiB).toFixed(1)} MiB/s, ${eta}`;
}

export interface Progress {
  /** `sinkFor`'s sink, counted (the disk's size joins the total). */
  wrap(sizeBytes: number, sink: ImageSink): ImageSink;
  stop(): void;
}

export function recoveryProgress(what: string, print: (line: string) => void, everyMs = 5000, now: () => number = Date.now): Progress {
  const t0 = now();
  let done = 0;
  let total = 0;
  const timer = setInterval(() => print(progressLine(what, done, total, now() - t0)), everyMs);
  timer.unref();
  return {
    wrap(sizeBytes, sink) {
      total += sizeBytes;
      return {
        doneWithWindow: sink.doneWithWindow,
        writesDataOnly: sink.writesDataOnly,
        direct: sink.direct && {
          fd: sink.direct.fd,
          async wrote(offset, length, ranges) {
            await sink.direct!.wrote(offset, length, ranges);
            done += length;
          },
        },
        async write(offset, window, ranges) {
          await sink.write(offset, window, ranges);
          done += window.length;
        },
        close: () => sink.close(),
        abort: (err) => sink.abort(err),
      };
    },
    stop: () => clearInterval(timer),
  };
}
