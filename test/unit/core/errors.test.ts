import { describe, expect, it } from 'vitest';
import {
  ERROR_CODES,
  HsmintError,
  hasCode,
  isErrorCode,
  type ErrorCode,
} from '../../../core/errors.js';

describe('ERROR_CODES', () => {
  it('names every code ERR_ in upper snake case', () => {
    for (const code of Object.keys(ERROR_CODES))
      expect(code).toMatch(/^ERR_[A-Z0-9]+(?:_[A-Z0-9]+)*$/);
  });

  it('gives every code a client or server error status, or null', () => {
    for (const { status } of Object.values(ERROR_CODES)) {
      if (status !== null) {
        expect(status).toBeGreaterThanOrEqual(400);
        expect(status).toBeLessThan(600);
      }
    }
  });

  it('keeps verification outcomes off the HTTP status table', () => {
    const tokenCodes = Object.entries(ERROR_CODES).filter(([code]) =>
      code.startsWith('ERR_TOKEN_'),
    );
    expect(tokenCodes.length).toBeGreaterThan(0);
    for (const [, { status }] of tokenCodes) expect(status).toBeNull();
  });
});

describe('HsmintError', () => {
  it('carries its code, name, cause and details', () => {
    const cause = new Error('low level');
    const error = new HsmintError('ERR_HSM_UNAVAILABLE', 'the token could not sign', {
      cause,
      details: { ckr: 'CKR_DEVICE_ERROR' },
    });
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe('HsmintError');
    expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
    expect(error.cause).toBe(cause);
    expect(error.details).toEqual({ ckr: 'CKR_DEVICE_ERROR' });
  });

  it('has no cause and no details unless given', () => {
    const error = new HsmintError('ERR_INTERNAL', 'x');
    expect(error.cause).toBeUndefined();
    expect('cause' in error).toBe(false);
    expect(error.details).toBeUndefined();
  });

  it.each([
    ['ERR_NOT_FOUND', 404],
    ['ERR_METHOD_NOT_ALLOWED', 405],
    ['ERR_BODY_TOO_LARGE', 413],
    ['ERR_UNSUPPORTED_MEDIA_TYPE', 415],
    ['ERR_INVALID_REQUEST', 400],
    ['ERR_AUDIENCE_NOT_ALLOWED', 403],
    ['ERR_FORBIDDEN', 403],
    ['ERR_SUBJECT_NOT_ALLOWED', 403],
    ['ERR_SCOPE_NOT_ALLOWED', 403],
    ['ERR_CLAIM_NOT_ALLOWED', 403],
    ['ERR_TTL_TOO_LONG', 400],
    ['ERR_TOO_MANY_CONNECTIONS', 429],
    ['ERR_TOO_MANY_REQUESTS', 429],
    // A reload over the socket answers a refused or unreadable config; the old config stays.
    ['ERR_CONFIG_INVALID', 422],
    ['ERR_CONFIG_UNREADABLE', 422],
    ['ERR_HSM_UNAVAILABLE', 503],
    ['ERR_INTERNAL', 500],
  ] as const)('travels %s with status %d', (code, status) => {
    expect(new HsmintError(code, 'x').status).toBe(status);
  });

  it.each([
    'ERR_DURATION_INVALID',
    'ERR_TOKEN_EXPIRED',
    'ERR_PIN_INCORRECT',
    'ERR_USAGE',
    'ERR_NATIVE_UNAVAILABLE',
  ] as const)('falls back to 500 for %s, whose status is null', (code) => {
    expect(ERROR_CODES[code].status).toBeNull();
    expect(new HsmintError(code, 'x').status).toBe(500);
  });

  it('serialises to {code, message} only: no stack, cause or details', () => {
    const error = new HsmintError('ERR_HSM_UNAVAILABLE', 'the token could not sign', {
      cause: new Error('CKR_DEVICE_ERROR:48'),
      details: { ckr: 'CKR_DEVICE_ERROR' },
    });
    expect(error.toJSON()).toStrictEqual({
      code: 'ERR_HSM_UNAVAILABLE',
      message: 'the token could not sign',
    });
    expect(JSON.parse(JSON.stringify(error))).toStrictEqual({
      code: 'ERR_HSM_UNAVAILABLE',
      message: 'the token could not sign',
    });
  });
});

describe('isErrorCode', () => {
  it('accepts every code in the table', () => {
    for (const code of Object.keys(ERROR_CODES)) expect(isErrorCode(code)).toBe(true);
  });

  it.each([
    ['an unknown code', 'ERR_NOPE'],
    ['a lower-case code', 'err_not_found'],
    ['an inherited name', 'toString'],
    ['__proto__', '__proto__'],
    ['a number', 404],
    ['null', null],
    ['undefined', undefined],
    ['an object', { code: 'ERR_NOT_FOUND' }],
  ])('refuses %s', (_name, value) => {
    expect(isErrorCode(value)).toBe(false);
  });
});

describe('hasCode', () => {
  const error = new HsmintError('ERR_TTL_TOO_LONG', 'x');

  it('matches an HsmintError with that code', () => {
    expect(hasCode(error, 'ERR_TTL_TOO_LONG')).toBe(true);
  });

  it('refuses another code', () => {
    expect(hasCode(error, 'ERR_INVALID_REQUEST')).toBe(false);
  });

  it('refuses look-alikes that are not HsmintErrors', () => {
    const lookalike = Object.assign(new Error('x'), { code: 'ERR_TTL_TOO_LONG' as ErrorCode });
    expect(hasCode(lookalike, 'ERR_TTL_TOO_LONG')).toBe(false);
    expect(hasCode({ code: 'ERR_TTL_TOO_LONG' }, 'ERR_TTL_TOO_LONG')).toBe(false);
    expect(hasCode(undefined, 'ERR_TTL_TOO_LONG')).toBe(false);
  });
});
