import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { HsmintError } from '../../../core/errors.js';
import type { JwksResponse, MintResponse } from '../../../core/protocol.js';
import { Authority } from '../../../daemon/authority.js';
import { createRoutes, JWKS_MAX_AGE_SECONDS } from '../../../daemon/handlers.js';
import type { RequestContext, Route } from '../../../daemon/server.js';
import { testConfig } from '../../support/config.js';
import { MemoryKeyStore } from '../../support/memory-keystore.js';

const CONFIG = testConfig();

describe('createRoutes', () => {
  let store: MemoryKeyStore;
  let routes: Route[];

  function route(method: Route['method'], path: string): Route {
    const found = routes.find(
      (candidate) => candidate.method === method && candidate.path === path,
    );
    if (!found) throw new Error(`no route ${method} ${path}`);
    return found;
  }

  async function mint(body: unknown): Promise<{ body: MintResponse; context: RequestContext }> {
    const context: RequestContext = { log: {} };
    const reply = await route('POST', '/v1/tokens').handle(body, context);
    return { body: reply.body as MintResponse, context };
  }

  beforeEach(async () => {
    store = new MemoryKeyStore();
    const authority = await Authority.create({
      config: CONFIG,
      store,
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
    });
    routes = createRoutes(authority);
  });

  it('declares the /v1 routes with their methods and body use', () => {
    expect(routes.map((r) => [r.method, r.path, r.body])).toEqual([
      ['POST', '/v1/tokens', true],
      ['POST', '/v1/tokens/verify', true],
      ['GET', '/v1/jwks', false],
      ['GET', '/v1/health', false],
    ]);
  });

  describe('POST /v1/tokens', () => {
    it('answers 201 with the token, not to be cached', async () => {
      const context: RequestContext = { log: {} };
      const reply = await route('POST', '/v1/tokens').handle({ aud: 'api', ttl: '5m' }, context);
      expect(reply.status).toBe(201);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      const body = reply.body as MintResponse;
      expect(Object.keys(body).sort()).toEqual(['alg', 'exp', 'iat', 'jti', 'kid', 'token']);
      expect(body.exp - body.iat).toBe(300);
    });

    it('logs the jti but never the token', async () => {
      const { body, context } = await mint({ aud: 'api', sub: 'svc:x' });
      expect(context.log['jti']).toBe(body.jti);
      expect(context.log['kid']).toBe(body.kid);
      expect(context.log['sub']).toBe('svc:x');
      expect(Object.values(context.log)).not.toContain(body.token);
      const logged = JSON.stringify(context.log);
      for (const part of body.token.split('.')) expect(logged).not.toContain(part);
    });

    it('refuses a bad body with the parser codes', async () => {
      const handle = (body: unknown) => route('POST', '/v1/tokens').handle(body, { log: {} });
      await expect(handle(null)).rejects.toMatchObject({ code: 'ERR_INVALID_REQUEST' });
      await expect(handle({})).rejects.toMatchObject({ code: 'ERR_MISSING_FIELD' });
      await expect(handle({ aud: 'api', x: 1 })).rejects.toMatchObject({
        code: 'ERR_UNKNOWN_FIELD',
      });
      await expect(handle({ aud: 'api', claims: { iss: 'x' } })).rejects.toMatchObject({
        code: 'ERR_RESERVED_CLAIM',
      });
      expect(store.signCalls).toBe(0);
    });

    it('refuses a disallowed audience with 403 and a long ttl with 400', async () => {
      const handle = (body: unknown) => route('POST', '/v1/tokens').handle(body, { log: {} });
      const audience = await handle({ aud: 'elsewhere' }).catch((error: unknown) => error);
      expect(audience).toBeInstanceOf(HsmintError);
      expect((audience as HsmintError).code).toBe('ERR_AUDIENCE_NOT_ALLOWED');
      expect((audience as HsmintError).status).toBe(403);
      const ttl = await handle({ aud: 'api', ttl: '2h' }).catch((error: unknown) => error);
      expect((ttl as HsmintError).code).toBe('ERR_TTL_TOO_LONG');
      expect((ttl as HsmintError).status).toBe(400);
    });
  });

  describe('POST /v1/tokens/verify', () => {
    it('answers 200 valid for a good token and logs its jti', async () => {
      const { body: minted } = await mint({ aud: 'api' });
      const context: RequestContext = { log: {} };
      const reply = await route('POST', '/v1/tokens/verify').handle(
        { token: minted.token, aud: 'api' },
        context,
      );
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      expect(reply.body).toMatchObject({ valid: true, claims: { jti: minted.jti } });
      expect(context.log).toEqual({ valid: true, jti: minted.jti, kid: minted.kid });
    });

    it('answers 200 invalid with the code, and logs the code but not the token', async () => {
      const context: RequestContext = { log: {} };
      const reply = await route('POST', '/v1/tokens/verify').handle({ token: 'a.b' }, context);
      expect(reply.status).toBe(200);
      expect(reply.body).toMatchObject({ valid: false, error: { code: 'ERR_TOKEN_MALFORMED' } });
      expect(context.log).toEqual({ valid: false, code: 'ERR_TOKEN_MALFORMED' });
    });

    it('answers 200 invalid for a token meant for another audience', async () => {
      const { body: minted } = await mint({ aud: 'api' });
      const reply = await route('POST', '/v1/tokens/verify').handle(
        { token: minted.token, aud: 'other' },
        { log: {} },
      );
      expect(reply.status).toBe(200);
      expect(reply.body).toMatchObject({
        valid: false,
        error: { code: 'ERR_TOKEN_AUDIENCE_MISMATCH' },
      });
    });

    it('refuses a body without a token', async () => {
      await expect(
        route('POST', '/v1/tokens/verify').handle({ aud: 'api' }, { log: {} }),
      ).rejects.toMatchObject({ code: 'ERR_MISSING_FIELD' });
    });
  });

  describe('GET /v1/jwks', () => {
    it('answers 200 with the public keys and a cache lifetime', async () => {
      const reply = await route('GET', '/v1/jwks').handle(undefined, { log: {} });
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe(`public, max-age=${JWKS_MAX_AGE_SECONDS}`);
      expect(reply.headers?.['content-type']).toBe('application/jwk-set+json');
      const { keys } = reply.body as JwksResponse;
      expect(keys).toHaveLength(1);
      expect(keys[0]).not.toHaveProperty('d');
      expect(keys[0]).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
    });
  });

  describe('GET /v1/health', () => {
    it('answers 200 when ok', async () => {
      const reply = await route('GET', '/v1/health').handle(undefined, { log: {} });
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      expect(reply.body).toMatchObject({ status: 'ok', issuer: 'urn:test' });
    });

    it('answers 503 when the token failed', async () => {
      store.signError = new Error('CKR_DEVICE_ERROR');
      await expect(mint({ aud: 'api' })).rejects.toMatchObject({ code: 'ERR_HSM_UNAVAILABLE' });
      const reply = await route('GET', '/v1/health').handle(undefined, { log: {} });
      expect(reply.status).toBe(503);
      expect(reply.body).toMatchObject({ status: 'degraded' });
    });
  });
});
