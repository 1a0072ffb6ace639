import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { register as globalRegistry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../../core/audit/log.js';
import type { AuditEvent } from '../../../core/audit/record.js';
import type { SessionUse } from '../../../core/keys/keystore.js';
import type { Caller } from '../../../core/policy/caller.js';
import type { MintResponse } from '../../../core/protocol.js';
import { Authority, type AuditSink } from '../../../daemon/authority.js';
import { createRoutes } from '../../../daemon/handlers.js';
import { DaemonMetrics, METRICS_CONTENT_TYPE } from '../../../daemon/metrics.js';
import { ApiServer, PlainText, type RequestContext, type Route } from '../../../daemon/server.js';
import { adminCaller, strangerCaller, testCaller, testConfig } from '../../support/config.js';
import { MemoryKeyStore } from '../../support/memory-keystore.js';
import { parseExposition, type Exposition } from '../../support/prometheus.js';

const CONFIG = testConfig();
const START = new Date('2026-11-28T14:00:00Z');

function ctx(caller: Caller = testCaller()): RequestContext {
  return { log: {}, params: {}, caller, config: CONFIG };
}

/** A memory store that reports a session pool, as the PKCS#11 store does. */
class PooledMemoryKeyStore extends MemoryKeyStore {
  use: SessionUse = { open: 4, busy: 1, limit: 8, waiting: 0 };
  sessions(): SessionUse {
    return this.use;
  }
}

/** An audit sink that takes every record at once and remembers it. */
class RecordingAudit implements AuditSink {
  readonly events: AuditEvent[] = [];
  async append(event: AuditEvent): Promise<{ seq: number }> {
    this.events.push(event);
    return { seq: this.events.length };
  }
  health(): { ok: boolean } {
    return { ok: true };
  }
  lastTimestamp(): Date | undefined {
    return undefined;
  }
}

describe('metrics', () => {
  let now: Date;
  let store: PooledMemoryKeyStore;
  let audit: RecordingAudit;
  let authority: Authority;
  let routes: Route[];

  function route(method: Route['method'], path: string): Route {
    const found = routes.find((r) => r.method === method && r.path === path);
    if (!found) throw new Error(`no route ${method} ${path}`);
    return found;
  }

  /** GET /v1/metrics as an admin, parsed. */
  async function scrape(): Promise<Exposition> {
    const reply = await route('GET', '/v1/metrics').handle(undefined, ctx(adminCaller()));
    expect(reply.body).toBeInstanceOf(PlainText);
    return parseExposition((reply.body as PlainText).text);
  }

  const mint = (body: unknown, caller?: Caller) =>
    route('POST', '/v1/tokens').handle(body, ctx(caller));
  const verify = (body: unknown) => route('POST', '/v1/tokens/verify').handle(body, ctx());

  beforeEach(async () => {
    now = START;
    store = new PooledMemoryKeyStore({ now: () => now });
    audit = new RecordingAudit();
    authority = await Authority.create({
      config: CONFIG,
      store,
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
      now: () => now,
      audit,
    });
    routes = createRoutes(authority, {
      async reload() {
        return { reloaded: true, restart_needed: [] };
      },
    });
  });

  describe('GET /v1/metrics', () => {
    it('answers an admin with the Prometheus text, not to be cached', async () => {
      const reply = await route('GET', '/v1/metrics').handle(undefined, ctx(adminCaller()));
      expect(reply.status).toBe(200);
      expect(reply.headers?.['cache-control']).toBe('no-store');
      const body = reply.body as PlainText;
      expect(body.contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
      const parsed = parseExposition(body.text);
      expect(parsed.types.get('hsmint_mints_total')).toBe('counter');
      expect(parsed.types.get('hsmint_http_request_duration_seconds')).toBe('histogram');
      expect(parsed.types.get('hsmint_key_state')).toBe('gauge');
    });

    it('refuses a caller without an admin rule, and one without any rule', async () => {
      for (const caller of [testCaller(), strangerCaller()]) {
        await expect(
          route('GET', '/v1/metrics').handle(undefined, ctx(caller)),
        ).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
      }
    });

    it('lets a rule with metrics: true read them, and nothing else of the admin routes', async () => {
      const reader = testCaller();
      const rules = CONFIG.policy.rules.map((rule) => ({ ...rule, metrics: true }));
      const config = { ...CONFIG, policy: { rules } };
      const context = { log: {}, params: {}, caller: reader, config };
      const reply = await route('GET', '/v1/metrics').handle(undefined, context);
      expect(reply.status).toBe(200);
      await expect(route('GET', '/v1/keys').handle(undefined, context)).rejects.toMatchObject({
        code: 'ERR_FORBIDDEN',
      });
    });

    it('writes no audit record', async () => {
      await new Promise((resolve) => setImmediate(resolve)); // start-up records settle
      const before = audit.events.length;
      await scrape();
      await scrape();
      expect(audit.events).toHaveLength(before);
    });
  });

  describe('mints', () => {
    it('counts a good mint as ok, with no code', async () => {
      await mint({ aud: 'api' });
      await mint({ aud: 'api' });
      const parsed = await scrape();
      expect(parsed.value('hsmint_mints_total', { outcome: 'ok' })).toBe(2);
      expect(parsed.find('hsmint_mints_total', { outcome: 'ok' })[0]?.labels).toEqual({
        outcome: 'ok',
      });
      expect(parsed.find('hsmint_mints_total', { outcome: 'error' })).toEqual([]);
    });

    it('counts refusals by their code: policy, body and ttl', async () => {
      await expect(mint({ aud: 'api' }, strangerCaller())).rejects.toMatchObject({
        code: 'ERR_FORBIDDEN',
      });
      await expect(mint({ aud: 'nope' })).rejects.toMatchObject({
        code: 'ERR_AUDIENCE_NOT_ALLOWED',
      });
      await expect(mint({})).rejects.toMatchObject({ code: 'ERR_MISSING_FIELD' });
      await expect(mint({ aud: 'api', ttl: '2h' })).rejects.toMatchObject({
        code: 'ERR_TTL_TOO_LONG',
      });
      const parsed = await scrape();
      for (const code of [
        'ERR_FORBIDDEN',
        'ERR_AUDIENCE_NOT_ALLOWED',
        'ERR_MISSING_FIELD',
        'ERR_TTL_TOO_LONG',
      ])
        expect(parsed.value('hsmint_mints_total', { outcome: 'error', code })).toBe(1);
      expect(parsed.find('hsmint_mints_total', { outcome: 'ok' })).toEqual([]);
      // Refused before the token was asked: no signature was timed.
      expect(parsed.find('hsmint_token_sign_duration_seconds_count')).toEqual([]);
    });

    it('times each signature on the token by algorithm and outcome', async () => {
      await mint({ aud: 'api' });
      let parsed = await scrape();
      expect(
        parsed.value('hsmint_token_sign_duration_seconds_count', { alg: 'ES256', outcome: 'ok' }),
      ).toBe(1);
      expect(
        parsed.value('hsmint_token_sign_duration_seconds_bucket', {
          alg: 'ES256',
          outcome: 'ok',
          le: '+Inf',
        }),
      ).toBe(1);
      expect(
        parsed.value('hsmint_token_sign_duration_seconds_sum', { alg: 'ES256', outcome: 'ok' }),
      ).toBeGreaterThan(0);

      store.signError = new Error('CKR_DEVICE_ERROR:48');
      await expect(mint({ aud: 'api' })).rejects.toMatchObject({ code: 'ERR_HSM_UNAVAILABLE' });
      parsed = await scrape();
      expect(
        parsed.value('hsmint_token_sign_duration_seconds_count', {
          alg: 'ES256',
          outcome: 'error',
        }),
      ).toBe(1);
      expect(
        parsed.value('hsmint_mints_total', { outcome: 'error', code: 'ERR_HSM_UNAVAILABLE' }),
      ).toBe(1);
    });
  });

  describe('verifies', () => {
    it('counts valid, invalid by reason, and failed requests apart', async () => {
      const minted = (await mint({ aud: 'api' })).body as MintResponse;
      await verify({ token: minted.token });
      await verify({ token: minted.token, aud: 'other' });
      await verify({ token: 'not.a.jwt' });
      await verify({ token: `${minted.token.slice(0, -4)}AAAA` });
      await expect(verify({ aud: 'api' })).rejects.toMatchObject({ code: 'ERR_MISSING_FIELD' });
      const parsed = await scrape();
      expect(parsed.value('hsmint_verifies_total', { outcome: 'valid' })).toBe(1);
      expect(
        parsed.value('hsmint_verifies_total', {
          outcome: 'invalid',
          code: 'ERR_TOKEN_AUDIENCE_MISMATCH',
        }),
      ).toBe(1);
      expect(
        parsed.value('hsmint_verifies_total', { outcome: 'invalid', code: 'ERR_TOKEN_MALFORMED' }),
      ).toBe(1);
      expect(
        parsed.value('hsmint_verifies_total', {
          outcome: 'invalid',
          code: 'ERR_TOKEN_SIGNATURE_INVALID',
        }),
      ).toBe(1);
      expect(
        parsed.value('hsmint_verifies_total', { outcome: 'error', code: 'ERR_MISSING_FIELD' }),
      ).toBe(1);
    });

    it('does not count the verification inside a revoke as a verify', async () => {
      const minted = (await mint({ aud: 'api' })).body as MintResponse;
      await route('POST', '/v1/tokens/revoke').handle({ token: minted.token }, ctx());
      expect((await scrape()).find('hsmint_verifies_total')).toEqual([]);
    });
  });

  describe('keys, health and sessions', () => {
    it('shows each key in the lifecycle with its state and age', async () => {
      const first = authority.activeKey.kid;
      now = new Date(START.getTime() + 100_000);
      let parsed = await scrape();
      expect(parsed.value('hsmint_key_state', { kid: first, alg: 'ES256', state: 'active' })).toBe(
        1,
      );
      expect(parsed.value('hsmint_key_age_seconds', { kid: first, state: 'active' })).toBe(100);

      await authority.rotateNow();
      const second = authority.activeKey.kid;
      parsed = await scrape();
      expect(parsed.value('hsmint_key_state', { kid: second, state: 'active' })).toBe(1);
      expect(parsed.value('hsmint_key_state', { kid: first, state: 'retiring' })).toBe(1);
      // Only the keys the lifecycle holds now: no stale series for a key's earlier state.
      expect(parsed.find('hsmint_key_state')).toHaveLength(authority.keyRecords().length);
      expect(parsed.find('hsmint_key_state', { kid: first })).toHaveLength(1);
    });

    it('drops a key from the gauges once the lifecycle lets it go', async () => {
      const first = authority.activeKey.kid;
      await authority.rotateNow();
      await authority.revokeKey(first);
      const parsed = await scrape();
      expect(authority.keyRecords().map((key) => key.kid)).not.toContain(first);
      expect(parsed.find('hsmint_key_state', { kid: first })).toEqual([]);
      expect(parsed.find('hsmint_key_age_seconds', { kid: first })).toEqual([]);
    });

    it('sets 1 on the current health status and 0 on the others', async () => {
      let parsed = await scrape();
      expect(parsed.value('hsmint_health', { status: 'ok' })).toBe(1);
      expect(parsed.value('hsmint_health', { status: 'degraded' })).toBe(0);
      expect(parsed.value('hsmint_health', { status: 'sealed' })).toBe(0);
      store.signError = new Error('CKR_DEVICE_REMOVED:50');
      await mint({ aud: 'api' }).catch(() => undefined);
      parsed = await scrape();
      expect(parsed.value('hsmint_health', { status: 'ok' })).toBe(0);
      expect(parsed.value('hsmint_health', { status: 'degraded' })).toBe(1);
    });

    it("reads the token's sessions through the key store at each scrape", async () => {
      let parsed = await scrape();
      expect(parsed.value('hsmint_token_sessions', { state: 'busy' })).toBe(1);
      expect(parsed.value('hsmint_token_sessions', { state: 'idle' })).toBe(3);
      expect(parsed.value('hsmint_token_sessions_limit')).toBe(8);
      expect(parsed.value('hsmint_token_session_waiters')).toBe(0);
      store.use = { open: 8, busy: 8, limit: 8, waiting: 5 };
      parsed = await scrape();
      expect(parsed.value('hsmint_token_sessions', { state: 'idle' })).toBe(0);
      expect(parsed.value('hsmint_token_session_waiters')).toBe(5);
    });

    it('leaves the session gauges empty for a store without a session pool', async () => {
      const plain = await Authority.create({
        config: CONFIG,
        store: new MemoryKeyStore(),
        token: { label: 't', serial: '1' },
        logger: pino({ level: 'silent' }),
      });
      const parsed = parseExposition(await plain.metrics.text());
      for (const name of [
        'hsmint_token_sessions',
        'hsmint_token_sessions_limit',
        'hsmint_token_session_waiters',
      ]) {
        expect(parsed.types.has(name)).toBe(false);
        expect(parsed.find(name)).toEqual([]);
      }
    });
  });

  describe('DaemonMetrics', () => {
    it("keeps each instance's counts in its own registry, none in prom-client's global one", async () => {
      const one = new DaemonMetrics({ processMetrics: false });
      const two = new DaemonMetrics({ processMetrics: false });
      one.mint('ok');
      one.mint('ok');
      two.mint('error', 'ERR_FORBIDDEN');
      expect(parseExposition(await one.text()).value('hsmint_mints_total')).toBe(2);
      expect(
        parseExposition(await two.text()).value('hsmint_mints_total', { code: 'ERR_FORBIDDEN' }),
      ).toBe(1);
      expect(await globalRegistry.metrics()).not.toContain('hsmint_');
    });

    it('adds the process metrics when asked (the daemon does)', async () => {
      const parsed = parseExposition(await new DaemonMetrics().text());
      expect(parsed.value('process_resident_memory_bytes')).toBeGreaterThan(0);
      expect(parsed.types.get('nodejs_eventloop_lag_seconds')).toBe('gauge');
      expect(parsed.find('hsmint_health')).toHaveLength(3); // no sources yet: every status 0
      expect(parsed.find('hsmint_health').every((sample) => sample.value === 0)).toBe(true);
    });
  });
});

describe('the audit log write hook', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hsmint-metrics-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  const open = (observeWrite: (seconds: number, records: number) => void) =>
    AuditLog.open({
      dir,
      checkpointEvery: { records: 1_000_000, seconds: 1_000_000 },
      segmentBytes: 1 << 20,
      observeWrite,
    });

  it('observes each durable batch: its time and its records', async () => {
    const metrics = new DaemonMetrics({ processMetrics: false });
    const log = await open(metrics.auditWrite);
    await Promise.all([
      log.append({ event: 'test.a' }),
      log.append({ event: 'test.b' }),
      log.append({ event: 'test.c' }),
    ]);
    await log.append({ event: 'test.d' });
    await log.close();
    const parsed = parseExposition(await metrics.text());
    expect(parsed.value('hsmint_audit_records_written_total')).toBe(4);
    const batches = parsed.value('hsmint_audit_write_duration_seconds_count');
    // One fdatasync per batch: the three concurrent appends share at most two.
    expect(batches).toBeGreaterThanOrEqual(2);
    expect(batches).toBeLessThanOrEqual(3);
    expect(parsed.value('hsmint_audit_write_duration_seconds_sum')).toBeGreaterThan(0);
  });

  it('keeps writing when the hook throws', async () => {
    const log = await open(() => {
      throw new Error('metrics broke');
    });
    await expect(log.append({ event: 'test.a' })).resolves.toEqual({ seq: 1 });
    expect(log.health().ok).toBe(true);
    await log.close();
  });
});

describe('ApiServer request timing', () => {
  let dir: string;
  let server: ApiServer;
  let metrics: DaemonMetrics;
  let logged: Array<Record<string, unknown>>;
  let socketPath: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hsmint-metrics-'));
    socketPath = join(dir, 's');
    metrics = new DaemonMetrics({ processMetrics: false });
    const authority = await Authority.create({
      config: CONFIG,
      store: new MemoryKeyStore(),
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
      metrics,
    });
    logged = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n'))
          if (line) logged.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    const routes = createRoutes(authority, {
      async reload() {
        return { reloaded: true, restart_needed: [] };
      },
    });
    server = new ApiServer(routes, pino({ level: 'info' }, sink), {
      identify: () => ({ caller: adminCaller(), startTime: undefined }),
      currentCaller: (peer) => peer.caller,
      config: () => CONFIG,
      perUid: () => ({ connections: 16, requests: 16 }),
      metrics,
    });
    await new Promise<void>((resolve) => server.http.listen(socketPath, resolve));
  });

  afterEach(async () => {
    await server.drain(1000);
    await rm(dir, { recursive: true, force: true });
  });

  function send(
    method: string,
    path: string,
  ): Promise<{ status: number; type: string | undefined; text: string }> {
    return new Promise((resolve, reject) => {
      const req = request(
        { socketPath, method, path, headers: { host: 'hsmint', connection: 'close' } },
        (res) => {
          let text = '';
          res.on('data', (chunk: Buffer) => (text += chunk.toString()));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], text }),
          );
        },
      );
      req.on('error', reject);
      req.end();
    });
  }

  it('serves the text with its content type over the socket', async () => {
    const answer = await send('GET', '/v1/metrics');
    expect(answer.status).toBe(200);
    expect(answer.type).toBe(METRICS_CONTENT_TYPE);
    expect(() => parseExposition(answer.text)).not.toThrow();
  });

  it('labels requests by route pattern, method and status class, never by raw path', async () => {
    await send('GET', '/v1/jwks');
    await send('GET', '/v1/jwks?x=1');
    await send('POST', '/v1/keys/caller-chosen-kid/revoke');
    await send('GET', '/v1/secret-looking-path');
    await send('PUT', '/v1/jwks');
    const text = (await send('GET', '/v1/metrics')).text;
    expect(text).not.toContain('caller-chosen-kid');
    expect(text).not.toContain('secret-looking-path');
    expect(text).not.toContain('PUT');
    const parsed = parseExposition(text);
    const count = (labels: Record<string, string>) =>
      parsed.value('hsmint_http_request_duration_seconds_count', labels);
    expect(count({ method: 'GET', route: '/v1/jwks', status_class: '2xx' })).toBe(2);
    expect(count({ method: 'POST', route: '/v1/keys/{kid}/revoke', status_class: '4xx' })).toBe(1);
    expect(count({ method: 'GET', route: 'unmatched', status_class: '4xx' })).toBe(1);
    expect(count({ method: 'other', route: '/v1/jwks', status_class: '4xx' })).toBe(1);
  });

  it('logs one request line per scrape, like any GET', async () => {
    await send('GET', '/v1/metrics');
    await send('GET', '/v1/metrics');
    expect(logged).toHaveLength(2);
    for (const line of logged)
      expect(line).toMatchObject({ event: 'http.request', path: '/v1/metrics', status: 200 });
  });
});
