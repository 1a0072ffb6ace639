import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../../core/config.js';
import { HsmintError } from '../../../core/errors.js';
import { loadProfile } from '../../../core/profiles.js';

const FILE = '/etc/hsmint/hsmint.yaml';

/** The smallest valid config; line numbers below count from 1 at `issuer`. */
const MINIMAL = [
  'issuer: urn:test', // 1
  'hsm:', // 2
  '  token: hsmint', // 3
  '  pin_file: pin', // 4
  'tokens:', // 5
  '  audiences: [api, other]', // 6
].join('\n');

function configError(text: string): HsmintError {
  try {
    parseConfig(text, FILE);
  } catch (error) {
    if (error instanceof HsmintError) return error;
    throw new Error(`expected an HsmintError, got ${String(error)}`, { cause: error });
  }
  throw new Error('expected parseConfig to refuse the config');
}

/** Asserts the code, and that the message names the key path and `hsmint.yaml:LINE`. */
function expectInvalid(text: string, path: string, line: number): void {
  const error = configError(text);
  expect(error.code).toBe('ERR_CONFIG_INVALID');
  expect(error.message).toContain(path);
  expect(error.message).toContain(`(hsmint.yaml:${line})`);
}

describe('parseConfig', () => {
  it('fills every default around the minimal config', () => {
    const config = parseConfig(MINIMAL, FILE);
    expect(config).toEqual({
      source: FILE,
      issuer: 'urn:test',
      socket: { path: '/run/hsmint/hsmint.sock', mode: 0o660, group: undefined },
      hsm: {
        profile: 'softhsm',
        module: undefined,
        token: { token: 'hsmint' },
        pinFile: '/etc/hsmint/pin',
        sessions: undefined,
        environment: {},
      },
      keys: { algorithm: 'ES256', rsaBits: 3072 },
      tokens: { defaultTtl: 300, maxTtl: 3600, clockSkew: 30, audiences: ['api', 'other'] },
      log: { level: 'info' },
    });
  });

  it('leaves hsm.sessions to the profile, whose default (softhsm) takes 4', () => {
    const config = parseConfig(MINIMAL, FILE);
    expect(config.hsm.sessions).toBeUndefined();
    expect(loadProfile(config.hsm.profile).sessions).toBe(4);
  });

  it('resolves relative paths against the config file folder and keeps absolute ones', () => {
    const config = parseConfig(
      [
        'issuer: urn:test',
        'socket:',
        '  path: run/hsmint.sock',
        'hsm:',
        '  token: hsmint',
        '  pin_file: ../secrets/pin',
        '  module: /usr/lib/softhsm/libsofthsm2.so',
        'tokens:',
        '  audiences: [api]',
      ].join('\n'),
      '/srv/app/conf/hsmint.yaml',
    );
    expect(config.socket.path).toBe('/srv/app/conf/run/hsmint.sock');
    expect(config.hsm.pinFile).toBe('/srv/app/secrets/pin');
    expect(config.hsm.module).toBe('/usr/lib/softhsm/libsofthsm2.so');
    expect(config.source).toBe('/srv/app/conf/hsmint.yaml');
  });

  it('reads every key when all are given', () => {
    const config = parseConfig(
      [
        'issuer: https://issuer.example',
        'socket:',
        '  path: /run/x/x.sock',
        '  mode: "0600"',
        '  group: hsmint-clients',
        'hsm:',
        '  profile: generic',
        '  module: mod.so',
        '  token: "pkcs11:token=hsmint;serial=42"',
        '  pin_file: /etc/hsmint/pin',
        '  sessions: 8',
        '  environment:',
        '    SOFTHSM2_CONF: /etc/softhsm2.conf',
        'keys:',
        '  algorithm: PS256',
        '  rsa_bits: 4096',
        'tokens:',
        '  default_ttl: 10m',
        '  max_ttl: 2h',
        '  clock_skew: 1m',
        '  audiences: [a, b]',
        'log:',
        '  level: debug',
      ].join('\n'),
      FILE,
    );
    expect(config.socket).toEqual({ path: '/run/x/x.sock', mode: 0o600, group: 'hsmint-clients' });
    expect(config.hsm).toEqual({
      profile: 'generic',
      module: '/etc/hsmint/mod.so',
      token: { token: 'hsmint', serial: '42' },
      pinFile: '/etc/hsmint/pin',
      sessions: 8,
      environment: { SOFTHSM2_CONF: '/etc/softhsm2.conf' },
    });
    expect(config.keys).toEqual({ algorithm: 'PS256', rsaBits: 4096 });
    expect(config.tokens).toEqual({
      defaultTtl: 600,
      maxTtl: 7200,
      clockSkew: 60,
      audiences: ['a', 'b'],
    });
    expect(config.log.level).toBe('debug');
  });

  it('takes the PIN file and module from the token URI when the keys are absent', () => {
    const config = parseConfig(
      [
        'issuer: urn:test',
        'hsm:',
        '  token: "pkcs11:token=hsmint?pin-source=file:pin.txt&module-path=/m.so"',
        'tokens:',
        '  audiences: [api]',
      ].join('\n'),
      FILE,
    );
    expect(config.hsm.pinFile).toBe('/etc/hsmint/pin.txt');
    expect(config.hsm.module).toBe('/m.so');
  });

  it.each(['0660', '660', '0600', '0640'])('accepts socket mode "%s"', (mode) => {
    const config = parseConfig(`${MINIMAL}\nsocket:\n  mode: "${mode}"`, FILE);
    expect(config.socket.mode).toBe(parseInt(mode, 8));
  });

  it.each(['ES256', 'ES384', 'PS256', 'RS256', 'EdDSA'])('accepts algorithm %s', (algorithm) => {
    expect(parseConfig(`${MINIMAL}\nkeys:\n  algorithm: ${algorithm}`, FILE).keys.algorithm).toBe(
      algorithm,
    );
  });

  describe('refuses, naming the path and line', () => {
    it('an unknown top-level key', () => {
      expectInvalid(`${MINIMAL}\nissuers: urn:x`, 'issuers', 7);
    });

    it('an unknown nested key', () => {
      expectInvalid(`${MINIMAL}\n  maxttl: 1h`, 'tokens.maxttl', 7);
    });

    it('an unknown key in a later section', () => {
      expectInvalid(`${MINIMAL}\nkeys:\n  algorithm: ES256\n  rotate: 30d`, 'keys.rotate', 9);
    });

    it('an issuer that is not a string', () => {
      expectInvalid(MINIMAL.replace('issuer: urn:test', 'issuer: [a]'), 'issuer', 1);
    });

    it('an issuer with spaces', () => {
      expectInvalid(MINIMAL.replace('issuer: urn:test', 'issuer: urn test'), 'issuer', 1);
    });

    it('a section that is not a mapping', () => {
      expectInvalid(`${MINIMAL}\nlog: loud`, 'log', 7);
    });

    it('a number where a string is expected', () => {
      expectInvalid(MINIMAL.replace('token: hsmint', 'token: 42'), 'hsm.token', 3);
    });

    it('a string where a number is expected', () => {
      expectInvalid(
        `${MINIMAL.replace('  pin_file: pin', '  pin_file: pin\n  sessions: four')}`,
        'hsm.sessions',
        5,
      );
    });

    it('sessions out of range', () => {
      expectInvalid(
        `${MINIMAL.replace('  pin_file: pin', '  pin_file: pin\n  sessions: 0')}`,
        'hsm.sessions',
        5,
      );
    });

    it('audiences that are not a list', () => {
      expectInvalid(MINIMAL.replace('[api, other]', 'api'), 'tokens.audiences', 6);
    });

    it('audiences holding a non-string', () => {
      expectInvalid(MINIMAL.replace('[api, other]', '[api, 3]'), 'tokens.audiences', 6);
    });

    it('an empty audience list', () => {
      expectInvalid(MINIMAL.replace('[api, other]', '[]'), 'tokens.audiences', 6);
    });

    it('a bad duration', () => {
      expectInvalid(`${MINIMAL}\n  max_ttl: 300`, 'tokens.max_ttl', 7);
    });

    it('a duration that is not a string', () => {
      expectInvalid(`${MINIMAL}\n  clock_skew: [30s]`, 'tokens.clock_skew', 7);
    });

    it('default_ttl longer than max_ttl', () => {
      expectInvalid(`${MINIMAL}\n  default_ttl: 2h\n  max_ttl: 1h`, 'tokens.default_ttl', 7);
    });

    it('max_ttl over 24h', () => {
      expectInvalid(`${MINIMAL}\n  max_ttl: 25h`, 'tokens.max_ttl', 7);
    });

    it('clock_skew over 5m', () => {
      expectInvalid(`${MINIMAL}\n  clock_skew: 6m`, 'tokens.clock_skew', 7);
    });

    it('socket mode "0666": others may connect', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0666"`, 'socket.mode', 8);
    });

    it('socket mode "0661": others may only search, still refused', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0661"`, 'socket.mode', 8);
    });

    it('socket mode without owner read-write', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0460"`, 'socket.mode', 8);
    });

    it('an unquoted socket mode (YAML reads it as a decimal number)', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: 0660`, 'socket.mode', 8);
    });

    it('a socket mode that is not octal', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0680"`, 'socket.mode', 8);
    });

    it('a bad algorithm', () => {
      expectInvalid(`${MINIMAL}\nkeys:\n  algorithm: HS256`, 'keys.algorithm', 8);
    });

    it('a bad RSA key size', () => {
      expectInvalid(`${MINIMAL}\nkeys:\n  rsa_bits: 1024`, 'keys.rsa_bits', 8);
    });

    it('a bad log level', () => {
      expectInvalid(`${MINIMAL}\nlog:\n  level: verbose`, 'log.level', 8);
    });

    it('pin-value in the token URI', () => {
      expectInvalid(
        MINIMAL.replace('token: hsmint', 'token: "pkcs11:token=hsmint?pin-value=1234"'),
        'hsm.token',
        3,
      );
    });

    it('a token label over 32 characters', () => {
      expectInvalid(MINIMAL.replace('token: hsmint', `token: ${'x'.repeat(33)}`), 'hsm.token', 3);
    });

    // A missing key points at its section's block, which starts on the next line.
    it('a missing hsm.token', () => {
      expectInvalid(MINIMAL.replace('  token: hsmint\n', ''), 'hsm.token', 3);
    });

    it('a missing pin_file without pin-source in the URI', () => {
      expectInvalid(MINIMAL.replace('  pin_file: pin\n', ''), 'hsm.pin_file', 3);
    });

    it('an environment variable name that is not one', () => {
      expectInvalid(
        MINIMAL.replace('  pin_file: pin', '  pin_file: pin\n  environment:\n    lower: x'),
        'hsm.environment.lower',
        6,
      );
    });
  });

  it('refuses a missing issuer', () => {
    const error = configError(MINIMAL.replace('issuer: urn:test\n', ''));
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('issuer');
  });

  it('refuses a missing hsm section', () => {
    const error = configError('issuer: urn:test\ntokens:\n  audiences: [api]');
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('hsm');
  });

  it('refuses an empty file', () => {
    expect(configError('').code).toBe('ERR_CONFIG_INVALID');
  });

  it('refuses a document that is not a mapping', () => {
    expect(configError('- issuer: urn:test').code).toBe('ERR_CONFIG_INVALID');
  });

  it('refuses YAML aliases', () => {
    const error = configError(
      MINIMAL.replace(
        '  audiences: [api, other]',
        '  audiences: &list [api]\nlog:\n  level: *list',
      ),
    );
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('hsmint.yaml');
  });

  it('refuses a "billion laughs" document without expanding it', () => {
    const laughs = [
      'a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]',
      'b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]',
      'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]',
      'd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]',
      'e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]',
      'f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]',
      'g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]',
    ].join('\n');
    expect(configError(laughs).code).toBe('ERR_CONFIG_INVALID');
  });

  it('refuses duplicate keys', () => {
    const error = configError(`${MINIMAL}\nissuer: urn:other`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('(hsmint.yaml:7)');
  });

  it('takes the profile session count for a null hsm.sessions', () => {
    expect(
      parseConfig(MINIMAL.replace('  pin_file: pin', '  pin_file: pin\n  sessions: ~'), FILE).hsm
        .sessions,
    ).toBeUndefined();
  });

  it('refuses duplicate nested keys', () => {
    expect(configError(`${MINIMAL}\n  audiences: [x]`).code).toBe('ERR_CONFIG_INVALID');
  });

  it('refuses invalid YAML syntax', () => {
    const error = configError(`${MINIMAL}\nlog: {level: [`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toMatch(/\(hsmint\.yaml:7\)$/);
  });

  it('refuses a __proto__ key instead of merging it', () => {
    const error = configError(`${MINIMAL}\n__proto__:\n  issuer: urn:evil`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('(hsmint.yaml:7)');
  });
});

describe('loadConfig', () => {
  it('reads and parses a file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hsmint-config-'));
    try {
      const file = join(dir, 'hsmint.yaml');
      writeFileSync(file, MINIMAL);
      const config = loadConfig(file);
      expect(config.source).toBe(file);
      expect(config.hsm.pinFile).toBe(join(dir, 'pin'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a missing file as ERR_CONFIG_UNREADABLE', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hsmint-config-'));
    try {
      let code: string | undefined;
      try {
        loadConfig(join(dir, 'missing.yaml'));
      } catch (error) {
        code = (error as HsmintError).code;
      }
      expect(code).toBe('ERR_CONFIG_UNREADABLE');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
