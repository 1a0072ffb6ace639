import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HsmintError } from '../../../../core/errors.js';
import {
  backoffDelay,
  TokenSeal,
  type Fault,
  type TokenEvent,
} from '../../../../core/pkcs11/recovery.js';

const BACKOFF = { initialMs: 500, maxMs: 30_000 };
const DEVICE: Fault = {
  reason: 'CKR_DEVICE_REMOVED',
  ckr: 'CKR_DEVICE_REMOVED',
  recovery: 'automatic',
};

/** A re-open that fails with the queued errors, then succeeds; the token counts the tries. */
function seal(options: { random?: () => number } = {}) {
  const token = {
    failures: [] as unknown[],
    reopens: 0,
    calls: 0,
    stranded: 0,
    sealedHook: 0,
    events: [] as TokenEvent[],
  };
  const tokenSeal = new TokenSeal({
    reopen: async () => {
      token.reopens++;
      const failure = token.failures.shift();
      if (failure !== undefined) throw failure;
    },
    inFlight: () => ({ calls: token.calls, stranded: token.stranded }),
    describe: (error) =>
      error instanceof HsmintError && error.code === 'ERR_PIN_INCORRECT'
        ? { reason: 'wrong PIN', recovery: 'admin' }
        : { reason: (error as Error).message, recovery: 'automatic' },
    onSeal: () => token.sealedHook++,
    onEvent: (event) => token.events.push(event),
    backoff: BACKOFF,
    random: options.random ?? (() => 1),
  });
  return { tokenSeal, token };
}

const names = (events: TokenEvent[]) => events.map((event) => event.event);

describe('backoffDelay', () => {
  it('doubles from 0.5 s to 30 s, then stays', () => {
    const full = [0, 1, 2, 3, 4, 5, 6, 7, 20].map((n) => backoffDelay(n, BACKOFF, () => 1));
    expect(full).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  });

  it('jitters each delay down by up to half', () => {
    expect(backoffDelay(3, BACKOFF, () => 0)).toBe(2000);
    expect(backoffDelay(3, BACKOFF, () => 0.5)).toBe(3000);
  });
});

describe('TokenSeal', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('is open until a fault seals it, and says why', () => {
    const { tokenSeal, token } = seal();
    expect(tokenSeal.condition()).toEqual({ status: 'open' });
    tokenSeal.seal(DEVICE);
    expect(tokenSeal.sealed).toBe(true);
    expect(tokenSeal.condition()).toMatchObject({
      status: 'sealed',
      reason: 'CKR_DEVICE_REMOVED',
      recovery: 'automatic',
      attempts: 0,
    });
    expect(token.sealedHook).toBe(1);
    expect(token.events).toEqual([
      {
        event: 'token.sealed',
        reason: 'CKR_DEVICE_REMOVED',
        ckr: 'CKR_DEVICE_REMOVED',
        recovery: 'automatic',
      },
    ]);
  });

  it('re-opens on the back-off schedule until the token answers, then unseals by itself', async () => {
    const { tokenSeal, token } = seal();
    token.failures.push(new Error('not found'), new Error('not found'), new Error('not found'));
    tokenSeal.seal(DEVICE);
    const attemptsAt = async (ms: number) => {
      await vi.advanceTimersByTimeAsync(ms);
      return token.reopens;
    };
    expect(await attemptsAt(499)).toBe(0);
    expect(await attemptsAt(1)).toBe(1); // 0.5 s
    expect(await attemptsAt(999)).toBe(1);
    expect(await attemptsAt(1)).toBe(2); // + 1 s
    expect(await attemptsAt(2000)).toBe(3); // + 2 s
    expect(tokenSeal.condition()).toMatchObject({
      status: 'sealed',
      reason: 'CKR_DEVICE_REMOVED; last re-open attempt: not found',
      attempts: 3,
    });
    expect(await attemptsAt(4000)).toBe(4); // + 4 s: this one succeeds
    expect(tokenSeal.condition()).toEqual({ status: 'open' });
    expect(names(token.events)).toEqual([
      'token.sealed',
      'token.reopen_failed',
      'token.reopen_failed',
      'token.reopen_failed',
      'token.unsealed',
    ]);
    expect(token.events[1]).toMatchObject({ attempt: 1, retry_ms: 1000, recovery: 'automatic' });
    expect(token.events.at(-1)).toEqual({ event: 'token.unsealed', attempts: 4, sealed_ms: 7500 });
    // Nothing more is scheduled once open.
    expect(await attemptsAt(60_000)).toBe(4);
  });

  it('stops after a refused PIN: one login attempt, and none more by itself', async () => {
    const { tokenSeal, token } = seal();
    token.failures.push(new HsmintError('ERR_PIN_INCORRECT', 'the token refused the PIN'));
    tokenSeal.seal(DEVICE);
    await vi.advanceTimersByTimeAsync(500);
    expect(token.reopens).toBe(1);
    expect(tokenSeal.condition()).toMatchObject({
      status: 'sealed',
      reason: 'wrong PIN',
      recovery: 'admin',
    });
    expect(token.events.at(-1)).toEqual({
      event: 'token.reopen_failed',
      attempt: 1,
      reason: 'wrong PIN',
      recovery: 'admin',
    });
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(token.reopens).toBe(1);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('tries exactly once more when an admin asks (a reload), and opens if the PIN is right now', async () => {
    const { tokenSeal, token } = seal();
    token.failures.push(
      new HsmintError('ERR_PIN_INCORRECT', 'refused'),
      new HsmintError('ERR_PIN_INCORRECT', 'refused'),
    );
    tokenSeal.seal(DEVICE);
    await vi.advanceTimersByTimeAsync(500);
    expect((await tokenSeal.retryNow()).recovery).toBe('admin');
    expect(token.reopens).toBe(2);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(token.reopens).toBe(2);
    expect(await tokenSeal.retryNow()).toEqual({ status: 'open' });
    expect(token.reopens).toBe(3);
  });

  it('goes back to the back-off loop when the retry after a PIN fix finds no token', async () => {
    const { tokenSeal, token } = seal();
    token.failures.push(new HsmintError('ERR_PIN_INCORRECT', 'refused'), new Error('not found'));
    tokenSeal.seal(DEVICE);
    await vi.advanceTimersByTimeAsync(500);
    await tokenSeal.retryNow();
    expect(tokenSeal.condition()).toMatchObject({ recovery: 'automatic', reason: 'not found' });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(token.reopens).toBe(3);
    expect(tokenSeal.condition().status).toBe('open');
  });

  it('never re-opens under a call still in the module, and waits for a hung one to return', async () => {
    const { tokenSeal, token } = seal();
    token.stranded = 1;
    tokenSeal.seal({ reason: 'a signature did not return', recovery: 'restart' });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(token.reopens).toBe(0);
    expect(tokenSeal.condition()).toMatchObject({ status: 'sealed', recovery: 'restart' });
    token.stranded = 0;
    token.calls = 1; // a lent session not yet back
    await vi.advanceTimersByTimeAsync(5_000);
    expect(token.reopens).toBe(0);
    token.calls = 0;
    await vi.advanceTimersByTimeAsync(500);
    expect(token.reopens).toBe(1);
    expect(tokenSeal.condition()).toEqual({ status: 'open' });
  });

  it('keeps the first fault as the reason, but a hang found later forbids finalizing', () => {
    const { tokenSeal, token } = seal();
    tokenSeal.seal(DEVICE);
    tokenSeal.seal({ reason: 'CKR_GENERAL_ERROR', recovery: 'automatic' });
    expect(tokenSeal.condition().reason).toBe('CKR_DEVICE_REMOVED');
    tokenSeal.seal({ reason: 'a probe did not return', recovery: 'restart' });
    expect(tokenSeal.condition()).toMatchObject({
      reason: 'a probe did not return',
      recovery: 'restart',
    });
    expect(names(token.events)).toEqual(['token.sealed']);
  });

  it('stops for good when closed', async () => {
    const { tokenSeal, token } = seal();
    tokenSeal.seal(DEVICE);
    tokenSeal.close();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(token.reopens).toBe(0);
    expect(tokenSeal.condition().status).toBe('closed');
    tokenSeal.seal(DEVICE);
    expect(names(token.events)).toEqual(['token.sealed']);
  });
});
