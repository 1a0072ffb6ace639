import { HsmintError } from './errors.js';

const UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86400 } as const;
const DURATION = /^(?:\d+[smhd])+$/;
const PART = /(\d+)([smhd])/g;
/** Ten years: far beyond any sane TTL, small enough that arithmetic on it stays exact. */
const MAX_SECONDS = 10 * 365 * 86400;

/**
 * Parses `90s`, `5m`, `12h`, `30d` or a compound like `1h30m` into whole seconds. A bare number
 * is refused: "300" could mean seconds or milliseconds, and a wrong guess is a security bug.
 */
export function parseDuration(text: string): number {
  if (typeof text !== 'string' || text.length > 32 || !DURATION.test(text)) {
    throw new HsmintError(
      'ERR_DURATION_INVALID',
      // Not String(text): an object without a usable toString would throw a TypeError instead.
      `expected a duration like 90s, 5m, 12h or 30d, got ${typeof text === 'string' ? JSON.stringify(text.slice(0, 32)) : `a value of type ${typeof text}`}`,
    );
  }
  let seconds = 0;
  for (const [, amount, unit] of text.matchAll(PART)) {
    seconds += Number(amount) * UNIT_SECONDS[unit as keyof typeof UNIT_SECONDS];
  }
  if (seconds <= 0 || seconds > MAX_SECONDS) {
    throw new HsmintError(
      'ERR_DURATION_INVALID',
      `duration ${text} is out of range (1s to 10 years)`,
    );
  }
  return seconds;
}

/** The shortest exact spelling: 5400 -> "1h30m". */
export function formatDuration(seconds: number): string {
  if (seconds === 0) return '0s';
  let rest = seconds;
  let out = '';
  for (const unit of ['d', 'h', 'm', 's'] as const) {
    const size = UNIT_SECONDS[unit];
    if (rest >= size) {
      out += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return out;
}
