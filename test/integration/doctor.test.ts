import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DoctorCheck, DoctorReport } from '../../core/pkcs11/doctor.js';
import { hsmint, makeToken, type TestToken } from './support/harness.js';

/** OpenSC's logging PKCS#11 module: it passes every call through and writes it down. */
const SPY = [
  '/usr/lib/x86_64-linux-gnu/pkcs11-spy.so',
  '/usr/lib/aarch64-linux-gnu/pkcs11-spy.so',
  '/usr/lib64/pkcs11-spy.so',
  '/usr/lib/pkcs11-spy.so',
].find((path) => existsSync(path));

const byId = (report: DoctorReport, id: string): DoctorCheck | undefined =>
  report.checks.find((check) => check.id === id);

/** A copy of the token's config with `change` applied; returns its path. */
async function variant(
  token: TestToken,
  name: string,
  change: (hsm: Record<string, any>) => void,
): Promise<string> {
  const document = parse(await readFile(token.config, 'utf8')) as Record<string, any>;
  change(document['hsm']);
  const path = join(token.dir, `${name}.yaml`);
  await writeFile(path, stringify(document), { mode: 0o600 });
  return path;
}

async function softhsmModule(token: TestToken): Promise<string> {
  const document = parse(await readFile(token.config, 'utf8')) as Record<string, any>;
  return document['hsm']['module'] as string;
}

async function doctor(
  args: string[],
  env?: NodeJS.ProcessEnv,
): Promise<{ code: number; report: DoctorReport; stderr: string }> {
  const result = await hsmint(['doctor', '--samples', '5', ...args], env ? { env } : {});
  return {
    code: result.code,
    report: JSON.parse(result.stdout) as DoctorReport,
    stderr: result.stderr,
  };
}

describe('hsmint doctor on a healthy SoftHSM token', () => {
  let token: TestToken;
  let softhsmConf: string;
  beforeAll(async () => {
    token = await makeToken('ES256');
    softhsmConf = join(token.dir, 'softhsm2.conf');
  });
  afterAll(async () => {
    await token?.cleanup();
  });

  it('passes every check from the config, in JSON when piped, and exits 0', async () => {
    const { code, report } = await doctor(['--config', token.config]);
    expect(code).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.checks.filter((check) => check.status !== 'pass')).toEqual([]);
    const label = report.keys[0]?.label;
    expect(report.keys).toHaveLength(1);
    expect(report.checks.map((check) => check.id)).toEqual([
      'config',
      'module',
      'token',
      'mechanisms',
      'pin-state',
      'pin-file',
      'login',
      'sign:ES256',
      `non-exportable:${label}`,
      'latency:ES256',
    ]);
    expect(report.tokens.find((t) => t.selected)?.label).toBe(token.label);
    expect(report.mechanisms?.missing).toEqual([]);
    expect(report.keys[0]).toMatchObject({
      purpose: 'signing',
      alg: 'ES256',
      extractable: false,
      never_extractable: true,
      sensitive: true,
      always_sensitive: true,
      readable: [],
      wrap: 'refused (CKR_KEY_UNEXTRACTABLE)',
    });
    const [latency] = report.latency;
    expect(latency).toMatchObject({ alg: 'ES256', key: 'session', samples: 5 });
    expect(latency!.p50_ms).toBeGreaterThan(0);
    expect(latency!.p99_ms).toBeGreaterThanOrEqual(latency!.p50_ms);
    expect(latency!.max_ms).toBeGreaterThanOrEqual(latency!.p99_ms);
  });

  it('leaves no key behind: its throwaway keys were session objects', async () => {
    await doctor(['--config', token.config]);
    const listed = await hsmint(['keys', 'list', '--config', token.config, '--json']);
    expect(JSON.parse(listed.stdout).keys.map((key: { kid: string }) => key.kid)).toEqual([
      token.kid,
    ]);
  });

  it('with --profile, signs and verifies with every algorithm the profile lists', async () => {
    const { code, report } = await doctor(
      [
        '--profile',
        'softhsm',
        '--token',
        `pkcs11:token=${token.label}`,
        '--pin-file',
        token.pinFile,
      ],
      { SOFTHSM2_CONF: softhsmConf },
    );
    expect(code).toBe(0);
    const algorithms = ['ES256', 'ES384', 'PS256', 'RS256', 'EdDSA'];
    for (const alg of algorithms) expect(byId(report, `sign:${alg}`)?.status).toBe('pass');
    expect(report.latency.map((entry) => entry.alg).sort()).toEqual([...algorithms].sort());
  });

  it('names the tokens it sees when none matches', async () => {
    const config = await variant(
      token,
      'missing',
      (hsm) => (hsm['token'] = 'pkcs11:token=nowhere'),
    );
    const { code, report } = await doctor(['--config', config]);
    expect(code).toBe(1);
    const check = byId(report, 'token');
    expect(check).toMatchObject({ status: 'fail', code: 'ERR_HSM_TOKEN_NOT_FOUND' });
    expect(check?.detail).toContain(token.label);
    expect(check?.fix).toBeDefined();
    expect(byId(report, 'login')?.status).toBe('skip');
  });
});

describe('hsmint doctor with a wrong PIN', () => {
  let token: TestToken;
  let wrongConfig: string;
  const spyLog = () => join(token.dir, 'spy.log');
  beforeAll(async () => {
    token = await makeToken('ES256');
    const wrongPin = join(token.dir, 'wrong-pin');
    await writeFile(wrongPin, '000000\n', { mode: 0o600 });
    wrongConfig = await variant(token, 'wrong', (hsm) => (hsm['pin_file'] = wrongPin));
  });
  afterAll(async () => {
    await token?.cleanup();
  });

  it('tries the PIN once, stops there, and says what to do', async () => {
    const { code, report } = await doctor(['--config', wrongConfig]);
    expect(code).toBe(1);
    const login = byId(report, 'login');
    expect(login).toMatchObject({ status: 'fail', code: 'ERR_PIN_INCORRECT' });
    expect(login?.fix).toContain('wrong-pin');
    const after = report.checks.slice(report.checks.indexOf(login!) + 1);
    expect(after.map((check) => [check.id, check.status])).toEqual([
      ['sign', 'skip'],
      ['non-exportable', 'skip'],
      ['latency', 'skip'],
    ]);
  });

  it('then warns about the wrong try (SoftHSM sets CKF_USER_PIN_COUNT_LOW) and passes with the right PIN', async () => {
    const warned = await doctor(['--config', token.config]);
    expect(warned.code).toBe(0);
    expect(byId(warned.report, 'pin-state')?.status).toBe('warn');
    // The good login reset the count.
    const clean = await doctor(['--config', token.config]);
    expect(byId(clean.report, 'pin-state')?.status).toBe('pass');
  });

  // Counting C_Login calls needs OpenSC's pkcs11-spy (Debian: opensc-pkcs11); without it the
  // single attempt is still shown by the skipped checks above.
  it.runIf(SPY !== undefined)(
    'makes exactly one C_Login call (counted by pkcs11-spy)',
    async () => {
      const real = await softhsmModule(token);
      const spied = await variant(token, 'spied', (hsm) => {
        hsm['pin_file'] = join(token.dir, 'wrong-pin');
        hsm['module'] = SPY;
        hsm['environment']['PKCS11SPY'] = real;
        hsm['environment']['PKCS11SPY_OUTPUT'] = spyLog();
      });
      const { code, report } = await doctor(['--config', spied]);
      expect(code).toBe(1);
      expect(byId(report, 'module')?.detail).toContain(SPY);
      expect(byId(report, 'login')?.code).toBe('ERR_PIN_INCORRECT');
      const calls = (await readFile(spyLog(), 'utf8')).match(/^\d+: C_Login$/gm) ?? [];
      expect(calls).toHaveLength(1);
    },
  );

  it('--pin-file stands in for hsm.pin_file (a systemd credential outside the service)', async () => {
    const { code, report } = await doctor(['--config', wrongConfig, '--pin-file', token.pinFile]);
    expect(code).toBe(0);
    expect(byId(report, 'pin-file')?.detail).toContain(token.pinFile);
    expect(byId(report, 'login')?.status).toBe('pass');
  });
});

/**
 * A key made outside hsmint with an hsmint label and none of its protection, written with
 * pkcs11js directly.
 */
describe('hsmint doctor on a token holding an extractable key with an hsmint label', () => {
  const LABEL = 'hsmint-ES256-20200101T000000Z';
  let token: TestToken;
  beforeAll(async () => {
    token = await makeToken('ES256');
    process.env['SOFTHSM2_CONF'] = join(token.dir, 'softhsm2.conf');
    const lib = new pkcs11js.PKCS11();
    lib.load(await softhsmModule(token));
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    try {
      const slot = lib
        .C_GetSlotList(true)
        .find((s) => lib.C_GetTokenInfo(s).label.trim() === token.label)!;
      const session = lib.C_OpenSession(
        slot,
        pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION,
      );
      lib.C_Login(session, pkcs11js.CKU_USER, (await readFile(token.pinFile, 'utf8')).trim());
      const id = randomBytes(16);
      lib.C_GenerateKeyPair(
        session,
        { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_LABEL, value: LABEL },
          { type: pkcs11js.CKA_ID, value: id },
          { type: pkcs11js.CKA_VERIFY, value: true },
          { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') },
        ],
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_LABEL, value: LABEL },
          { type: pkcs11js.CKA_ID, value: id },
          { type: pkcs11js.CKA_SIGN, value: true },
          { type: pkcs11js.CKA_SENSITIVE, value: false },
          { type: pkcs11js.CKA_EXTRACTABLE, value: true },
        ],
      );
    } finally {
      lib.C_Finalize();
    }
  });
  afterAll(async () => {
    await token?.cleanup();
  });

  it('fails the non-exportability check, naming that key, and passes the key hsmint made', async () => {
    const { code, report } = await doctor(['--config', token.config]);
    expect(code).toBe(1);
    const bad = byId(report, `non-exportable:${LABEL}`);
    expect(bad?.status).toBe('fail');
    expect(bad?.detail).toContain('CKA_EXTRACTABLE is true');
    expect(bad?.detail).toContain('CKA_VALUE');
    expect(bad?.detail).toContain('C_WrapKey wrapped it');
    expect(bad?.fix).toContain(LABEL);
    const own = report.checks.filter(
      (check) => check.id.startsWith('non-exportable:') && check.id !== `non-exportable:${LABEL}`,
    );
    expect(own.map((check) => check.status)).toEqual(['pass']);
    // Nothing secret is in the report: only the names of the attributes handed out.
    expect(report.keys.find((key) => key.label === LABEL)?.readable).toContain('CKA_VALUE');
  });
});
