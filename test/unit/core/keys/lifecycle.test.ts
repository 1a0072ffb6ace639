import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { KeyLifecycle, type LifecycleDocument } from '../../../../core/keys/lifecycle.js';
import { MemoryDocument } from '../../../../core/keys/state.js';
import { Authority } from '../../../../daemon/authority.js';
import { testCaller, testConfig } from '../../../support/config.js';
import { MemoryKeyStore } from '../../../support/memory-keystore.js';

const MINUTE = 60;
const HOUR = 3600;

/** A clock the test moves by hand. */
function fakeClock(start = Date.UTC(2026, 10, 28, 12)) {
  let ms = start;
  return {
    now: () => new Date(ms),
    seconds: () => Math.floor(ms / 1000),
    advance: (seconds: number) => {
      ms += seconds * 1000;
    },
  };
}

const SCHEDULE = `keys:
  rotation_period: 2h
  publish_ahead: 10m
`;

describe('key rotation over many cycles, on a fake clock', () => {
  it('keeps every token verifiable from mint to exp, and publishes each key before it signs', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const config = testConfig(SCHEDULE);
    const skew = config.tokens.clockSkew;
    const authority = await Authority.create({
      config,
      store,
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
      now: clock.now,
    });

    const minted: Array<{ token: string; kid: string; exp: number }> = [];
    const firstPublished = new Map<string, number>();
    const firstSigned = new Map<string, number>();
    const signers = new Set<string>();
    let random = 7;
    const nextRandom = () => (random = (random * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;

    // 14 hours in one-minute steps: seven rotations.
    for (let step = 0; step < 14 * 60; step++) {
      clock.advance(MINUTE);
      await authority.tick();
      const now = clock.seconds();
      const published = authority.jwks().keys.map((key) => key.kid);
      for (const kid of published) if (!firstPublished.has(kid)) firstPublished.set(kid, now);

      if (step % 4 === 0) {
        const ttl = 60 + Math.floor(nextRandom() * (HOUR - 60)); // up to max_ttl (1h)
        const token = await authority.mint({ aud: 'api', ttl }, testCaller(), authority.settings);
        minted.push({ token: token.token, kid: token.kid, exp: token.exp });
        signers.add(token.kid);
        if (!firstSigned.has(token.kid)) firstSigned.set(token.kid, now);
      }

      for (const entry of minted) {
        // jose (like RFC 7519) takes a token as expired from exp + skew on.
        if (now < entry.exp + skew) {
          // Every still-valid token verifies, and its key is published.
          const result = await authority.verify({ token: entry.token });
          expect(result.valid, `token of ${entry.kid} at ${now}, exp ${entry.exp}`).toBe(true);
          expect(published).toContain(entry.kid);
        } else if (now < entry.exp + skew + 2 * MINUTE) {
          const result = await authority.verify({ token: entry.token });
          expect(result.valid).toBe(false);
          if (!result.valid) expect(result.error.code).toMatch(/^ERR_TOKEN_(EXPIRED|KID_UNKNOWN)$/);
        }
      }
    }

    expect(signers.size).toBeGreaterThanOrEqual(7);
    const [first, ...rotated] = [...firstSigned.entries()].sort((a, b) => a[1] - b[1]);
    expect(first).toBeDefined();
    for (const [kid, signedAt] of rotated) {
      // Each new key was in the JWKS at least publish_ahead before it signed.
      expect(signedAt - firstPublished.get(kid)!).toBeGreaterThanOrEqual(10 * MINUTE);
    }
    // Old keys are destroyed once their tokens have expired: the token never piles up keys.
    expect((await store.list()).length).toBeLessThanOrEqual(3);
  });
});

describe('KeyLifecycle start-up reconciliation', () => {
  const schedule = {
    algorithm: 'ES256' as const,
    rotationPeriod: 2 * HOUR,
    publishAhead: 10 * MINUTE,
    retireAfter: HOUR,
  };

  it('adopts a key generated just before a crash as next, and destroys a second one', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const document = new MemoryDocument<LifecycleDocument>();
    const first = new KeyLifecycle(store, document, schedule, clock.seconds);
    await first.open();
    const active = first.signingKey().kid;
    // A crash after the intent was written and the key generated, but before it was recorded.
    const state = (await document.read())!;
    const orphan = await store.generate('ES256');
    await document.write({
      ...state,
      pending: { label: orphan.label, alg: 'ES256', since: clock.seconds() },
    });

    const restarted = new KeyLifecycle(store, document, schedule, clock.seconds);
    await restarted.open();
    expect(restarted.signingKey().kid).toBe(active);
    expect(restarted.records().find((key) => key.kid === orphan.kid)?.state).toBe('next');
    expect((await document.read())!.pending).toBeUndefined();
  });

  it('finishes a destruction that a crash interrupted', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const document = new MemoryDocument<LifecycleDocument>();
    const lifecycle = new KeyLifecycle(store, document, schedule, clock.seconds);
    await lifecycle.open();
    const doomed = await store.generate('ES384');
    const state = (await document.read())!;
    await document.write({ ...state, destroying: [doomed.kid] });
    await new KeyLifecycle(store, document, schedule, clock.seconds).open();
    expect((await store.list()).map((key) => key.kid)).not.toContain(doomed.kid);
  });

  it('drops a record whose key vanished from the token, and makes a new active key', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const document = new MemoryDocument<LifecycleDocument>();
    const lifecycle = new KeyLifecycle(store, document, schedule, clock.seconds);
    await lifecycle.open();
    const gone = lifecycle.signingKey().kid;
    await store.destroy(gone);
    const restarted = new KeyLifecycle(store, document, schedule, clock.seconds);
    await restarted.open();
    expect(restarted.signingKey().kid).not.toBe(gone);
    expect(restarted.records().map((key) => key.kid)).not.toContain(gone);
  });

  it('revokes a key: gone from the JWKS and the token, refused with its own code, replaced at once', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const document = new MemoryDocument<LifecycleDocument>();
    const lifecycle = new KeyLifecycle(store, document, schedule, clock.seconds);
    await lifecycle.open();
    const revoked = lifecycle.signingKey().kid;
    await lifecycle.revoke(revoked);
    expect(lifecycle.signingKey().kid).not.toBe(revoked);
    expect(lifecycle.publishedKeys().map((key) => key.kid)).not.toContain(revoked);
    expect(lifecycle.isRevoked(revoked)).toBe(true);
    expect((await store.list()).map((key) => key.kid)).not.toContain(revoked);
    // And after a restart.
    const restarted = new KeyLifecycle(store, document, schedule, clock.seconds);
    await restarted.open();
    expect(restarted.isRevoked(revoked)).toBe(true);
    await expect(restarted.revoke('no-such-kid')).rejects.toMatchObject({
      code: 'ERR_KEY_NOT_FOUND',
    });
  });

  it('rotates now on demand: next signs, the active key retires and still verifies', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const lifecycle = new KeyLifecycle(store, new MemoryDocument(), schedule, clock.seconds);
    await lifecycle.open();
    const before = lifecycle.signingKey().kid;
    const after = await lifecycle.rotateNow();
    expect(after.kid).not.toBe(before);
    expect(lifecycle.signingKey().kid).toBe(after.kid);
    expect(lifecycle.records().find((key) => key.kid === before)?.state).toBe('retiring');
    expect(lifecycle.verificationKeys().map((key) => key.kid)).toEqual(
      expect.arrayContaining([before, after.kid]),
    );
  });

  it('moves to a new algorithm through a published next key', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const document = new MemoryDocument<LifecycleDocument>();
    const lifecycle = new KeyLifecycle(store, document, schedule, clock.seconds);
    await lifecycle.open();
    await lifecycle.setSchedule({ ...schedule, algorithm: 'EdDSA' });
    expect(lifecycle.signingKey().alg).toBe('ES256');
    expect(lifecycle.records().find((key) => key.state === 'next')?.alg).toBe('EdDSA');
    clock.advance(10 * MINUTE);
    await lifecycle.tick();
    expect(lifecycle.signingKey().alg).toBe('EdDSA');
  });

  it('keeps the active key signing through a rotation until the new one is on disk', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const document = new MemoryDocument<LifecycleDocument>();
    const lifecycle = new KeyLifecycle(store, document, schedule, clock.seconds);
    await lifecycle.open();
    const before = lifecycle.signingKey().kid;
    // A slow disk: each state write waits until the test lets it through. A crash at any of
    // these moments brings back the state last written, where `before` is the active key.
    const held: Array<() => void> = [];
    const write = document.write.bind(document);
    document.write = async (value) => {
      await new Promise<void>((resolve) => held.push(resolve));
      await write(value);
    };
    let done = false;
    const rotated = lifecycle.rotateNow().finally(() => (done = true));
    let writes = 0;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (done) break;
      expect(lifecycle.signingKey().kid, `with ${writes} writes done`).toBe(before);
      const release = held.shift();
      if (release) {
        writes++;
        release();
      }
    }
    const after = await rotated;
    expect(writes).toBe(3); // the intent, the new key, the activation
    expect(lifecycle.signingKey().kid).toBe(after.kid);
  });
});

describe('token revocation through the authority', () => {
  it('refuses a revoked jti until the token would have expired, and survives a restart', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const state = {
      keys: new MemoryDocument<LifecycleDocument>(),
      revocations: new MemoryDocument<never>(),
    };
    const options = {
      config: testConfig(SCHEDULE),
      store,
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
      now: clock.now,
      state,
    };
    const authority = await Authority.create(options);
    const minted = await authority.mint({ aud: 'api', ttl: 600 }, testCaller(), authority.settings);
    await authority.revokeToken(minted.jti, minted.exp);
    const refused = await authority.verify({ token: minted.token });
    expect(refused.valid ? undefined : refused.error.code).toBe('ERR_TOKEN_REVOKED');

    const restarted = await Authority.create(options);
    const again = await restarted.verify({ token: minted.token });
    expect(again.valid ? undefined : again.error.code).toBe('ERR_TOKEN_REVOKED');
  });

  it('refuses a new revocation when the list is full, without forgetting old ones', async () => {
    const clock = fakeClock();
    const authority = await Authority.create({
      config: {
        ...testConfig(SCHEDULE),
        tokens: { ...testConfig(SCHEDULE).tokens, maxRevocations: 2 },
      },
      store: new MemoryKeyStore({ now: clock.now }),
      token: { label: 't', serial: '1' },
      logger: pino({ level: 'silent' }),
      now: clock.now,
    });
    await authority.revokeToken('a', undefined);
    await authority.revokeToken('b', undefined);
    await expect(authority.revokeToken('c', undefined)).rejects.toMatchObject({
      code: 'ERR_REVOCATION_LIST_FULL',
    });
    // Entries leave once their tokens are dead anyway.
    clock.advance(2 * HOUR);
    await expect(authority.revokeToken('c', undefined)).resolves.toMatchObject({ jti: 'c' });
  });
});

describe('a shorter max_ttl after a reload', () => {
  it('never shortens the verification window of tokens the active key already signed', async () => {
    const clock = fakeClock();
    const store = new MemoryKeyStore({ now: clock.now });
    const long = {
      algorithm: 'ES256' as const,
      rotationPeriod: 2 * HOUR,
      publishAhead: 10 * MINUTE,
      retireAfter: HOUR,
    };
    const lifecycle = new KeyLifecycle(store, new MemoryDocument(), long, clock.seconds);
    await lifecycle.open();
    const signer = lifecycle.signingKey().kid;
    await lifecycle.setSchedule({ ...long, retireAfter: 5 * MINUTE });
    await lifecycle.rotateNow();
    const retiring = lifecycle.records().find((key) => key.kid === signer)!;
    expect(retiring.retireAt! - clock.seconds()).toBe(HOUR);
    // A jti revoked without its token is refused as long as any such token can live.
    expect(lifecycle.longestTokenLife()).toBe(HOUR);
  });
});
