import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Notifier, Watchdog, takeListenFd, watchdogMs } from '../../../daemon/systemd.js';
import { codeOf } from '../../support/codes.js';

const PID = 4242;

describe('takeListenFd', () => {
  it('is undefined when the daemon was not socket-activated', () => {
    expect(takeListenFd({}, PID)).toBeUndefined();
  });

  it('takes fd 3 for one socket, named hsmint or not named', () => {
    expect(takeListenFd({ LISTEN_PID: `${PID}`, LISTEN_FDS: '1' }, PID)).toBe(3);
    expect(
      takeListenFd({ LISTEN_PID: `${PID}`, LISTEN_FDS: '1', LISTEN_FDNAMES: 'hsmint' }, PID),
    ).toBe(3);
  });

  it('takes the socket named hsmint among several', () => {
    const env = { LISTEN_PID: `${PID}`, LISTEN_FDS: '3', LISTEN_FDNAMES: 'other:hsmint:more' };
    expect(takeListenFd(env, PID)).toBe(4);
  });

  it('ignores sockets meant for another process', () => {
    expect(takeListenFd({ LISTEN_PID: '1', LISTEN_FDS: '1' }, PID)).toBeUndefined();
    expect(takeListenFd({ LISTEN_PID: 'x', LISTEN_FDS: '1' }, PID)).toBeUndefined();
  });

  it('removes the variables, so nothing the daemon starts inherits them', () => {
    const env: Record<string, string | undefined> = {
      LISTEN_PID: `${PID}`,
      LISTEN_FDS: '1',
      LISTEN_FDNAMES: 'hsmint',
      OTHER: 'kept',
    };
    takeListenFd(env, PID);
    expect(env).toEqual({ OTHER: 'kept' });
  });

  it.each([
    ['a count that is not a number', { LISTEN_FDS: 'two' }],
    ['a zero count', { LISTEN_FDS: '0' }],
    ['several sockets, none named hsmint', { LISTEN_FDS: '2', LISTEN_FDNAMES: 'a:b' }],
    ['one socket named otherwise', { LISTEN_FDS: '1', LISTEN_FDNAMES: 'web' }],
    ['a name beyond the count', { LISTEN_FDS: '1', LISTEN_FDNAMES: 'a:hsmint' }],
  ])('refuses %s with ERR_SOCKET_ACTIVATION', (_name, vars) => {
    expect(codeOf(() => takeListenFd({ LISTEN_PID: `${PID}`, ...vars }, PID))).toBe(
      'ERR_SOCKET_ACTIVATION',
    );
  });
});

describe('Notifier', () => {
  const sent: Array<[string, string]> = [];
  const send = (path: string, text: string) => {
    sent.push([path, text]);
    return true;
  };
  beforeEach(() => {
    sent.length = 0;
  });

  it('sends nothing without NOTIFY_SOCKET', () => {
    const notifier = new Notifier(send, {});
    notifier.ready('ok');
    notifier.watchdog();
    expect(notifier.enabled).toBe(false);
    expect(sent).toEqual([]);
  });

  it('writes each message systemd expects, to NOTIFY_SOCKET', () => {
    const notifier = new Notifier(send, { NOTIFY_SOCKET: '@abstract' });
    notifier.ready('ok; active key k1');
    notifier.reloading();
    notifier.stopping('stopping');
    notifier.watchdog();
    expect(sent.map(([path]) => path)).toEqual(Array(4).fill('@abstract'));
    expect(sent.map(([, text]) => text)).toEqual([
      'READY=1\nSTATUS=ok; active key k1',
      expect.stringMatching(/^RELOADING=1\nMONOTONIC_USEC=\d+$/),
      'STOPPING=1\nSTATUS=stopping',
      'WATCHDOG=1',
    ]);
  });

  it('sends a STATUS only when it changed, always on one line', () => {
    const notifier = new Notifier(send, { NOTIFY_SOCKET: '/run/n' });
    notifier.status('degraded (audit\nlog down)');
    notifier.status('degraded (audit\nlog down)');
    notifier.status('ok');
    expect(sent.map(([, text]) => text)).toEqual(['STATUS=degraded (audit log down)', 'STATUS=ok']);
  });

  it('reports a failed send instead of throwing', () => {
    const errors: unknown[] = [];
    const failing = () => {
      throw new Error('ECONNREFUSED');
    };
    const notifier = new Notifier(failing, { NOTIFY_SOCKET: '/run/n' }, (error) =>
      errors.push(error),
    );
    expect(() => notifier.ready('ok')).not.toThrow();
    expect(errors).toHaveLength(1);
  });
});

describe('watchdogMs', () => {
  it('reads WATCHDOG_USEC for this pid only', () => {
    expect(watchdogMs({ WATCHDOG_USEC: '30000000' }, PID)).toBe(30_000);
    expect(watchdogMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: `${PID}` }, PID)).toBe(30_000);
    expect(watchdogMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '1' }, PID)).toBeUndefined();
    expect(watchdogMs({ WATCHDOG_USEC: '0' }, PID)).toBeUndefined();
    expect(watchdogMs({}, PID)).toBeUndefined();
  });
});

describe('Watchdog', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  function setUp(probe: () => Promise<void>) {
    const sent: string[] = [];
    const notifier = new Notifier(
      (_path, text) => {
        sent.push(text);
        return true;
      },
      { NOTIFY_SOCKET: '/run/n' },
    );
    const ticks: number[] = [];
    const watchdog = new Watchdog({
      notifier,
      intervalMs: 1000,
      probe,
      onTick: () => ticks.push(Date.now()),
    });
    return { sent, ticks, watchdog };
  }

  it('pings at half the interval while the token answers', async () => {
    const { sent, ticks, watchdog } = setUp(() => Promise.resolve());
    watchdog.start();
    await vi.advanceTimersByTimeAsync(2000);
    watchdog.stop();
    expect(ticks).toHaveLength(4);
    expect(sent.filter((text) => text === 'WATCHDOG=1')).toHaveLength(4);
  });

  it('stops pinging while a probe hangs (a wedged token), and resumes when it answers', async () => {
    let release: () => void = () => undefined;
    let wedged = true;
    const { sent, watchdog } = setUp(() =>
      wedged ? new Promise<void>((resolve) => (release = resolve)) : Promise.resolve(),
    );
    watchdog.start();
    await vi.advanceTimersByTimeAsync(2000);
    expect(sent).toEqual([]);
    wedged = false;
    release();
    await vi.advanceTimersByTimeAsync(1000);
    watchdog.stop();
    expect(sent.filter((text) => text === 'WATCHDOG=1').length).toBeGreaterThanOrEqual(1);
  });

  it('withholds the ping after a failed probe', async () => {
    const { sent, watchdog } = setUp(() => Promise.reject(new Error('CKR_DEVICE_REMOVED')));
    watchdog.start();
    await vi.advanceTimersByTimeAsync(2000);
    watchdog.stop();
    expect(sent).toEqual([]);
  });
});
