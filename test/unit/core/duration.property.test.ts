/**
 * Properties of duration parsing and formatting, checked against a reference worked out with
 * exact integers. Each property states its run count in RUNS.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../../core/duration.js';
import { HsmintError } from '../../../core/errors.js';

const RUNS = {
  formatRoundTrip: 8_000,
  outOfRange: 1_000,
  compounds: 6_000,
  anyString: 6_000,
  notAString: 1_000,
} as const;

/** Ten years, the documented upper bound. */
const MAX_SECONDS = 10 * 365 * 86_400;
const UNITS = [
  ['d', 86_400],
  ['h', 3_600],
  ['m', 60],
  ['s', 1],
] as const;
const UNIT_SECONDS = new Map<string, bigint>(UNITS.map(([unit, size]) => [unit, BigInt(size)]));

/**
 * What parseDuration should answer, by a plain scan with BigInt arithmetic: whole seconds for
 * one or more `<digits><unit>` parts (in any order, summed) within 1s to ten years and 32
 * characters, otherwise undefined.
 */
function referenceParse(text: string): number | undefined {
  if (text.length === 0 || text.length > 32) return undefined;
  let total = 0n;
  let digits = '';
  for (const char of text) {
    if (char >= '0' && char <= '9') {
      digits += char;
      continue;
    }
    const size = UNIT_SECONDS.get(char);
    if (size === undefined || digits === '') return undefined;
    total += BigInt(digits) * size;
    digits = '';
  }
  if (digits !== '') return undefined;
  return total >= 1n && total <= BigInt(MAX_SECONDS) ? Number(total) : undefined;
}

/** The seconds parseDuration answers, or undefined when it refuses with ERR_DURATION_INVALID. */
function parsed(text: unknown): number | undefined {
  try {
    return parseDuration(text as string);
  } catch (error) {
    expect(error).toBeInstanceOf(HsmintError);
    expect((error as HsmintError).code).toBe('ERR_DURATION_INVALID');
    return undefined;
  }
}

/** Counts outcomes, to show that a generator reaches both sides of a property. */
function tally() {
  const counts = { accepted: 0, refused: 0 };
  return {
    counts,
    add(result: number | undefined) {
      if (result === undefined) counts.refused++;
      else counts.accepted++;
    },
  };
}

describe('formatDuration (property)', () => {
  const secondsArb = fc.oneof(
    fc.integer({ min: 1, max: MAX_SECONDS }),
    fc.integer({ min: 1, max: 200_000 }),
    // Whole units and their neighbours, where a carry goes wrong first.
    fc
      .tuple(
        fc.constantFrom(...UNITS.map(([, size]) => size)),
        fc.integer({ min: 1, max: 3_650 }),
        fc.integer({ min: -1, max: 1 }),
      )
      .map(([size, count, nudge]) => Math.min(MAX_SECONDS, Math.max(1, size * count + nudge))),
    fc.constantFrom(1, 59, 60, 61, 3_599, 3_600, 86_399, 86_400, MAX_SECONDS - 1, MAX_SECONDS),
  );

  it('spells the shortest exact duration, which parses back to the same seconds', () => {
    fc.assert(
      fc.property(secondsArb, (seconds) => {
        const text = formatDuration(seconds);
        let rest = seconds;
        const expected = UNITS.map(([unit, size]) => {
          const amount = Math.floor(rest / size);
          rest -= amount * size;
          return amount === 0 ? '' : `${amount}${unit}`;
        }).join('');
        expect(text).toBe(expected);
        expect(parseDuration(text)).toBe(seconds);
      }),
      { numRuns: RUNS.formatRoundTrip },
    );
  });

  it('spells durations past ten years exactly, and parseDuration refuses them', () => {
    fc.assert(
      fc.property(fc.integer({ min: MAX_SECONDS + 1, max: 2 ** 40 }), (seconds) => {
        const text = formatDuration(seconds);
        let spelled = 0n;
        for (const [, amount, unit] of text.matchAll(/(\d+)([dhms])/g))
          spelled += BigInt(amount!) * UNIT_SECONDS.get(unit!)!;
        expect(spelled).toBe(BigInt(seconds));
        expect(parsed(text)).toBeUndefined();
      }),
      { numRuns: RUNS.outOfRange },
    );
  });
});

describe('parseDuration (property)', () => {
  const amountArb = fc.oneof(
    { arbitrary: fc.nat({ max: 100 }).map(String), weight: 6 },
    { arbitrary: fc.nat({ max: 10_000_000 }).map(String), weight: 2 },
    // Leading zeros, and numbers past 2^53 whose sum a float would round.
    { arbitrary: fc.nat({ max: 99 }).map((n) => `00${n}`), weight: 1 },
    { arbitrary: fc.bigInt({ min: 0n, max: 10n ** 25n }).map(String), weight: 1 },
  );
  const partsArb = fc.array(fc.tuple(amountArb, fc.constantFrom('s', 'm', 'h', 'd')), {
    minLength: 1,
    maxLength: 6,
  });

  it('sums compound durations exactly, within 1s to ten years and 32 characters', () => {
    const seen = tally();
    fc.assert(
      fc.property(partsArb, (parts) => {
        const text = parts.map(([amount, unit]) => amount + unit).join('');
        const total = parts.reduce(
          (sum, [amount, unit]) => sum + BigInt(amount) * UNIT_SECONDS.get(unit)!,
          0n,
        );
        const expected =
          text.length <= 32 && total >= 1n && total <= BigInt(MAX_SECONDS)
            ? Number(total)
            : undefined;
        const result = parsed(text);
        seen.add(result);
        expect(result).toBe(expected);
      }),
      { numRuns: RUNS.compounds },
    );
    expect(seen.counts.accepted).toBeGreaterThan(RUNS.compounds / 10);
    expect(seen.counts.refused).toBeGreaterThan(RUNS.compounds / 100);
  });

  // Characters next to the grammar: other units, signs, dots, exponents, spaces, non-ASCII digits.
  const nearUnit = fc.constantFrom(
    ...'0123456789smhdSMHDyw .-+e,:\n\t'.split(''),
    '٣',
    '５',
    'ｍ',
    '😀',
    '\u0000',
  );
  /** A compound duration with up to two characters replaced, inserted or removed. */
  const nearMissArb = fc
    .tuple(
      partsArb.map((parts) => parts.map(([amount, unit]) => amount + unit).join('')),
      fc.array(fc.tuple(fc.constantFrom('replace', 'insert', 'remove'), fc.nat(), nearUnit), {
        maxLength: 2,
      }),
    )
    .map(([text, edits]) =>
      edits.reduce((out, [edit, at, char]) => {
        const i = at % (out.length + 1);
        if (edit === 'insert') return out.slice(0, i) + char + out.slice(i);
        return out.slice(0, i) + (edit === 'replace' ? char : '') + out.slice(i + 1);
      }, text),
    );
  const stringArb = fc.oneof(
    { arbitrary: nearMissArb, weight: 4 },
    { arbitrary: fc.string({ unit: nearUnit, maxLength: 36 }), weight: 2 },
    { arbitrary: fc.string({ unit: 'binary', maxLength: 36 }), weight: 1 },
    {
      arbitrary: fc.constantFrom('NaN', 'Infinity', '-5m', '5.5m', '1e3s', ' 5m', '5m ', '5m\n'),
      weight: 1,
    },
  );

  it('answers whole seconds in range for any string, or refuses it with ERR_DURATION_INVALID', () => {
    const seen = tally();
    fc.assert(
      fc.property(stringArb, (text) => {
        const result = parsed(text);
        seen.add(result);
        expect(result).toBe(referenceParse(text));
        if (result !== undefined) {
          expect(Number.isSafeInteger(result)).toBe(true);
          expect(result).toBeGreaterThanOrEqual(1);
          expect(result).toBeLessThanOrEqual(MAX_SECONDS);
        }
      }),
      { numRuns: RUNS.anyString },
    );
    expect(seen.counts.accepted).toBeGreaterThan(RUNS.anyString / 100);
  });

  it('refuses any value that is not a string with ERR_DURATION_INVALID', () => {
    const valueArb = fc
      .anything({ withNullPrototype: true, withBoxedValues: true, withBigInt: true })
      .filter((value) => typeof value !== 'string');
    fc.assert(
      fc.property(valueArb, (value) => {
        expect(parsed(value)).toBeUndefined();
      }),
      { numRuns: RUNS.notAString },
    );
  });
});
