import pkcs11js from 'pkcs11js';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SignPool, isDeadline } from '../../../../core/pkcs11/sign-pool.js';
import { rejection } from '../../../support/codes.js';

/** A binding that records calls; C_SignAsync settles only when the test says so. */
function fakeLib() {
  const calls: string[] = [];
  let finish: ((signature: Buffer) => void) | undefined;
  const lib = {
    C_SignInit: () => void calls.push('C_SignInit'),
    C_Login: (_session: Buffer, userType: number, pin: string) =>
      void calls.push(`C_Login(${userType},${pin})`),
    C_SignAsync: () => {
      calls.push('C_Sign');
      return new Promise<Buffer>((resolve) => (finish = resolve));
    },
    C_GetSessionInfo: () => void calls.push('C_GetSessionInfo'),
  };
  return { lib: lib as unknown as pkcs11js.PKCS11, calls, finish: (sig: Buffer) => finish?.(sig) };
}

const mechanism = { mechanism: pkcs11js.CKM_ECDSA };
const session = Buffer.from([1]);
const key = Buffer.from([2]);

describe('SignPool on the main thread (a fake module)', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('logs in for the context between C_SignInit and C_Sign, only when given a PIN', async () => {
    const fake = fakeLib();
    const pool = new SignPool({
      modulePath: 'fake',
      lib: fake.lib,
      callTimeoutMs: 1000,
      inline: true,
    });
    const signed = pool.sign(session, mechanism, key, Buffer.from('x'), 64, '123456');
    fake.finish(Buffer.alloc(64));
    await signed;
    expect(fake.calls).toEqual([
      'C_SignInit',
      `C_Login(${pkcs11js.CKU_CONTEXT_SPECIFIC},123456)`,
      'C_Sign',
    ]);
    fake.calls.length = 0;
    const plain = pool.sign(session, mechanism, key, Buffer.from('x'), 64);
    fake.finish(Buffer.alloc(64));
    await plain;
    expect(fake.calls).toEqual(['C_SignInit', 'C_Sign']);
  });

  it('answers ERR_HSM_TOUCH_TIMEOUT with the hint after the touch deadline, and strands the call', async () => {
    const fake = fakeLib();
    const pool = new SignPool({
      modulePath: 'fake',
      lib: fake.lib,
      callTimeoutMs: 1000,
      touch: { signTimeoutMs: 20_000, hint: 'touch the YubiKey' },
      inline: true,
    });
    const signed = rejection(pool.sign(session, mechanism, key, Buffer.from('x'), 64));
    // Past the call deadline but within the touch deadline: still waiting for a finger.
    await vi.advanceTimersByTimeAsync(5_000);
    expect(pool.stranded).toBe(0);
    await vi.advanceTimersByTimeAsync(15_000);
    const error = await signed;
    expect(error.code).toBe('ERR_HSM_TOUCH_TIMEOUT');
    expect(error.message).toContain('touch the YubiKey');
    // A deadline all the same: the token abandons the session and waits for the call.
    expect(isDeadline(error)).toBe(true);
    expect(pool.stranded).toBe(1);
    fake.finish(Buffer.alloc(64)); // the device gave up waiting
    await vi.advanceTimersByTimeAsync(0);
    expect(pool.stranded).toBe(0);
  });

  it('keeps the call deadline on a device without touch', async () => {
    const touchless = new SignPool({
      modulePath: 'fake',
      lib: fakeLib().lib,
      callTimeoutMs: 1000,
      inline: true,
    });
    const signed = rejection(touchless.sign(session, mechanism, key, Buffer.from('x'), 64));
    await vi.advanceTimersByTimeAsync(1_000);
    const error = await signed;
    expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
    expect(isDeadline(error)).toBe(true);
  });
});
