import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { HsmintError } from '../../../../core/errors.js';
import { SessionPool } from '../../../../core/pkcs11/session-pool.js';
import { rejection } from '../../../support/codes.js';

/** Sessions are numbers; the fake token counts what was opened and closed. */
function pool(size: number, queueTimeoutMs = 2_000) {
  const token = { opened: 0, closed: [] as number[], refuse: false };
  const sessions = new SessionPool<number>({
    size,
    queueTimeoutMs,
    open: () => {
      if (token.refuse) throw new Error('CKR_DEVICE_ERROR');
      return ++token.opened;
    },
    close: (session) => void token.closed.push(session),
  });
  return { sessions, token };
}

describe('SessionPool', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('never opens more sessions than its bound, however many ask', async () => {
    const { sessions, token } = pool(2);
    const lent = await Promise.all([sessions.acquire(), sessions.acquire()]);
    const waiting = [sessions.acquire(), sessions.acquire(), sessions.acquire()];
    expect(token.opened).toBe(2);
    expect(sessions.use()).toEqual({ open: 2, busy: 2, limit: 2, waiting: 3 });
    sessions.release(lent[0]!);
    sessions.release(lent[1]!);
    // The first two in the queue got the sessions back, in order; nothing new was opened.
    await expect(waiting[0]).resolves.toBe(lent[0]);
    await expect(waiting[1]).resolves.toBe(lent[1]);
    expect(token.opened).toBe(2);
    expect(sessions.use().waiting).toBe(1);
    sessions.release(lent[0]!);
    await expect(waiting[2]).resolves.toBe(lent[0]);
  });

  it('answers ERR_HSM_BUSY to work that waited the whole queue timeout', async () => {
    const { sessions } = pool(1, 2_000);
    const held = await sessions.acquire();
    const queued = rejection(sessions.acquire());
    await vi.advanceTimersByTimeAsync(1_999);
    expect(sessions.use().waiting).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const error = await queued;
    expect(error.code).toBe('ERR_HSM_BUSY');
    expect(error.status).toBe(503);
    expect(sessions.use()).toEqual({ open: 1, busy: 1, limit: 1, waiting: 0 });
    // The timed-out caller is gone from the queue: the session goes back to idle.
    sessions.release(held);
    expect(sessions.use()).toEqual({ open: 1, busy: 0, limit: 1, waiting: 0 });
  });

  it('closes a replaced session and opens a fresh one for the next in the queue', async () => {
    const { sessions, token } = pool(1);
    const lost = await sessions.acquire();
    const next = sessions.acquire();
    sessions.release(lost, 'replace');
    expect(token.closed).toEqual([lost]);
    await expect(next).resolves.toBe(2);
    expect(sessions.use().open).toBe(1);
  });

  it('fails the queue at once when no session can be opened and none is lent', async () => {
    const { sessions, token } = pool(1);
    const lost = await sessions.acquire();
    const next = rejection(sessions.acquire());
    token.refuse = true;
    sessions.release(lost, 'replace');
    expect((await next).code).toBe('ERR_HSM_UNAVAILABLE');
    expect(sessions.use()).toEqual({ open: 0, busy: 0, limit: 1, waiting: 0 });
  });

  it('forgets an abandoned session without closing or reusing it', async () => {
    const { sessions, token } = pool(1);
    const stuck = await sessions.acquire();
    sessions.release(stuck, 'abandon');
    expect(token.closed).toEqual([]);
    expect(await sessions.acquire()).not.toBe(stuck);
  });

  it('once stopped, fails the queue and every acquire, and closes nothing', async () => {
    const { sessions, token } = pool(2);
    sessions.fill();
    const lent = await sessions.acquire();
    await sessions.acquire();
    const queued = rejection(sessions.acquire());
    sessions.stop(new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is sealed'));
    expect((await queued).message).toBe('the token is sealed');
    expect((await rejection(sessions.acquire())).code).toBe('ERR_HSM_UNAVAILABLE');
    sessions.release(lent);
    // A failed module may hang in C_CloseSession too: C_Finalize ends the sessions instead.
    expect(token.closed).toEqual([]);
    expect(sessions.use()).toEqual({ open: 1, busy: 1, limit: 2, waiting: 0 });
  });

  it('fills up to its bound', () => {
    const { sessions, token } = pool(3);
    sessions.fill();
    expect(token.opened).toBe(3);
    expect(sessions.use()).toEqual({ open: 3, busy: 0, limit: 3, waiting: 0 });
  });
});
