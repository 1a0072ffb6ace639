import { describe, expect, it } from 'vitest';
import { HsmintError } from '../../../core/errors.js';
import { parseMintRequest, parseVerifyRequest } from '../../../core/protocol.js';
import { codeOf } from '../../support/codes.js';

/** `levels` objects nested inside one another, built without recursion. */
function nestedObject(levels: number): Record<string, unknown> {
  let value: Record<string, unknown> = {};
  for (let i = 1; i < levels; i++) value = { n: value };
  return value;
}

describe('parseMintRequest', () => {
  it('reads a minimal request', () => {
    expect(parseMintRequest({ aud: 'api' })).toEqual({ aud: 'api' });
  });

  it('reads every field', () => {
    expect(
      parseMintRequest({
        aud: ['api', 'other'],
        sub: 'svc:billing',
        ttl: '5m',
        scope: ['read', 'write:all'],
        claims: { tenant: 'acme', roles: ['a', 'b'], nested: { x: 1 } },
      }),
    ).toEqual({
      aud: ['api', 'other'],
      sub: 'svc:billing',
      ttl: 300,
      scope: ['read', 'write:all'],
      claims: { tenant: 'acme', roles: ['a', 'b'], nested: { x: 1 } },
    });
  });

  it('collapses a single-item audience list to a string', () => {
    expect(parseMintRequest({ aud: ['api'] }).aud).toBe('api');
  });

  it.each([
    ['5m', 300],
    ['90s', 90],
    ['1h30m', 5400],
    [90, 90],
    [1, 1],
  ])('reads ttl %j as %d seconds', (ttl, seconds) => {
    expect(parseMintRequest({ aud: 'api', ttl }).ttl).toBe(seconds);
  });

  it('accepts an empty scope list', () => {
    expect(parseMintRequest({ aud: 'api', scope: [] }).scope).toEqual([]);
  });

  it('accepts 32 scopes and 32 claims', () => {
    const scope = Array.from({ length: 32 }, (_, i) => `s${i}`);
    const claims = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`c${i}`, i]));
    const request = parseMintRequest({ aud: 'api', scope, claims });
    expect(request.scope).toHaveLength(32);
    expect(Object.keys(request.claims ?? {})).toHaveLength(32);
  });

  it('returns claims as a fresh object', () => {
    const claims = { tenant: 'acme' };
    const request = parseMintRequest({ aud: 'api', claims });
    expect(request.claims).toEqual(claims);
    expect(request.claims).not.toBe(claims);
  });

  it('accepts claims nested exactly 8 levels deep (the claims object is the first)', () => {
    expect(parseMintRequest({ aud: 'api', claims: { x: nestedObject(7) } }).claims).toBeDefined();
  });

  it.each([
    ['null', null],
    ['an array', [{ aud: 'api' }]],
    ['a string', '{"aud":"api"}'],
    ['a number', 42],
    ['undefined', undefined],
  ])('refuses %s as the body with ERR_INVALID_REQUEST', (_name, body) => {
    expect(codeOf(() => parseMintRequest(body))).toBe('ERR_INVALID_REQUEST');
  });

  it('refuses an unknown field', () => {
    expect(codeOf(() => parseMintRequest({ aud: 'api', iss: 'me' }))).toBe('ERR_UNKNOWN_FIELD');
    expect(codeOf(() => parseMintRequest({ aud: 'api', ttl_s: 5 }))).toBe('ERR_UNKNOWN_FIELD');
  });

  it('refuses a __proto__ field in the body as unknown', () => {
    expect(codeOf(() => parseMintRequest(JSON.parse('{"aud":"api","__proto__":{"x":1}}')))).toBe(
      'ERR_UNKNOWN_FIELD',
    );
  });

  it('refuses a missing aud', () => {
    expect(codeOf(() => parseMintRequest({}))).toBe('ERR_MISSING_FIELD');
    expect(codeOf(() => parseMintRequest({ sub: 'x' }))).toBe('ERR_MISSING_FIELD');
  });

  it.each([
    ['aud as a number', { aud: 42 }],
    ['aud as null', { aud: null }],
    ['aud as an object', { aud: { a: 1 } }],
    ['aud empty', { aud: '' }],
    ['aud over 256 characters', { aud: 'a'.repeat(257) }],
    ['aud as an empty list', { aud: [] }],
    ['aud with 17 entries', { aud: Array.from({ length: 17 }, (_, i) => `a${i}`) }],
    ['aud list holding a number', { aud: ['api', 1] }],
    ['aud repeating an audience', { aud: ['api', 'api'] }],
    ['aud with a newline', { aud: 'api\nx' }],
    ['aud with a NUL', { aud: 'api\u0000' }],
    ['aud with DEL', { aud: 'api\u007f' }],
    ['aud with U+2028', { aud: 'api\u2028x' }],
    ['aud with U+2029', { aud: 'api\u2029x' }],
    ['aud with a lone high surrogate', { aud: 'api\ud800' }],
    ['aud with a lone low surrogate', { aud: '\udc00api' }],
    ['sub as a number', { aud: 'api', sub: 1 }],
    ['sub with a control character', { aud: 'api', sub: 'svc\u001b[31m' }],
    ['sub with a lone surrogate', { aud: 'api', sub: 'svc\ud83d' }],
    ['sub empty', { aud: 'api', sub: '' }],
    ['ttl 0', { aud: 'api', ttl: 0 }],
    ['ttl -1', { aud: 'api', ttl: -1 }],
    ['ttl 1.5', { aud: 'api', ttl: 1.5 }],
    ['ttl NaN', { aud: 'api', ttl: Number.NaN }],
    ['ttl Infinity', { aud: 'api', ttl: Number.POSITIVE_INFINITY }],
    ['ttl beyond the safe integers', { aud: 'api', ttl: 2 ** 53 }],
    ['ttl 1e300', { aud: 'api', ttl: 1e300 }],
    ['ttl "NaN"', { aud: 'api', ttl: 'NaN' }],
    ['ttl "Infinity"', { aud: 'api', ttl: 'Infinity' }],
    ['ttl "300" (a bare number string)', { aud: 'api', ttl: '300' }],
    ['ttl "1e3"', { aud: 'api', ttl: '1e3' }],
    ['ttl "0s"', { aud: 'api', ttl: '0s' }],
    ['ttl "-5m"', { aud: 'api', ttl: '-5m' }],
    ['ttl ""', { aud: 'api', ttl: '' }],
    ['ttl as a boolean', { aud: 'api', ttl: true }],
    ['ttl as null', { aud: 'api', ttl: null }],
    ['scope as a string', { aud: 'api', scope: 'read write' }],
    ['scope with a space', { aud: 'api', scope: ['read write'] }],
    ['scope with a double quote', { aud: 'api', scope: ['read"'] }],
    ['scope with a backslash', { aud: 'api', scope: ['read\\'] }],
    ['scope with a non-ASCII character', { aud: 'api', scope: ['lire-é'] }],
    ['an empty scope', { aud: 'api', scope: [''] }],
    ['a scope that is not a string', { aud: 'api', scope: [1] }],
    ['33 scopes', { aud: 'api', scope: Array.from({ length: 33 }, (_, i) => `s${i}`) }],
    ['claims as an array', { aud: 'api', claims: [1] }],
    ['claims as null', { aud: 'api', claims: null }],
    ['claims as a string', { aud: 'api', claims: 'x' }],
    [
      '33 claims',
      {
        aud: 'api',
        claims: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`c${i}`, i])),
      },
    ],
    ['a claim name with a space', { aud: 'api', claims: { 'a b': 1 } }],
    ['a claim name starting with a digit', { aud: 'api', claims: { '1a': 1 } }],
    ['an empty claim name', { aud: 'api', claims: { '': 1 } }],
    ['a claim name over 64 characters', { aud: 'api', claims: { ['a'.repeat(65)]: 1 } }],
    ['claims nested 9 levels deep', { aud: 'api', claims: { x: nestedObject(8) } }],
  ])('refuses %s with ERR_INVALID_REQUEST', (_name, body) => {
    expect(codeOf(() => parseMintRequest(body))).toBe('ERR_INVALID_REQUEST');
  });

  it.each([
    'iss',
    'sub',
    'aud',
    'exp',
    'nbf',
    'iat',
    'jti',
    'azp',
    'scope',
    'cnf',
    'hsmint',
    'constructor',
    'prototype',
  ])('refuses the reserved claim %s', (name) => {
    expect(codeOf(() => parseMintRequest({ aud: 'api', claims: { [name]: 'x' } }))).toBe(
      'ERR_RESERVED_CLAIM',
    );
  });

  it('refuses a __proto__ claim that is an own property', () => {
    const claims: unknown = JSON.parse('{"__proto__": 1}');
    expect(Object.keys(claims as object)).toEqual(['__proto__']);
    expect(codeOf(() => parseMintRequest({ aud: 'api', claims }))).toBe('ERR_RESERVED_CLAIM');
  });

  it('refuses a __proto__ object claim from parsed JSON', () => {
    const body: unknown = JSON.parse('{"aud":"api","claims":{"__proto__":{"admin":true}}}');
    expect(codeOf(() => parseMintRequest(body))).toBe('ERR_RESERVED_CLAIM');
  });

  it('refuses a 100000-level nested array without overflowing the stack', () => {
    let deep: unknown[] = [];
    for (let i = 0; i < 100_000; i++) deep = [deep];
    let thrown: unknown;
    try {
      parseMintRequest({ aud: 'api', claims: { deep } });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).not.toBeInstanceOf(RangeError);
    expect(thrown).toBeInstanceOf(HsmintError);
    expect((thrown as HsmintError).code).toBe('ERR_INVALID_REQUEST');
  });

  it('refuses a 100000-level nested object without overflowing the stack', () => {
    let thrown: unknown;
    try {
      parseMintRequest({ aud: 'api', claims: { deep: nestedObject(100_000) } });
    } catch (error) {
      thrown = error;
    }
    expect((thrown as HsmintError).code).toBe('ERR_INVALID_REQUEST');
  });
});

describe('parseVerifyRequest', () => {
  it('reads a token and an optional audience', () => {
    expect(parseVerifyRequest({ token: 'a.b.c' })).toEqual({ token: 'a.b.c' });
    expect(parseVerifyRequest({ token: 'a.b.c', aud: 'api' })).toEqual({
      token: 'a.b.c',
      aud: 'api',
    });
  });

  it('leaves judging the token text to the verifier', () => {
    expect(parseVerifyRequest({ token: 'not a jwt' }).token).toBe('not a jwt');
  });

  it.each([
    ['null', null],
    ['an array', []],
    ['a string', 'a.b.c'],
  ])('refuses %s as the body with ERR_INVALID_REQUEST', (_name, body) => {
    expect(codeOf(() => parseVerifyRequest(body))).toBe('ERR_INVALID_REQUEST');
  });

  it('refuses an unknown field', () => {
    expect(codeOf(() => parseVerifyRequest({ token: 'a.b.c', issuer: 'x' }))).toBe(
      'ERR_UNKNOWN_FIELD',
    );
  });

  it('refuses a missing token', () => {
    expect(codeOf(() => parseVerifyRequest({ aud: 'api' }))).toBe('ERR_MISSING_FIELD');
  });

  it.each([
    ['token as a number', { token: 1 }],
    ['token as null', { token: null }],
    ['aud as a list', { token: 'a.b.c', aud: ['api'] }],
    ['aud with a control character', { token: 'a.b.c', aud: 'api\r' }],
    ['aud with a lone surrogate', { token: 'a.b.c', aud: '\ud800' }],
  ])('refuses %s with ERR_INVALID_REQUEST', (_name, body) => {
    expect(codeOf(() => parseVerifyRequest(body))).toBe('ERR_INVALID_REQUEST');
  });
});
