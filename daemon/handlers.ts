import { HsmintError } from '../core/errors.js';
import { parseMintRequest, parseVerifyRequest, type ReloadResponse } from '../core/protocol.js';
import type { Authority } from './authority.js';
import type { Route } from './server.js';

/** How long a verifier may cache the JWKS; rotation (publish-ahead) is planned around it. */
export const JWKS_MAX_AGE_SECONDS = 300;

/** The routes of /v1: pure `(body, context) -> reply` functions over the authority. */
export function createRoutes(
  authority: Authority,
  actions: { reload(): Promise<ReloadResponse> },
): Route[] {
  return [
    {
      method: 'POST',
      path: '/v1/tokens',
      body: true,
      async handle(body, context) {
        const request = parseMintRequest(body);
        const minted = await authority.mint(request, context.caller, context.config);
        context.log = {
          jti: minted.jti,
          kid: minted.kid,
          sub: minted.sub,
          aud: request.aud,
          exp: minted.exp,
          rule: authority.grant(context.caller, context.config.policy).rule,
        };
        return { status: 201, body: minted, headers: { 'cache-control': 'no-store' } };
      },
    },
    {
      method: 'POST',
      path: '/v1/tokens/verify',
      body: true,
      async handle(body, context) {
        const result = await authority.verify(parseVerifyRequest(body));
        if (result.valid)
          context.log = { valid: true, jti: result.claims.jti, kid: result.header.kid };
        else context.log = { valid: false, code: result.error.code };
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
          body: authority.jwks(),
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
        const health = authority.health();
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
          body: authority.whoami(context.caller, context.config.policy),
          headers: { 'cache-control': 'no-store' },
        };
      },
    },
    {
      method: 'POST',
      path: '/v1/reload',
      body: false,
      async handle(_body, context) {
        if (!authority.grant(context.caller, context.config.policy).admin) {
          throw new HsmintError('ERR_FORBIDDEN', 'reloading needs an admin rule');
        }
        return {
          status: 200,
          body: await actions.reload(),
          headers: { 'cache-control': 'no-store' },
        };
      },
    },
  ];
}
