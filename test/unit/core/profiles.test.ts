import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { HsmintError } from '../../../core/errors.js';
import {
  PIV_KEY_SLOTS,
  findModule,
  listProfiles,
  loadProfile,
  parseProfile,
  type HsmProfile,
} from '../../../core/profiles.js';

const PROFILES_DIR = fileURLToPath(new URL('../../../hsm-profiles/', import.meta.url));
const FILE = 'hsm-profiles/test.yaml';

function shipped(name: string): string {
  return readFileSync(join(PROFILES_DIR, `${name}.yaml`), 'utf8');
}

/** `text` with `from` (which must occur exactly once) replaced by `to`. */
function edit(text: string, from: string, to: string): string {
  const at = text.indexOf(from);
  if (at === -1 || text.indexOf(from, at + 1) !== -1)
    throw new Error(`the test expects ${JSON.stringify(from)} exactly once`);
  return text.slice(0, at) + to + text.slice(at + from.length);
}

/** The 1-based line of the first line of `text` that starts with `prefix` (after indent). */
function lineOf(text: string, prefix: string): number {
  const index = text.split('\n').findIndex((line) => line.trimStart().startsWith(prefix));
  if (index === -1) throw new Error(`no line starts with ${JSON.stringify(prefix)}`);
  return index + 1;
}

function profileError(text: string): HsmintError {
  try {
    parseProfile(text, FILE);
  } catch (error) {
    if (error instanceof HsmintError) return error;
    throw new Error(`expected an HsmintError, got ${String(error)}`, { cause: error });
  }
  throw new Error('expected parseProfile to refuse the profile');
}

/** Asserts the code, the key path and message, and `(hsm-profiles/test.yaml:LINE)`. */
function expectInvalid(text: string, message: string, line: number): void {
  const error = profileError(text);
  expect(error.code).toBe('ERR_CONFIG_INVALID');
  expect(error.message).toContain(message);
  expect(error.message).toContain(`(${FILE}:${line})`);
}

describe('shipped profiles', () => {
  it('are the six documented families', () => {
    expect(listProfiles()).toEqual([
      'generic',
      'opensc',
      'softhsm',
      'softhsm-piv',
      'yubihsm2',
      'yubikey-piv',
    ]);
  });

  it.each(listProfiles())('%s validates against the schema and its own rules', (name) => {
    const profile = loadProfile(name);
    expect(profile.name).toBe(name);
    expect(profile.algorithms.length).toBeGreaterThan(0);
    expect(profile.maxInFlight).toBeLessThanOrEqual(profile.sessions);
    expect(profile.moduleCandidates).toEqual(profile.modules.map((module) => module.path));
  });

  it('keep the values the daemon has relied on', () => {
    // core/open.ts takes the pool size from here; config tests expect softhsm's 4.
    expect(loadProfile('softhsm').sessions).toBe(16);
    expect(loadProfile('softhsm').algorithms).toEqual([
      'ES256',
      'ES384',
      'PS256',
      'RS256',
      'EdDSA',
    ]);
    expect(loadProfile('generic').moduleCandidates).toEqual([]);
  });

  it('say that a YubiKey takes one operation at a time and may wait for a touch', () => {
    for (const name of ['yubikey-piv', 'softhsm-piv', 'opensc']) {
      const profile = loadProfile(name);
      expect([profile.sessions, profile.maxInFlight]).toEqual([1, 1]);
    }
    const yubikey = loadProfile('yubikey-piv');
    expect(yubikey.login.touch.policies).toEqual(['never', 'always', 'cached']);
    expect(yubikey.login.touch.hint).toMatch(/touch the YubiKey/);
    expect(yubikey.signTimeoutMs).toBeGreaterThanOrEqual(15000);
    expect(yubikey.login.contextSpecific.slots).toEqual(['9c']);
    expect(yubikey.keyGeneration.login).toBe('so');
  });

  it('give the YubiKey only what its PIV application signs with before firmware 5.7', () => {
    const yubikey = loadProfile('yubikey-piv');
    expect(yubikey.algorithms).toEqual(['ES256', 'ES384', 'PS256', 'RS256']);
    expect(yubikey.algorithmSupport.RS256.rsaBits).toEqual([2048]);
    expect(yubikey.algorithmSupport.RS256.fromFirmware).toEqual({
      version: '5.7.0',
      rsaBits: [3072, 4096],
    });
    expect(yubikey.algorithmSupport.EdDSA).toMatchObject({
      supported: false,
      fromFirmware: { version: '5.7.0', rsaBits: [] },
    });
    // The CI stand-in must not accept more than the device it stands for.
    const ci = loadProfile('softhsm-piv');
    expect(ci.algorithms).toEqual(yubikey.algorithms);
    expect(ci.algorithmSupport.PS256.rsaBits).toEqual(yubikey.algorithmSupport.PS256.rsaBits);
    expect(ci.algorithmSupport.RS256.rsaBits).toEqual(yubikey.algorithmSupport.RS256.rsaBits);
  });

  it('has softhsm-piv set CKA_ALWAYS_AUTHENTICATE itself, where the YubiKey decides by slot', () => {
    expect(loadProfile('softhsm-piv').login.contextSpecific).toMatchObject({
      slots: ['9c'],
      setAlwaysAuthenticate: true,
    });
    expect(loadProfile('yubikey-piv').login.contextSpecific.setAlwaysAuthenticate).toBe(false);
  });

  it('schema.json lists the PIV slots that PIV_KEY_SLOTS does', () => {
    const schema = JSON.parse(readFileSync(join(PROFILES_DIR, 'schema.json'), 'utf8')) as {
      properties: { objects: { then: { properties: { signing_slot: { enum: string[] } } } } };
    };
    expect(schema.properties.objects.then.properties.signing_slot.enum).toEqual([...PIV_KEY_SLOTS]);
    expect(PIV_KEY_SLOTS).toHaveLength(24);
  });
});

describe('PIV slot to CKA_ID tables', () => {
  const table = (profile: HsmProfile): Record<string, number> => {
    if (profile.objects.naming !== 'piv-slot') throw new Error(`${profile.name} is not piv-slot`);
    return Object.fromEntries(profile.objects.slots.map((entry) => [entry.slot, entry.ckaId]));
  };
  const retired = Array.from({ length: 20 }, (_, i) => (0x82 + i).toString(16));

  it('is ykcs11 mapping for yubikey-piv and softhsm-piv: 9a 9c 9d 9e = 1..4, 82..95 = 5..24', () => {
    const expected: Record<string, number> = { '9a': 0x01, '9c': 0x02, '9d': 0x03, '9e': 0x04 };
    retired.forEach((slot, i) => (expected[slot] = 0x05 + i));
    expect(table(loadProfile('yubikey-piv'))).toEqual(expected);
    expect(table(loadProfile('softhsm-piv'))).toEqual(expected);
    expect(expected['95']).toBe(0x18);
  });

  it("is OpenSC's for opensc: the ids 01..24 written in decimal and read as hex", () => {
    const asOpenScReadsThem = (n: number) => parseInt(String(n).padStart(2, '0'), 16);
    const expected: Record<string, number> = {};
    ['9a', '9c', '9d', '9e', ...retired].forEach((slot, i) => {
      expected[slot] = asOpenScReadsThem(i + 1);
    });
    const opensc = table(loadProfile('opensc'));
    expect(opensc).toEqual(expected);
    expect([opensc['86'], opensc['87'], opensc['95']]).toEqual([0x09, 0x10, 0x24]);
  });

  it('puts the signing slot 9c first, asking for the PIN before every signature', () => {
    for (const name of ['yubikey-piv', 'softhsm-piv', 'opensc']) {
      const { objects } = loadProfile(name);
      if (objects.naming !== 'piv-slot') throw new Error(`${name} is not piv-slot`);
      expect(objects.signingSlot).toBe('9c');
      expect(objects.keySlots[0]).toBe('9c');
      expect(objects.slots.find((entry) => entry.slot === '9c')?.pinPolicy).toBe('always');
    }
  });

  it('matches the table in hsm-profiles/README.md row for row', () => {
    const readme = readFileSync(join(PROFILES_DIR, 'README.md'), 'utf8');
    const rows = readme
      .split('\n')
      .map((line) =>
        /^\| `([0-9a-f]{2})` \|[^|]*\| (0x[0-9a-f]{2}) \| (0x[0-9a-f]{2}) \|/.exec(line),
      )
      .filter((match): match is RegExpExecArray => match !== null)
      .map(([, slot, ykcs11, opensc]) => [slot, Number(ykcs11), Number(opensc)]);
    const yubikey = table(loadProfile('yubikey-piv'));
    const opensc = table(loadProfile('opensc'));
    expect(rows).toEqual([...PIV_KEY_SLOTS].map((slot) => [slot, yubikey[slot], opensc[slot]]));
  });
});

describe('parseProfile refuses, naming the file, the key path and the line', () => {
  const softhsm = shipped('softhsm');
  const piv = shipped('softhsm-piv');

  it('accepts the shipped text as is (the base of the cases below)', () => {
    expect(parseProfile(softhsm, FILE).name).toBe('softhsm');
    expect(parseProfile(piv, FILE).name).toBe('softhsm-piv');
  });

  it('an unknown top-level key', () => {
    const text = `${softhsm}colour: blue\n`;
    expectInvalid(text, 'colour: unknown key', lineOf(text, 'colour:'));
  });

  it('an unknown nested key', () => {
    const text = edit(softhsm, '  label_fixed: false\n', '  label_fixed: false\n  lable: x\n');
    expectInvalid(text, 'token.lable: unknown key', lineOf(text, 'lable:'));
  });

  it('an unknown key in a PIV slot entry', () => {
    const text = edit(piv, 'cka_id: 0x03,', 'cka_id: 0x03, touch: always,');
    expectInvalid(text, 'objects.slots[2].touch: unknown key', lineOf(text, "- { slot: '9d'"));
  });

  it('an attribute hsmint never puts in a key template', () => {
    const text = edit(softhsm, '  CKA_ALWAYS_AUTHENTICATE:\n', '  CKA_COLOUR:\n');
    expectInvalid(
      text,
      'key_template.CKA_COLOUR: unknown key; expected one of "CKA_TOKEN"',
      lineOf(text, 'CKA_COLOUR:'),
    );
  });

  it('an unknown key, listing the keys there are', () => {
    const text = edit(softhsm, '  label_fixed: false\n', '  label_fixed: false\n  lable: x\n');
    expect(profileError(text).message).toContain(
      'expected one of label, label_fixed, manufacturer, model, select_by, note',
    );
  });

  it('a wrong type', () => {
    const text = edit(softhsm, 'sessions: 16', 'sessions: four');
    expectInvalid(text, 'sessions: expected integer', lineOf(text, 'sessions:'));
  });

  it('sessions 0', () => {
    const text = edit(softhsm, 'sessions: 16', 'sessions: 0');
    expectInvalid(text, 'sessions: must be >= 1', lineOf(text, 'sessions:'));
  });

  it('an algorithm that is not one of the JWS algorithms hsmint signs with', () => {
    const text = edit(
      softhsm,
      '  ES256: { supported: true }\n',
      '  ES256: { supported: true }\n  HS256: { supported: true }\n',
    );
    expectInvalid(text, 'algorithms.HS256: unknown key', lineOf(text, 'HS256:'));
  });

  it('an RSA algorithm marked supported without its key sizes', () => {
    const text = edit(
      softhsm,
      'RS256: { supported: true, rsa_bits: [2048, 3072, 4096] }',
      'RS256: { supported: true }',
    );
    expectInvalid(text, 'algorithms.RS256.rsa_bits: is required', lineOf(text, 'RS256:'));
  });

  it('an RSA key size hsmint does not sign with', () => {
    const text = edit(
      softhsm,
      'RS256: { supported: true, rsa_bits: [2048, 3072, 4096] }',
      'RS256: { supported: true, rsa_bits: [1024] }',
    );
    expectInvalid(
      text,
      'algorithms.RS256.rsa_bits[0]: expected one of 2048, 3072, 4096',
      lineOf(text, 'RS256:'),
    );
  });

  it('key sizes on a curve algorithm', () => {
    const text = edit(
      softhsm,
      'ES256: { supported: true }',
      'ES256: { supported: true, rsa_bits: [2048] }',
    );
    expectInvalid(text, 'algorithms.ES256.rsa_bits: unknown key', lineOf(text, 'ES256:'));
  });

  it('a profile that supports no algorithm', () => {
    let text = softhsm;
    for (const alg of ['ES256', 'ES384'])
      text = edit(text, `${alg}: { supported: true }`, `${alg}: { supported: false }`);
    text = edit(text, 'PS256: { supported: true,', 'PS256: { supported: false,');
    text = edit(text, 'RS256: { supported: true,', 'RS256: { supported: false,');
    text = edit(text, 'EdDSA:\n    supported: true', 'EdDSA:\n    supported: false');
    expectInvalid(text, 'algorithms: no algorithm is supported', lineOf(text, 'algorithms:'));
  });

  it('a PIV slot id that is not a PIV key slot', () => {
    const text = edit(piv, "- { slot: '9d',", "- { slot: '9f',");
    expectInvalid(
      text,
      'objects.slots[2].slot: expected one of "9a", "9c"',
      lineOf(text, "- { slot: '9f'"),
    );
  });

  it('a PIV slot id written as a number (YAML reads 82 unquoted as one)', () => {
    const text = edit(piv, "- { slot: '82',", '- { slot: 82,');
    expectInvalid(
      text,
      "objects.slots[4].slot: expected string; quote it: '82'",
      lineOf(text, '- { slot: 82'),
    );
  });

  it('a CKA_ID that is not one byte', () => {
    const text = edit(piv, 'cka_id: 0x03', 'cka_id: 0x100');
    expectInvalid(text, 'objects.slots[2].cka_id: must be <= 255', lineOf(text, "- { slot: '9d'"));
  });

  it('two slots with one CKA_ID', () => {
    const text = edit(piv, "slot: '9c', cka_id: 0x02", "slot: '9c', cka_id: 0x01");
    expectInvalid(
      text,
      "objects.slots[1].cka_id: CKA_ID 0x01 is slot 9a's too",
      lineOf(text, "- { slot: '9c'"),
    );
  });

  it('a slot listed twice', () => {
    const text = edit(piv, "- { slot: '9d',", "- { slot: '9a',");
    expectInvalid(
      text,
      'objects.slots[2].slot: slot 9a is listed twice',
      lineOf(text, "- { slot: '9a', cka_id: 0x03"),
    );
  });

  it('a signing slot missing from the table', () => {
    const line9e = piv.split('\n').find((line) => line.includes("slot: '9e'"))!;
    let text = edit(piv, `${line9e}\n`, '');
    text = edit(text, "signing_slot: '9c'", "signing_slot: '9e'");
    expectInvalid(
      text,
      'objects.signing_slot: slot 9e is not in objects.slots',
      lineOf(text, 'signing_slot:'),
    );
  });

  it('PIV keys on a profile that names its keys by label', () => {
    const text = edit(
      softhsm,
      '  id_max_bytes: null\n',
      "  id_max_bytes: null\n  signing_slot: '9c'\n",
    );
    expectInvalid(text, 'objects.signing_slot: unknown key', lineOf(text, 'signing_slot:'));
  });

  it('context-specific slots on a profile that names its keys by label', () => {
    const text = edit(
      softhsm,
      'context_specific: { slots: [],',
      "context_specific: { slots: ['9c'],",
    );
    expectInvalid(
      text,
      'login.context_specific.slots: name PIV slots only',
      lineOf(text, 'context_specific:'),
    );
  });

  it('a touch policy without the words that tell the operator to touch the key', () => {
    const text = edit(
      softhsm,
      'touch: { policies: [never], hint: null }',
      'touch: { policies: [never, always], hint: null }',
    );
    expectInvalid(text, 'login.touch.hint: a key that waits for a touch', lineOf(text, 'touch:'));
  });

  it('more operations in flight than sessions', () => {
    const text = edit(softhsm, 'max_in_flight: 16', 'max_in_flight: 17');
    expectInvalid(
      text,
      'max_in_flight: is more than sessions (16)',
      lineOf(text, 'max_in_flight:'),
    );
  });

  it('a missing required key, at the line of the mapping that lacks it', () => {
    const text = edit(softhsm, '  retries: null', '  retry: null');
    const error = profileError(text);
    expect(error.message).toMatch(/^login\.pin\.(retries: is required|retry: unknown key)/);
    expect(error.message).toContain(`(${FILE}:`);
  });

  it('a missing top-level key', () => {
    const text = softhsm.replace(/^sign_timeout_ms: .*\n/m, '');
    expectInvalid(text, 'sign_timeout_ms: is required', lineOf(text, 'name:'));
  });

  it('a module path that is not absolute, and an unknown distribution', () => {
    const relative = edit(
      softhsm,
      '{ path: /usr/lib/softhsm/libsofthsm2.so,',
      '{ path: libsofthsm2.so,',
    );
    expectInvalid(
      relative,
      'module_candidates[0].path: must match pattern',
      lineOf(relative, '- { path: libsofthsm2.so'),
    );
    const gentoo = edit(
      softhsm,
      '{ path: /usr/lib/pkcs11/libsofthsm2.so, distro: arch }',
      '{ path: /usr/lib/pkcs11/libsofthsm2.so, distro: gentoo }',
    );
    expectInvalid(
      gentoo,
      'module_candidates[4].distro: expected one of "debian"',
      lineOf(gentoo, '- { path: /usr/lib/pkcs11/'),
    );
  });

  it('YAML that does not parse, and aliases', () => {
    expect(profileError('name: [unclosed\n').code).toBe('ERR_CONFIG_INVALID');
    expect(profileError('name: [unclosed\n').message).toMatch(
      /^not valid YAML: .+ \(hsm-profiles\/test\.yaml:\d+\)$/,
    );
    const aliased = edit(softhsm, 'sessions: 16', 'sessions: &n 4\nx: *n');
    expect(profileError(aliased).message).toContain('aliases are not allowed');
  });
});

describe('loadProfile', () => {
  it('refuses a name that could leave hsm-profiles/', () => {
    expect(() => loadProfile('../etc/passwd')).toThrow(HsmintError);
    try {
      loadProfile('../etc/passwd');
    } catch (error) {
      expect((error as HsmintError).code).toBe('ERR_CONFIG_INVALID');
    }
  });

  it('names the profiles there are when asked for one that is not', () => {
    try {
      loadProfile('nitrokey');
      throw new Error('expected loadProfile to refuse nitrokey');
    } catch (error) {
      expect((error as HsmintError).code).toBe('ERR_CONFIG_INVALID');
      expect((error as HsmintError).message).toContain('there are: generic, opensc, softhsm');
    }
  });
});

describe('findModule', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hsmint-profiles-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('takes the first candidate that exists, in the profile order', () => {
    const second = join(dir, 'second.so');
    const third = join(dir, 'third.so');
    writeFileSync(second, '');
    writeFileSync(third, '');
    const profile = {
      ...loadProfile('yubikey-piv'),
      moduleCandidates: [join(dir, 'first.so'), second, third],
    };
    expect(findModule(profile)).toBe(second);
  });

  it('lists what it tried, and tells how to install SoftHSM or to set hsm.module', () => {
    const missing = join(dir, 'missing.so');
    const softhsm = { ...loadProfile('softhsm'), moduleCandidates: [missing] };
    expect(() => findModule(softhsm)).toThrow(/tried: .*missing\.so.*apt-get install -y softhsm2/);
    try {
      findModule(loadProfile('generic'));
      throw new Error('expected findModule to refuse generic');
    } catch (error) {
      expect((error as HsmintError).code).toBe('ERR_MODULE_NOT_FOUND');
      expect((error as HsmintError).message).toContain('tried: none). Set hsm.module.');
    }
  });
});
