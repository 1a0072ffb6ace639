import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { HsmintError } from '../../../core/errors.js';
import { Authority } from '../../../daemon/authority.js';
import { testConfig } from '../../support/config.js';
import { MemoryKeyStore } from '../../support/memory-keystore.js';

const NOW = new Date('2026-11-28T14:00:00Z');
const NOW_S = NOW.getTime() / 1000;

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
      const minted = await authority.mint({ aud: 'api' });
      expect(minted.kid).toBe(authority.activeKey.kid);
      expect(minted.alg).toBe('ES256');
      const result = await authority.verify({ token: minted.token, aud: 'api' });
      expect(result.valid).toBe(true);
      if (!result.valid) return;
      expect(result.claims['iss']).toBe('urn:test');
    });

    it('uses the default ttl when none is asked for', async () => {
      const minted = await authority.mint({ aud: 'api' });
      expect(minted.iat).toBe(NOW_S);
      expect(minted.exp - minted.iat).toBe(300);
    });

    it('uses the asked ttl up to max_ttl', async () => {
      const minted = await authority.mint({ aud: 'api', ttl: 3600 });
      expect(minted.exp - minted.iat).toBe(3600);
    });

    it('refuses an audience not in the list, without signing', async () => {
      const error = await rejection(authority.mint({ aud: 'elsewhere' }));
      expect(error.code).toBe('ERR_AUDIENCE_NOT_ALLOWED');
      expect(store.signCalls).toBe(0);
    });

    it('refuses a list holding one audience not in the list', async () => {
      const error = await rejection(authority.mint({ aud: ['api', 'elsewhere'] }));
      expect(error.code).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    });

    it('accepts a list of allowed audiences', async () => {
      const minted = await authority.mint({ aud: ['api', 'other'] });
      const result = await authority.verify({ token: minted.token, aud: 'other' });
      expect(result.valid).toBe(true);
    });

    it('refuses a ttl over max_ttl and signs nothing', async () => {
      const error = await rejection(authority.mint({ aud: 'api', ttl: 3601 }));
      expect(error.code).toBe('ERR_TTL_TOO_LONG');
      expect(store.signCalls).toBe(0);
    });

    it('reports a failing sign as ERR_HSM_UNAVAILABLE and turns degraded until a good signature', async () => {
      expect(authority.health().status).toBe('ok');
      store.signError = new Error('the token is gone');
      const error = await rejection(authority.mint({ aud: 'api' }));
      expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
      expect(error.status).toBe(503);
      const degraded = authority.health();
      expect(degraded.status).toBe('degraded');
      expect(degraded.reason).toBeDefined();

      store.signError = undefined;
      await authority.mint({ aud: 'api' });
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
      const error = await rejection(authority.mint({ aud: 'api' }));
      expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
      expect(JSON.stringify(error.toJSON())).not.toContain('CKR_');
      expect(authority.health().status).toBe('degraded');
      expect(authority.health().reason).toContain('CKR_DEVICE_REMOVED');
    });

    it('passes another HsmintError from the store through without turning degraded', async () => {
      store.signError = new HsmintError('ERR_KEY_NOT_FOUND', 'gone');
      const error = await rejection(authority.mint({ aud: 'api' }));
      expect(error.code).toBe('ERR_KEY_NOT_FOUND');
      expect(authority.health().status).toBe('ok');
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
    it('applies new token limits and reports sections that need a restart', async () => {
      const next = testConfig('socket:\n  path: /run/other.sock');
      const restart = await authority.reconfigure({
        ...next,
        tokens: { ...next.tokens, audiences: ['api', 'other', 'third'] },
      });
      expect(restart).toEqual(['socket']);
      const minted = await authority.mint({ aud: 'third' });
      expect(minted.kid).toBe(authority.activeKey.kid);
    });
  });
});
