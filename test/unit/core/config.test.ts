import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../../core/config.js';
import { HsmintError } from '../../../core/errors.js';
import { loadProfile } from '../../../core/profiles.js';

const FILE = '/etc/hsmint/hsmint.yaml';

/**
 * A small valid config with one policy rule; line numbers below count from 1 at `issuer`.
 * `tokens` comes last and empty, so that tests append its keys from line 10 on.
 */
const MINIMAL = [
  'issuer: urn:test', // 1
  'hsm:', // 2
  '  token: hsmint', // 3
  '  pin_file: pin', // 4
  'policy:', // 5
  '  rules:', // 6
  '    - match: {uid: 1000}', // 7
  '      audiences: [api, other]', // 8
  'tokens:', // 9
].join('\n');

/** The config without the policy: what a daemon that refuses every mint starts with. */
const NO_POLICY = ['issuer: urn:test', 'hsm:', '  token: hsmint', '  pin_file: pin'].join('\n');

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
      socket: {
        path: '/run/hsmint/hsmint.sock',
        mode: 0o660,
        group: undefined,
        maxConnectionsPerUid: 64,
        maxRequestsPerUid: 32,
      },
      hsm: {
        profile: 'softhsm',
        module: undefined,
        token: { token: 'hsmint' },
        pinFile: '/etc/hsmint/pin',
        sessions: undefined,
        environment: {},
        queueTimeout: 2,
        callTimeout: 2,
      },
      keys: {
        algorithm: 'ES256',
        rsaBits: 3072,
        rotationPeriod: 7 * 86400,
        publishAhead: 3600,
        stateDir: '/var/lib/hsmint',
      },
      tokens: {
        defaultTtl: 300,
        maxTtl: 3600,
        clockSkew: 30,
        maxRevocations: 100_000,
        embedX5c: false,
      },
      audit: {
        dir: '/var/lib/hsmint/audit',
        checkpointEvery: 1000,
        checkpointInterval: 60,
        segmentSize: 16 * 1024 * 1024,
      },
      ca: undefined,
      policy: {
        rules: [
          {
            name: 'rules[0]',
            match: { uid: [1000] },
            subjects: [],
            audiences: ['api', 'other'],
            scopes: [],
            claims: {},
            maxTtl: 3600,
            admin: false,
            metrics: false,
          },
        ],
      },
      log: { level: 'info' },
    });
  });

  it('reads a config without a policy as one with no rules', () => {
    expect(parseConfig(NO_POLICY, FILE).policy).toEqual({ rules: [] });
  });

  it('leaves hsm.sessions to the profile, whose default (softhsm) takes 4', () => {
    const config = parseConfig(MINIMAL, FILE);
    expect(config.hsm.sessions).toBeUndefined();
    expect(loadProfile(config.hsm.profile).sessions).toBe(16);
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
        '  max_connections_per_uid: 8',
        '  max_requests_per_uid: 4',
        'hsm:',
        '  profile: generic',
        '  module: mod.so',
        '  token: "pkcs11:token=hsmint;serial=42"',
        '  pin_file: /etc/hsmint/pin',
        '  sessions: 8',
        '  environment:',
        '    SOFTHSM2_CONF: /etc/softhsm2.conf',
        '  queue_timeout: 5s',
        '  call_timeout: 30s',
        'keys:',
        '  algorithm: PS256',
        '  rsa_bits: 4096',
        '  rotation_period: 30d',
        '  publish_ahead: 2h',
        '  state_dir: state',
        'tokens:',
        '  default_ttl: 10m',
        '  max_ttl: 2h',
        '  clock_skew: 1m',
        '  max_revocations: 500',
        'policy:',
        '  rules:',
        '    - name: billing',
        '      match:',
        '        uid: [1000, 1001]',
        '        user: billing',
        '        group: [billing, ops]',
        '        unit: billing.service',
        '        exe: /usr/bin/node',
        "      subjects: ['svc:{unit}', 'user:{user}', 'id:{uid}:{gid}:{group}', 'job:*']",
        '      audiences: [a, b]',
        '      scopes: [read, "write:all"]',
        '      claims:',
        '        tenant: [t1, t2]',
        '        level: 3',
        '        beta: [true, false]',
        '        trace: null',
        '      max_ttl: 30m',
        '      admin: true',
        'log:',
        '  level: debug',
      ].join('\n'),
      FILE,
    );
    expect(config.socket).toEqual({
      path: '/run/x/x.sock',
      mode: 0o600,
      group: 'hsmint-clients',
      maxConnectionsPerUid: 8,
      maxRequestsPerUid: 4,
    });
    expect(config.hsm).toEqual({
      profile: 'generic',
      module: '/etc/hsmint/mod.so',
      token: { token: 'hsmint', serial: '42' },
      pinFile: '/etc/hsmint/pin',
      sessions: 8,
      environment: { SOFTHSM2_CONF: '/etc/softhsm2.conf' },
      queueTimeout: 5,
      callTimeout: 30,
    });
    expect(config.keys).toEqual({
      algorithm: 'PS256',
      rsaBits: 4096,
      rotationPeriod: 30 * 86400,
      publishAhead: 7200,
      stateDir: '/etc/hsmint/state',
    });
    expect(config.tokens).toEqual({
      defaultTtl: 600,
      maxTtl: 7200,
      clockSkew: 60,
      maxRevocations: 500,
      embedX5c: false,
    });
    expect(config.policy).toEqual({
      rules: [
        {
          name: 'billing',
          match: {
            uid: [1000, 1001],
            user: ['billing'],
            group: ['billing', 'ops'],
            unit: ['billing.service'],
            exe: ['/usr/bin/node'],
          },
          subjects: ['svc:{unit}', 'user:{user}', 'id:{uid}:{gid}:{group}', 'job:*'],
          audiences: ['a', 'b'],
          scopes: ['read', 'write:all'],
          claims: { tenant: ['t1', 't2'], level: [3], beta: [true, false], trace: null },
          maxTtl: 1800,
          admin: true,
          metrics: false,
        },
      ],
    });
    expect(config.log.level).toBe('debug');
  });

  it('takes the PIN file and module from the token URI when the keys are absent', () => {
    const config = parseConfig(
      [
        'issuer: urn:test',
        'hsm:',
        '  token: "pkcs11:token=hsmint?pin-source=file:pin.txt&module-path=/m.so"',
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
      expectInvalid(`${MINIMAL}\nissuers: urn:x`, 'issuers', 10);
    });

    it('an unknown nested key', () => {
      expectInvalid(`${MINIMAL}\n  maxttl: 1h`, 'tokens.maxttl', 10);
    });

    it('an unknown key in a later section', () => {
      expectInvalid(`${MINIMAL}\nkeys:\n  algorithm: ES256\n  rotate: 30d`, 'keys.rotate', 12);
    });

    it('an issuer that is not a string', () => {
      expectInvalid(MINIMAL.replace('issuer: urn:test', 'issuer: [a]'), 'issuer', 1);
    });

    it('an issuer with spaces', () => {
      expectInvalid(MINIMAL.replace('issuer: urn:test', 'issuer: urn test'), 'issuer', 1);
    });

    it('a section that is not a mapping', () => {
      expectInvalid(`${MINIMAL}\nlog: loud`, 'log', 10);
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

    it('tokens.audiences, which moved to the policy rules', () => {
      expectInvalid(`${MINIMAL}\n  audiences: [api]`, 'tokens.audiences', 10);
    });

    it('audiences that are not a list', () => {
      expectInvalid(MINIMAL.replace('[api, other]', 'api'), 'policy.rules[0].audiences', 8);
    });

    it('audiences holding a non-string', () => {
      expectInvalid(MINIMAL.replace('[api, other]', '[api, 3]'), 'policy.rules[0].audiences', 8);
    });

    it('audiences holding an empty string', () => {
      expectInvalid(MINIMAL.replace('[api, other]', '[api, ""]'), 'policy.rules[0].audiences', 8);
    });

    it('a rule that matches no one in particular (an empty match)', () => {
      expectInvalid(MINIMAL.replace('{uid: 1000}', '{}'), 'policy.rules[0].match', 7);
    });

    it('a bad duration', () => {
      expectInvalid(`${MINIMAL}\n  max_ttl: 300`, 'tokens.max_ttl', 10);
    });

    it('a duration that is not a string', () => {
      expectInvalid(`${MINIMAL}\n  clock_skew: [30s]`, 'tokens.clock_skew', 10);
    });

    it('default_ttl longer than max_ttl', () => {
      expectInvalid(`${MINIMAL}\n  default_ttl: 2h\n  max_ttl: 1h`, 'tokens.default_ttl', 10);
    });

    it('max_ttl over 24h', () => {
      expectInvalid(`${MINIMAL}\n  max_ttl: 25h`, 'tokens.max_ttl', 10);
    });

    it('clock_skew over 5m', () => {
      expectInvalid(`${MINIMAL}\n  clock_skew: 6m`, 'tokens.clock_skew', 10);
    });

    it('socket mode "0666": others may connect', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0666"`, 'socket.mode', 11);
    });

    it('socket mode "0661": others may only search, still refused', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0661"`, 'socket.mode', 11);
    });

    it('socket mode without owner read-write', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0460"`, 'socket.mode', 11);
    });

    it('an unquoted socket mode (YAML reads it as a decimal number)', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: 0660`, 'socket.mode', 11);
    });

    it('a socket mode that is not octal', () => {
      expectInvalid(`${MINIMAL}\nsocket:\n  mode: "0680"`, 'socket.mode', 11);
    });

    it('a bad algorithm', () => {
      expectInvalid(`${MINIMAL}\nkeys:\n  algorithm: HS256`, 'keys.algorithm', 11);
    });

    it('a bad RSA key size', () => {
      expectInvalid(`${MINIMAL}\nkeys:\n  rsa_bits: 1024`, 'keys.rsa_bits', 11);
    });

    it('a bad log level', () => {
      expectInvalid(`${MINIMAL}\nlog:\n  level: verbose`, 'log.level', 11);
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

    it.each([
      ['queue_timeout', '2m'],
      ['queue_timeout', '500'],
      ['call_timeout', '6m'],
    ])('hsm.%s %s', (key, value) => {
      expectInvalid(
        MINIMAL.replace('  pin_file: pin', `  pin_file: pin\n  ${key}: ${value}`),
        `hsm.${key}`,
        5,
      );
    });

    it.each(['object=sig-1', 'id=%01', 'type=private'])(
      'a token URI that also names a key (%s)',
      (attribute) => {
        expectInvalid(
          MINIMAL.replace('token: hsmint', `token: "pkcs11:token=hsmint;${attribute}"`),
          'hsm.token',
          3,
        );
      },
    );

    it.each(['|/usr/bin/pin-helper', 'https://pins.example/pin', 'file:'])(
      'a pin-source that is not a file (%s)',
      (source) => {
        expectInvalid(
          MINIMAL.replace('token: hsmint', `token: "pkcs11:token=hsmint?pin-source=${source}"`),
          'hsm.token',
          3,
        );
      },
    );

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
    const error = configError('issuer: urn:test\ntokens:\n  max_ttl: 1h');
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
        '      audiences: [api, other]',
        '      audiences: &list [api]\nlog:\n  level: *list',
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
    const error = configError(`${MINIMAL}\n  max_ttl: 1h\nissuer: urn:other`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('(hsmint.yaml:11)');
  });

  it('takes the profile session count for a null hsm.sessions', () => {
    expect(
      parseConfig(MINIMAL.replace('  pin_file: pin', '  pin_file: pin\n  sessions: ~'), FILE).hsm
        .sessions,
    ).toBeUndefined();
  });

  it('refuses duplicate nested keys', () => {
    const error = configError(`${MINIMAL}\n  max_ttl: 1h\n  max_ttl: 2h`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('(hsmint.yaml:11)');
  });

  it('refuses invalid YAML syntax', () => {
    const error = configError(`${MINIMAL}\nlog: {level: [`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toMatch(/\(hsmint\.yaml:10\)$/);
  });

  it('refuses a __proto__ key instead of merging it', () => {
    const error = configError(`${MINIMAL}\n__proto__:\n  issuer: urn:evil`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('(hsmint.yaml:10)');
  });
});

/**
 * NO_POLICY (lines 1-4), `policy:` (5), `rules:` (6) and one rule whose first line is 7; each
 * further line of `lines` is the next line of the same rule. `after` is appended as is.
 */
function withRule(lines: string[], after = ''): string {
  return [
    NO_POLICY,
    'policy:',
    '  rules:',
    ...lines.map((line, i) => (i === 0 ? `    - ${line}` : `      ${line}`)),
    after,
  ].join('\n');
}

describe('parseConfig policy', () => {
  it('reads uid as a scalar or a list, and names unnamed rules by their index', () => {
    const config = parseConfig(
      [
        NO_POLICY,
        'policy:',
        '  rules:',
        '    - match: {uid: 0}',
        '    - name: second',
        '      match: {uid: [1000, 1001], user: [a, b]}',
        '    - match: {group: admins}',
      ].join('\n'),
      FILE,
    );
    expect(config.policy.rules.map((rule) => [rule.name, rule.match])).toEqual([
      ['rules[0]', { uid: [0] }],
      ['second', { uid: [1000, 1001], user: ['a', 'b'] }],
      ['rules[2]', { group: ['admins'] }],
    ]);
  });

  it("takes tokens.max_ttl as a rule's max_ttl when it names none", () => {
    const config = parseConfig(withRule(['match: {uid: 1}'], 'tokens:\n  max_ttl: 2h'), FILE);
    expect(config.policy.rules[0]?.maxTtl).toBe(7200);
  });

  it('reads a rule max_ttl equal to tokens.max_ttl', () => {
    const config = parseConfig(withRule(['match: {uid: 1}', 'max_ttl: 1h']), FILE);
    expect(config.policy.rules[0]?.maxTtl).toBe(3600);
  });

  it('accepts an admin rule that grants no audience', () => {
    const rule = parseConfig(withRule(['match: {group: admins}', 'admin: true']), FILE).policy
      .rules[0];
    expect(rule).toMatchObject({ audiences: [], subjects: [], admin: true });
  });

  it('reads metrics: true, a grant that reads metrics and nothing else', () => {
    const rule = parseConfig(withRule(['match: {user: scraper}', 'metrics: true']), FILE).policy
      .rules[0];
    expect(rule).toMatchObject({ admin: false, metrics: true, audiences: [] });
  });

  it('reads a single allowed claim value as a list of one, and null as any value', () => {
    const rule = parseConfig(
      withRule([
        'match: {uid: 1}',
        'claims:',
        '  tenant: acme',
        '  n: 0',
        '  on: false',
        '  any: ~',
      ]),
      FILE,
    ).policy.rules[0];
    expect(rule?.claims).toEqual({ tenant: ['acme'], n: [0], on: [false], any: null });
  });

  it.each(['svc:{uid}', '{user}@{group}', 'g:{gid}', 'unit/{unit}', 'literal', 'svc:*', 'a*'])(
    'accepts the subject %s',
    (subject) => {
      const rule = parseConfig(withRule(['match: {uid: 1}', `subjects: ['${subject}']`]), FILE)
        .policy.rules[0];
      expect(rule?.subjects).toEqual([subject]);
    },
  );

  describe('refuses, naming the path and line', () => {
    it('rules that are not a list', () => {
      expectInvalid(`${NO_POLICY}\npolicy:\n  rules: {a: 1}`, 'policy.rules', 6);
    });

    it('an unknown key in policy', () => {
      expectInvalid(`${NO_POLICY}\npolicy:\n  rule: []`, 'policy.rule', 6);
    });

    it('a rule that is not a mapping', () => {
      expectInvalid(`${NO_POLICY}\npolicy:\n  rules:\n    - uid 1000`, 'policy.rules[0]', 7);
    });

    it('an unknown key in a rule', () => {
      expectInvalid(
        withRule(['match: {uid: 1}', 'audience: [api]']),
        'policy.rules[0].audience',
        8,
      );
    });

    it('a rule without match', () => {
      expectInvalid(withRule(['audiences: [api]']), 'policy.rules[0].match', 7);
    });

    it('a rule whose match is empty', () => {
      expectInvalid(withRule(['match: {}', 'audiences: [api]']), 'policy.rules[0].match', 7);
    });

    it('an unknown match key', () => {
      expectInvalid(withRule(['match: {pid: 1}']), 'policy.rules[0].match.pid', 7);
    });

    it.each(['-1', '1.5', 'root', '[]', '[1, x]', '4294967296', '~'])('uid %s', (uid) => {
      expectInvalid(withRule(['match:', `  uid: ${uid}`]), 'policy.rules[0].match.uid', 8);
    });

    it.each(['user', 'group', 'unit'])('an empty %s', (key) => {
      expectInvalid(withRule(['match:', `  ${key}: ""`]), `policy.rules[0].match.${key}`, 8);
    });

    it('a relative exe', () => {
      expectInvalid(
        withRule(['match:', '  exe: [/usr/bin/node, node]']),
        'policy.rules[0].match.exe',
        8,
      );
    });

    it('two rules with the same name', () => {
      expectInvalid(
        [
          NO_POLICY,
          'policy:',
          '  rules:',
          '    - name: a',
          '      match: {uid: 1}',
          '    - name: a',
          '      match: {uid: 2}',
        ].join('\n'),
        'policy.rules[1].name',
        9,
      );
    });

    it('a name that another rule takes by default', () => {
      expectInvalid(
        [
          NO_POLICY,
          'policy:',
          '  rules:',
          "    - name: 'rules[1]'",
          '      match: {uid: 1}',
          '    - match: {uid: 2}',
        ].join('\n'),
        'policy.rules[1].name',
        9,
      );
    });

    it('subjects that are not a list', () => {
      expectInvalid(withRule(['match: {uid: 1}', 'subjects: svc']), 'policy.rules[0].subjects', 8);
    });

    it.each(['svc:{pid}', 'svc:{exe}', 'svc:{User}', 'svc:{}', '{groups}'])(
      'the unknown placeholder in %s',
      (subject) => {
        expectInvalid(
          withRule(['match: {uid: 1}', 'subjects:', '  - ok', `  - '${subject}'`]),
          'policy.rules[0].subjects[1]',
          10,
        );
      },
    );

    it.each(['*', '{user}:*', 'a**', '*a*', 'a*b'])('the ill-formed prefix %s', (subject) => {
      expectInvalid(
        withRule(['match: {uid: 1}', `subjects: ['${subject}']`]),
        'policy.rules[0].subjects[0]',
        8,
      );
    });

    it.each(['has space', 'quo"te', 'back\\slash', ''])('the scope %j', (scope) => {
      expectInvalid(
        withRule(['match: {uid: 1}', `scopes: [read, ${JSON.stringify(scope)}]`]),
        'policy.rules[0].scopes',
        8,
      );
    });

    it.each(['iss', 'sub', 'aud', 'exp', 'jti', 'scope', 'azp', 'hsmint', 'cnf', '__proto__'])(
      'the reserved claim %s',
      (claim) => {
        expectInvalid(
          withRule(['match: {uid: 1}', 'claims:', `  ${claim}: ~`]),
          `policy.rules[0].claims.${claim}`,
          9,
        );
      },
    );

    it.each(['{a: 1}', '[]', '[[a]]', '[a, {b: 1}]'])('the claim values %s', (values) => {
      expectInvalid(
        withRule(['match: {uid: 1}', 'claims:', `  tenant: ${values}`]),
        'policy.rules[0].claims.tenant',
        9,
      );
    });

    it('claims that are not a mapping', () => {
      expectInvalid(withRule(['match: {uid: 1}', 'claims: [tenant]']), 'policy.rules[0].claims', 8);
    });

    it('a rule max_ttl over tokens.max_ttl', () => {
      expectInvalid(
        withRule(['match: {uid: 1}', 'max_ttl: 2h'], 'tokens:\n  max_ttl: 1h'),
        'policy.rules[0].max_ttl',
        8,
      );
    });

    it('a rule max_ttl that is not a duration', () => {
      expectInvalid(withRule(['match: {uid: 1}', 'max_ttl: 300']), 'policy.rules[0].max_ttl', 8);
    });

    it.each(['yes', '"true"', '1'])('metrics %s', (metrics) => {
      expectInvalid(
        withRule(['match: {uid: 1}', `metrics: ${metrics}`]),
        'policy.rules[0].metrics',
        8,
      );
    });

    it.each(['yes', '"true"', '1'])('admin %s', (admin) => {
      expectInvalid(withRule(['match: {uid: 1}', `admin: ${admin}`]), 'policy.rules[0].admin', 8);
    });
  });
});

describe('parseConfig key schedule', () => {
  it('refuses publish_ahead shorter than the JWKS cache time verifiers are told', () => {
    expectInvalid(
      `${MINIMAL.replace('tokens:', 'keys:\n  publish_ahead: 4m\ntokens:')}`,
      'keys.publish_ahead',
      10,
    );
  });

  it('refuses publish_ahead not shorter than rotation_period', () => {
    expectInvalid(
      `${MINIMAL.replace('tokens:', 'keys:\n  rotation_period: 1h\n  publish_ahead: 1h\ntokens:')}`,
      'keys.publish_ahead',
      11,
    );
  });
});

describe('parseConfig ca', () => {
  it('reads the CA certificate path (relative to the file) and the optional CA key', () => {
    const config = parseConfig(`${MINIMAL}\nca:\n  certificate: ca.pem\n  key: abc`, FILE);
    expect(config.ca).toEqual({ certificate: '/etc/hsmint/ca.pem', key: 'abc' });
    expect(parseConfig(`${MINIMAL}\nca:\n  certificate: /ca.pem`, FILE).ca).toEqual({
      certificate: '/ca.pem',
      key: undefined,
    });
  });

  it('refuses embed_x5c without a CA, and a CA without its certificate', () => {
    expectInvalid(`${MINIMAL}\n  embed_x5c: true`, 'tokens.embed_x5c', 10);
    expectInvalid(`${MINIMAL}\nca:\n  key: abc`, 'ca.certificate', 11);
  });
});

describe('parseConfig edge cases', () => {
  it('takes tokens.max_ttl for a null rule max_ttl', () => {
    const config = parseConfig(
      MINIMAL.replace(
        '      audiences: [api, other]',
        '      audiences: [api, other]\n      max_ttl: ~',
      ),
      FILE,
    );
    expect(config.policy.rules[0]!.maxTtl).toBe(config.tokens.maxTtl);
  });

  it('names the duplicate key line even after a key with an empty value', () => {
    const error = configError(`${MINIMAL}\nissuer: urn:other`);
    expect(error.code).toBe('ERR_CONFIG_INVALID');
    expect(error.message).toContain('(hsmint.yaml:10)');
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
