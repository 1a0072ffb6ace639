import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { HsmintError } from '../../../core/errors.js';
import type { Caller } from '../../../core/policy/caller.js';
import type {
  JwksResponse,
  MintResponse,
  ReloadResponse,
  WhoamiResponse,
} from '../../../core/protocol.js';
import { Authority } from '../../../daemon/authority.js';
import { JWKS_MAX_AGE_SECONDS } from '../../../core/config.js';
import { createRoutes } from '../../../daemon/handlers.js';
import type { RequestContext, Route } from '../../../daemon/server.js';
import { adminCaller, strangerCaller, testCaller, testConfig } from '../../support/config.js';
import { MemoryKeyStore } from '../../support/memory-keystore.js';

const CONFIG = testConfig();

/** A fresh request context: the `svc` caller unless told, under testConfig()'s policy. */
function ctx(caller: Caller = testCaller()): RequestContext {
  return { log: {}, params: {}, caller, config: CONFIG };
}

describe('createRoutes', () => {
  let store: MemoryKeyStore;
  let routes: Route[];
  let reloads: number;

  function route(method: Route['method'], path: string): Route {
    const found = routes.find(
      (candidate) => candidate.method === method && candidate.path === path,
    );
    if (!found) throw new Error(`no route ${method} ${path}`);
    return found;
  }

  async function mint(body: unknown): Promise<{ body: MintResponse; context: RequestContext }> {
    const context = ctx();
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
    reloads = 0;
    routes = createRoutes(authority, {
      async reload(): Promise<ReloadResponse> {
        reloads += 1;
        return { reloaded: true, restart_needed: ['socket'] };
      },
    });
  });

  it('declares the /v1 routes with their methods and body use', () => {
    expect(routes.map((r) => [r.method, r.path, r.body])).toEqual([
      ['POST', '/v1/tokens', true],
      ['POST', '/v1/tokens:batch', true],
      ['POST', '/v1/tokens/verify', true],
      ['GET', '/v1/jwks', false],
      ['GET', '/v1/health', false],
      ['GET', '/v1/whoami', false],
      ['POST', '/v1/reload', false],
      ['GET', '/v1/audit/keys', false],
      ['GET', '/v1/bundle', false],
      ['GET', '/v1/keys', false],
      ['POST', '/v1/keys/rotate', false],
      ['POST', '/v1/keys/{kid}/revoke', false],
      ['POST', '/v1/tokens/revoke', true],
      ['GET', '/v1/metrics', false],
    ]);
  });

  describe('POST /v1/tokens', () => {
    it('answers 201 with the token, not to be cached', async () => {
      const context = ctx();
      const reply = await route('POST', '/v1/tokens').handle({ aud: 'api', ttl: '5m' }, context);
      expect(reply.status).toBe(201);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      const body = reply.body as MintResponse;
      expect(Object.keys(body).sort()).toEqual(['alg', 'exp', 'iat', 'jti', 'kid', 'sub', 'token']);
      expect(body.exp - body.iat).toBe(300);
    });

    it('logs the jti but never the token', async () => {
      const { body, context } = await mint({ aud: 'api', sub: 'batch:x' });
      expect(context.log['jti']).toBe(body.jti);
      expect(context.log['kid']).toBe(body.kid);
      expect(context.log['sub']).toBe('batch:x');
      expect(Object.values(context.log)).not.toContain(body.token);
      const logged = JSON.stringify(context.log);
      for (const part of body.token.split('.')) expect(logged).not.toContain(part);
    });

    it('refuses a bad body with the parser codes', async () => {
      const handle = (body: unknown) => route('POST', '/v1/tokens').handle(body, ctx());
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

    it('refuses a caller that no rule matches with 403, signing nothing', async () => {
      const error = await route('POST', '/v1/tokens')
        .handle({ aud: 'api' }, ctx(strangerCaller()))
        .catch((failure: unknown) => failure);
      expect(error).toBeInstanceOf(HsmintError);
      expect((error as HsmintError).code).toBe('ERR_FORBIDDEN');
      expect((error as HsmintError).status).toBe(403);
      expect(store.signCalls).toBe(0);
    });

    it('mints under the policy of the context, not a later one', async () => {
      const context: RequestContext = {
        log: {},
        params: {},
        caller: testCaller(),
        config: { ...CONFIG, policy: { rules: [] } },
      };
      await expect(
        route('POST', '/v1/tokens').handle({ aud: 'api' }, context),
      ).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    });

    it('refuses a disallowed audience with 403 and a long ttl with 400', async () => {
      const handle = (body: unknown) => route('POST', '/v1/tokens').handle(body, ctx());
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
      const context = ctx();
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
      const context = ctx();
      const reply = await route('POST', '/v1/tokens/verify').handle({ token: 'a.b' }, context);
      expect(reply.status).toBe(200);
      expect(reply.body).toMatchObject({ valid: false, error: { code: 'ERR_TOKEN_MALFORMED' } });
      expect(context.log).toEqual({ valid: false, code: 'ERR_TOKEN_MALFORMED' });
    });

    it('answers 200 invalid for a token meant for another audience', async () => {
      const { body: minted } = await mint({ aud: 'api' });
      const reply = await route('POST', '/v1/tokens/verify').handle(
        { token: minted.token, aud: 'other' },
        ctx(),
      );
      expect(reply.status).toBe(200);
      expect(reply.body).toMatchObject({
        valid: false,
        error: { code: 'ERR_TOKEN_AUDIENCE_MISMATCH' },
      });
    });

    it('refuses a body without a token', async () => {
      await expect(
        route('POST', '/v1/tokens/verify').handle({ aud: 'api' }, ctx()),
      ).rejects.toMatchObject({ code: 'ERR_MISSING_FIELD' });
    });
  });

  describe('GET /v1/jwks', () => {
    it('answers 200 with the public keys and a cache lifetime', async () => {
      const reply = await route('GET', '/v1/jwks').handle(undefined, ctx());
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe(`public, max-age=${JWKS_MAX_AGE_SECONDS}`);
      expect(reply.headers?.['content-type']).toBe('application/jwk-set+json');
      const { keys } = reply.body as JwksResponse;
      expect(keys).toHaveLength(1);
      expect(keys[0]).not.toHaveProperty('d');
      expect(keys[0]).toMatchObject({ kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' });
    });
  });

  describe('GET /v1/whoami', () => {
    it('answers 200 with rule and grants null for a caller that no rule matches', async () => {
      const caller = strangerCaller();
      const reply = await route('GET', '/v1/whoami').handle(undefined, ctx(caller));
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      expect(reply.body).toEqual({ caller, rule: null, grants: null });
    });

    it("answers the caller's rule and grants", async () => {
      const reply = await route('GET', '/v1/whoami').handle(undefined, ctx());
      const body = reply.body as WhoamiResponse;
      expect(body.rule).toBe('svc');
      expect(body.grants).toMatchObject({
        default_subject: 'svc:billing.service',
        subject_prefixes: ['batch:*'],
        admin: false,
      });
    });

    it('answers admin true for a caller under an admin rule', async () => {
      const reply = await route('GET', '/v1/whoami').handle(undefined, ctx(adminCaller()));
      const body = reply.body as WhoamiResponse;
      expect(body.rule).toBe('admins');
      expect(body.grants?.admin).toBe(true);
    });
  });

  describe('POST /v1/reload', () => {
    it('refuses a caller whose rule is not an admin one with 403, without reloading', async () => {
      const error = await route('POST', '/v1/reload')
        .handle(undefined, ctx())
        .catch((failure: unknown) => failure);
      expect(error).toBeInstanceOf(HsmintError);
      expect((error as HsmintError).code).toBe('ERR_FORBIDDEN');
      expect((error as HsmintError).status).toBe(403);
      expect(reloads).toBe(0);
    });

    it('refuses a caller that no rule matches, without reloading', async () => {
      await expect(
        route('POST', '/v1/reload').handle(undefined, ctx(strangerCaller())),
      ).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
      expect(reloads).toBe(0);
    });

    it('refuses a member of admins whose uid an earlier, non-admin rule matches', async () => {
      const caller = testCaller({ groups: ['svc', 'admins'] });
      await expect(
        route('POST', '/v1/reload').handle(undefined, ctx(caller)),
      ).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
      expect(reloads).toBe(0);
    });

    it('reloads for an admin and answers what the reload returned', async () => {
      const reply = await route('POST', '/v1/reload').handle(undefined, ctx(adminCaller()));
      expect(reloads).toBe(1);
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      expect(reply.body).toEqual({ reloaded: true, restart_needed: ['socket'] });
    });

    it('passes a failed reload through with its code', async () => {
      const failing = createRoutes(
        await Authority.create({
          config: CONFIG,
          store: new MemoryKeyStore(),
          token: { label: 't', serial: '1' },
          logger: pino({ level: 'silent' }),
        }),
        {
          async reload(): Promise<ReloadResponse> {
            throw new HsmintError('ERR_CONFIG_INVALID', 'policy: expected a mapping');
          },
        },
      ).find((candidate) => candidate.path === '/v1/reload');
      if (!failing) throw new Error('no reload route');
      const error = await failing
        .handle(undefined, ctx(adminCaller()))
        .catch((failure: unknown) => failure);
      expect((error as HsmintError).code).toBe('ERR_CONFIG_INVALID');
      expect((error as HsmintError).status).toBe(422);
    });
  });

  describe('GET /v1/health', () => {
    it('answers 200 when ok', async () => {
      const reply = await route('GET', '/v1/health').handle(undefined, ctx());
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      expect(reply.body).toMatchObject({ status: 'ok', issuer: 'urn:test' });
    });

    it('answers 503 when the token failed', async () => {
      store.signError = new Error('CKR_DEVICE_ERROR');
      await expect(mint({ aud: 'api' })).rejects.toMatchObject({ code: 'ERR_HSM_UNAVAILABLE' });
      const reply = await route('GET', '/v1/health').handle(undefined, ctx());
      expect(reply.status).toBe(503);
      expect(reply.body).toMatchObject({ status: 'degraded' });
    });
  });
});
