import { JWKS_MAX_AGE_SECONDS } from '../core/config.js';
import { HsmintError } from '../core/errors.js';
import type { KeyRecord } from '../core/keys/lifecycle.js';
import { grantOf } from '../core/policy/policy.js';
import {
  parseMintBatchRequest,
  parseMintRequest,
  parseRevokeTokenRequest,
  parseVerifyRequest,
  type KeyView,
  type MintRequest,
  type HealthResponse,
  type MintResponse,
  type ReloadResponse,
} from '../core/protocol.js';
import type { VerifyResult } from '../core/jwt/verify.js';
import type { Authority } from './authority.js';
import { answeredCode, METRICS_CONTENT_TYPE } from './metrics.js';
import { PlainText, type RequestContext, type Route } from './server.js';

/** The routes of /v1: pure `(body, context) -> reply` functions over the authority. */
const NO_STORE = { 'cache-control': 'no-store' };

function requireAdmin(authority: Authority, context: RequestContext): void {
  if (!authority.grant(context.caller, context.config.policy).admin) {
    throw new HsmintError('ERR_FORBIDDEN', 'this needs an admin rule');
  }
}

function keyView(record: KeyRecord): KeyView {
  return {
    kid: record.kid,
    alg: record.alg,
    state: record.state,
    label: record.label,
    created: record.created,
    ...(record.activateAt === undefined ? {} : { activate_at: record.activateAt }),
    ...(record.activeFrom === undefined ? {} : { active_from: record.activeFrom }),
    ...(record.retireAt === undefined ? {} : { retire_at: record.retireAt }),
  };
}

/**
 * The routes over `source`: an authority, or a getter for one that exists by the time a
 * request reaches a handler (see untilTokenOpens).
 */
export function createRoutes(
  source: Authority | (() => Authority),
  actions: { reload(): Promise<ReloadResponse> },
): Route[] {
  const authority = typeof source === 'function' ? source : () => source;
  return [
    {
      method: 'POST',
      path: '/v1/tokens',
      body: true,
      async handle(body, context) {
        let request: MintRequest;
        let minted: MintResponse;
        try {
          request = parseMintRequest(body);
          minted = await authority().mint(request, context.caller, context.config);
        } catch (error) {
          authority().metrics.mint('error', answeredCode(error));
          throw error;
        }
        authority().metrics.mint('ok');
        context.log = {
          jti: minted.jti,
          kid: minted.kid,
          sub: minted.sub,
          aud: request.aud,
          exp: minted.exp,
          rule: authority().grant(context.caller, context.config.policy).rule,
        };
        return { status: 201, body: minted, headers: { 'cache-control': 'no-store' } };
      },
    },
    {
      method: 'POST',
      path: '/v1/tokens:batch',
      body: true,
      async handle(body, context) {
        const { requests } = parseMintBatchRequest(body);
        const results = await authority().mintBatch(requests, context.caller, context.config);
        let minted = 0;
        for (const result of results) {
          if ('token' in result) {
            minted++;
            authority().metrics.mint('ok');
          } else authority().metrics.mint('error', result.error.code);
        }
        // The jtis are in the audit log, one record each; the log line counts them.
        context.log = { minted, refused: results.length - minted };
        return { status: 200, body: { results }, headers: NO_STORE };
      },
    },
    {
      method: 'POST',
      path: '/v1/tokens/verify',
      body: true,
      async handle(body, context) {
        let result: VerifyResult;
        try {
          result = await authority().verify(parseVerifyRequest(body), context.caller);
        } catch (error) {
          authority().metrics.verify('error', answeredCode(error));
          throw error;
        }
        if (result.valid) {
          authority().metrics.verify('valid');
          context.log = { valid: true, jti: result.claims.jti, kid: result.header.kid };
        } else {
          authority().metrics.verify('invalid', result.error.code);
          context.log = { valid: false, code: result.error.code };
        }
        return { status: 200, body: result, headers: { 'cache-control': 'no-store' } };
      },
    },
    {
      method: 'GET',
      path: '/v1/jwks',
      body: false,
      async handle() {
        return {
          status: 200,
          body: authority().jwks(),
          headers: {
            'cache-control': `public, max-age=${JWKS_MAX_AGE_SECONDS}`,
            'content-type': 'application/jwk-set+json',
          },
        };
      },
    },
    {
      method: 'GET',
      path: '/v1/health',
      body: false,
      async handle() {
        const health = authority().health();
        return {
          status: health.status === 'ok' ? 200 : 503,
          body: health,
          headers: { 'cache-control': 'no-store' },
        };
      },
    },
    {
      method: 'GET',
      path: '/v1/whoami',
      body: false,
      async handle(_body, context) {
        return {
          status: 200,
          body: authority().whoami(context.caller, context.config.policy),
          headers: { 'cache-control': 'no-store' },
        };
      },
    },
    {
      method: 'POST',
      path: '/v1/reload',
      body: false,
      async handle(_body, context) {
        if (!authority().grant(context.caller, context.config.policy).admin) {
          throw new HsmintError('ERR_FORBIDDEN', 'reloading needs an admin rule');
        }
        return {
          status: 200,
          body: await actions.reload(),
          headers: { 'cache-control': 'no-store' },
        };
      },
    },
    {
      method: 'GET',
      path: '/v1/audit/keys',
      body: false,
      async handle() {
        return {
          status: 200,
          body: { keys: authority().auditKeys },
          headers: { 'cache-control': 'no-store' },
        };
      },
    },
    {
      method: 'GET',
      path: '/v1/bundle',
      body: false,
      async handle(_body, context) {
        requireAdmin(authority(), context);
        const { version, bundle } = await authority().bundle();
        context.log = { version };
        return { status: 200, body: { version, bundle }, headers: NO_STORE };
      },
    },
    {
      method: 'GET',
      path: '/v1/keys',
      body: false,
      async handle(_body, context) {
        requireAdmin(authority(), context);
        return {
          status: 200,
          body: { keys: authority().keyRecords().map(keyView) },
          headers: NO_STORE,
        };
      },
    },
    {
      method: 'POST',
      path: '/v1/keys/rotate',
      body: false,
      async handle(_body, context) {
        requireAdmin(authority(), context);
        const active = await authority().rotateNow();
        context.log = { kid: active.kid };
        return {
          status: 200,
          body: { active: keyView(active), keys: authority().keyRecords().map(keyView) },
          headers: NO_STORE,
        };
      },
    },
    {
      method: 'POST',
      path: '/v1/keys/{kid}/revoke',
      body: false,
      async handle(_body, context) {
        requireAdmin(authority(), context);
        const kid = context.params['kid']!;
        await authority().revokeKey(kid);
        context.log = { kid };
        return {
          status: 200,
          body: { revoked: kid, keys: authority().keyRecords().map(keyView) },
          headers: NO_STORE,
        };
      },
    },
    {
      method: 'POST',
      path: '/v1/tokens/revoke',
      body: true,
      async handle(body, context) {
        const request = parseRevokeTokenRequest(body);
        const admin = grantOf(context.config.policy, context.caller)?.admin === true;
        let jti: string;
        let exp: number | undefined;
        if ('jti' in request) {
          // A bare jti proves nothing about who minted it: only admins may revoke by jti.
          if (!admin)
            throw new HsmintError(
              'ERR_FORBIDDEN',
              'revoking by jti needs an admin rule; send the token instead',
            );
          jti = request.jti;
        } else {
          const result = await authority().verify({ token: request.token });
          if (!result.valid)
            throw new HsmintError(
              'ERR_INVALID_REQUEST',
              `the token does not verify (${result.error.code})`,
            );
          const minter = (result.claims['hsmint'] as { uid?: unknown } | undefined)?.uid;
          if (!admin && minter !== context.caller.uid) {
            throw new HsmintError(
              'ERR_FORBIDDEN',
              'only an admin or the caller that minted a token may revoke it',
            );
          }
          jti = String(result.claims.jti);
          exp = result.claims.exp;
        }
        const revoked = await authority().revokeToken(jti, exp);
        authority().record({
          event: 'token.revoke',
          jti,
          until: revoked.until,
          by_uid: context.caller.uid,
        });
        context.log = { jti, until: revoked.until };
        return { status: 200, body: { revoked: jti, until: revoked.until }, headers: NO_STORE };
      },
    },
    {
      method: 'GET',
      path: '/v1/metrics',
      body: false,
      async handle(_body, context) {
        // A scraper needs to read and nothing more: `metrics: true` grants exactly this.
        if (!authority().grant(context.caller, context.config.policy).metrics)
          throw new HsmintError('ERR_FORBIDDEN', 'metrics need a rule with metrics: true or admin');
        return {
          status: 200,
          body: new PlainText(await authority().metrics.text(), METRICS_CONTENT_TYPE),
          headers: NO_STORE,
        };
      },
    },
  ];
}

/**
 * The routes of a daemon whose token has not opened yet (the PIN was refused at start): health
 * answers `sealed` with the reason, every other route ERR_HSM_UNAVAILABLE, for as long as
 * `sealed()` returns a health; then each route is itself.
 */
export function untilTokenOpens(
  routes: Route[],
  sealed: () => HealthResponse | undefined,
): Route[] {
  return routes.map((route) => ({
    ...route,
    async handle(body, context) {
      const health = sealed();
      if (!health) return route.handle(body, context);
      if (route.method === 'GET' && route.path === '/v1/health')
        return { status: 503, body: health, headers: NO_STORE };
      throw new HsmintError(
        'ERR_HSM_UNAVAILABLE',
        `the token is sealed: ${health.reason ?? 'not open'}`,
      );
    },
  }));
}
