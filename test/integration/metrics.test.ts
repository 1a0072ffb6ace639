import { describe, expect, it } from 'vitest';
import { HsmintError } from '../../core/errors.js';
import { parseExposition } from '../support/prometheus.js';
import { hsmint, rawRequest, useDaemon } from './support/harness.js';

const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

describe('GET /v1/metrics on a real daemon', () => {
  const env = useDaemon();

  it('counts mints and verifies, and times requests, signatures and audit writes', async () => {
    const { client } = env.daemon;
    await client.mint({ aud: 'api' });
    await client.mint({ aud: 'api', ttl: '1m' });
    const refused = await client.mint({ aud: 'elsewhere' }).catch((error: unknown) => error);
    expect((refused as HsmintError).code).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    const bad = await client.verify('not.a.token');
    expect(bad.valid).toBe(false);

    const parsed = parseExposition(await client.metrics());
    expect(parsed.value('hsmint_mints_total', { outcome: 'ok' })).toBe(2);
    expect(
      parsed.value('hsmint_mints_total', { outcome: 'error', code: 'ERR_AUDIENCE_NOT_ALLOWED' }),
    ).toBe(1);
    expect(
      parsed.value('hsmint_verifies_total', { outcome: 'invalid', code: 'ERR_TOKEN_MALFORMED' }),
    ).toBe(1);
    expect(parsed.find('hsmint_verifies_total', { outcome: 'valid' })).toEqual([]);

    const requests = (labels: Record<string, string>) =>
      parsed.value('hsmint_http_request_duration_seconds_count', labels);
    expect(requests({ method: 'POST', route: '/v1/tokens', status_class: '2xx' })).toBe(2);
    expect(requests({ method: 'POST', route: '/v1/tokens', status_class: '4xx' })).toBe(1);
    expect(requests({ method: 'POST', route: '/v1/tokens/verify', status_class: '2xx' })).toBe(1);
    // The scrape being answered is not in its own text yet.
    expect(
      parsed.find('hsmint_http_request_duration_seconds_count', { route: '/v1/metrics' }),
    ).toEqual([]);

    // Two signatures on SoftHSM; the refused mint never reached the token.
    expect(
      parsed.value('hsmint_token_sign_duration_seconds_count', { alg: 'ES256', outcome: 'ok' }),
    ).toBe(2);
    expect(
      parsed.value('hsmint_token_sign_duration_seconds_sum', { alg: 'ES256', outcome: 'ok' }),
    ).toBeGreaterThan(0);

    // At least daemon.start and the two mints (answered only once durable); the denial and
    // the verify failure are recorded without holding up their answers.
    const batches = parsed.value('hsmint_audit_write_duration_seconds_count');
    const records = parsed.value('hsmint_audit_records_written_total');
    expect(batches).toBeGreaterThanOrEqual(1);
    expect(records).toBeGreaterThanOrEqual(3);
    expect(records).toBeGreaterThanOrEqual(batches);
    expect(parsed.value('hsmint_audit_write_duration_seconds_sum')).toBeGreaterThan(0);

    expect(
      parsed.value('hsmint_key_state', { kid: env.token.kid, alg: 'ES256', state: 'active' }),
    ).toBe(1);
    expect(
      parsed.value('hsmint_key_age_seconds', { kid: env.token.kid, state: 'active' }),
    ).toBeGreaterThanOrEqual(0);
    expect(parsed.value('hsmint_health', { status: 'ok' })).toBe(1);
    expect(parsed.value('hsmint_health', { status: 'degraded' })).toBe(0);

    // The token's signing sessions, read from the PKCS#11 pool, which opens them all at start.
    const limit = parsed.value('hsmint_token_sessions_limit');
    const busy = parsed.value('hsmint_token_sessions', { state: 'busy' });
    const idle = parsed.value('hsmint_token_sessions', { state: 'idle' });
    expect(limit).toBeGreaterThanOrEqual(1);
    expect(busy + idle).toBe(limit);
    expect(parsed.value('hsmint_token_session_waiters')).toBe(0);

    expect(parsed.value('process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(parsed.types.get('nodejs_eventloop_lag_seconds')).toBe('gauge');
  });

  it('answers with the Prometheus content type, not to be cached', async () => {
    const answer = await rawRequest(env.token.socket, { method: 'GET', path: '/v1/metrics' });
    expect(answer.status).toBe(200);
    expect(answer.headers['content-type']).toBe(CONTENT_TYPE);
    expect(answer.headers['cache-control']).toBe('no-store');
  });

  it('counts the earlier scrapes by their route pattern, and logs each like any GET', async () => {
    const parsed = parseExposition(await env.daemon.client.metrics());
    expect(
      parsed.value('hsmint_http_request_duration_seconds_count', {
        method: 'GET',
        route: '/v1/metrics',
        status_class: '2xx',
      }),
    ).toBe(2);
    const scrapes = () => env.daemon.logs().filter((line) => line['path'] === '/v1/metrics');
    // The line is written once the answer has left: give the log pipe a moment.
    for (let tries = 0; scrapes().length < 3 && tries < 40; tries++)
      await new Promise((resolve) => setTimeout(resolve, 50));
    const lines = scrapes();
    expect(lines).toHaveLength(3);
    expect(lines.every((line) => line['event'] === 'http.request')).toBe(true);
  });

  it('hsmint metrics prints the text', async () => {
    const result = await hsmint(['--socket', env.token.socket, 'metrics']);
    expect(result.code).toBe(0);
    expect(parseExposition(result.stdout).value('hsmint_mints_total', { outcome: 'ok' })).toBe(2);
  });
});

describe('GET /v1/metrics for a caller without an admin rule', () => {
  // The same user as above, but its rule no longer says admin: it may mint, not read metrics.
  const env = useDaemon('ES256', (config) => {
    config['policy']['rules'][0]['admin'] = false;
  });

  it('is refused with ERR_FORBIDDEN, over HTTP, the client and the CLI', async () => {
    const answer = await rawRequest(env.token.socket, { method: 'GET', path: '/v1/metrics' });
    expect(answer.status).toBe(403);
    expect(answer.json.error.code).toBe('ERR_FORBIDDEN');
    await expect(env.daemon.client.metrics()).rejects.toMatchObject({ code: 'ERR_FORBIDDEN' });
    const result = await hsmint(['--socket', env.token.socket, 'metrics']);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toContain('ERR_FORBIDDEN');
    // Minting still works: only the admin part of the grant is gone.
    expect((await env.daemon.client.mint({ aud: 'api' })).token).toBeTruthy();
  });
});
