import { describe, expect, it } from 'vitest';
import { kernelOnly, type Caller } from '../../../../core/policy/caller.js';
import {
  authorizeMint,
  findRule,
  grantFor,
  grantOf,
  renderSubject,
  type Grant,
  type Policy,
  type PolicyRule,
} from '../../../../core/policy/policy.js';
import type { MintRequest } from '../../../../core/protocol.js';
import { codeOf } from '../../../support/codes.js';
import { testCaller } from '../../../support/config.js';

type Optional = 'user' | 'group' | 'unit' | 'exe';

/** The svc caller of testConfig(), less the optional facts named. */
function caller(overrides: Partial<Caller> = {}, ...missing: Optional[]): Caller {
  const full: Caller = testCaller(overrides);
  for (const key of missing) delete full[key];
  return full;
}

function rule(name: string, match: PolicyRule['match'], rest: Partial<PolicyRule> = {}) {
  return {
    name,
    match,
    subjects: [],
    audiences: ['api'],
    scopes: [],
    claims: {},
    maxTtl: 3600,
    admin: false,
    ...rest,
  } satisfies PolicyRule;
}

function names(policy: Policy, who: Caller): string | undefined {
  return findRule(policy, who)?.name;
}

describe('findRule', () => {
  it('returns the first rule that matches, like a firewall', () => {
    const policy = {
      rules: [rule('first', { uid: [1000] }), rule('second', { user: ['svc'] })],
    };
    expect(names(policy, caller())).toBe('first');
    expect(names({ rules: [...policy.rules].reverse() }, caller())).toBe('second');
  });

  it('passes over rules that do not match to a later one', () => {
    const policy = {
      rules: [
        rule('root', { uid: [0] }),
        rule('web', { unit: ['web.service'] }),
        rule('svc', { group: ['svc'] }),
      ],
    };
    expect(names(policy, caller())).toBe('svc');
  });

  it('answers undefined when no rule matches, and under an empty policy', () => {
    expect(findRule({ rules: [rule('root', { uid: [0] })] }, caller())).toBeUndefined();
    expect(findRule({ rules: [] }, caller())).toBeUndefined();
  });

  it('matches uid against any value of its list, uid 0 included', () => {
    const policy = { rules: [rule('ids', { uid: [0, 1000, 2000] })] };
    expect(names(policy, caller({ uid: 0 }))).toBe('ids');
    expect(names(policy, caller({ uid: 2000 }))).toBe('ids');
    expect(names(policy, caller({ uid: 1001 }))).toBeUndefined();
  });

  it('matches user by name, never a caller without an account name', () => {
    const policy = { rules: [rule('users', { user: ['svc', 'web'] })] };
    expect(names(policy, caller())).toBe('users');
    expect(names(policy, caller({ user: 'other' }))).toBeUndefined();
    expect(names(policy, caller({}, 'user'))).toBeUndefined();
  });

  it('matches group by the primary group name in caller.groups', () => {
    const policy = { rules: [rule('g', { group: ['svc'] })] };
    expect(names(policy, caller({ group: 'svc', groups: ['svc'] }))).toBe('g');
  });

  it('matches group by a supplementary group name', () => {
    const policy = { rules: [rule('g', { group: ['admins', 'ops'] })] };
    expect(names(policy, caller({ groups: ['svc', 'wheel', 'ops'] }))).toBe('g');
    expect(names(policy, caller({ groups: ['svc', 'wheel'] }))).toBeUndefined();
    expect(names(policy, caller({ groups: [] }))).toBeUndefined();
  });

  it('matches an unverified caller by its primary group only', () => {
    const full = caller({ group: 'svc', groups: ['svc', 'admins'] });
    const reduced = kernelOnly(full, 'svc');
    expect(reduced).toEqual({
      pid: full.pid,
      uid: 1000,
      gid: 1000,
      user: 'svc',
      group: 'svc',
      groups: ['svc'],
      verified: false,
    });
    expect(names({ rules: [rule('admins', { group: ['admins'] })] }, reduced)).toBeUndefined();
    expect(names({ rules: [rule('svc', { group: ['svc'] })] }, reduced)).toBe('svc');
    expect(names({ rules: [rule('unit', { unit: ['billing.service'] })] }, reduced)).toBe(
      undefined,
    );
    expect(names({ rules: [rule('exe', { exe: ['/usr/bin/node'] })] }, reduced)).toBe(undefined);
  });

  it('matches unit by name, never a caller without a unit', () => {
    const policy = { rules: [rule('u', { unit: ['billing.service'] })] };
    expect(names(policy, caller())).toBe('u');
    expect(names(policy, caller({ unit: 'web.service' }))).toBeUndefined();
    expect(names(policy, caller({}, 'unit'))).toBeUndefined();
  });

  it('matches exe by path, never a caller without one', () => {
    const policy = { rules: [rule('e', { exe: ['/usr/bin/node', '/usr/local/bin/node'] })] };
    expect(names(policy, caller())).toBe('e');
    expect(names(policy, caller({ exe: '/tmp/node' }))).toBeUndefined();
    expect(names(policy, caller({}, 'exe'))).toBeUndefined();
  });

  it('requires every key a rule gives to match', () => {
    const both = rule('both', { uid: [1000], unit: ['billing.service'] });
    expect(names({ rules: [both] }, caller())).toBe('both');
    expect(names({ rules: [both] }, caller({ unit: 'web.service' }))).toBeUndefined();
    expect(names({ rules: [both] }, caller({ uid: 1001 }))).toBeUndefined();
    expect(names({ rules: [both] }, caller({}, 'unit'))).toBeUndefined();

    const all = rule('all', {
      uid: [1000],
      user: ['svc'],
      group: ['svc'],
      unit: ['billing.service'],
      exe: ['/usr/bin/node'],
    });
    expect(names({ rules: [all] }, caller())).toBe('all');
    for (const key of ['user', 'unit', 'exe'] as const)
      expect(names({ rules: [all] }, caller({}, key))).toBeUndefined();
    expect(names({ rules: [all] }, caller({ groups: ['other'] }))).toBeUndefined();
  });

  it('matches nobody with an empty list of values', () => {
    expect(names({ rules: [rule('none', { uid: [] })] }, caller())).toBeUndefined();
    expect(names({ rules: [rule('none', { group: [] })] }, caller())).toBeUndefined();
  });
});

describe('renderSubject', () => {
  const who = caller({ uid: 1000, gid: 1001, user: 'svc', group: 'staff', unit: 'a.service' });

  it.each([
    ['uid:{uid}', 'uid:1000'],
    ['gid:{gid}', 'gid:1001'],
    ['user:{user}', 'user:svc'],
    ['group:{group}', 'group:staff'],
    ['svc:{unit}', 'svc:a.service'],
    ['{user}@{group}/{unit}#{uid}.{gid}', 'svc@staff/a.service#1000.1001'],
    ['{user}-{user}', 'svc-svc'],
    ['literal', 'literal'],
    ['', ''],
  ])('renders %s as %s', (template, rendered) => {
    expect(renderSubject(template, who)).toBe(rendered);
  });

  it('renders uid and gid 0, which are falsy numbers', () => {
    expect(renderSubject('{uid}:{gid}', caller({ uid: 0, gid: 0 }))).toBe('0:0');
  });

  it.each([
    ['user', 'user:{user}'],
    ['group', 'group:{group}'],
    ['unit', 'svc:{unit}'],
    ['unit', '{user}:{unit}'],
  ] as const)('answers undefined without a %s for %s', (missing, template) => {
    expect(renderSubject(template, caller({}, missing))).toBeUndefined();
  });
});

describe('renderSubject fills only its five fields', () => {
  it.each(['{pid}', '{exe}', '{groups}', '{verified}', '{constructor}', '{proto}'])(
    '%s renders nothing',
    (template) => {
      expect(renderSubject(`svc:${template}`, caller())).toBeUndefined();
    },
  );
});

describe('grantFor and grantOf', () => {
  const svc = rule(
    'svc',
    { uid: [1000] },
    {
      subjects: ['svc:{unit}', 'user:{user}', 'batch:*', 'job:*'],
      audiences: ['api', 'other'],
      scopes: ['read'],
      claims: { tenant: ['t1'], trace: null },
      maxTtl: 600,
      admin: true,
    },
  );

  it('fills the templates in, keeps prefixes apart, and carries the rest of the rule', () => {
    expect(grantFor(svc, caller())).toEqual({
      rule: 'svc',
      subjects: ['svc:billing.service', 'user:svc'],
      subjectPrefixes: ['batch:', 'job:'],
      audiences: ['api', 'other'],
      scopes: ['read'],
      claims: { tenant: ['t1'], trace: null },
      maxTtl: 600,
      admin: true,
      metrics: true,
    } satisfies Grant);
  });

  it('grants metrics to an admin, or to a rule with metrics: true alone', () => {
    const reader = rule('reader', { uid: [1000] }, { metrics: true });
    expect(grantFor(reader, caller())).toMatchObject({ admin: false, metrics: true });
    expect(grantFor(rule('plain', { uid: [1000] }), caller()).metrics).toBe(false);
  });

  it('makes the first subject that renders the default', () => {
    expect(grantFor(svc, caller({}, 'unit')).subjects).toEqual(['user:svc']);
    expect(grantFor(svc, caller({}, 'unit', 'user')).subjects).toEqual([]);
    expect(grantFor(svc, caller({}, 'unit', 'user')).subjectPrefixes).toEqual(['batch:', 'job:']);
  });

  it('removes duplicate subjects, keeping the first place', () => {
    const dup = rule(
      'dup',
      { uid: [1000] },
      {
        subjects: ['user:{user}', 'id:{uid}', 'user:svc', 'id:1000', 'user:{user}'],
      },
    );
    expect(grantFor(dup, caller()).subjects).toEqual(['user:svc', 'id:1000']);
  });

  it('grantOf grants by the first matching rule, or answers undefined', () => {
    const policy = { rules: [rule('root', { uid: [0] }), svc] };
    expect(grantOf(policy, caller())?.rule).toBe('svc');
    expect(grantOf(policy, caller({ uid: 7 }))).toBeUndefined();
  });
});

describe('authorizeMint', () => {
  const grant: Grant = {
    rule: 'svc',
    subjects: ['svc:billing.service', 'user:svc'],
    subjectPrefixes: ['batch:'],
    audiences: ['api', 'other'],
    scopes: ['read', 'write'],
    claims: { tenant: ['t1', 't2'], level: [1, 2], beta: [true], trace: null },
    maxTtl: 3600,
    admin: false,
    metrics: false,
  };
  const authorize = (request: MintRequest, over: Partial<Grant> = {}, defaultTtl = 300) =>
    authorizeMint({ ...grant, ...over }, request, defaultTtl);
  const refusal = (request: MintRequest, over: Partial<Grant> = {}) =>
    codeOf(() => authorize(request, over));

  it('takes the default subject and the default ttl when none is asked for', () => {
    expect(authorize({ aud: 'api' })).toEqual({ subject: 'svc:billing.service', ttl: 300 });
  });

  it('caps the default ttl, not an asked one, at the rule maximum', () => {
    expect(authorize({ aud: 'api' }, { maxTtl: 60 })).toEqual({
      subject: 'svc:billing.service',
      ttl: 60,
    });
  });

  it('returns exactly the subject and ttl asked for, never trimmed', () => {
    expect(authorize({ aud: 'api', sub: 'user:svc', ttl: 17 })).toEqual({
      subject: 'user:svc',
      ttl: 17,
    });
    expect(authorize({ aud: 'api', sub: 'batch:nightly-2026', ttl: 3600 })).toEqual({
      subject: 'batch:nightly-2026',
      ttl: 3600,
    });
  });

  it('refuses a subject the grant does not hold', () => {
    expect(refusal({ aud: 'api', sub: 'svc:web.service' })).toBe('ERR_SUBJECT_NOT_ALLOWED');
    expect(refusal({ aud: 'api', sub: 'svc:{unit}' })).toBe('ERR_SUBJECT_NOT_ALLOWED');
    expect(refusal({ aud: 'api', sub: 'user:svc ' })).toBe('ERR_SUBJECT_NOT_ALLOWED');
  });

  it('refuses a request without sub when the grant has no default subject', () => {
    expect(refusal({ aud: 'api' }, { subjects: [] })).toBe('ERR_SUBJECT_NOT_ALLOWED');
    expect(refusal({ aud: 'api' }, { subjects: [], subjectPrefixes: [] })).toBe(
      'ERR_SUBJECT_NOT_ALLOWED',
    );
  });

  it('takes a subject under a prefix, even when the grant has no default', () => {
    expect(authorize({ aud: 'api', sub: 'batch:x' }, { subjects: [] }).subject).toBe('batch:x');
  });

  it.each(['batch:', 'batchx', 'batch', 'Batch:x', 'xbatch:x', ' batch:x'])(
    'refuses %j under the prefix batch:*',
    (sub) => {
      expect(refusal({ aud: 'api', sub })).toBe('ERR_SUBJECT_NOT_ALLOWED');
    },
  );

  it('takes a list of granted audiences', () => {
    expect(authorize({ aud: ['api', 'other'] }).subject).toBe('svc:billing.service');
  });

  it('refuses an audience outside the grant, alone or one of several', () => {
    expect(refusal({ aud: 'elsewhere' })).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    expect(refusal({ aud: ['api', 'elsewhere'] })).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    expect(refusal({ aud: ['elsewhere', 'api'] })).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    expect(refusal({ aud: 'API' })).toBe('ERR_AUDIENCE_NOT_ALLOWED');
    expect(refusal({ aud: 'api' }, { audiences: [] })).toBe('ERR_AUDIENCE_NOT_ALLOWED');
  });

  it('takes granted scopes and an empty scope list', () => {
    expect(authorize({ aud: 'api', scope: ['read', 'write'] }).ttl).toBe(300);
    expect(authorize({ aud: 'api', scope: [] }).ttl).toBe(300);
  });

  it('refuses a scope outside the grant, alone or one of several', () => {
    expect(refusal({ aud: 'api', scope: ['admin'] })).toBe('ERR_SCOPE_NOT_ALLOWED');
    expect(refusal({ aud: 'api', scope: ['read', 'admin'] })).toBe('ERR_SCOPE_NOT_ALLOWED');
    expect(refusal({ aud: 'api', scope: ['read'] }, { scopes: [] })).toBe('ERR_SCOPE_NOT_ALLOWED');
  });

  it('takes granted claims with allowed values, and any value of an open claim', () => {
    expect(
      authorize({
        aud: 'api',
        claims: { tenant: 't2', level: 1, beta: true, trace: { id: ['a', 1, null] } },
      }).subject,
    ).toBe('svc:billing.service');
  });

  it('refuses a claim the grant does not name', () => {
    expect(refusal({ aud: 'api', claims: { role: 'admin' } })).toBe('ERR_CLAIM_NOT_ALLOWED');
    expect(refusal({ aud: 'api', claims: { tenant: 't1', role: 'x' } })).toBe(
      'ERR_CLAIM_NOT_ALLOWED',
    );
  });

  it("refuses a claim named like one of Object.prototype's members", () => {
    for (const name of ['toString', 'hasOwnProperty', 'valueOf', 'constructor'])
      expect(refusal({ aud: 'api', claims: { [name]: 'x' } })).toBe('ERR_CLAIM_NOT_ALLOWED');
  });

  it.each([
    ['a value not in the list', { tenant: 't3' }],
    ['a number as a string', { level: '1' }],
    ['a boolean as a string', { beta: 'true' }],
    ['a string as a list', { tenant: ['t1'] }],
    ['an object', { tenant: { value: 't1' } }],
    ['null', { tenant: null }],
    ['a value of another listed claim', { level: true }],
  ])('refuses a listed claim with %s', (_what, claims) => {
    expect(refusal({ aud: 'api', claims })).toBe('ERR_CLAIM_NOT_ALLOWED');
  });

  it('refuses a ttl over the rule maximum, and takes one equal to it', () => {
    expect(refusal({ aud: 'api', ttl: 3601 })).toBe('ERR_TTL_TOO_LONG');
    expect(refusal({ aud: 'api', ttl: 61 }, { maxTtl: 60 })).toBe('ERR_TTL_TOO_LONG');
    expect(authorize({ aud: 'api', ttl: 60 }, { maxTtl: 60 }).ttl).toBe(60);
  });
});
