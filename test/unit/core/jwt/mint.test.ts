import { beforeAll, describe, expect, it } from 'vitest';
import { HsmintError } from '../../../../core/errors.js';
import { mintToken, type MintInput } from '../../../../core/jwt/mint.js';
import { TokenVerifier } from '../../../../core/jwt/verify.js';
import { ALGORITHMS, type Algorithm } from '../../../../core/keys/algorithms.js';
import type { KeyInfo } from '../../../../core/keys/keystore.js';
import { MemoryKeyStore } from '../../../support/memory-keystore.js';

const NOW = new Date('2026-11-28T14:00:00Z');
const NOW_S = NOW.getTime() / 1000;

function decodePart(token: string, index: number): Record<string, unknown> {
  const part = token.split('.')[index];
  if (part === undefined) throw new Error(`token has no part ${index}`);
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>;
}

function input(overrides: Partial<MintInput> = {}): MintInput {
  return { issuer: 'urn:test', audience: 'api', ttlSeconds: 300, now: NOW, ...overrides };
}

describe('mintToken', () => {
  const store = new MemoryKeyStore({ now: () => NOW });
  const keys = new Map<Algorithm, KeyInfo>();
  const verifier = new TokenVerifier({ issuer: 'urn:test', clockSkew: 30, now: () => NOW });

  beforeAll(async () => {
    for (const alg of ALGORITHMS) keys.set(alg, await store.generate(alg));
    await verifier.setKeys([...keys.values()].map((key) => key.publicJwk));
  });

  function keyFor(alg: Algorithm): KeyInfo {
    const key = keys.get(alg);
    if (!key) throw new Error(`no ${alg} key`);
    return key;
  }

  it.each(ALGORITHMS)('mints an %s token that the verifier accepts', async (alg) => {
    const key = keyFor(alg);
    const minted = await mintToken(store, key, input());
    expect(minted.alg).toBe(alg);
    expect(minted.kid).toBe(key.kid);
    const result = await verifier.verify(minted.token, { audience: 'api' });
    expect(result).toMatchObject({ valid: true });
    if (!result.valid) return;
    expect(result.header).toEqual({ alg, typ: 'JWT', kid: key.kid });
    expect(result.claims['jti']).toBe(minted.jti);
  });

  it('sets exactly alg, typ and kid in the header', async () => {
    const key = keyFor('ES256');
    const minted = await mintToken(store, key, input());
    expect(decodePart(minted.token, 0)).toStrictEqual({ alg: 'ES256', typ: 'JWT', kid: key.kid });
  });

  it('sets iss, aud, iat, nbf, exp and a 128-bit jti', async () => {
    const minted = await mintToken(store, keyFor('ES256'), input({ ttlSeconds: 600 }));
    const claims = decodePart(minted.token, 1);
    expect(claims).toStrictEqual({
      iss: 'urn:test',
      aud: 'api',
      iat: NOW_S,
      nbf: NOW_S,
      exp: NOW_S + 600,
      jti: minted.jti,
    });
    expect(minted.iat).toBe(NOW_S);
    expect(minted.exp).toBe(minted.iat + 600);
    expect(minted.jti).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(Buffer.from(minted.jti, 'base64url')).toHaveLength(16);
  });

  it('floors a sub-second clock to whole seconds', async () => {
    const minted = await mintToken(
      store,
      keyFor('ES256'),
      input({ now: new Date(NOW.getTime() + 999) }),
    );
    expect(minted.iat).toBe(NOW_S);
  });

  it('draws a fresh jti for every token', async () => {
    const first = await mintToken(store, keyFor('ES256'), input());
    const second = await mintToken(store, keyFor('ES256'), input());
    expect(first.jti).not.toBe(second.jti);
    expect(first.token).not.toBe(second.token);
  });

  it('sets sub, a list audience, scope and extra claims', async () => {
    const minted = await mintToken(
      store,
      keyFor('EdDSA'),
      input({
        subject: 'svc:billing',
        audience: ['api', 'other'],
        scope: ['read', 'write'],
        claims: { tenant: 'acme', roles: ['a'] },
      }),
    );
    const claims = decodePart(minted.token, 1);
    expect(claims).toMatchObject({
      sub: 'svc:billing',
      aud: ['api', 'other'],
      scope: 'read write',
      tenant: 'acme',
      roles: ['a'],
    });
  });

  it('leaves out an empty scope', async () => {
    const minted = await mintToken(store, keyFor('ES256'), input({ scope: [] }));
    expect(decodePart(minted.token, 1)).not.toHaveProperty('scope');
  });

  it.each(['iss', 'exp', 'jti', 'sub', 'aud', 'nbf', 'iat', 'azp', 'scope'])(
    'refuses the reserved claim %s passed directly, before signing',
    async (name) => {
      const before = store.signCalls;
      let thrown: unknown;
      try {
        await mintToken(store, keyFor('ES256'), input({ claims: { [name]: 'x' } }));
      } catch (error) {
        thrown = error;
      }
      expect(thrown).toBeInstanceOf(HsmintError);
      expect((thrown as HsmintError).code).toBe('ERR_RESERVED_CLAIM');
      expect(store.signCalls).toBe(before);
    },
  );

  it('refuses an own __proto__ claim passed directly', async () => {
    const claims = JSON.parse('{"__proto__": {"iss": "urn:evil"}}') as Record<string, unknown>;
    await expect(mintToken(store, keyFor('ES256'), input({ claims }))).rejects.toMatchObject({
      code: 'ERR_RESERVED_CLAIM',
    });
  });
});
