/**
 * Properties of JWS assembly (prepareToken, signToken, mintToken) with real keys signing in
 * process: every token minted from a generated request verifies with jose, with fast-jwt (a
 * second, independent JOSE implementation) and with hsmint's own verifier, and all three read
 * back exactly the header and claims that went in; one flipped byte and all three refuse it.
 * Each property states its run count in RUNS.
 */
import { createVerifier } from 'fast-jwt';
import fc from 'fast-check';
import { importJWK, jwtVerify } from 'jose';
import { beforeAll, describe, expect, it } from 'vitest';
import { mintToken, prepareToken, signToken, type MintInput } from '../../../../core/jwt/mint.js';
import { TokenVerifier } from '../../../../core/jwt/verify.js';
import { ALGORITHMS, type Algorithm } from '../../../../core/keys/algorithms.js';
import type { KeyInfo } from '../../../../core/keys/keystore.js';
import { parseMintRequest } from '../../../../core/protocol.js';
import { MemoryKeyStore } from '../../../support/memory-keystore.js';

/** RSA and P-384 sign and verify slowly here (1 to 2 ms each), so they get fewer runs. */
const RUNS: Record<Algorithm | 'tamper', number> = {
  ES256: 800,
  ES384: 250,
  EdDSA: 800,
  PS256: 150,
  RS256: 150,
  tamper: 800,
};

const store = new MemoryKeyStore();
const keys = new Map<
  Algorithm,
  { info: KeyInfo; jose: Awaited<ReturnType<typeof importJWK>>; pem: string }
>();
const hsmintVerifier = new TokenVerifier({ issuer: 'unset', clockSkew: 0 });

beforeAll(async () => {
  for (const alg of ALGORITHMS) {
    const info = await store.generate(alg);
    keys.set(alg, {
      info,
      jose: await importJWK(info.publicJwk, alg),
      pem: store.publicKeyOf(info.kid).export({ type: 'spki', format: 'pem' }).toString(),
    });
  }
  await hsmintVerifier.setKeys([...keys.values()].map(({ info }) => info.publicJwk));
});

function keyOf(alg: Algorithm) {
  const key = keys.get(alg);
  if (!key) throw new Error(`no ${alg} key`);
  return key;
}

// Text the request parser takes: printable, any script, astral characters included.
const textUnit = fc
  .oneof(
    { arbitrary: fc.integer({ min: 0x20, max: 0x7e }), weight: 6 },
    { arbitrary: fc.integer({ min: 0xa0, max: 0x2027 }), weight: 1 },
    { arbitrary: fc.integer({ min: 0x202a, max: 0xd7ff }), weight: 1 },
    { arbitrary: fc.integer({ min: 0xe000, max: 0x10ffff }), weight: 1 },
  )
  .map((code) => String.fromCodePoint(code));
const textArb = fc.string({ unit: textUnit, minLength: 1, maxLength: 24 });

// Claim values: any JSON, strings of any code point (lone surrogates and U+2028 too: JSON
// escapes them), and keys that would reach a prototype if a parser assigned them.
const claimStringUnit = fc.oneof(
  { arbitrary: textUnit, weight: 8 },
  {
    arbitrary: fc.constantFrom('"', '\\', '\u0000', '\n', '\u2028', '\ud800', '\udfff'),
    weight: 1,
  },
);
const claimValueArb = fc.oneof(
  { arbitrary: fc.jsonValue({ maxDepth: 3, stringUnit: claimStringUnit }), weight: 9 },
  {
    arbitrary: fc.constant(JSON.parse('{"__proto__":{"admin":true},"constructor":{"x":1}}')),
    weight: 1,
  },
);
const claimNameArb = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_.:-]{0,10}$/);

/** A mint request as a caller sends it, read by the request parser as the daemon does. */
const requestArb = fc
  .record(
    {
      aud: fc.oneof(textArb, fc.uniqueArray(textArb, { minLength: 1, maxLength: 4 })),
      sub: textArb,
      scope: fc.array(fc.stringMatching(/^[\x21\x23-\x5b\x5d-\x7e]{1,12}$/), { maxLength: 4 }),
      claims: fc.dictionary(claimNameArb, claimValueArb, { maxKeys: 6, noNullPrototype: true }),
    },
    { requiredKeys: ['aud'], noNullPrototype: true },
  )
  .map((request) => parseMintRequest(JSON.parse(JSON.stringify(request))));

const inputArb: fc.Arbitrary<MintInput> = fc
  .record({
    request: requestArb,
    issuer: textArb,
    ttlSeconds: fc.integer({ min: 1, max: 86_400 }),
    now: fc.date({
      min: new Date('2001-01-01T00:00:00Z'),
      max: new Date('2099-12-31T00:00:00Z'),
      noInvalidDate: true,
    }),
    x5c: fc.option(
      fc.array(fc.base64String({ minLength: 4, maxLength: 64 }), { minLength: 1, maxLength: 3 }),
      {
        nil: undefined,
      },
    ),
    minter: fc.option(
      fc.record({
        azp: textArb,
        hsmint: fc.record(
          {
            uid: fc.nat({ max: 2 ** 32 - 2 }),
            unit: textArb.map((name) => `${name}.service`),
            rule: textArb,
          },
          { requiredKeys: ['uid', 'rule'], noNullPrototype: true },
        ),
      }),
      { nil: undefined },
    ),
  })
  .map(({ request, issuer, ttlSeconds, now, x5c, minter }) => {
    const input: MintInput = { issuer, audience: request.aud, ttlSeconds, now };
    if (request.sub !== undefined) input.subject = request.sub;
    if (request.scope !== undefined) input.scope = request.scope;
    if (request.claims !== undefined) input.claims = request.claims;
    if (x5c !== undefined) input.x5c = x5c;
    if (minter !== undefined) input.minter = minter;
    return input;
  });

/** What README's "Tokens" section says a token holds, for this input. */
function expectedClaims(input: MintInput, jti: string): Record<string, unknown> {
  const iat = Math.floor(input.now.getTime() / 1000);
  return {
    iss: input.issuer,
    ...(input.subject === undefined ? {} : { sub: input.subject }),
    aud: input.audience,
    iat,
    nbf: iat,
    exp: iat + input.ttlSeconds,
    jti,
    ...(input.scope && input.scope.length > 0 ? { scope: input.scope.join(' ') } : {}),
    ...(input.minter === undefined ? {} : { azp: input.minter.azp, hsmint: input.minter.hsmint }),
    ...input.claims,
  };
}

/** Mints either in one call or in the two steps the daemon uses around its audit record. */
async function mint(alg: Algorithm, input: MintInput, twoSteps: boolean) {
  const { info } = keyOf(alg);
  if (!twoSteps) return mintToken(store, info, input);
  const prepared = prepareToken(info, input);
  const minted = await signToken(store, prepared);
  expect(minted.token.startsWith(`${prepared.signingInput}.`)).toBe(true);
  expect(minted).toEqual({
    token: minted.token,
    jti: prepared.jti,
    kid: prepared.kid,
    alg: prepared.alg,
    iat: prepared.iat,
    exp: prepared.exp,
  });
  return minted;
}

const firstAudience = (input: MintInput) =>
  typeof input.audience === 'string' ? input.audience : input.audience[0]!;

/** The header and claims as fast-jwt reads them, or the error it refuses the token with. */
function fastJwtVerify(alg: Algorithm, input: MintInput, token: string) {
  const verify = createVerifier({
    key: keyOf(alg).pem,
    algorithms: [alg],
    complete: true,
    allowedIss: input.issuer,
    allowedAud: firstAudience(input),
    clockTimestamp: input.now.getTime(),
    checkTyp: 'JWT',
    requiredClaims: ['iss', 'iat', 'exp', 'jti'],
  });
  return verify(token) as { header: unknown; payload: unknown };
}

function joseVerify(alg: Algorithm, input: MintInput, token: string) {
  return jwtVerify(token, keyOf(alg).jose, {
    algorithms: [alg],
    issuer: input.issuer,
    audience: firstAudience(input),
    currentDate: input.now,
    typ: 'JWT',
    requiredClaims: ['iss', 'iat', 'exp', 'jti'],
  });
}

function hsmintVerify(input: MintInput, token: string) {
  hsmintVerifier.setOptions({ issuer: input.issuer, clockSkew: 0, now: () => input.now });
  return hsmintVerifier.verify(token, { audience: firstAudience(input) });
}

describe('JWS assembly (property)', () => {
  it.each(ALGORITHMS)(
    '%s: jose, fast-jwt and hsmint read back exactly the header and claims minted',
    async (alg) => {
      const jtis = new Set<string>();
      await fc.assert(
        fc.asyncProperty(inputArb, fc.boolean(), async (input, twoSteps) => {
          const minted = await mint(alg, input, twoSteps);
          const { info } = keyOf(alg);
          expect(minted.alg).toBe(alg);
          expect(minted.kid).toBe(info.kid);
          expect(minted.iat).toBe(Math.floor(input.now.getTime() / 1000));
          expect(minted.exp).toBe(minted.iat + input.ttlSeconds);
          expect(minted.jti).toMatch(/^[A-Za-z0-9_-]{22}$/);
          jtis.add(minted.jti);

          // toEqual for claims: toStrictEqual compares `constructor`, which a claim may own.
          const header = {
            alg,
            typ: 'JWT',
            kid: info.kid,
            ...(input.x5c ? { x5c: input.x5c } : {}),
          };
          const claims = expectedClaims(input, minted.jti);

          const jose = await joseVerify(alg, input, minted.token);
          expect(jose.protectedHeader).toStrictEqual(header);
          expect(jose.payload).toEqual(claims);

          const fast = fastJwtVerify(alg, input, minted.token);
          expect(fast.header).toStrictEqual(header);
          expect(fast.payload).toEqual(claims);

          const own = await hsmintVerify(input, minted.token);
          expect(own).toEqual({ valid: true, header, claims });
        }),
        { numRuns: RUNS[alg] },
      );
      // 128 random bits each: no two tokens share a jti.
      expect(jtis.size).toBe(RUNS[alg]);
    },
  );

  it('refuses a token with any one byte of its header, payload or signature changed', async () => {
    const seen = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ALGORITHMS),
        inputArb,
        fc.constantFrom(0, 1, 2),
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        async (alg, input, part, at, mask) => {
          const minted = await mintToken(store, keyOf(alg).info, input);
          const parts = minted.token.split('.');
          const bytes = Buffer.from(parts[part]!, 'base64url');
          const i = at % bytes.length;
          bytes[i] = bytes[i]! ^ mask;
          parts[part] = bytes.toString('base64url');
          const tampered = parts.join('.');
          expect(tampered).not.toBe(minted.token);

          await expect(joseVerify(alg, input, tampered)).rejects.toThrow();
          expect(() => fastJwtVerify(alg, input, tampered)).toThrow();
          const own = await hsmintVerify(input, tampered);
          expect(own.valid).toBe(false);
          if (!own.valid) seen.set(own.error.code, (seen.get(own.error.code) ?? 0) + 1);
        },
      ),
      { numRuns: RUNS.tamper },
    );
    // A changed payload or signature shows as a bad signature, not only as a malformed token.
    expect(seen.get('ERR_TOKEN_SIGNATURE_INVALID') ?? 0).toBeGreaterThan(RUNS.tamper / 3);
  });
});
