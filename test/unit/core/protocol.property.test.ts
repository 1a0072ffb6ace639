/**
 * Properties of the socket API's request parsers, on generated JSON bodies: what they accept
 * comes back exactly (with the documented normalisation), and everything else is refused with
 * a documented 400 code, never a TypeError. Each property states its run count in RUNS.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../../core/duration.js';
import { ERROR_CODES, HsmintError } from '../../../core/errors.js';
import {
  parseMintBatchRequest,
  parseMintRequest,
  parseRevokeTokenRequest,
  parseVerifyRequest,
  RESERVED_CLAIMS,
  type MintRequest,
} from '../../../core/protocol.js';

const RUNS = {
  anyJson: 4_000,
  validMint: 5_000,
  reservedClaims: 2_000,
  unknownFields: 3_000,
  textFields: 4_000,
  audienceLists: 2_000,
  ttl: 5_000,
  scopes: 3_000,
  claimShapes: 3_000,
  verify: 2_000,
  revoke: 3_000,
  batch: 1_000,
} as const;

/** The codes a request parser may refuse with (ERRORS.md, "Requests"), all of them 400s. */
const REQUEST_CODES = [
  'ERR_INVALID_REQUEST',
  'ERR_UNKNOWN_FIELD',
  'ERR_MISSING_FIELD',
  'ERR_RESERVED_CLAIM',
] as const;
type RequestCode = (typeof REQUEST_CODES)[number];

type ParserName = 'mint' | 'verify' | 'revoke' | 'batch';
const PARSERS: Record<
  ParserName,
  { parse: (body: unknown) => unknown; fields: readonly string[] }
> = {
  mint: { parse: parseMintRequest, fields: ['aud', 'sub', 'ttl', 'scope', 'claims'] },
  verify: { parse: parseVerifyRequest, fields: ['token', 'aud'] },
  revoke: { parse: parseRevokeTokenRequest, fields: ['jti', 'token'] },
  batch: { parse: parseMintBatchRequest, fields: ['requests'] },
};
const PARSER_NAMES = Object.keys(PARSERS) as ParserName[];

// The documented limits (README, ERRORS.md), written out rather than imported, so that a
// change in protocol.ts fails here instead of moving the expectation with it.
const MAX_TEXT = 256;
const MAX_AUDIENCES = 16;
const MAX_SCOPES = 32;
const MAX_CLAIMS = 32;
const MAX_CLAIM_DEPTH = 8;
const MAX_BATCH = 100;

type Outcome<T> = { ok: T } | { code: RequestCode };

/**
 * Runs a parser: it returns, or throws an HsmintError with a request code that ERRORS.md lists
 * as a 400. Anything else (a TypeError, ERR_INTERNAL) fails the property, and so does a parser
 * that touches Object.prototype.
 */
function run<T>(parse: (body: unknown) => T, body: unknown): Outcome<T> {
  const prototypeKeys = Object.getOwnPropertyNames(Object.prototype).length;
  try {
    return { ok: parse(body) };
  } catch (error) {
    expect(error).toBeInstanceOf(HsmintError);
    const code = (error as HsmintError).code;
    expect(REQUEST_CODES).toContain(code);
    expect(ERROR_CODES[code].status).toBe(400);
    return { code: code as RequestCode };
  } finally {
    expect(Object.getOwnPropertyNames(Object.prototype)).toHaveLength(prototypeKeys);
  }
}

/** A value as the daemon gets it: sent as JSON text and parsed again. */
const wire = (value: unknown): unknown => JSON.parse(JSON.stringify(value) ?? 'null');

/** An object written as JSON text, so that `__proto__` arrives as an own key, as on the wire. */
function wireObject(entries: Array<[string, unknown]>): Record<string, unknown> {
  const members = entries.map(
    ([key, value]) => `${JSON.stringify(key)}:${JSON.stringify(value) ?? 'null'}`,
  );
  return JSON.parse(`{${members.join(',')}}`) as Record<string, unknown>;
}

/** Text the parsers take: 1 to 256 UTF-16 units, well formed, no control or line separators. */
function isCleanText(value: string): boolean {
  if (value.length < 1 || value.length > MAX_TEXT || !value.isWellFormed()) return false;
  for (const char of value) {
    const code = char.codePointAt(0)!;
    if (code <= 0x1f || (code >= 0x7f && code <= 0x9f) || code === 0x2028 || code === 0x2029)
      return false;
  }
  return true;
}

/** RFC 6749 scope-token: 1 to 128 of printable ASCII but space, `"` and `\`. */
function isScopeToken(value: string): boolean {
  if (value.length < 1 || value.length > 128) return false;
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if (code < 0x21 || code > 0x7e || code === 0x22 || code === 0x5c) return false;
  }
  return true;
}

/** A claim name: a letter or `_`, then up to 63 of letters, digits and `_.:-`. */
function isClaimName(name: string): boolean {
  const letter = (c: string) => (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c === '_';
  if (name.length < 1 || name.length > 64 || !letter(name[0]!)) return false;
  for (const c of name.slice(1))
    if (!letter(c) && !(c >= '0' && c <= '9') && !'.:-'.includes(c)) return false;
  return true;
}

/** Nesting depth, counting the claims object itself as the first level. */
function depthOf(value: unknown): number {
  if (value === null || typeof value !== 'object') return 0;
  return 1 + Math.max(0, ...Object.values(value).map(depthOf));
}

// Clean text: mostly ASCII, some multi-byte and astral characters, lengths up to the limit.
const cleanUnit = fc.oneof(
  { arbitrary: fc.integer({ min: 0x20, max: 0x7e }), weight: 8 },
  { arbitrary: fc.integer({ min: 0xa0, max: 0x2027 }), weight: 1 },
  { arbitrary: fc.integer({ min: 0x202a, max: 0xd7ff }), weight: 1 },
  { arbitrary: fc.integer({ min: 0xe000, max: 0x10ffff }), weight: 1 },
);
const cleanTextArb = fc.oneof(
  {
    arbitrary: fc.string({
      unit: cleanUnit.map((code) => String.fromCodePoint(code)),
      minLength: 1,
      maxLength: 24,
    }),
    weight: 9,
  },
  {
    arbitrary: fc.string({
      unit: fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code)),
      minLength: MAX_TEXT - 8,
      maxLength: MAX_TEXT,
    }),
    weight: 1,
  },
);
// Hostile text: every character class the rules name, at lengths around the limit.
const hostileUnit = fc.oneof(
  {
    arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
    weight: 12,
  },
  {
    arbitrary: fc.constantFrom(
      ...['\u0000', '\t', '\n', '\r', '\u001b', '\u001f', '\u007f', '\u0080', '\u0085'],
      ...['\u009b', '\u009f', '\u00a0', '\u2028', '\u2029', '\ufeff', '\u202e', 'é', '😀'],
      ...['\ud800', '\udbff', '\udc00', '\udfff'],
    ),
    weight: 2,
  },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 1 },
);
const hostileTextArb = fc.oneof(
  { arbitrary: fc.string({ unit: hostileUnit, maxLength: 12 }), weight: 6 },
  {
    arbitrary: fc.string({
      unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
      minLength: MAX_TEXT - 1,
      maxLength: MAX_TEXT + 2,
    }),
    weight: 1,
  },
  {
    arbitrary: fc.string({ unit: hostileUnit, minLength: MAX_TEXT - 4, maxLength: MAX_TEXT + 4 }),
    weight: 1,
  },
);

const scopeTokenArb = fc.string({
  unit: fc
    .integer({ min: 0x21, max: 0x7e })
    .filter((code) => code !== 0x22 && code !== 0x5c)
    .map((code) => String.fromCharCode(code)),
  minLength: 1,
  maxLength: 20,
});
const claimNameArb = fc
  .oneof(
    fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_.:-]{0,12}$/),
    fc.constantFrom('toString', 'valueOf', 'hasOwnProperty', 'ISS', 'Sub', '_', 'a'.repeat(64)),
  )
  .filter((name) => !RESERVED_CLAIMS.has(name));
const claimsArb = fc.dictionary(claimNameArb, fc.jsonValue({ maxDepth: 3 }), {
  maxKeys: MAX_CLAIMS,
  noNullPrototype: true,
});

/** A valid ttl as sent, and the seconds it stands for. */
const ttlArb: fc.Arbitrary<[number | string, number]> = fc.oneof(
  fc.integer({ min: 1, max: 100_000 }).map((seconds): [number, number] => [seconds, seconds]),
  fc
    .integer({ min: 1, max: 10 * 365 * 86_400 })
    .map((seconds): [string, number] => [formatDuration(seconds), seconds]),
);

/** A mint request within every rule, as a client would send it (undefined: field left out). */
const validMintArb = fc.record(
  {
    aud: fc.oneof(
      cleanTextArb,
      fc.uniqueArray(cleanTextArb, { minLength: 1, maxLength: MAX_AUDIENCES }),
    ),
    sub: fc.option(cleanTextArb, { nil: undefined }),
    ttl: fc.option(ttlArb, { nil: undefined }),
    scope: fc.option(fc.array(scopeTokenArb, { maxLength: MAX_SCOPES }), { nil: undefined }),
    claims: fc.option(claimsArb, { nil: undefined }),
  },
  { noNullPrototype: true },
);
type ValidMint = typeof validMintArb extends fc.Arbitrary<infer T> ? T : never;

function bodyOf(spec: ValidMint): Record<string, unknown> {
  return wire({ ...spec, ttl: spec.ttl?.[0] }) as Record<string, unknown>;
}

/** The documented normalisation: a one-item aud list is its item, ttl is seconds. */
function expectedMint(spec: ValidMint): MintRequest {
  const sent = bodyOf(spec) as { aud: string | string[]; claims?: Record<string, unknown> };
  const request: MintRequest = {
    aud: Array.isArray(sent.aud) && sent.aud.length === 1 ? sent.aud[0]! : sent.aud,
  };
  if (spec.sub !== undefined) request.sub = spec.sub;
  if (spec.ttl !== undefined) request.ttl = spec.ttl[1];
  if (spec.scope !== undefined) request.scope = spec.scope;
  if (sent.claims !== undefined) request.claims = sent.claims;
  return request;
}

describe('request parsers (property)', () => {
  const anyKey = fc.oneof(
    fc.constantFrom(...new Set(Object.values(PARSERS).flatMap(({ fields }) => fields))),
    fc.constantFrom(...RESERVED_CLAIMS, 'toString', 'AUD', 'aud ', ''),
    fc.string({ maxLength: 6 }),
  );
  const fieldValue = fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    fc.constantFrom('api', '5m', 90, -1, 0.5, ['read'], ['api', 'other'], 'a.b.c', 'abc_-'),
    fc.array(fc.tuple(anyKey, fc.jsonValue({ maxDepth: 2 }))).map(wireObject),
  );
  // Random bodies, and valid ones for each route, which the other routes must refuse.
  const bodyArb = fc.oneof(
    validMintArb.map(bodyOf),
    fc
      .array(validMintArb.map(bodyOf), { minLength: 1, maxLength: 3 })
      .map((requests) => ({ requests })),
    fc.record({ token: fc.string(), aud: cleanTextArb }, { requiredKeys: ['token'] }),
    fc.oneof(
      fc.record({ jti: fc.base64String({ minLength: 4 }) }),
      fc.record({ token: fc.string() }),
    ),
    fc.jsonValue({ maxDepth: 3 }),
    fc.array(fc.tuple(anyKey, fieldValue), { maxLength: 5 }).map(wireObject),
    fc
      .array(fc.array(fc.tuple(anyKey, fieldValue), { maxLength: 4 }).map(wireObject), {
        maxLength: 3,
      })
      .map((requests) => wireObject([['requests', requests]])),
  );

  it('every parser returns or refuses any JSON body with a documented 400 code', () => {
    const accepted = new Map<ParserName, number>();
    fc.assert(
      fc.property(bodyArb, (body) => {
        for (const name of PARSER_NAMES) {
          if ('ok' in run(PARSERS[name].parse, body))
            accepted.set(name, (accepted.get(name) ?? 0) + 1);
        }
      }),
      { numRuns: RUNS.anyJson },
    );
    // Random bodies get through every parser now and then, not only refusals.
    for (const name of PARSER_NAMES) expect(accepted.get(name) ?? 0).toBeGreaterThan(10);
  });

  it('refuses a field the route does not know, whatever else the body holds', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...PARSER_NAMES),
        fc.array(fc.tuple(anyKey, fieldValue), { maxLength: 4 }),
        anyKey,
        fc.nat(),
        (name, entries, unknown, at) => {
          const fields = PARSERS[name].fields;
          fc.pre(!fields.includes(unknown));
          const known = entries.filter(([key]) => fields.includes(key));
          known.splice(at % (known.length + 1), 0, [unknown, 'x']);
          expect(run(PARSERS[name].parse, wireObject(known))).toEqual({
            code: 'ERR_UNKNOWN_FIELD',
          });
        },
      ),
      { numRuns: RUNS.unknownFields },
    );
  });
});

describe('parseMintRequest (property)', () => {
  it('reads every valid request back exactly, with aud and ttl normalised', () => {
    fc.assert(
      fc.property(validMintArb, (spec) => {
        const body = bodyOf(spec);
        const result = run(parseMintRequest, body);
        expect(result).toEqual({ ok: expectedMint(spec) });
        if ('ok' in result && result.ok.claims !== undefined) {
          // A fresh plain object, not the caller's.
          expect(result.ok.claims).not.toBe(body['claims']);
          expect(Object.getPrototypeOf(result.ok.claims)).toBe(Object.prototype);
        }
      }),
      { numRuns: RUNS.validMint },
    );
  });

  it('refuses a reserved claim name wherever it sits among valid claims', () => {
    const reservedArb = fc.constantFrom(...RESERVED_CLAIMS);
    fc.assert(
      fc.property(
        validMintArb,
        fc.dictionary(claimNameArb, fc.jsonValue({ maxDepth: 2 }), { maxKeys: MAX_CLAIMS - 1 }),
        reservedArb,
        fc.jsonValue({ maxDepth: 2 }),
        fc.nat(),
        (spec, claims, reserved, value, at) => {
          const entries = Object.entries(claims);
          entries.splice(at % (entries.length + 1), 0, [reserved, value]);
          const body = { ...bodyOf(spec), claims: wireObject(entries) };
          expect(Object.keys(body.claims)).toContain(reserved);
          expect(run(parseMintRequest, body)).toEqual({ code: 'ERR_RESERVED_CLAIM' });
        },
      ),
      { numRuns: RUNS.reservedClaims },
    );
  });

  it('takes aud and sub only as clean text of 1 to 256 characters', () => {
    const seen = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(
        fc.constantFrom('aud', 'aud[]', 'sub'),
        hostileTextArb,
        validMintArb,
        (field, text, spec) => {
          const body = bodyOf(spec);
          if (field === 'sub') body['sub'] = text;
          else if (field === 'aud') body['aud'] = text;
          // Among other, clean and distinct audiences.
          else body['aud'] = [...new Set([text, 'api', 'other'])];
          const result = run(parseMintRequest, body);
          if (isCleanText(text)) {
            seen.accepted++;
            expect('ok' in result).toBe(true);
            if ('ok' in result)
              expect(field === 'sub' ? result.ok.sub : result.ok.aud).toEqual(
                body[field.slice(0, 3)],
              );
          } else {
            seen.refused++;
            expect(result).toEqual({ code: 'ERR_INVALID_REQUEST' });
          }
        },
      ),
      { numRuns: RUNS.textFields },
    );
    expect(seen.accepted).toBeGreaterThan(RUNS.textFields / 10);
    expect(seen.refused).toBeGreaterThan(RUNS.textFields / 10);
  });

  it('takes an aud list of 1 to 16 distinct audiences, and refuses any other', () => {
    const seen = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(
        fc.oneof(
          fc.array(fc.constantFrom('api', 'other', 'third', 'API'), { maxLength: 5 }),
          fc.array(cleanTextArb, { minLength: MAX_AUDIENCES - 1, maxLength: MAX_AUDIENCES + 2 }),
        ),
        (aud) => {
          const valid =
            aud.length >= 1 && aud.length <= MAX_AUDIENCES && new Set(aud).size === aud.length;
          const result = run(parseMintRequest, { aud });
          if (valid) seen.accepted++;
          else seen.refused++;
          expect(result).toEqual(
            valid
              ? { ok: { aud: aud.length === 1 ? aud[0] : aud } }
              : { code: 'ERR_INVALID_REQUEST' },
          );
        },
      ),
      { numRuns: RUNS.audienceLists },
    );
    expect(seen.accepted).toBeGreaterThan(RUNS.audienceLists / 10);
    expect(seen.refused).toBeGreaterThan(RUNS.audienceLists / 10);
  });

  it('reads ttl as whole seconds >= 1 or a duration, and refuses every other form', () => {
    const durationish = fc.string({
      unit: fc.constantFrom(...'0123456789smhdMy .-+eE'.split('')),
      maxLength: 10,
    });
    const ttlValueArb = fc.oneof(
      fc.integer({ min: -5, max: 100_000 }),
      fc.constantFrom(-0, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2, 1e21, 1e300, -1e300),
      fc.double(),
      fc.nat({ max: 10 * 365 * 86_400 + 5 }).map(formatDuration),
      durationish,
      fc.constantFrom('NaN', 'Infinity', '-Infinity', '0x10', '1e3', '300', '5m ', ' 5m', ''),
      fc.constantFrom(null, true, false, [], ['5m'], {}, { s: 5 }),
    );
    const seen = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(ttlValueArb, (ttl) => {
        let expected: number | undefined;
        if (typeof ttl === 'number') {
          expected = Number.isSafeInteger(ttl) && ttl >= 1 ? ttl : undefined;
        } else if (typeof ttl === 'string') {
          try {
            expected = parseDuration(ttl);
          } catch {
            expected = undefined;
          }
        }
        const result = run(parseMintRequest, { aud: 'api', ttl });
        if (expected === undefined) {
          seen.refused++;
          expect(result).toEqual({ code: 'ERR_INVALID_REQUEST' });
        } else {
          seen.accepted++;
          expect(result).toEqual({ ok: { aud: 'api', ttl: expected } });
        }
      }),
      { numRuns: RUNS.ttl },
    );
    expect(seen.accepted).toBeGreaterThan(RUNS.ttl / 10);
    expect(seen.refused).toBeGreaterThan(RUNS.ttl / 10);
  });

  it('takes up to 32 scope tokens and refuses any other scope list', () => {
    const scopeItemArb = fc.oneof(
      { arbitrary: scopeTokenArb, weight: 8 },
      { arbitrary: hostileTextArb, weight: 1 },
      { arbitrary: fc.jsonValue({ maxDepth: 1 }), weight: 1 },
    );
    const scopeArb = fc.oneof(
      fc.array(scopeItemArb, { maxLength: MAX_SCOPES + 2 }),
      fc.array(scopeTokenArb, { minLength: MAX_SCOPES - 1, maxLength: MAX_SCOPES + 1 }),
      fc.jsonValue({ maxDepth: 1 }),
    );
    fc.assert(
      fc.property(scopeArb, (scope) => {
        const valid =
          Array.isArray(scope) &&
          scope.length <= MAX_SCOPES &&
          scope.every((item) => typeof item === 'string' && isScopeToken(item));
        const result = run(parseMintRequest, { aud: 'api', scope });
        expect(result).toEqual(
          valid ? { ok: { aud: 'api', scope } } : { code: 'ERR_INVALID_REQUEST' },
        );
      }),
      { numRuns: RUNS.scopes },
    );
  });

  it('refuses too many claims, bad claim names and nesting past 8 levels, in that order', () => {
    /** A value nested `levels` containers deep, arrays and objects mixed. */
    const nestedArb = fc
      .array(fc.boolean(), { maxLength: MAX_CLAIM_DEPTH + 2 })
      .map((kinds) =>
        kinds.reduce<unknown>((inner, isArray) => (isArray ? [inner] : { n: inner }), 'leaf'),
      );
    const nameArb = fc.oneof(
      { arbitrary: claimNameArb, weight: 12 },
      { arbitrary: fc.constantFrom(...RESERVED_CLAIMS), weight: 1 },
      { arbitrary: fc.string({ maxLength: 66 }), weight: 2 },
    );
    const entriesArb = fc.oneof(
      fc.uniqueArray(fc.tuple(nameArb, nestedArb), {
        maxLength: 6,
        selector: ([name]) => name,
      }),
      fc.uniqueArray(fc.tuple(claimNameArb, fc.constant<unknown>(1)), {
        minLength: MAX_CLAIMS - 1,
        maxLength: MAX_CLAIMS + 1,
        selector: ([name]) => name,
      }),
    );
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(entriesArb, (entries) => {
        const claims = wireObject(entries);
        const names = Object.keys(claims);
        let expected: RequestCode | undefined;
        if (names.length > MAX_CLAIMS) expected = 'ERR_INVALID_REQUEST';
        for (const name of names) {
          if (expected !== undefined) break;
          if (RESERVED_CLAIMS.has(name)) expected = 'ERR_RESERVED_CLAIM';
          else if (!isClaimName(name)) expected = 'ERR_INVALID_REQUEST';
        }
        if (expected === undefined && depthOf(claims) > MAX_CLAIM_DEPTH)
          expected = 'ERR_INVALID_REQUEST';
        const result = run(parseMintRequest, { aud: 'api', claims });
        const label = expected ?? 'accepted';
        seen.set(label, (seen.get(label) ?? 0) + 1);
        expect(result).toEqual(
          expected === undefined ? { ok: { aud: 'api', claims } } : { code: expected },
        );
      }),
      { numRuns: RUNS.claimShapes },
    );
    for (const label of ['accepted', 'ERR_INVALID_REQUEST', 'ERR_RESERVED_CLAIM'])
      expect(seen.get(label) ?? 0).toBeGreaterThan(RUNS.claimShapes / 100);
  });
});

describe('parseVerifyRequest (property)', () => {
  it('passes any token text through untouched, and takes aud as clean text', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.string({ unit: 'binary', maxLength: 60 }), hostileTextArb, fc.jsonValue()),
        fc.option(fc.oneof(hostileTextArb, cleanTextArb, fc.jsonValue()), { nil: undefined }),
        (token, aud) => {
          const body = aud === undefined ? { token } : { token, aud };
          const result = run(parseVerifyRequest, body);
          // JSON null is a value, not an absent field: the wrong type, like any other.
          if (typeof token !== 'string') {
            expect(result).toEqual({ code: 'ERR_INVALID_REQUEST' });
          } else if (aud !== undefined && !(typeof aud === 'string' && isCleanText(aud))) {
            expect(result).toEqual({ code: 'ERR_INVALID_REQUEST' });
          } else {
            expect(result).toEqual({ ok: body });
          }
        },
      ),
      { numRuns: RUNS.verify },
    );
  });
});

describe('parseRevokeTokenRequest (property)', () => {
  const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const jtiArb = fc.oneof(
    fc.string({ unit: fc.constantFrom(...BASE64URL.split('')), minLength: 1, maxLength: 30 }),
    fc.string({
      unit: fc.constantFrom(...BASE64URL.split('')),
      minLength: 250,
      maxLength: 260,
    }),
    fc.string({ unit: fc.constantFrom(...BASE64URL.split(''), '=', '+', '/', '.', ' ', 'é') }),
    fc.jsonValue({ maxDepth: 1 }),
  );

  it('takes exactly one of a base64url jti or a token string', () => {
    fc.assert(
      fc.property(
        fc.option(jtiArb, { nil: undefined }),
        fc.option(fc.oneof(fc.string(), fc.jsonValue({ maxDepth: 1 })), { nil: undefined }),
        (jti, token) => {
          const body: Record<string, unknown> = {};
          if (jti !== undefined) body['jti'] = jti;
          if (token !== undefined) body['token'] = token;
          const result = run(parseRevokeTokenRequest, body);
          if ((jti === undefined) === (token === undefined)) {
            expect(result).toEqual({ code: 'ERR_MISSING_FIELD' });
          } else if (jti !== undefined) {
            const valid =
              typeof jti === 'string' &&
              jti.length >= 1 &&
              jti.length <= 256 &&
              [...jti].every((char) => BASE64URL.includes(char));
            expect(result).toEqual(valid ? { ok: { jti } } : { code: 'ERR_INVALID_REQUEST' });
          } else {
            expect(result).toEqual(
              typeof token === 'string' ? { ok: { token } } : { code: 'ERR_INVALID_REQUEST' },
            );
          }
        },
      ),
      { numRuns: RUNS.revoke },
    );
  });
});

describe('parseMintBatchRequest (property)', () => {
  /** A request in a batch: valid, or broken in one of the ways a single request can be. */
  const itemArb: fc.Arbitrary<[unknown, RequestCode | undefined]> = fc.oneof(
    {
      arbitrary: fc
        .record({
          aud: fc.constantFrom('api', ['api', 'other'], ['one']),
          ttl: fc.constantFrom(undefined, 60, '5m'),
          claims: fc.constantFrom(undefined, { tenant: 'a' }),
        })
        .map((request): [unknown, undefined] => [wire(request), undefined]),
      weight: 20,
    },
    {
      arbitrary: fc.constantFrom<[unknown, RequestCode]>(
        [{ aud: 'api', iss: 'me' }, 'ERR_UNKNOWN_FIELD'],
        [wireObject([['__proto__', {}]]), 'ERR_UNKNOWN_FIELD'],
        [{ sub: 'x' }, 'ERR_MISSING_FIELD'],
        [{ aud: 'api', claims: { exp: 1 } }, 'ERR_RESERVED_CLAIM'],
        [{ aud: 'api', claims: wireObject([['__proto__', 1]]) }, 'ERR_RESERVED_CLAIM'],
        [{ aud: 'api', ttl: 0 }, 'ERR_INVALID_REQUEST'],
        [{ aud: '' }, 'ERR_INVALID_REQUEST'],
        [null, 'ERR_INVALID_REQUEST'],
        ['api', 'ERR_INVALID_REQUEST'],
      ),
      weight: 1,
    },
  );

  it('takes 1 to 100 valid requests, and refuses the batch on the first bad one', () => {
    const seen = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(
        fc.oneof(
          fc.array(itemArb, { maxLength: 8 }),
          fc.array(itemArb, { minLength: MAX_BATCH - 2, maxLength: MAX_BATCH + 2 }),
        ),
        (items) => {
          const result = run(parseMintBatchRequest, { requests: items.map(([item]) => item) });
          const firstBad = items.find(([, code]) => code !== undefined)?.[1];
          if (items.length === 0 || items.length > MAX_BATCH) {
            seen.refused++;
            expect(result).toEqual({ code: 'ERR_INVALID_REQUEST' });
          } else if (firstBad !== undefined) {
            seen.refused++;
            expect(result).toEqual({ code: firstBad });
          } else {
            seen.accepted++;
            expect(result).toEqual({
              ok: { requests: items.map(([item]) => parseMintRequest(item)) },
            });
          }
        },
      ),
      { numRuns: RUNS.batch },
    );
    expect(seen.accepted).toBeGreaterThan(RUNS.batch / 10);
    expect(seen.refused).toBeGreaterThan(RUNS.batch / 10);
  });
});
