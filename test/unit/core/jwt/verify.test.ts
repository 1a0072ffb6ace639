import { createHmac, generateKeyPairSync } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { mintToken } from '../../../../core/jwt/mint.js';
import { MAX_TOKEN_LENGTH, TokenVerifier, type VerifyResult } from '../../../../core/jwt/verify.js';
import type { KeyInfo } from '../../../../core/keys/keystore.js';
import { MemoryKeyStore, publicJwkOf, signWith } from '../../../support/memory-keystore.js';

const ISSUER = 'urn:test';
const SKEW = 30;
const NOW = new Date('2026-11-28T14:00:00Z');
const NOW_S = NOW.getTime() / 1000;
const TTL = 300;

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

function codeOf(result: VerifyResult): string {
  return result.valid ? 'valid' : result.error.code;
}

function at(seconds: number): () => Date {
  return () => new Date(seconds * 1000);
}

describe('TokenVerifier', () => {
  const store = new MemoryKeyStore({ now: () => NOW });
  let es256: KeyInfo;
  let es384: KeyInfo;
  let verifier: TokenVerifier;
  /** A token minted at NOW for aud `api`, with TTL seconds to live. */
  let token: string;

  /** Signs any header and payload with the ES256 key, as a hostile or buggy minter could. */
  async function signed(header: Record<string, unknown>, payload: unknown): Promise<string> {
    const input = `${b64(header)}.${b64(payload)}`;
    const signature = await store.sign(es256.kid, Buffer.from(input, 'ascii'));
    return `${input}.${signature.toString('base64url')}`;
  }

  function claims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      iss: ISSUER,
      aud: 'api',
      iat: NOW_S,
      nbf: NOW_S,
      exp: NOW_S + TTL,
      jti: 'AAAAAAAAAAAAAAAAAAAAAA',
      ...overrides,
    };
  }

  function verifierAt(now: () => Date, issuer = ISSUER): Promise<TokenVerifier> {
    const other = new TokenVerifier({ issuer, clockSkew: SKEW, now });
    return other.setKeys([es256.publicJwk, es384.publicJwk]).then(() => other);
  }

  beforeAll(async () => {
    es256 = await store.generate('ES256');
    es384 = await store.generate('ES384');
    verifier = await verifierAt(() => NOW);
    token = (
      await mintToken(store, es256, { issuer: ISSUER, audience: 'api', ttlSeconds: TTL, now: NOW })
    ).token;
  });

  it('accepts a freshly minted token, with and without an expected audience', async () => {
    const result = await verifier.verify(token, { audience: 'api' });
    expect(result.valid).toBe(true);
    if (!result.valid) return;
    expect(result.claims).toMatchObject({ iss: ISSUER, aud: 'api', iat: NOW_S, exp: NOW_S + TTL });
    expect(result.header).toEqual({ alg: 'ES256', typ: 'JWT', kid: es256.kid });
    expect(codeOf(await verifier.verify(token))).toBe('valid');
  });

  it('accepts a token signed by the memory store helper itself', async () => {
    expect(
      codeOf(
        await verifier.verify(await signed({ alg: 'ES256', typ: 'JWT', kid: es256.kid }, claims())),
      ),
    ).toBe('valid');
  });

  describe('alg', () => {
    it('refuses an unsigned alg none token (empty signature part) as malformed', async () => {
      const unsigned = `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims())}.`;
      expect(codeOf(await verifier.verify(unsigned))).toBe('ERR_TOKEN_MALFORMED');
    });

    it('refuses alg none with a non-empty signature part as not allowed', async () => {
      const forged = `${b64({ alg: 'none', typ: 'JWT', kid: es256.kid })}.${b64(claims())}.c2ln`;
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_ALG_NOT_ALLOWED');
    });

    it.each(['None', 'NONE', 'nOnE'])('refuses alg %s', async (alg) => {
      const forged = `${b64({ alg, typ: 'JWT', kid: es256.kid })}.${b64(claims())}.c2ln`;
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_ALG_NOT_ALLOWED');
    });

    it('refuses HS256 keyed with the public key (HMAC key confusion)', async () => {
      const header = b64({ alg: 'HS256', typ: 'JWT', kid: es256.kid });
      const input = `${header}.${b64(claims())}`;
      for (const secret of [
        store.publicKeyOf(es256.kid).export({ format: 'pem', type: 'spki' }),
        store.publicKeyOf(es256.kid).export({ format: 'der', type: 'spki' }),
        Buffer.from(JSON.stringify(es256.publicJwk)),
      ]) {
        const mac = createHmac('sha256', secret).update(input).digest('base64url');
        expect(codeOf(await verifier.verify(`${input}.${mac}`))).toBe('ERR_TOKEN_ALG_NOT_ALLOWED');
      }
    });

    it('refuses a header alg that is not the alg of the named key', async () => {
      const forged = await signed({ alg: 'ES384', typ: 'JWT', kid: es256.kid }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_ALG_NOT_ALLOWED');
    });

    it('refuses an ES256 header on an ES384 kid', async () => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid: es384.kid }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_ALG_NOT_ALLOWED');
    });

    it('refuses a header without alg as malformed', async () => {
      const forged = await signed({ typ: 'JWT', kid: es256.kid }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_MALFORMED');
    });
  });

  describe('kid', () => {
    it('refuses an unknown kid', async () => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid: 'A'.repeat(43) }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_KID_UNKNOWN');
    });

    it('refuses a missing kid', async () => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT' }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_KID_UNKNOWN');
    });

    it.each([
      ['a path traversal', '../../etc/passwd'],
      ['a kid with a slash', `${'a'}/b`],
      ['an empty kid', ''],
      ['a kid over 128 characters', 'a'.repeat(129)],
    ])('refuses %s', async (_name, kid) => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_KID_UNKNOWN');
    });

    it('refuses a kid that is not a string', async () => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid: 42 }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_KID_UNKNOWN');
    });

    it('refuses a kid that names an inherited property', async () => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid: 'constructor' }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_KID_UNKNOWN');
    });

    it('stops trusting a key once it is no longer in the set', async () => {
      const narrowed = new TokenVerifier({ issuer: ISSUER, clockSkew: SKEW, now: () => NOW });
      await narrowed.setKeys([es384.publicJwk]);
      expect(codeOf(await narrowed.verify(token))).toBe('ERR_TOKEN_KID_UNKNOWN');
    });
  });

  describe('signature', () => {
    it('refuses a token with one signature byte flipped', async () => {
      const [header, payload, signature] = token.split('.') as [string, string, string];
      const bytes = Buffer.from(signature, 'base64url');
      bytes[10] = (bytes[10] ?? 0) ^ 0x01;
      const tampered = `${header}.${payload}.${bytes.toString('base64url')}`;
      expect(codeOf(await verifier.verify(tampered))).toBe('ERR_TOKEN_SIGNATURE_INVALID');
    });

    it('refuses a token whose payload was changed after signing', async () => {
      const [header, , signature] = token.split('.') as [string, string, string];
      const tampered = `${header}.${b64(claims({ aud: 'admin' }))}.${signature}`;
      expect(codeOf(await verifier.verify(tampered))).toBe('ERR_TOKEN_SIGNATURE_INVALID');
    });

    it('ignores jwk and jku in the header: an attacker key never verifies', async () => {
      const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const attackerJwk = await publicJwkOf('ES256', attacker.publicKey);
      const header = b64({
        alg: 'ES256',
        typ: 'JWT',
        kid: es256.kid,
        jwk: attackerJwk,
        jku: 'https://attacker.example/jwks.json',
        x5u: 'https://attacker.example/cert.pem',
      });
      const input = `${header}.${b64(claims())}`;
      const signature = signWith('ES256', attacker.privateKey, Buffer.from(input, 'ascii'));
      const forged = `${input}.${signature.toString('base64url')}`;
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_SIGNATURE_INVALID');
    });

    it('refuses a signature of the wrong length', async () => {
      const [header, payload] = token.split('.') as [string, string, string];
      expect(codeOf(await verifier.verify(`${header}.${payload}.AAAA`))).toBe(
        'ERR_TOKEN_SIGNATURE_INVALID',
      );
    });
  });

  describe('time', () => {
    const exp = NOW_S + TTL;

    it('accepts a token up to the clock skew past exp', async () => {
      expect(codeOf(await (await verifierAt(at(exp))).verify(token))).toBe('valid');
      expect(codeOf(await (await verifierAt(at(exp + SKEW - 1))).verify(token))).toBe('valid');
    });

    it('refuses a token past exp plus the skew', async () => {
      expect(codeOf(await (await verifierAt(at(exp + SKEW))).verify(token))).toBe(
        'ERR_TOKEN_EXPIRED',
      );
      expect(codeOf(await (await verifierAt(at(exp + 3600))).verify(token))).toBe(
        'ERR_TOKEN_EXPIRED',
      );
    });

    it('accepts a token up to the clock skew before nbf', async () => {
      expect(codeOf(await (await verifierAt(at(NOW_S - SKEW))).verify(token))).toBe('valid');
    });

    it('refuses a token before nbf minus the skew', async () => {
      expect(codeOf(await (await verifierAt(at(NOW_S - SKEW - 1))).verify(token))).toBe(
        'ERR_TOKEN_NOT_YET_VALID',
      );
    });

    it('refuses a token whose iat is in the future even without nbf', async () => {
      const future = await signed(
        { alg: 'ES256', typ: 'JWT', kid: es256.kid },
        claims({ iat: NOW_S + 3600, nbf: undefined, exp: NOW_S + 7200 }),
      );
      expect(codeOf(await verifier.verify(future))).toBe('ERR_TOKEN_NOT_YET_VALID');
    });
  });

  describe('issuer and audience', () => {
    it('refuses a token from another issuer', async () => {
      const other = await verifierAt(() => NOW, 'urn:other');
      expect(codeOf(await other.verify(token))).toBe('ERR_TOKEN_ISSUER_MISMATCH');
    });

    it('refuses a token for another audience', async () => {
      expect(codeOf(await verifier.verify(token, { audience: 'other' }))).toBe(
        'ERR_TOKEN_AUDIENCE_MISMATCH',
      );
    });

    it('accepts a token whose audience list holds the expected one', async () => {
      const listed = await signed(
        { alg: 'ES256', typ: 'JWT', kid: es256.kid },
        claims({ aud: ['other', 'api'] }),
      );
      expect(codeOf(await verifier.verify(listed, { audience: 'api' }))).toBe('valid');
      expect(codeOf(await verifier.verify(listed, { audience: 'third' }))).toBe(
        'ERR_TOKEN_AUDIENCE_MISMATCH',
      );
    });
  });

  describe('malformed input', () => {
    it.each([
      ['an empty string', ''],
      ['one part', 'abc'],
      ['two parts', 'a.b'],
      ['four parts', 'a.b.c.d'],
      ['five parts (JWE)', 'a.b.c.d.e'],
      ['an empty header part', '.b.c'],
      ['base64 padding', 'YQ==.YQ==.YQ=='],
      ['standard base64 characters', 'a+b.c/d.e'],
      ['whitespace', 'a.b.c '],
      [
        'a header that is not base64url JSON',
        `${Buffer.from('not json').toString('base64url')}.e30.c2ln`,
      ],
      ['a header that is a JSON array', `${b64(['ES256'])}.e30.c2ln`],
    ])('refuses %s', async (_name, text) => {
      expect(codeOf(await verifier.verify(text))).toBe('ERR_TOKEN_MALFORMED');
    });

    it.each([
      ['undefined', undefined],
      ['null', null],
      ['a number', 42],
      ['an object', { token: 'a.b.c' }],
      ['a buffer', Buffer.from('a.b.c')],
    ])('refuses %s instead of a string', async (_name, value) => {
      expect(codeOf(await verifier.verify(value))).toBe('ERR_TOKEN_MALFORMED');
    });

    it('refuses a 200 KB token', async () => {
      const huge = `${'a'.repeat(100 * 1024)}.${'b'.repeat(100 * 1024)}.c`;
      expect(huge.length).toBeGreaterThan(MAX_TOKEN_LENGTH);
      expect(codeOf(await verifier.verify(huge))).toBe('ERR_TOKEN_MALFORMED');
    });

    it('refuses a payload that is not a JSON object', async () => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid: es256.kid }, ['not', 'claims']);
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_MALFORMED');
    });
  });

  describe('required claims and header', () => {
    it.each(['jti', 'exp', 'iat'])('refuses a token without %s', async (name) => {
      const forged = await signed(
        { alg: 'ES256', typ: 'JWT', kid: es256.kid },
        claims({ [name]: undefined }),
      );
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_CLAIM_INVALID');
    });

    it.each([5, '', null, ['a']])('refuses an ill-typed jti (%j)', async (jti) => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid: es256.kid }, claims({ jti }));
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_CLAIM_INVALID');
    });

    it('refuses a token without iss as not from this issuer', async () => {
      const forged = await signed(
        { alg: 'ES256', typ: 'JWT', kid: es256.kid },
        claims({ iss: undefined }),
      );
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_ISSUER_MISMATCH');
    });

    it('refuses a token without aud when an audience is expected', async () => {
      const forged = await signed(
        { alg: 'ES256', typ: 'JWT', kid: es256.kid },
        claims({ aud: undefined }),
      );
      expect(codeOf(await verifier.verify(forged, { audience: 'api' }))).toBe(
        'ERR_TOKEN_AUDIENCE_MISMATCH',
      );
    });

    it.each([
      ['exp as a string', { exp: String(NOW_S + TTL) }],
      ['iat as a string', { iat: String(NOW_S) }],
    ])('refuses %s', async (_name, overrides) => {
      const forged = await signed({ alg: 'ES256', typ: 'JWT', kid: es256.kid }, claims(overrides));
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_CLAIM_INVALID');
    });

    it('refuses nbf that is not a number as an invalid claim', async () => {
      const forged = await signed(
        { alg: 'ES256', typ: 'JWT', kid: es256.kid },
        claims({ nbf: 'soon' }),
      );
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_CLAIM_INVALID');
    });

    it.each([
      ['at+jwt', { typ: 'at+jwt' }],
      ['JOSE', { typ: 'JOSE' }],
      ['a missing typ', {}],
      ['a numeric typ', { typ: 1 }],
    ])('refuses typ %s', async (_name, typ) => {
      const forged = await signed({ alg: 'ES256', kid: es256.kid, ...typ }, claims());
      expect(codeOf(await verifier.verify(forged))).toBe('ERR_TOKEN_CLAIM_INVALID');
    });
  });
});
