import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { HsmintClient, tokenSource } from '../../core/client/index.js';
import { ROOT, useDaemon } from './support/harness.js';

const run = promisify(execFile);

describe('the client library', () => {
  const env = useDaemon('EdDSA');

  it('is importable as hsmint/client by a Node service, and mints and verifies', async () => {
    // A separate process importing the package by name, as a service would.
    const script = `
      import { HsmintClient } from 'hsmint/client';
      const client = new HsmintClient({ socketPath: process.argv[1] });
      const minted = await client.mint({ aud: 'api', sub: 'svc:lib', ttl: 60 });
      const verified = await client.verify(minted.token, { aud: 'api' });
      const jwks = await client.jwks();
      client.close();
      console.log(JSON.stringify({ alg: minted.alg, valid: verified.valid, keys: jwks.keys.length }));
    `;
    const { stdout } = await run(
      process.execPath,
      ['--input-type=module', '-e', script, env.token.socket],
      { cwd: ROOT },
    );
    expect(JSON.parse(stdout)).toEqual({ alg: 'EdDSA', valid: true, keys: 1 });
  });

  it('reuses one kept-alive connection for many calls', async () => {
    const client = new HsmintClient({ socketPath: env.token.socket });
    const agent = (client as unknown as { agent: import('node:http').Agent }).agent;
    try {
      for (let i = 0; i < 20; i++) await client.health();
      // Twenty sequential calls, one idle socket kept for the next: nothing was reconnected.
      expect(Object.values(agent.freeSockets).flat()).toHaveLength(1);
      expect(Object.values(agent.sockets).flat()).toHaveLength(0);
    } finally {
      client.close();
    }
  });

  it('tokenSource serves one token until 80% of its lifetime, then renews', async () => {
    const client = new HsmintClient({ socketPath: env.token.socket });
    let now = Date.now();
    try {
      const source = tokenSource(client, { aud: 'api', ttl: '100s' }, () => now);
      const first = await source.get();
      now += 79_000;
      expect(await source.get()).toBe(first);
      now += 2_000;
      const second = await source.get();
      expect(second).not.toBe(first);
      expect((await client.verify(second)).valid).toBe(true);
    } finally {
      client.close();
    }
  });

  it('mints a batch, each request decided alone, answers in order', async () => {
    const client = new HsmintClient({ socketPath: env.token.socket });
    try {
      const requests = Array.from({ length: 100 }, (_, i) =>
        i === 37 ? { aud: 'nobody' } : { aud: 'api', ttl: 60 + i },
      );
      const results = await client.mintBatch(requests);
      expect(results).toHaveLength(100);
      expect(results[37]).toEqual({
        error: { code: 'ERR_AUDIENCE_NOT_ALLOWED', message: expect.any(String) },
      });
      const minted = results.filter((result) => 'token' in result);
      expect(minted).toHaveLength(99);
      expect(new Set(minted.map((result) => result.jti)).size).toBe(99);
      for (const [i, result] of results.entries()) {
        if (!('token' in result)) continue;
        expect(result.exp - result.iat).toBe(60 + i);
        expect((await client.verify(result.token, { aud: 'api' })).valid).toBe(true);
      }
    } finally {
      client.close();
    }
  });

  it('refuses a malformed batch whole, naming the request, and more than 100', async () => {
    const client = new HsmintClient({ socketPath: env.token.socket });
    try {
      await expect(
        client.mintBatch([{ aud: 'api' }, { aud: 'api', ttl: -1 }]),
      ).rejects.toMatchObject({
        code: 'ERR_INVALID_REQUEST',
        message: expect.stringContaining('requests[1]: ttl'),
      });
      await expect(client.mintBatch([])).rejects.toMatchObject({ code: 'ERR_INVALID_REQUEST' });
      await expect(
        client.mintBatch(Array.from({ length: 101 }, () => ({ aud: 'api' }))),
      ).rejects.toMatchObject({ code: 'ERR_INVALID_REQUEST' });
    } finally {
      client.close();
    }
  });

  it('reports a refused mint as an HsmintError with the daemon code', async () => {
    const client = new HsmintClient({ socketPath: env.token.socket });
    try {
      await expect(client.mint({ aud: 'nobody' })).rejects.toMatchObject({
        name: 'HsmintError',
        code: 'ERR_AUDIENCE_NOT_ALLOWED',
      });
    } finally {
      client.close();
    }
  });
});
