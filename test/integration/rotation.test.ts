import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { openKeyStore } from '../../core/open.js';
import {
  makeToken,
  startDaemon,
  useDaemon,
  type RunningDaemon,
  type TestToken,
} from './support/harness.js';

const codeOf = (result: { valid: boolean; error?: { code: string } }) =>
  result.valid ? 'valid' : result.error!.code;

/** The hsmint keys on the token, read by a second PKCS#11 application (the daemon is idle). */
async function kidsOnToken(config: string): Promise<string[]> {
  const { store } = await openKeyStore(loadConfig(config));
  try {
    return (await store.list()).map((key) => key.kid).sort();
  } finally {
    await store.close();
  }
}

describe('emergency rotation and revocation over the socket', () => {
  let token: TestToken;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    token = await makeToken('ES256');
    daemon = await startDaemon(token);
  });
  afterAll(async () => {
    await daemon?.stop();
    await token?.cleanup();
  });

  it('rotates, revokes a jti and a key, and still refuses both after a restart', async () => {
    const first = await daemon.client.mint({ aud: 'api' });
    const before = await daemon.client.keys();
    expect(before.keys.filter((key) => key.state === 'active').map((key) => key.kid)).toEqual([
      first.kid,
    ]);

    const rotated = await daemon.client.rotateKeys();
    expect(rotated.active.kid).not.toBe(first.kid);
    expect(rotated.keys.find((key) => key.kid === first.kid)?.state).toBe('retiring');
    const second = await daemon.client.mint({ aud: 'api' });
    expect(second.kid).toBe(rotated.active.kid);
    // The retiring key's tokens still verify, and the JWKS carries both keys.
    expect(codeOf(await daemon.client.verify(first.token))).toBe('valid');
    expect((await daemon.client.jwks()).keys.map((key) => key.kid)).toEqual(
      expect.arrayContaining([first.kid, second.kid]),
    );

    const revokedToken = await daemon.client.revokeToken({ jti: second.jti });
    expect(revokedToken.revoked).toBe(second.jti);
    expect(codeOf(await daemon.client.verify(second.token))).toBe('ERR_TOKEN_REVOKED');

    await daemon.client.revokeKey(first.kid);
    expect(codeOf(await daemon.client.verify(first.token))).toBe('ERR_TOKEN_KEY_REVOKED');
    expect((await daemon.client.jwks()).keys.map((key) => key.kid)).not.toContain(first.kid);
    await expect(daemon.client.revokeKey('no-such-kid')).rejects.toMatchObject({
      code: 'ERR_KEY_NOT_FOUND',
    });

    await daemon.stop();
    expect(await kidsOnToken(token.config)).not.toContain(first.kid); // destroyed on the token
    daemon = await startDaemon(token);
    expect(codeOf(await daemon.client.verify(second.token))).toBe('ERR_TOKEN_REVOKED');
    expect(codeOf(await daemon.client.verify(first.token))).toBe('ERR_TOKEN_KEY_REVOKED');
    const third = await daemon.client.mint({ aud: 'api' });
    expect(codeOf(await daemon.client.verify(third.token))).toBe('valid');
  });

  it('lets the caller that minted a token revoke it by presenting it', async () => {
    const minted = await daemon.client.mint({ aud: 'api' });
    await daemon.client.revokeToken({ token: minted.token });
    expect(codeOf(await daemon.client.verify(minted.token))).toBe('ERR_TOKEN_REVOKED');
  });
});

describe('kill -9 at random moments of a rotation', () => {
  const env = useDaemon('ES256');

  it('restarts into one consistent state 20 times: every acknowledged token verifies, no orphan key', async () => {
    let daemon = env.daemon;
    const acknowledged: Array<{ token: string; kid: string }> = [];
    let seed = 11;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;

    for (let run = 0; run < 20; run++) {
      const minted = await daemon.client.mint({ aud: 'api' });
      acknowledged.push({ token: minted.token, kid: minted.kid });
      // Rotations in flight, and a kill at a random moment among them.
      const rotations = Array.from({ length: 3 }, () =>
        daemon.client.rotateKeys().catch(() => undefined),
      );
      await new Promise((resolve) => setTimeout(resolve, Math.floor(random() * 60)));
      const killed = new Promise((resolve) => daemon.process.once('exit', resolve));
      daemon.process.kill('SIGKILL');
      await killed;
      await Promise.all(rotations);
      daemon.client.close();

      daemon = await startDaemon(env.token);
      const { keys } = await daemon.client.keys();
      const detail = `run ${run}: ${JSON.stringify(keys)}`;
      expect(
        keys.filter((key) => key.state === 'active'),
        detail,
      ).toHaveLength(1);
      expect(keys.filter((key) => key.state === 'next').length).toBeLessThanOrEqual(1);
      // The token and the state agree: no orphan private key, no record without its key.
      expect(await kidsOnToken(env.token.config), detail).toEqual(
        keys.map((key) => key.kid).sort(),
      );
      for (const entry of acknowledged) {
        expect(
          codeOf(await daemon.client.verify(entry.token)),
          `run ${run}, key ${entry.kid}`,
        ).toBe('valid');
      }
    }
    await daemon.stop();
    // 20 daemon starts take a while on a loaded 2-core machine.
  }, 180_000);
});
