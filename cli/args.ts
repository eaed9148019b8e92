// Parsing of CLI values, with errors that name the flag and the bad value.

import { InvalidArgumentError } from '../core/errors';
import { checkTier, type RetentionTier } from '../core/retention';

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
const TIME_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** '256M', '1G', '4096' (binary units). */
export function parseSize(flag: string, value: string): number {
  const m = /^(\d+)([KMGT]?)(i?B)?$/i.exec(value.trim());
  if (!m) throw new InvalidArgumentError(`--${flag}: '${value}' is not a size like 256M or 1G`);
  return Number(m[1]) * SIZE_UNITS[m[2].toUpperCase()];
}

/** '5s', '500ms', '2m'. */
export function parseDuration(flag: string, value: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(value.trim());
  if (!m) throw new InvalidArgumentError(`--${flag}: '${value}' is not a duration like 5s or 500ms`);
  return Number(m[1]) * TIME_UNITS[m[2]];
}

/** A duration that must be more than 0 (e.g. an interval that something runs at). */
export function parsePositiveDuration(flag: string, value: string): number {
  const ms = parseDuration(flag, value);
  if (ms <= 0) throw new InvalidArgumentError(`--${flag}: '${value}' must be more than 0`);
  return ms;
}

export function parseIntArg(flag: string, value: string): number {
  if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`--${flag}: '${value}' is not a non-negative integer`);
  return Number(value);
}

/** 'NAME=SIZE' for --disk. */
export function parseDiskSpec(value: string): { name: string; sizeBytes: number } {
  const i = value.indexOf('=');
  if (i <= 0) throw new InvalidArgumentError(`--disk: '${value}' is not NAME=SIZE (e.g. disk0=256M)`);
  return { name: value.slice(0, i), sizeBytes: parseSize('disk', value.slice(i + 1)) };
}

export function required<T>(flag: string, value: T | undefined): T {
  if (value === undefined || value === '') throw new InvalidArgumentError(`--${flag} is required`);
  return value;
}

const TIER_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** 'WINDOW:SPACING' for --tier and --app-tier, in whole seconds: '1h:0', '1d:15m', '7d:1h' (units s, m, h, d; 0 needs none). */
export function parseTier(flag: string, value: string): RetentionTier {
  const part = (v: string): number | undefined => {
    if (v === '0') return 0;
    const m = /^(\d+)([smhd])$/.exec(v);
    return m ? Number(m[1]) * TIER_UNITS[m[2]] : undefined;
  };
  const [w, sp, extra] = value.trim().split(':');
  const windowSec = part(w ?? '');
  const spacingSec = part(sp ?? '');
  if (windowSec === undefined || spacingSec === undefined || extra !== undefined) {
    throw new InvalidArgumentError(`--${flag}: '${value}' is not WINDOW:SPACING like 1h:0, 1d:15m or 7d:1h (units s, m, h, d)`);
  }
  return checkTier({ windowSec, spacingSec }, `--${flag} '${value}'`);
}
