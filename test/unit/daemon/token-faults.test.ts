import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../../core/audit/record.js';
import { HsmintError } from '../../../core/errors.js';
import type { TokenHealth } from '../../../core/open.js';
import type { TokenCondition } from '../../../core/pkcs11/recovery.js';
import type { HealthResponse, ReloadResponse } from '../../../core/protocol.js';
import { Authority, type AuditSink } from '../../../daemon/authority.js';
import { createRoutes, untilTokenOpens } from '../../../daemon/handlers.js';
import type { RequestContext, Route } from '../../../daemon/server.js';
import { testCaller, testConfig } from '../../support/config.js';
import { MemoryKeyStore } from '../../support/memory-keystore.js';
import { rejection } from '../../support/codes.js';

/** A store whose probe answers, fails or never returns, as the test says. */
class ProbedStore extends MemoryKeyStore {
  probeResult: 'ok' | 'busy' | 'fail' | 'hang' = 'ok';
  probe(): Promise<void> {
    switch (this.probeResult) {
      case 'ok':
        return Promise.resolve();
      case 'busy':
        return Promise.reject(new HsmintError('ERR_HSM_BUSY', 'busy'));
      case 'fail':
        return Promise.reject(new HsmintError('ERR_HSM_UNAVAILABLE', 'CKR_DEVICE_ERROR'));
      case 'hang':
        return new Promise(() => {});
    }
  }
}

/** The token's condition as the test sets it; retry() counts the attempts asked for. */
function tokenHealth() {
  const state = { condition: { status: 'open' } as TokenCondition, retries: 0 };
  const health: TokenHealth = {
    condition: () => state.condition,
    retry: async () => {
      state.retries++;
      return state.condition;
    },
  };
  return { state, health };
}

const SEALED: TokenCondition = {
  status: 'sealed',
  reason: 'CKR_DEVICE_REMOVED',
  recovery: 'automatic',
  since: new Date(),
  attempts: 2,
};

describe('the authority on a token that seals', () => {
  let store: ProbedStore;
  let token: ReturnType<typeof tokenHealth>;
  let events: AuditEvent[];
  let authority: Authority;

  beforeEach(async () => {
    store = new ProbedStore();
    token = tokenHealth();
    events = [];
    const audit: AuditSink = {
      append: async (event) => {
        events.push(event);
        return { seq: events.length };
      },
      health: () => ({ ok: true }),
      lastTimestamp: () => undefined,
    };
    authority = await Authority.create({
      config: testConfig(),
      store,
      token: { label: 't', serial: '1' },
      tokenHealth: token.health,
      logger: pino({ level: 'silent' }),
      audit,
    });
  });

  it('reports sealed with the reason, and the health gauge reads it', async () => {
    token.state.condition = SEALED;
    expect(authority.health()).toMatchObject({
      status: 'sealed',
      reason: 'token sealed: CKR_DEVICE_REMOVED',
    });
    const metrics = await authority.metrics.text();
    expect(metrics).toContain('hsmint_health{status="sealed"} 1');
    expect(metrics).toContain('hsmint_health{status="ok"} 0');
  });

  it('refuses a mint at once while sealed, without touching the store or the audit log', async () => {
    token.state.condition = SEALED;
    const before = events.length;
    const error = await rejection(authority.mint({ aud: 'api' }, testCaller(), authority.settings));
    expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
    expect(error.status).toBe(503);
    expect(JSON.stringify(error.toJSON())).not.toContain('CKR_');
    expect(store.signCalls).toBe(0);
    expect(events.length).toBe(before);
  });

  it('still verifies while sealed: verification needs only public keys', async () => {
    const minted = await authority.mint({ aud: 'api' }, testCaller(), authority.settings);
    token.state.condition = SEALED;
    const result = await authority.verify({ token: minted.token });
    expect(result.valid).toBe(true);
  });

  it('records seals and recoveries, logs retries only, and forgets an old signing failure', async () => {
    store.signError = new Error('CKR_DEVICE_REMOVED');
    await rejection(authority.mint({ aud: 'api' }, testCaller(), authority.settings));
    expect(authority.health().status).toBe('degraded');
    store.signError = undefined;
    authority.tokenEvent({ event: 'token.sealed', reason: 'x', recovery: 'automatic' });
    authority.tokenEvent({
      event: 'token.reopen_failed',
      attempt: 1,
      reason: 'not found',
      recovery: 'automatic',
      retry_ms: 1000,
    });
    authority.tokenEvent({
      event: 'token.reopen_failed',
      attempt: 2,
      reason: 'wrong PIN',
      recovery: 'admin',
    });
    authority.tokenEvent({ event: 'token.unsealed', attempts: 3, sealed_ms: 4000 });
    await new Promise((resolve) => setImmediate(resolve));
    const recorded = events.filter((event) => event.event.startsWith('token.'));
    expect(recorded).toEqual([
      { event: 'token.sealed', reason: 'x', recovery: 'automatic' },
      { event: 'token.reopen_failed', attempt: 2, reason: 'wrong PIN', recovery: 'admin' },
      { event: 'token.unsealed', attempts: 3, sealed_ms: 4000 },
    ]);
    expect(authority.health().status).toBe('ok');
  });

  it('asks a sealed token for one re-open attempt on reload, and an open one for none', async () => {
    await authority.retryToken();
    expect(token.state.retries).toBe(0);
    token.state.condition = { ...SEALED, recovery: 'admin' };
    await authority.retryToken();
    expect(token.state.retries).toBe(1);
  });

  describe("the watchdog's probe", () => {
    it('passes while the token answers, and while it is only busy', async () => {
      await authority.probe(50);
      store.probeResult = 'busy';
      await authority.probe(50);
    });

    it('passes while sealed and re-opening by itself, or waiting for an admin', async () => {
      store.probeResult = 'fail';
      token.state.condition = SEALED;
      await authority.probe(50);
      token.state.condition = { ...SEALED, recovery: 'admin' };
      await authority.probe(50);
    });

    it('fails when the failure it meets is not (yet) a seal', async () => {
      store.probeResult = 'fail';
      expect((await rejection(authority.probe(50))).code).toBe('ERR_HSM_UNAVAILABLE');
    });

    it('fails when a call is hung in the module, so that systemd restarts the daemon', async () => {
      token.state.condition = { ...SEALED, recovery: 'restart' };
      expect((await rejection(authority.probe(50))).message).toContain('hung');
      token.state.condition = { status: 'open' };
      store.probeResult = 'hang';
      expect((await rejection(authority.probe(50))).message).toContain('50 ms');
    });
  });
});

describe('untilTokenOpens', () => {
  const sealedHealth: HealthResponse = {
    status: 'sealed',
    reason: 'token sealed: wrong PIN',
    issuer: 'urn:test',
    algorithm: 'ES256',
    active_kid: '',
    keys: 0,
    token: { label: 't', serial: '' },
    uptime_s: 0,
  };
  const context = (): RequestContext => ({
    log: {},
    params: {},
    caller: testCaller(),
    config: testConfig(),
  });

  let authority: Authority | undefined;
  let routes: Route[];
  const route = (method: string, path: string) =>
    routes.find((candidate) => candidate.method === method && candidate.path === path)!;

  beforeEach(() => {
    authority = undefined;
    routes = untilTokenOpens(
      createRoutes(
        () => {
          if (!authority) throw new Error('no authority yet');
          return authority;
        },
        { reload: async (): Promise<ReloadResponse> => ({ reloaded: true, restart_needed: [] }) },
      ),
      () => (authority ? undefined : sealedHealth),
    );
  });

  it('answers health 503 sealed with the reason, and every other route ERR_HSM_UNAVAILABLE', async () => {
    const health = await route('GET', '/v1/health').handle(undefined, context());
    expect(health.status).toBe(503);
    expect(health.body).toEqual(sealedHealth);
    for (const other of routes.filter((candidate) => candidate.path !== '/v1/health')) {
      const error = await rejection(other.handle({ aud: 'api' }, context()));
      expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
    }
  });

  it('hands every route to the authority once the token has opened', async () => {
    authority = await Authority.create({
      config: testConfig(),
      store: new MemoryKeyStore(),
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
    });
    const health = await route('GET', '/v1/health').handle(undefined, context());
    expect(health.status).toBe(200);
    const minted = await route('POST', '/v1/tokens').handle({ aud: 'api' }, context());
    expect(minted.status).toBe(201);
  });
});
