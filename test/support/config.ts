import { parseConfig, type Config } from '../../core/config.js';
import type { Caller } from '../../core/policy/caller.js';

/**
 * A valid config for tests that never touch a token: issuer urn:test, max_ttl 1h, and a policy
 * of two rules. `svc` (uid 1000) may mint for audiences api and other with scopes read and
 * write, the claims tenant (t1 or t2) and trace (any value), as `svc:{unit}`, `user:{user}` or
 * anything under `batch:`. `admins` (group admins) may mint for api as `user:{user}` and is
 * an admin. `extra` is appended as more top-level YAML (not tokens or policy, which are here).
 */
export function testConfig(extra = ''): Config {
  return parseConfig(
    [
      'issuer: urn:test',
      'hsm:',
      '  token: t',
      '  pin_file: /etc/hsmint/pin',
      'tokens:',
      '  max_ttl: 1h',
      'policy:',
      '  rules:',
      '    - name: svc',
      '      match:',
      '        uid: 1000',
      "      subjects: ['svc:{unit}', 'user:{user}', 'batch:*']",
      '      audiences: [api, other]',
      '      scopes: [read, write]',
      '      claims:',
      '        tenant: [t1, t2]',
      '        trace: null',
      '      max_ttl: 1h',
      '      admin: false',
      '    - name: admins',
      '      match:',
      '        group: admins',
      "      subjects: ['user:{user}']",
      '      audiences: [api]',
      '      admin: true',
      extra,
    ].join('\n'),
    '/etc/hsmint/hsmint.yaml',
  );
}

/** A verified caller; without overrides, the service that the `svc` rule of testConfig() matches. */
export function testCaller(overrides: Partial<Caller> = {}): Caller {
  return {
    pid: 4242,
    uid: 1000,
    gid: 1000,
    user: 'svc',
    group: 'svc',
    groups: ['svc'],
    exe: '/usr/bin/node',
    unit: 'billing.service',
    verified: true,
    ...overrides,
  };
}

/** A caller that the `admins` rule of testConfig() matches (uid 0, in group admins). */
export function adminCaller(): Caller {
  return testCaller({
    pid: 4343,
    uid: 0,
    gid: 0,
    user: 'root',
    group: 'root',
    groups: ['root', 'admins'],
    unit: 'ops.service',
  });
}

/** A caller that no rule of testConfig() matches. */
export function strangerCaller(): Caller {
  return testCaller({
    pid: 4444,
    uid: 1001,
    gid: 1001,
    user: 'guest',
    group: 'guest',
    groups: ['guest'],
    unit: 'guest.service',
  });
}
