import { createHmac } from 'node:crypto';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { mintToken } from '../../core/jwt/mint.js';
import { ALGORITHMS } from '../../core/keys/algorithms.js';
import { openKeyStore } from '../../core/open.js';
import { HsmintClient } from '../../core/client/index.js';
import {
  makeToken,
  rawRequest,
  startDaemon,
  useDaemon,
  type RunningDaemon,
  type TestToken,
} from './support/harness.js';

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

describe.each(ALGORITHMS)('hsmintd on SoftHSM with %s', (alg) => {
  const env = useDaemon(alg);

  it('mints a token that the daemon verifies', async () => {
    const minted = await env.daemon.client.mint({
      aud: 'api',
      sub: 'svc:test',
      ttl: '2m',
      scope: ['read', 'write'],
      claims: { tenant: 't1' },
    });
    expect(minted.alg).toBe(alg);
    expect(minted.kid).toBe(env.token.kid);
    expect(minted.exp - minted.iat).toBe(120);
    const result = await env.daemon.client.verify(minted.token, { aud: 'api' });
    expect(result.valid).toBe(true);
    if (!result.valid) return;
    expect(result.header).toEqual({ alg, typ: 'JWT', kid: env.token.kid });
    expect(result.claims).toMatchObject({
      iss: 'urn:hsmint:test',
      sub: 'svc:test',
      aud: 'api',
      scope: 'read write',
      tenant: 't1',
      jti: minted.jti,
    });
  });

  it('mints tokens that an outside verifier checks with the JWKS alone', async () => {
    const minted = await env.daemon.client.mint({ aud: 'api' });
    const jwks = await env.daemon.client.jwks();
    expect(jwks.keys.every((key) => !('d' in key) && key.use === 'sig')).toBe(true);
    const { payload, protectedHeader } = await jwtVerify(minted.token, createLocalJWKSet(jwks), {
      algorithms: [alg],
      issuer: 'urn:hsmint:test',
      audience: 'api',
    });
    expect(protectedHeader.kid).toBe(minted.kid);
    expect(payload.jti).toBe(minted.jti);
  });
});

describe('verification rejects each bad token with its own code', () => {
  const env = useDaemon('ES256');
  let good: string;
  /** Tokens signed on the daemon's own key, with times and issuers the daemon would never set. */
  let crafted: { expired: string; future: string; otherIssuer: string };

  beforeAll(async () => {
    good = (await env.daemon.client.mint({ aud: 'api' })).token;
    // A second PKCS#11 application on the same token signs the odd tokens in-process.
    const { store } = await openKeyStore(loadConfig(env.token.config));
    try {
      const [key] = await store.list();
      const base = { audience: 'api', ttlSeconds: 60 } as const;
      crafted = {
        expired: (
          await mintToken(store, key!, {
            ...base,
            issuer: 'urn:hsmint:test',
            now: new Date(Date.now() - 3600_000),
          })
        ).token,
        future: (
          await mintToken(store, key!, {
            ...base,
            issuer: 'urn:hsmint:test',
            now: new Date(Date.now() + 3600_000),
          })
        ).token,
        otherIssuer: (
          await mintToken(store, key!, { ...base, issuer: 'urn:hsmint:elsewhere', now: new Date() })
        ).token,
      };
    } finally {
      await store.close();
    }
  });

  const expectCode = async (candidate: string, code: string, aud?: string) => {
    const result = await env.daemon.client.verify(candidate, aud === undefined ? {} : { aud });
    expect(result.valid).toBe(false);
    if (!result.valid) expect(result.error.code).toBe(code);
  };

  it('accepts the good token', async () => {
    expect((await env.daemon.client.verify(good, { aud: 'api' })).valid).toBe(true);
  });

  it('alg none', async () => {
    const [, payload] = good.split('.');
    const header = b64({ alg: 'none', typ: 'JWT', kid: env.token.kid });
    await expectCode(`${header}.${payload}.`, 'ERR_TOKEN_MALFORMED');
    await expectCode(`${header}.${payload}.AAAA`, 'ERR_TOKEN_ALG_NOT_ALLOWED');
  });

  it('HS256 signed with the public key', async () => {
    const jwks = await env.daemon.client.jwks();
    const secret = JSON.stringify(jwks.keys[0]);
    const [, payload] = good.split('.');
    const header = b64({ alg: 'HS256', typ: 'JWT', kid: env.token.kid });
    const signature = createHmac('sha256', secret)
      .update(`${header}.${payload}`)
      .digest('base64url');
    await expectCode(`${header}.${payload}.${signature}`, 'ERR_TOKEN_ALG_NOT_ALLOWED');
  });

  it('unknown kid', async () => {
    const [, payload, signature] = good.split('.');
    await expectCode(
      `${b64({ alg: 'ES256', typ: 'JWT', kid: 'not-a-key-of-ours' })}.${payload}.${signature}`,
      'ERR_TOKEN_KID_UNKNOWN',
    );
    await expectCode(
      `${b64({ alg: 'ES256', typ: 'JWT', kid: '../../etc/passwd' })}.${payload}.${signature}`,
      'ERR_TOKEN_KID_UNKNOWN',
    );
  });

  it('bad signature', async () => {
    const [header, payload, signature] = good.split('.');
    const bytes = Buffer.from(signature!, 'base64url');
    bytes[10]! ^= 0x01;
    await expectCode(
      `${header}.${payload}.${bytes.toString('base64url')}`,
      'ERR_TOKEN_SIGNATURE_INVALID',
    );
    const tampered = b64({
      ...JSON.parse(Buffer.from(payload!, 'base64url').toString()),
      sub: 'admin',
    });
    await expectCode(`${header}.${tampered}.${signature}`, 'ERR_TOKEN_SIGNATURE_INVALID');
  });

  it('expired, not yet valid, wrong issuer, wrong audience', async () => {
    await expectCode(crafted.expired, 'ERR_TOKEN_EXPIRED');
    await expectCode(crafted.future, 'ERR_TOKEN_NOT_YET_VALID');
    await expectCode(crafted.otherIssuer, 'ERR_TOKEN_ISSUER_MISMATCH');
    await expectCode(good, 'ERR_TOKEN_AUDIENCE_MISMATCH', 'billing');
  });

  it('malformed compact forms', async () => {
    for (const candidate of [
      '',
      'abc',
      'a.b',
      `${good}.extra`,
      good.replace('.', '.!'),
      'e30.e30.e30',
      `x${good}`,
    ]) {
      await expectCode(candidate, 'ERR_TOKEN_MALFORMED');
    }
  });
});

describe('bad requests get a 4xx with a stable code and the daemon keeps serving', () => {
  const env = useDaemon('ES256');

  const post = (
    path: string,
    body: string | Buffer,
    headers: Record<string, string> = { 'content-type': 'application/json' },
  ) => rawRequest(env.token.socket, { method: 'POST', path, headers, body });

  it.each([
    [
      'an oversized body',
      () => post('/v1/tokens', JSON.stringify({ aud: 'api', sub: 'x'.repeat(70 * 1024) })),
      413,
      'ERR_BODY_TOO_LARGE',
    ],
    ['malformed JSON', () => post('/v1/tokens', '{"aud": "api",'), 400, 'ERR_MALFORMED_JSON'],
    [
      'bad UTF-8',
      () => post('/v1/tokens', Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x7d])),
      400,
      'ERR_MALFORMED_JSON',
    ],
    [
      'a wrong type',
      () => post('/v1/tokens', JSON.stringify({ aud: 42 })),
      400,
      'ERR_INVALID_REQUEST',
    ],
    [
      'a float ttl',
      () => post('/v1/tokens', JSON.stringify({ aud: 'api', ttl: 1.5 })),
      400,
      'ERR_INVALID_REQUEST',
    ],
    [
      'an unknown field',
      () => post('/v1/tokens', JSON.stringify({ aud: 'api', admin: true })),
      400,
      'ERR_UNKNOWN_FIELD',
    ],
    [
      'a missing field',
      () => post('/v1/tokens', JSON.stringify({ sub: 'x' })),
      400,
      'ERR_MISSING_FIELD',
    ],
    [
      'a reserved claim',
      () => post('/v1/tokens', JSON.stringify({ aud: 'api', claims: { exp: 9999999999 } })),
      400,
      'ERR_RESERVED_CLAIM',
    ],
    [
      'a ttl over the max',
      () => post('/v1/tokens', JSON.stringify({ aud: 'api', ttl: '2h' })),
      400,
      'ERR_TTL_TOO_LONG',
    ],
    [
      'an audience not configured',
      () => post('/v1/tokens', JSON.stringify({ aud: 'billing' })),
      403,
      'ERR_AUDIENCE_NOT_ALLOWED',
    ],
    [
      'no content type',
      () => post('/v1/tokens', JSON.stringify({ aud: 'api' }), {}),
      415,
      'ERR_UNSUPPORTED_MEDIA_TYPE',
    ],
    [
      'a verify body with a number token',
      () => post('/v1/tokens/verify', JSON.stringify({ token: 1 })),
      400,
      'ERR_INVALID_REQUEST',
    ],
    [
      'an unknown route',
      () => rawRequest(env.token.socket, { method: 'GET', path: '/v1/nothing' }),
      404,
      'ERR_NOT_FOUND',
    ],
    [
      'a wrong method',
      () => rawRequest(env.token.socket, { method: 'DELETE', path: '/v1/tokens' }),
      405,
      'ERR_METHOD_NOT_ALLOWED',
    ],
  ] as const)('%s', async (_name, send, status, code) => {
    const response = await send();
    expect(response.status).toBe(status);
    expect(response.json.error.code).toBe(code);
    const health = await env.daemon.client.health();
    expect(health.status).toBe('ok');
    const minted = await env.daemon.client.mint({ aud: 'api' });
    expect((await env.daemon.client.verify(minted.token)).valid).toBe(true);
  });

  it('answers broken HTTP with 400 and keeps serving', async () => {
    const { connect } = await import('node:net');
    const reply = await new Promise<string>((resolve) => {
      const socket = connect(env.token.socket);
      let data = '';
      socket.on('data', (chunk) => (data += chunk.toString()));
      socket.on('close', () => resolve(data));
      socket.end('NONSENSE\r\n\r\n');
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
    expect(reply).toContain('ERR_INVALID_REQUEST');
    expect((await env.daemon.client.health()).status).toBe('ok');
  });

  it('never writes a token or the PIN to its log', async () => {
    const minted = await env.daemon.client.mint({ aud: 'api' });
    await env.daemon.client.verify(minted.token);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const output = env.daemon.output();
    const { readFile } = await import('node:fs/promises');
    const pin = (await readFile(env.token.pinFile, 'utf8')).trim();
    expect(output).toContain(minted.jti);
    expect(output).not.toContain(minted.token.split('.')[2]);
    expect(output).not.toContain(minted.token.split('.')[1]);
    expect(output).not.toContain(pin);
    for (const line of output.trim().split('\n')) expect(() => JSON.parse(line)).not.toThrow();
  });
});

describe('under load', () => {
  const env = useDaemon('ES256');

  it('answers 500 concurrent mints, each with a unique jti and a valid signature', async () => {
    const minted = await Promise.all(
      Array.from({ length: 500 }, (_, i) =>
        env.daemon.client.mint({ aud: 'api', sub: `svc:${i}` }),
      ),
    );
    expect(new Set(minted.map((m) => m.jti)).size).toBe(500);
    const keys = createLocalJWKSet(await env.daemon.client.jwks());
    for (const [i, m] of minted.entries()) {
      const { payload } = await jwtVerify(m.token, keys, {
        algorithms: ['ES256'],
        issuer: 'urn:hsmint:test',
        audience: 'api',
      });
      expect(payload.sub).toBe(`svc:${i}`);
    }
    const checks = await Promise.all(
      minted.slice(0, 100).map((m) => env.daemon.client.verify(m.token, { aud: 'api' })),
    );
    expect(checks.every((check) => check.valid)).toBe(true);
  });

  it('drains in-flight mints on SIGTERM, then closes the token and removes the socket', async () => {
    const client = new HsmintClient({ socketPath: env.token.socket });
    await client.health(); // connections are open before the signal
    const exited = new Promise<number | null>((resolve) =>
      env.daemon.process.once('exit', resolve),
    );
    const inFlight = Array.from({ length: 50 }, () => client.mint({ aud: 'api' }));
    await new Promise((resolve) => setTimeout(resolve, 5));
    env.daemon.process.kill('SIGTERM');
    const results = await Promise.allSettled(inFlight);
    client.close();
    const answered = results.filter((result) => result.status === 'fulfilled');
    const refused = results.filter((result) => result.status === 'rejected');
    // Every request is either answered with a token or cleanly refused; none is cut off mid-way.
    for (const failure of refused) {
      expect((failure as PromiseRejectedResult).reason.code).toMatch(
        /^ERR_(SHUTTING_DOWN|DAEMON_UNREACHABLE)$/,
      );
    }
    expect(answered.length).toBeGreaterThan(0);
    expect(await exited).toBe(0);
    const { existsSync } = await import('node:fs');
    expect(existsSync(env.token.socket)).toBe(false);
    expect(env.daemon.logs().some((line) => line['event'] === 'daemon.stop')).toBe(true);
  });
});

describe('slow and oversized HTTP', () => {
  const env = useDaemon('ES256');

  /** Sends raw bytes, then reads until the daemon closes; resolves with what came back and when. */
  const exchange = async (bytes: string, keepOpen: boolean) => {
    const { connect } = await import('node:net');
    const started = Date.now();
    return new Promise<{ reply: string; ms: number }>((resolve) => {
      const socket = connect(env.token.socket);
      let reply = '';
      socket.on('data', (chunk) => (reply += chunk.toString()));
      socket.on('close', () => resolve({ reply, ms: Date.now() - started }));
      if (keepOpen) socket.write(bytes);
      else socket.end(bytes);
    });
  };

  it.each([
    ['never finishes its headers', 'POST /v1/tokens HTTP/1.1\r\nhost: x\r\n'],
    ['sends nothing at all', ''],
  ])('cuts a client that %s, with 408, within a second of the 5 s limit', async (_case, bytes) => {
    const { reply, ms } = await exchange(bytes, true);
    expect(reply).toMatch(/^HTTP\/1\.1 408/);
    expect(reply).toContain('ERR_REQUEST_TIMEOUT');
    expect(ms).toBeGreaterThanOrEqual(4_500);
    expect(ms).toBeLessThan(7_000);
    expect((await env.daemon.client.health()).status).toBe('ok');
  });

  it('refuses headers over 8 KiB with 431', async () => {
    const { reply } = await exchange(
      `GET /v1/health HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(10_000)}\r\n\r\n`,
      false,
    );
    expect(reply).toMatch(/^HTTP\/1\.1 431/);
    expect(reply).toContain('ERR_HEADERS_TOO_LARGE');
    expect((await env.daemon.client.health()).status).toBe('ok');
  });
});
