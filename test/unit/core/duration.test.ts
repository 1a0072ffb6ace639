import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../../core/duration.js';
import { codeOf } from '../../support/codes.js';

describe('parseDuration', () => {
  it.each([
    ['1s', 1],
    ['90s', 90],
    ['5m', 300],
    ['12h', 43_200],
    ['30d', 2_592_000],
    ['1h30m', 5_400],
    ['1d2h3m4s', 93_784],
    ['3650d', 315_360_000],
  ])('reads %s as %d seconds', (text, seconds) => {
    expect(parseDuration(text)).toBe(seconds);
  });

  it.each([
    ['empty', ''],
    ['a bare number', '300'],
    ['a bare digit', '5'],
    ['a negative duration', '-5m'],
    ['a space before the unit', '5 m'],
    ['a leading space', ' 5m'],
    ['a fraction', '1.5h'],
    ['zero', '0s'],
    ['zero in a compound', '0h0m'],
    ['an unknown unit', '5y'],
    ['milliseconds', '500ms'],
    ['an upper-case unit', '5M'],
    ['a unit without a number', 'h'],
    ['more than 32 characters', `${'0'.repeat(32)}1s`],
    ['more than ten years', '3651d'],
    ['a number too large to be exact', '99999999999999999999s'],
  ])('refuses %s', (_name, text) => {
    expect(codeOf(() => parseDuration(text))).toBe('ERR_DURATION_INVALID');
  });

  it.each([
    ['a number', 300],
    ['null', null],
    ['undefined', undefined],
    ['an object', { toString: () => '5m' }],
  ])('refuses %s instead of a string', (_name, value) => {
    expect(codeOf(() => parseDuration(value as unknown as string))).toBe('ERR_DURATION_INVALID');
  });
});

describe('formatDuration', () => {
  it.each([
    [1, '1s'],
    [90, '1m30s'],
    [300, '5m'],
    [3600, '1h'],
    [5400, '1h30m'],
    [86_400, '1d'],
    [93_784, '1d2h3m4s'],
  ])('spells %d seconds as %s', (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });

  it('spells zero as 0s', () => {
    expect(formatDuration(0)).toBe('0s');
  });

  it.each([1, 59, 60, 61, 299, 300, 3599, 3600, 5400, 86_399, 86_400, 90_061, 315_360_000])(
    'round-trips %d seconds through parseDuration',
    (seconds) => {
      expect(parseDuration(formatDuration(seconds))).toBe(seconds);
    },
  );
});
