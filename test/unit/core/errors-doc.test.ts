/**
 * ERRORS.md mirrors ERROR_CODES: every code, and the HTTP status it travels with ("—" for
 * codes that never cross the socket). This fails when the two drift apart.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../../core/errors.js';

const ERRORS_MD = fileURLToPath(new URL('../../../ERRORS.md', import.meta.url));
const ROW = /^\|\s*`(ERR_[A-Z0-9_]+)`\s*\|\s*([^|]*?)\s*\|/;

/** Code -> the status column as written, for every table row naming a code. */
function documentedCodes(): { rows: Map<string, string>; repeated: string[] } {
  const rows = new Map<string, string>();
  const repeated: string[] = [];
  for (const line of readFileSync(ERRORS_MD, 'utf8').split(/\r?\n/)) {
    if (!line.startsWith('| `ERR_')) continue;
    const match = ROW.exec(line);
    if (!match) throw new Error(`ERRORS.md: cannot read the row ${JSON.stringify(line)}`);
    const [, code, status] = match as unknown as [string, string, string];
    if (rows.has(code)) repeated.push(code);
    rows.set(code, status);
  }
  return { rows, repeated };
}

describe('ERRORS.md', () => {
  const { rows, repeated } = documentedCodes();

  it('has a table row per code', () => {
    expect(rows.size).toBeGreaterThan(0);
  });

  it('lists every code in ERROR_CODES', () => {
    const missing = Object.keys(ERROR_CODES).filter((code) => !rows.has(code));
    expect(missing).toEqual([]);
  });

  it('lists no code that ERROR_CODES lacks', () => {
    const unknown = [...rows.keys()].filter((code) => !Object.hasOwn(ERROR_CODES, code));
    expect(unknown).toEqual([]);
  });

  it('lists each code once', () => {
    expect(repeated).toEqual([]);
  });

  it('gives each code the status of ERROR_CODES, or "—" for null', () => {
    const drift = Object.entries(ERROR_CODES)
      .filter(([code]) => rows.has(code))
      .map(([code, { status }]) => ({
        code,
        expected: status === null ? '—' : String(status),
        documented: rows.get(code),
      }))
      .filter(({ expected, documented }) => expected !== documented);
    expect(drift).toEqual([]);
  });
});
