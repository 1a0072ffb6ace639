import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import {
  mechanismCheck,
  mechanismName,
  mechanismReport,
  percentile,
  pinStateCheck,
  protectionCheck,
  type KeyProtection,
} from '../../../../core/pkcs11/doctor.js';
import { requiredMechanisms } from '../../../../core/pkcs11/keystore.js';

const INITIALIZED = pkcs11js.CKF_USER_PIN_INITIALIZED | pkcs11js.CKF_TOKEN_INITIALIZED;

/**
 * SoftHSM never sets CKF_USER_PIN_FINAL_TRY or CKF_USER_PIN_LOCKED (it has no retry counter:
 * it only sets CKF_USER_PIN_COUNT_LOW after a wrong PIN), so the decisions a hardware token
 * needs are tested here over the flags alone.
 */
describe('pinStateCheck: whether doctor may log in', () => {
  it('logs in when no wrong PIN is recorded', () => {
    const check = pinStateCheck(INITIALIZED, '/etc/hsmint/pin');
    expect(check).toMatchObject({ id: 'pin-state', status: 'pass', login: true });
  });

  it('never tries a locked PIN, and says an SO must reset it', () => {
    const check = pinStateCheck(INITIALIZED | pkcs11js.CKF_USER_PIN_LOCKED, '/etc/hsmint/pin');
    expect(check).toMatchObject({ status: 'fail', login: false, code: 'ERR_PIN_LOCKED' });
    expect(check.fix).toMatch(/security officer/);
  });

  it('a locked PIN wins over every other flag, --allow-final-try included', () => {
    const flags =
      INITIALIZED |
      pkcs11js.CKF_USER_PIN_LOCKED |
      pkcs11js.CKF_USER_PIN_FINAL_TRY |
      pkcs11js.CKF_USER_PIN_COUNT_LOW;
    expect(pinStateCheck(flags, '/p', true)).toMatchObject({ status: 'fail', login: false });
  });

  it('does not log in at the final try unless asked, and says how to proceed', () => {
    const flags = INITIALIZED | pkcs11js.CKF_USER_PIN_FINAL_TRY | pkcs11js.CKF_USER_PIN_COUNT_LOW;
    const check = pinStateCheck(flags, '/etc/hsmint/pin');
    expect(check).toMatchObject({ status: 'fail', login: false });
    expect(check.fix).toContain('/etc/hsmint/pin');
    expect(check.fix).toContain('--allow-final-try');
  });

  it('with --allow-final-try, logs in once and warns', () => {
    const check = pinStateCheck(INITIALIZED | pkcs11js.CKF_USER_PIN_FINAL_TRY, '/p', true);
    expect(check).toMatchObject({ status: 'warn', login: true });
  });

  it('warns and tries once when a wrong PIN was entered before', () => {
    const check = pinStateCheck(INITIALIZED | pkcs11js.CKF_USER_PIN_COUNT_LOW, '/p');
    expect(check).toMatchObject({ status: 'warn', login: true });
    expect(check.fix).toBeDefined();
  });

  it('does not log in to a token without a user PIN', () => {
    const check = pinStateCheck(pkcs11js.CKF_TOKEN_INITIALIZED, '/p');
    expect(check).toMatchObject({ status: 'fail', login: false });
  });

  it('warns when the token wants the PIN changed', () => {
    const check = pinStateCheck(INITIALIZED | pkcs11js.CKF_USER_PIN_TO_BE_CHANGED, '/p');
    expect(check).toMatchObject({ status: 'warn', login: true });
  });
});

describe('mechanisms: what the token offers against what the algorithms need', () => {
  const all = new Set(
    (['ES256', 'ES384', 'PS256', 'RS256', 'EdDSA'] as const).flatMap(requiredMechanisms),
  );

  it('passes when every required algorithm is covered', () => {
    const report = mechanismReport(all, ['ES256'], ['ES256', 'EdDSA']);
    expect(report.missing).toEqual([]);
    expect(mechanismCheck(report).status).toBe('pass');
  });

  it('names the missing mechanisms of a required algorithm and fails', () => {
    const offered = new Set([...all].filter((type) => type !== 0x1057));
    const report = mechanismReport(offered, ['ES256', 'EdDSA'], ['ES256', 'EdDSA']);
    expect(report.missing).toEqual(['CKM_EDDSA']);
    expect(report.needed.find((n) => n.alg === 'EdDSA')).toMatchObject({
      required: true,
      mechanisms: ['CKM_EC_EDWARDS_KEY_PAIR_GEN', 'CKM_EDDSA'],
      missing: ['CKM_EDDSA'],
    });
    const check = mechanismCheck(report);
    expect(check).toMatchObject({ status: 'fail', code: 'ERR_ALG_UNSUPPORTED' });
    expect(check.detail).toContain('EdDSA (needs CKM_EDDSA)');
    expect(check.fix).toContain('ES256');
  });

  it('only mentions what the profile lists beyond the configured algorithm', () => {
    const offered = new Set(requiredMechanisms('ES256'));
    const report = mechanismReport(offered, ['ES256'], ['ES256', 'PS256']);
    expect(report.missing).toEqual([]);
    const check = mechanismCheck(report);
    expect(check.status).toBe('pass');
    expect(check.detail).toContain(
      'PS256 (needs CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256_RSA_PKCS_PSS)',
    );
  });

  it('names mechanisms pkcs11js does not know by number', () => {
    expect(mechanismName(pkcs11js.CKM_ECDSA)).toBe('CKM_ECDSA');
    expect(mechanismName(pkcs11js.CKM_EC_KEY_PAIR_GEN)).toBe('CKM_EC_KEY_PAIR_GEN');
    expect(mechanismName(0x80001234)).toBe('0x80001234');
  });
});

describe('protectionCheck', () => {
  const sound: KeyProtection = {
    label: 'hsmint-ES256-20261128T140000Z',
    purpose: 'signing',
    alg: 'ES256',
    extractable: false,
    never_extractable: true,
    sensitive: true,
    always_sensitive: true,
    private: true,
    readable: [],
    wrap: 'refused (CKR_KEY_UNEXTRACTABLE)',
  };

  it('passes a key that never left and never can', () => {
    expect(protectionCheck(sound)).toMatchObject({
      id: 'non-exportable:hsmint-ES256-20261128T140000Z',
      status: 'pass',
    });
  });

  it('fails naming every problem', () => {
    const check = protectionCheck({
      ...sound,
      extractable: true,
      never_extractable: false,
      always_sensitive: null,
      readable: ['CKA_VALUE'],
      wrap: 'wrapped',
    });
    expect(check.status).toBe('fail');
    expect(check.detail).toContain('CKA_EXTRACTABLE is true');
    expect(check.detail).toContain('CKA_NEVER_EXTRACTABLE is false');
    expect(check.detail).toContain('CKA_ALWAYS_SENSITIVE is not reported');
    expect(check.detail).toContain('CKA_VALUE');
    expect(check.detail).toContain('C_WrapKey wrapped it');
    expect(check.fix).toContain(sound.label);
  });
});

describe('percentile', () => {
  it('takes the nearest rank', () => {
    const samples = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(samples, 0.5)).toBe(50);
    expect(percentile(samples, 0.99)).toBe(99);
    expect(percentile([7], 0.99)).toBe(7);
    expect(percentile([], 0.5)).toBe(0);
  });
});
