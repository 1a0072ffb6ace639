import { describe, expect, it } from 'vitest';
import { tokenSource, type HsmintClient, type MintParams } from '../../../../core/client/index.js';
import { HsmintError } from '../../../../core/errors.js';
import type { MintResponse } from '../../../../core/protocol.js';

const LIFETIME_S = 100;

/** A client whose mint() counts calls and answers tokens living 100 s from the fake clock. */
function fakeClient(clock: { ms: number }) {
  const calls: MintParams[] = [];
  let failNext: Error | undefined;
  let release: (() => void) | undefined;
  let gate: Promise<void> | undefined;
  const client = {
    async mint(params: MintParams): Promise<MintResponse> {
      calls.push(params);
      if (gate) await gate;
      if (failNext) {
        const error = failNext;
        failNext = undefined;
        throw error;
      }
      const iat = Math.floor(clock.ms / 1000);
      return {
        token: `token-${calls.length}`,
        sub: 'svc:test',
        jti: `jti-${calls.length}`,
        kid: 'kid',
        alg: 'ES256',
        iat,
        exp: iat + LIFETIME_S,
      };
    },
  };
  return {
    client: client as unknown as HsmintClient,
    calls,
    failOnce(error: Error) {
      failNext = error;
    },
    hold() {
      gate = new Promise((resolve) => {
        release = () => {
          gate = undefined;
          resolve();
        };
      });
    },
    release() {
      release?.();
    },
  };
}

describe('tokenSource', () => {
  it('mints once and passes the params through', async () => {
    const clock = { ms: 1_000_000 };
    const fake = fakeClient(clock);
    const source = tokenSource(fake.client, { aud: 'api', ttl: '100s' }, () => clock.ms);
    expect(await source.get()).toBe('token-1');
    expect(fake.calls).toEqual([{ aud: 'api', ttl: '100s' }]);
  });

  it('reuses the token before 80% of its lifetime and renews at 80%', async () => {
    const clock = { ms: 1_000_000 };
    const fake = fakeClient(clock);
    const source = tokenSource(fake.client, { aud: 'api' }, () => clock.ms);
    expect(await source.get()).toBe('token-1');

    clock.ms += 50_000;
    expect(await source.get()).toBe('token-1');
    clock.ms = 1_000_000 + 79_999;
    expect(await source.get()).toBe('token-1');
    expect(fake.calls).toHaveLength(1);

    clock.ms = 1_000_000 + 80_000;
    expect(await source.get()).toBe('token-2');
    expect(fake.calls).toHaveLength(2);

    clock.ms += 79_999;
    expect(await source.get()).toBe('token-2');
    clock.ms += 1;
    expect(await source.get()).toBe('token-3');
  });

  it('shares one mint between concurrent callers', async () => {
    const clock = { ms: 1_000_000 };
    const fake = fakeClient(clock);
    fake.hold();
    const source = tokenSource(fake.client, { aud: 'api' }, () => clock.ms);
    const waiting = [source.get(), source.get(), source.get()];
    fake.release();
    expect(await Promise.all(waiting)).toEqual(['token-1', 'token-1', 'token-1']);
    expect(fake.calls).toHaveLength(1);
  });

  it('shares one renewal between concurrent callers once the token is due', async () => {
    const clock = { ms: 1_000_000 };
    const fake = fakeClient(clock);
    const source = tokenSource(fake.client, { aud: 'api' }, () => clock.ms);
    await source.get();
    clock.ms += 90_000;
    const [a, b] = await Promise.all([source.get(), source.get()]);
    expect([a, b]).toEqual(['token-2', 'token-2']);
    expect(fake.calls).toHaveLength(2);
  });

  it('passes a failed mint on and tries again on the next call', async () => {
    const clock = { ms: 1_000_000 };
    const fake = fakeClient(clock);
    const source = tokenSource(fake.client, { aud: 'api' }, () => clock.ms);
    fake.failOnce(new HsmintError('ERR_DAEMON_UNREACHABLE', 'down'));
    await expect(source.get()).rejects.toMatchObject({ code: 'ERR_DAEMON_UNREACHABLE' });
    expect(await source.get()).toBe('token-2');
    expect(fake.calls).toHaveLength(2);
  });
});
