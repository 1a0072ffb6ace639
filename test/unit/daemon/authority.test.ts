import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { HsmintError } from '../../../core/errors.js';
import type { MintRequest } from '../../../core/protocol.js';
import { Authority } from '../../../daemon/authority.js';
import { adminCaller, strangerCaller, testCaller, testConfig } from '../../support/config.js';
import { MemoryKeyStore } from '../../support/memory-keystore.js';

const NOW = new Date('2026-11-28T14:00:00Z');
const NOW_S = NOW.getTime() / 1000;
const CALLER = testCaller();

/** The claims of a compact JWS, decoded without verifying. */
function payloadOf(token: string): Record<string, unknown> {
  const part = token.split('.')[1];
  if (part === undefined) throw new Error('not a compact JWS');
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>;
}

async function rejection(promise: Promise<unknown>): Promise<HsmintError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof HsmintError) return error;
    throw new Error(`expected an HsmintError, got ${String(error)}`, { cause: error });
  }
  throw new Error('expected a rejection');
}

describe('Authority', () => {
  let store: MemoryKeyStore;
  let authority: Authority;

  /** Mints as the `svc` caller under the authority's current policy. */
  function mint(request: MintRequest, caller = CALLER) {
    return authority.mint(request, caller, authority.settings);
  }

  beforeEach(async () => {
    store = new MemoryKeyStore({ now: () => NOW });
    authority = await Authority.create({
      config: testConfig(),
      store,
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
      now: () => NOW,
    });
  });

  describe('create', () => {
    it('generates one key of the configured algorithm on an empty store', async () => {
      const keys = await store.list();
      expect(keys).toHaveLength(1);
      expect(keys[0]?.alg).toBe('ES256');
      expect(authority.activeKey.kid).toBe(keys[0]?.kid);
    });

    it('generates a key of another configured algorithm', async () => {
      const eddsaStore = new MemoryKeyStore();
      const eddsa = await Authority.create({
        config: testConfig('keys:\n  algorithm: EdDSA'),
        store: eddsaStore,
        token: { label: 't', serial: '1' },
        logger: pino({ level: 'silent' }),
      });
      expect((await eddsaStore.list()).map((key) => key.alg)).toEqual(['EdDSA']);
      expect(eddsa.activeKey.alg).toBe('EdDSA');
    });

    it('generates nothing when a key of the algorithm exists, and signs with the newest', async () => {
      const existing = new MemoryKeyStore();
      await existing.generate('ES256');
      const newest = await existing.generate('ES256');
      const reused = await Authority.create({
        config: testConfig(),
        store: existing,
        token: { label: 't', serial: '1' },
        logger: pino({ level: 'silent' }),
      });
      expect(await existing.list()).toHaveLength(2);
      expect(reused.activeKey.kid).toBe(newest.kid);
      expect(reused.jwks().keys).toHaveLength(2);
    });
  });

  describe('mint', () => {
    it('mints a token that the authority verifies', async () => {
      const minted = await mint({ aud: 'api' });
      expect(minted.kid).toBe(authority.activeKey.kid);
      expect(minted.alg).toBe('ES256');
      const result = await authority.verify({ token: minted.token, aud: 'api' });
      expect(result.valid).toBe(true);
      if (!result.valid) return;
      expect(result.claims['iss']).toBe('urn:test');
    });

    it('uses the default ttl when none is asked for', async () => {
      const minted = await mint({ aud: 'api' });
      expect(minted.iat).toBe(NOW_S);
      expect(minted.exp - minted.iat).toBe(300);
    });

    it('uses the asked ttl up to max_ttl', async () => {
      const minted = await mint({ aud: 'api', ttl: 3600 });
      expect(minted.exp - minted.iat).toBe(3600);
    });

    it("refuses an audience outside the caller's rule, without signing", async () => {
      const error = await rejection(mint({ aud: 'elsewhere' }));
      expect(error.code).toBe('ERR_AUDIENCE_NOT_ALLOWED');
      expect(store.signCalls).toBe(0);
    });

    it("refuses a list holding one audience outside the caller's rule", async () => {
      const error = await rejection(mint({ aud: ['api', 'elsewhere'] }));
      expect(error.code).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    });

    it("accepts a list of the rule's audiences", async () => {
      const minted = await mint({ aud: ['api', 'other'] });
      const result = await authority.verify({ token: minted.token, aud: 'other' });
      expect(result.valid).toBe(true);
    });

    it('refuses a ttl over max_ttl and signs nothing', async () => {
      const error = await rejection(mint({ aud: 'api', ttl: 3601 }));
      expect(error.code).toBe('ERR_TTL_TOO_LONG');
      expect(store.signCalls).toBe(0);
    });

    it('puts the default subject in sub and azp, and the caller and rule in hsmint', async () => {
      const minted = await mint({ aud: 'api' });
      const claims = payloadOf(minted.token);
      expect(claims['sub']).toBe('svc:billing.service');
      expect(claims['azp']).toBe('svc:billing.service');
      expect(claims['hsmint']).toEqual({ uid: 1000, unit: 'billing.service', rule: 'svc' });
    });

    it('keeps the default subject in azp when another granted subject is asked for', async () => {
      const minted = await mint({ aud: 'api', sub: 'batch:nightly' });
      const claims = payloadOf(minted.token);
      expect(claims['sub']).toBe('batch:nightly');
      expect(claims['azp']).toBe('svc:billing.service');
    });

    it('leaves unit out of hsmint for a caller without one, and falls back to the next subject', async () => {
      const { unit: _unit, ...noUnit } = CALLER;
      const minted = await mint({ aud: 'api' }, noUnit);
      const claims = payloadOf(minted.token);
      expect(claims['sub']).toBe('user:svc');
      expect(claims['azp']).toBe('user:svc');
      expect(claims['hsmint']).toEqual({ uid: 1000, rule: 'svc' });
    });

    it('names the admins rule in hsmint for an admin caller', async () => {
      const minted = await mint({ aud: 'api' }, adminCaller());
      const claims = payloadOf(minted.token);
      expect(claims['sub']).toBe('user:root');
      expect(claims['hsmint']).toEqual({ uid: 0, unit: 'ops.service', rule: 'admins' });
    });

    it('puts granted scopes and claims in the token', async () => {
      const minted = await mint({
        aud: 'api',
        scope: ['read', 'write'],
        claims: { tenant: 't2', trace: { id: 'abc' } },
      });
      const claims = payloadOf(minted.token);
      expect(claims['scope']).toBe('read write');
      expect(claims['tenant']).toBe('t2');
      expect(claims['trace']).toEqual({ id: 'abc' });
    });

    it('refuses a caller that no rule matches with ERR_FORBIDDEN, signing nothing', async () => {
      const error = await rejection(mint({ aud: 'api' }, strangerCaller()));
      expect(error.code).toBe('ERR_FORBIDDEN');
      expect(error.status).toBe(403);
      expect(store.signCalls).toBe(0);
    });

    it('refuses everyone under an empty policy', async () => {
      const error = await rejection(
        authority.mint({ aud: 'api' }, CALLER, { ...authority.settings, policy: { rules: [] } }),
      );
      expect(error.code).toBe('ERR_FORBIDDEN');
      expect(store.signCalls).toBe(0);
    });

    it.each<[string, MintRequest, string]>([
      ['a subject', { aud: 'api', sub: 'svc:other.service' }, 'ERR_SUBJECT_NOT_ALLOWED'],
      ['a scope', { aud: 'api', scope: ['admin'] }, 'ERR_SCOPE_NOT_ALLOWED'],
      ['a claim', { aud: 'api', claims: { role: 'x' } }, 'ERR_CLAIM_NOT_ALLOWED'],
      ['a claim value', { aud: 'api', claims: { tenant: 't3' } }, 'ERR_CLAIM_NOT_ALLOWED'],
    ])(
      'refuses %s outside the rule with its code, signing nothing',
      async (_what, request, code) => {
        const error = await rejection(mint(request));
        expect(error.code).toBe(code);
        expect(store.signCalls).toBe(0);
      },
    );

    it("uses the policy it is given, not the authority's own", async () => {
      const policy = { rules: [{ ...authority.policy.rules[0]!, audiences: ['elsewhere'] }] };
      const minted = await authority.mint({ aud: 'elsewhere' }, CALLER, {
        ...authority.settings,
        policy,
      });
      expect(payloadOf(minted.token)['aud']).toBe('elsewhere');
      const error = await rejection(
        authority.mint({ aud: 'api' }, CALLER, { ...authority.settings, policy }),
      );
      expect(error.code).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    });

    it('still caps ttl at tokens.max_ttl under a policy whose rule allows more', async () => {
      const policy = { rules: [{ ...authority.policy.rules[0]!, maxTtl: 7200 }] };
      const error = await rejection(
        authority.mint({ aud: 'api', ttl: 3601 }, CALLER, { ...authority.settings, policy }),
      );
      expect(error.code).toBe('ERR_TTL_TOO_LONG');
      expect(store.signCalls).toBe(0);
    });

    it('reports a failing sign as ERR_HSM_UNAVAILABLE and turns degraded until a good signature', async () => {
      expect(authority.health().status).toBe('ok');
      store.signError = new Error('the token is gone');
      const error = await rejection(mint({ aud: 'api' }));
      expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
      expect(error.status).toBe(503);
      const degraded = authority.health();
      expect(degraded.status).toBe('degraded');
      expect(degraded.reason).toBeDefined();

      store.signError = undefined;
      await mint({ aud: 'api' });
      const healed = authority.health();
      expect(healed.status).toBe('ok');
      expect(healed).not.toHaveProperty('reason');
      expect(store.signCalls).toBe(2);
    });

    it('names the CKR from the key store in health, never in the error for the client', async () => {
      store.signError = new HsmintError(
        'ERR_HSM_UNAVAILABLE',
        'signing failed: CKR_DEVICE_REMOVED',
        {
          details: { ckr: 'CKR_DEVICE_REMOVED' },
        },
      );
      const error = await rejection(mint({ aud: 'api' }));
      expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
      expect(JSON.stringify(error.toJSON())).not.toContain('CKR_');
      expect(authority.health().status).toBe('degraded');
      expect(authority.health().reason).toContain('CKR_DEVICE_REMOVED');
    });

    it('passes another HsmintError from the store through without turning degraded', async () => {
      store.signError = new HsmintError('ERR_KEY_NOT_FOUND', 'gone');
      const error = await rejection(mint({ aud: 'api' }));
      expect(error.code).toBe('ERR_KEY_NOT_FOUND');
      expect(authority.health().status).toBe('ok');
    });
  });

  describe('rotateNow', () => {
    it('keeps minting with the active key while the next one is generated', async () => {
      let release!: () => void;
      const generated = new Promise<void>((resolve) => (release = resolve));
      const generate = store.generate.bind(store);
      store.generate = async (...args) => {
        await generated;
        return generate(...args);
      };
      const before = authority.activeKey.kid;
      const rotation = authority.rotateNow();
      // The key is still being made: the old one signs, as if no rotation had begun.
      const during = await mint({ aud: 'api' });
      expect(during.kid).toBe(before);
      release();
      const active = await rotation;
      expect(active.kid).not.toBe(before);
      expect((await mint({ aud: 'api' })).kid).toBe(active.kid);
    });

    it('verifies a token of the new key minted before the rotation has returned', async () => {
      const rotation = authority.rotateNow();
      const minted: string[] = [];
      let done = false;
      void rotation.finally(() => (done = true));
      // The rotation writes its state file: give its I/O a turn between mints, and bound the loop.
      for (let i = 0; !done && i < 10_000; i++) {
        minted.push((await mint({ aud: 'api' })).token);
        await new Promise((resolve) => setImmediate(resolve));
      }
      minted.push((await mint({ aud: 'api' })).token);
      const kids = new Set(
        minted.map(
          (token) => JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()).kid,
        ),
      );
      expect(kids.has((await rotation).kid)).toBe(true);
      for (const token of minted) expect((await authority.verify({ token })).valid).toBe(true);
    });
  });

  describe('grant', () => {
    it("returns the caller's grant with its templates filled in", () => {
      expect(authority.grant(CALLER, authority.policy)).toEqual({
        rule: 'svc',
        subjects: ['svc:billing.service', 'user:svc'],
        subjectPrefixes: ['batch:'],
        audiences: ['api', 'other'],
        scopes: ['read', 'write'],
        claims: { tenant: ['t1', 't2'], trace: null },
        maxTtl: 3600,
        admin: false,
        metrics: false,
      });
    });

    it('throws ERR_FORBIDDEN for a caller that no rule matches', () => {
      let code: string | undefined;
      try {
        authority.grant(strangerCaller(), authority.policy);
      } catch (error) {
        code = (error as HsmintError).code;
      }
      expect(code).toBe('ERR_FORBIDDEN');
    });
  });

  describe('whoami', () => {
    it('answers rule null and grants null for a caller that no rule matches', () => {
      const caller = strangerCaller();
      expect(authority.whoami(caller, authority.policy)).toEqual({
        caller,
        rule: null,
        grants: null,
      });
    });

    it('describes the grants of a matched caller', () => {
      expect(authority.whoami(CALLER, authority.policy)).toEqual({
        caller: CALLER,
        rule: 'svc',
        grants: {
          subjects: ['svc:billing.service', 'user:svc'],
          subject_prefixes: ['batch:*'],
          default_subject: 'svc:billing.service',
          audiences: ['api', 'other'],
          scopes: ['read', 'write'],
          claims: { tenant: ['t1', 't2'], trace: null },
          max_ttl: 3600,
          admin: false,
          metrics: false,
        },
      });
    });

    it('answers admin true under an admin rule', () => {
      const whoami = authority.whoami(adminCaller(), authority.policy);
      expect(whoami.rule).toBe('admins');
      expect(whoami.grants?.admin).toBe(true);
      expect(whoami.grants?.default_subject).toBe('user:root');
      expect(whoami.grants?.subject_prefixes).toEqual([]);
    });

    it('answers default_subject null when no subject renders for the caller', () => {
      const { user: _user, ...noUser } = adminCaller();
      const whoami = authority.whoami(noUser, authority.policy);
      expect(whoami.rule).toBe('admins');
      expect(whoami.grants?.subjects).toEqual([]);
      expect(whoami.grants?.default_subject).toBeNull();
    });
  });

  describe('jwks', () => {
    it('lists the public keys only', async () => {
      await store.generate('ES256');
      const rsa = await store.generate('RS256');
      await authority.reconfigure(testConfig());
      const { keys } = authority.jwks();
      expect(keys).toHaveLength(3);
      expect(keys.map((key) => key.kid)).toContain(rsa.kid);
      for (const key of keys) {
        for (const secret of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k'])
          expect(key).not.toHaveProperty(secret);
        expect(key.use).toBe('sig');
      }
    });
  });

  describe('health', () => {
    it('describes the issuer, key and token', () => {
      expect(authority.health()).toEqual({
        status: 'ok',
        issuer: 'urn:test',
        algorithm: 'ES256',
        active_kid: authority.activeKey.kid,
        keys: 1,
        token: { label: 't', serial: '1' },
        uptime_s: 0,
      });
    });
  });

  describe('reconfigure', () => {
    it('applies a new policy and reports sections that need a restart', async () => {
      const next = testConfig('socket:\n  path: /run/other.sock');
      const [svc, ...rest] = next.policy.rules;
      if (!svc) throw new Error('testConfig() has no svc rule');
      const restart = await authority.reconfigure({
        ...next,
        policy: { rules: [{ ...svc, audiences: ['api', 'other', 'third'] }, ...rest] },
      });
      expect(restart).toEqual(['socket']);
      const minted = await mint({ aud: 'third' });
      expect(minted.kid).toBe(authority.activeKey.kid);
    });

    it('applies new connection limits without a restart', async () => {
      const restart = await authority.reconfigure(
        testConfig('socket:\n  max_connections_per_uid: 2\n  max_requests_per_uid: 1'),
      );
      expect(restart).toEqual([]);
      expect(authority.limits).toEqual({ connections: 2, requests: 1 });
    });
  });
});
