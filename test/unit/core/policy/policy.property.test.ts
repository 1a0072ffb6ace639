/**
 * Properties of the caller policy, checked on generated rules, callers, grants and requests.
 * Each property states its run count; together they run a little over 60,000 cases.
 */
import fc from 'fast-check';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../../core/config.js';
import { HsmintError, type ErrorCode } from '../../../../core/errors.js';
import type { Caller } from '../../../../core/policy/caller.js';
import {
  authorizeMint,
  findRule,
  renderSubject,
  TEMPLATE_FIELDS,
  type ClaimValue,
  type Grant,
  type PolicyRule,
} from '../../../../core/policy/policy.js';
import { parseMintRequest, RESERVED_CLAIMS, type MintRequest } from '../../../../core/protocol.js';

const RUNS = {
  findRule: 20_000,
  refusals: 15_000,
  granted: 10_000,
  renderSubject: 8_000,
  parseJson: 4_000,
  parseObjects: 4_000,
  configRoundTrip: 500,
} as const;

// Small pools, so that generated rules and callers often meet.
const UIDS = [0, 1, 1000, 1001, 65534];
const USERS = ['root', 'svc', 'web', 'guest'];
const GROUPS = ['root', 'svc', 'admins', 'ops', 'web'];
const UNITS = ['billing.service', 'web.service', 'ops.service'];
const EXES = ['/usr/bin/node', '/usr/bin/python3', '/opt/app/bin/app'];

/** A list of one to three values from `pool`, sometimes empty (which matches nobody). */
const someOf = <T>(pool: T[]) =>
  fc.oneof(
    { arbitrary: fc.subarray(pool, { minLength: 1, maxLength: 3 }), weight: 9 },
    { arbitrary: fc.constant<T[]>([]), weight: 1 },
  );

const matchArb: fc.Arbitrary<PolicyRule['match']> = fc.record(
  {
    uid: someOf(UIDS),
    user: someOf(USERS),
    group: someOf(GROUPS),
    unit: someOf(UNITS),
    exe: someOf(EXES),
  },
  { requiredKeys: [], noNullPrototype: true },
);

const callerArb: fc.Arbitrary<Caller> = fc
  .record(
    {
      pid: fc.integer({ min: 1, max: 4_194_304 }),
      uid: fc.constantFrom(...UIDS),
      gid: fc.constantFrom(...UIDS),
      user: fc.constantFrom(...USERS),
      group: fc.constantFrom(...GROUPS),
      groups: fc.subarray(GROUPS),
      exe: fc.constantFrom(...EXES),
      unit: fc.constantFrom(...UNITS),
      verified: fc.boolean(),
    },
    { requiredKeys: ['pid', 'uid', 'gid', 'groups', 'verified'], noNullPrototype: true },
  )
  .map((caller) => caller as Caller);

function ruleOf(name: string, match: PolicyRule['match']): PolicyRule {
  return {
    name,
    match,
    subjects: [],
    audiences: ['api'],
    scopes: [],
    claims: {},
    maxTtl: 3600,
    admin: false,
  };
}

/** The first rule index whose every key matches, written out plainly; -1 for none. */
function referenceFirstMatch(rules: PolicyRule[], caller: Caller): number {
  for (let i = 0; i < rules.length; i++) {
    const match = rules[i]!.match;
    let ok = true;
    if (match.uid !== undefined) {
      let any = false;
      for (const uid of match.uid) if (uid === caller.uid) any = true;
      if (!any) ok = false;
    }
    if (match.user !== undefined) {
      if (caller.user === undefined) ok = false;
      else if (match.user.indexOf(caller.user) === -1) ok = false;
    }
    if (match.group !== undefined) {
      let any = false;
      for (const group of caller.groups) if (match.group.indexOf(group) !== -1) any = true;
      if (!any) ok = false;
    }
    if (match.unit !== undefined) {
      if (caller.unit === undefined) ok = false;
      else if (match.unit.indexOf(caller.unit) === -1) ok = false;
    }
    if (match.exe !== undefined) {
      if (caller.exe === undefined) ok = false;
      else if (match.exe.indexOf(caller.exe) === -1) ok = false;
    }
    if (ok) return i;
  }
  return -1;
}

describe('findRule (property)', () => {
  it('returns the first rule whose every match key the caller satisfies', () => {
    let none = 0;
    let later = 0;
    fc.assert(
      fc.property(fc.array(matchArb, { maxLength: 6 }), callerArb, (matches, caller) => {
        const rules = matches.map((match, i) => ruleOf(`r${i}`, match));
        const found = findRule({ rules }, caller);
        const expected = referenceFirstMatch(rules, caller);
        expect(found === undefined ? -1 : rules.indexOf(found)).toBe(expected);
        if (expected === -1) none++;
        else if (expected > 0) later++;
      }),
      { numRuns: RUNS.findRule },
    );
    // Callers often match no rule, and often a rule after the first.
    expect(none).toBeGreaterThan(RUNS.findRule / 100);
    expect(later).toBeGreaterThan(RUNS.findRule / 100);
  });
});

// Grants and requests over overlapping pools.
const AUDIENCES = ['api', 'other', 'third', 'API'];
const SCOPES = ['read', 'write', 'admin', 'read:all'];
const SUBJECTS = ['svc:billing.service', 'user:svc', 'id:1000', 'svc:'];
const PREFIXES = ['batch:', 'svc:', 'job-'];
const REQUESTED_SUBJECTS = [
  ...SUBJECTS,
  'batch:x',
  'batch:',
  'batch',
  'batchx',
  'svc:web.service',
  'job-1',
  'job-',
  'user:svc ',
];
const CLAIM_NAMES = ['tenant', 'level', 'beta', 'trace', 'toString', 'hasOwnProperty'];
const claimValueArb: fc.Arbitrary<ClaimValue> = fc.oneof(
  fc.constantFrom('t1', 't2', '1', 'true', ''),
  fc.integer({ min: -1, max: 2 }),
  fc.constant(-0),
  fc.boolean(),
);
const requestedValueArb: fc.Arbitrary<unknown> = fc.oneof(
  { arbitrary: claimValueArb, weight: 6 },
  { arbitrary: fc.constant(null), weight: 1 },
  { arbitrary: fc.array(claimValueArb, { maxLength: 2 }), weight: 1 },
  {
    arbitrary: fc.dictionary(fc.constantFrom('a', 'b'), claimValueArb, { noNullPrototype: true }),
    weight: 1,
  },
);

const grantArb: fc.Arbitrary<Grant> = fc.record({
  rule: fc.constantFrom('svc', 'admins', 'rules[3]'),
  subjects: fc.subarray(SUBJECTS),
  subjectPrefixes: fc.subarray(PREFIXES),
  audiences: fc.subarray(AUDIENCES),
  scopes: fc.subarray(SCOPES),
  claims: fc.dictionary(
    fc.constantFrom(...CLAIM_NAMES.slice(0, 4)),
    fc.option(fc.array(claimValueArb, { minLength: 1, maxLength: 3 }), { nil: null }),
    { noNullPrototype: true },
  ),
  maxTtl: fc.integer({ min: 1, max: 86_400 }),
  admin: fc.boolean(),
  metrics: fc.boolean(),
});

/** Either a value drawn from what the grant holds, or any value from the wider pools. */
function nearOrFar<T>(near: fc.Arbitrary<T>[], far: fc.Arbitrary<T>): fc.Arbitrary<T> {
  return near.length === 0
    ? far
    : fc.oneof(...near.map((arbitrary) => ({ arbitrary, weight: 3 })), far);
}

/** A request for `grant`: each field is mostly within the grant, sometimes anything. */
function requestFor(grant: Grant): fc.Arbitrary<MintRequest> {
  const audiences = grant.audiences;
  const claimNames = Object.keys(grant.claims);
  return fc
    .record(
      {
        aud: nearOrFar<string | string[]>(
          audiences.length === 0
            ? []
            : [fc.constantFrom(...audiences), fc.shuffledSubarray(audiences, { minLength: 1 })],
          fc.oneof(
            fc.constantFrom(...AUDIENCES, 'elsewhere'),
            fc.uniqueArray(fc.constantFrom(...AUDIENCES, 'elsewhere'), {
              minLength: 1,
              maxLength: 3,
            }),
          ),
        ),
        sub: nearOrFar<string | undefined>(
          [
            ...(grant.subjects.length === 0 ? [] : [fc.constantFrom(...grant.subjects)]),
            ...(grant.subjectPrefixes.length === 0
              ? []
              : [
                  fc
                    .tuple(fc.constantFrom(...grant.subjectPrefixes), fc.constantFrom('', 'x', '*'))
                    .map(([prefix, rest]) => prefix + rest),
                ]),
            fc.constant(undefined),
          ],
          fc.constantFrom(...REQUESTED_SUBJECTS),
        ),
        ttl: nearOrFar<number | undefined>(
          [fc.constant(undefined), fc.integer({ min: 1, max: grant.maxTtl })],
          fc.oneof(
            fc.integer({ min: grant.maxTtl, max: grant.maxTtl + 2 }),
            fc.integer({ min: 1, max: 200_000 }),
          ),
        ),
        scope: nearOrFar(
          [fc.constant(undefined), fc.shuffledSubarray(grant.scopes)],
          fc.subarray([...SCOPES, 'other-scope']),
        ),
        claims: nearOrFar<Record<string, unknown> | undefined>(
          [
            fc.constant(undefined),
            fc.subarray(claimNames).chain((names) =>
              fc
                .tuple(
                  ...names.map((name) => requestedValueArb.map((value) => [name, value] as const)),
                )
                .map((entries) =>
                  Object.fromEntries(
                    entries.map(([name, value]) => {
                      const allowed = grant.claims[name];
                      // Mostly an allowed value; the drawn one now and then.
                      return [name, allowed && typeof value !== 'boolean' ? allowed[0] : value];
                    }),
                  ),
                ),
            ),
          ],
          fc.dictionary(fc.constantFrom(...CLAIM_NAMES, 'role'), requestedValueArb, {
            maxKeys: 3,
            noNullPrototype: true,
          }),
        ),
      },
      { requiredKeys: ['aud'], noNullPrototype: true },
    )
    .map((fields) => {
      // An undefined field means the field is absent, as the parser leaves it.
      const request: MintRequest = { aud: fields.aud };
      if (fields.sub !== undefined) request.sub = fields.sub;
      if (fields.ttl !== undefined) request.ttl = fields.ttl;
      if (fields.scope !== undefined) request.scope = fields.scope;
      if (fields.claims !== undefined) request.claims = fields.claims;
      return request;
    });
}

const REFUSALS: readonly ErrorCode[] = [
  'ERR_SUBJECT_NOT_ALLOWED',
  'ERR_AUDIENCE_NOT_ALLOWED',
  'ERR_SCOPE_NOT_ALLOWED',
  'ERR_CLAIM_NOT_ALLOWED',
  'ERR_TTL_TOO_LONG',
];

/**
 * What authorizeMint should decide, worked out independently: the subject and ttl it must
 * return, or every refusal code the request has earned (any one of them may be reported).
 */
function referenceDecision(
  grant: Grant,
  request: MintRequest,
  defaultTtl: number,
): { subject: string; ttl: number } | { violated: Set<ErrorCode> } {
  const violated = new Set<ErrorCode>();
  let subject = '';
  if (request.sub === undefined) {
    if (grant.subjects.length === 0) violated.add('ERR_SUBJECT_NOT_ALLOWED');
    else subject = grant.subjects[0]!;
  } else {
    const sub = request.sub;
    let ok = grant.subjects.indexOf(sub) !== -1;
    for (const prefix of grant.subjectPrefixes)
      if (sub.length > prefix.length && sub.slice(0, prefix.length) === prefix) ok = true;
    if (!ok) violated.add('ERR_SUBJECT_NOT_ALLOWED');
    subject = sub;
  }
  for (const aud of typeof request.aud === 'string' ? [request.aud] : request.aud)
    if (grant.audiences.indexOf(aud) === -1) violated.add('ERR_AUDIENCE_NOT_ALLOWED');
  for (const scope of request.scope ?? [])
    if (grant.scopes.indexOf(scope) === -1) violated.add('ERR_SCOPE_NOT_ALLOWED');
  for (const name of Object.keys(request.claims ?? {})) {
    const value = request.claims![name];
    if (!Object.keys(grant.claims).includes(name)) {
      violated.add('ERR_CLAIM_NOT_ALLOWED');
      continue;
    }
    const allowed = grant.claims[name];
    if (allowed === null || allowed === undefined) continue;
    let ok = false;
    for (const candidate of allowed) if (candidate === value) ok = true;
    if (!ok) violated.add('ERR_CLAIM_NOT_ALLOWED');
  }
  const ttl = request.ttl ?? (defaultTtl < grant.maxTtl ? defaultTtl : grant.maxTtl);
  if (ttl > grant.maxTtl) violated.add('ERR_TTL_TOO_LONG');
  return violated.size > 0 ? { violated } : { subject, ttl };
}

/** Everything requested lies within the grant: the plain statement of the guarantee. */
function withinGrant(grant: Grant, request: MintRequest, subject: string, ttl: number): boolean {
  const subjectOk =
    grant.subjects.includes(subject) ||
    grant.subjectPrefixes.some((prefix) => subject.startsWith(prefix) && subject !== prefix);
  const auds = Array.isArray(request.aud) ? request.aud : [request.aud];
  const claimsOk = Object.entries(request.claims ?? {}).every(([name, value]) => {
    if (!Object.hasOwn(grant.claims, name)) return false;
    const allowed = grant.claims[name];
    return allowed === null || (allowed ?? []).some((candidate) => candidate === value);
  });
  return (
    subjectOk &&
    (request.sub === undefined || request.sub === subject) &&
    auds.every((aud) => grant.audiences.includes(aud)) &&
    (request.scope ?? []).every((scope) => grant.scopes.includes(scope)) &&
    claimsOk &&
    ttl <= grant.maxTtl &&
    (request.ttl === undefined || request.ttl === ttl)
  );
}

describe('authorizeMint (property)', () => {
  it('never lets anything outside the grant through, and refuses only with cause', () => {
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(
        grantArb.chain((grant) => fc.tuple(fc.constant(grant), requestFor(grant))),
        fc.integer({ min: 1, max: 86_400 }),
        ([grant, request], defaultTtl) => {
          const expected = referenceDecision(grant, request, defaultTtl);
          let outcome: { subject: string; ttl: number } | HsmintError;
          try {
            outcome = authorizeMint(grant, request, defaultTtl);
          } catch (error) {
            expect(error).toBeInstanceOf(HsmintError);
            outcome = error as HsmintError;
          }
          const label = outcome instanceof HsmintError ? outcome.code : 'authorized';
          seen.set(label, (seen.get(label) ?? 0) + 1);
          if (outcome instanceof HsmintError) {
            expect(REFUSALS).toContain(outcome.code);
            expect('violated' in expected && expected.violated.has(outcome.code)).toBe(true);
          } else {
            expect(withinGrant(grant, request, outcome.subject, outcome.ttl)).toBe(true);
            expect(outcome).toEqual(expected);
          }
        },
      ),
      { numRuns: RUNS.refusals },
    );
    // The generators reach every outcome, and often enough to mean something.
    for (const label of ['authorized', ...REFUSALS])
      expect(seen.get(label) ?? 0).toBeGreaterThan(RUNS.refusals / 100);
  });

  /** A grant with an audience and a subject to give, and a request made only of what it grants. */
  const grantedArb = grantArb
    .filter(
      (grant) =>
        grant.audiences.length > 0 &&
        (grant.subjects.length > 0 || grant.subjectPrefixes.length > 0),
    )
    .chain((grant) => {
      const subjects: fc.Arbitrary<string | undefined>[] = [
        ...grant.subjects.map((subject) => fc.constant(subject)),
        ...grant.subjectPrefixes.map((prefix) =>
          fc.string({ minLength: 1, maxLength: 12 }).map((rest) => prefix + rest),
        ),
      ];
      if (grant.subjects.length > 0) subjects.push(fc.constant(undefined));
      const claimNames = Object.keys(grant.claims);
      const claimEntries: fc.Arbitrary<Array<[string, unknown]>> =
        claimNames.length === 0
          ? fc.constant([])
          : fc
              .array(
                fc.tuple(fc.constantFrom(...claimNames), fc.nat(), fc.jsonValue({ maxDepth: 2 })),
                { maxLength: 4 },
              )
              .map((picks) =>
                picks.map(([name, index, any]): [string, unknown] => {
                  const allowed = grant.claims[name];
                  return [name, allowed ? allowed[index % allowed.length] : any];
                }),
              );
      const request = fc.record({
        sub: fc.oneof(...subjects),
        aud: fc.oneof(
          fc.constantFrom(...grant.audiences),
          fc.shuffledSubarray(grant.audiences, { minLength: 1 }),
        ),
        scope: fc.option(fc.shuffledSubarray(grant.scopes), { nil: undefined }),
        ttl: fc.option(fc.integer({ min: 1, max: grant.maxTtl }), { nil: undefined }),
        claims: fc.option(claimEntries, { nil: undefined }),
      });
      return fc.tuple(fc.constant(grant), request);
    });

  it('authorizes every request made only of granted items, exactly as asked', () => {
    fc.assert(
      fc.property(grantedArb, fc.integer({ min: 1, max: 86_400 }), (pair, defaultTtl) => {
        const [grant, parts] = pair;
        const request: MintRequest = { aud: parts.aud };
        if (parts.sub !== undefined) request.sub = parts.sub;
        if (parts.scope !== undefined) request.scope = parts.scope;
        if (parts.ttl !== undefined) request.ttl = parts.ttl;
        if (parts.claims !== undefined) request.claims = Object.fromEntries(parts.claims);
        const result = authorizeMint(grant, request, defaultTtl);
        expect(result.subject).toBe(request.sub ?? grant.subjects[0]);
        expect(result.ttl).toBe(request.ttl ?? Math.min(defaultTtl, grant.maxTtl));
        expect(result.ttl).toBeLessThanOrEqual(grant.maxTtl);
      }),
      { numRuns: RUNS.granted },
    );
  });
});

describe('renderSubject (property)', () => {
  type Piece = { literal: string } | { field: (typeof TEMPLATE_FIELDS)[number] };
  // Literals may hold `{` (never `}`), so a stray brace sits right before a placeholder.
  const literalArb = fc.string({
    unit: fc.constantFrom('a', 'z', '0', '9', ':', '-', '.', '/', '@', '{', ' '),
    maxLength: 6,
  });
  const pieceArb: fc.Arbitrary<Piece> = fc.oneof(
    literalArb.map((literal) => ({ literal })),
    fc.constantFrom(...TEMPLATE_FIELDS).map((field) => ({ field })),
  );
  const valueArb = fc.string({
    unit: fc.constantFrom('a', 'b', 's', 'v', 'c', '0', '1', '.', '-', '_', '@'),
    minLength: 1,
    maxLength: 8,
  });
  const renderCallerArb = fc
    .record(
      {
        pid: fc.constant(1),
        uid: fc.nat({ max: 2 ** 32 - 2 }),
        gid: fc.nat({ max: 2 ** 32 - 2 }),
        user: valueArb,
        group: valueArb,
        unit: valueArb.map((name) => `${name}.service`),
        groups: fc.constant<string[]>([]),
        verified: fc.boolean(),
      },
      { requiredKeys: ['pid', 'uid', 'gid', 'groups', 'verified'], noNullPrototype: true },
    )
    .map((caller) => caller as Caller);

  it('fills every known placeholder, or answers undefined exactly when a value is missing', () => {
    fc.assert(
      fc.property(fc.array(pieceArb, { maxLength: 6 }), renderCallerArb, (pieces, caller) => {
        const template = pieces
          .map((piece) => ('literal' in piece ? piece.literal : `{${piece.field}}`))
          .join('');
        const values: Record<string, string | undefined> = {
          uid: String(caller.uid),
          gid: String(caller.gid),
          user: caller.user,
          group: caller.group,
          unit: caller.unit,
        };
        const missing = pieces.some(
          (piece) => 'field' in piece && values[piece.field] === undefined,
        );
        const rendered = renderSubject(template, caller);
        if (missing) {
          expect(rendered).toBeUndefined();
          return;
        }
        expect(rendered).toBe(
          pieces
            .map((piece) => ('literal' in piece ? piece.literal : values[piece.field]))
            .join(''),
        );
        for (const field of TEMPLATE_FIELDS) expect(rendered).not.toContain(`{${field}}`);
      }),
      { numRuns: RUNS.renderSubject },
    );
  });
});

describe('parseMintRequest (property)', () => {
  /**
   * Runs the parser; anything but a return or an HsmintError fails the property. Answers the
   * outcome (the code, `claims` for a request with claims, or `request`) for the statistics.
   */
  function check(body: unknown): string {
    const prototypeKeys = Object.getOwnPropertyNames(Object.prototype).length;
    let request: MintRequest;
    try {
      request = parseMintRequest(body);
    } catch (error) {
      expect(error).toBeInstanceOf(HsmintError);
      return (error as HsmintError).code;
    } finally {
      expect(Object.getOwnPropertyNames(Object.prototype)).toHaveLength(prototypeKeys);
    }
    for (const name of Object.keys(request.claims ?? {}))
      expect(RESERVED_CLAIMS.has(name)).toBe(false);
    if (request.claims !== undefined) {
      expect(Object.getPrototypeOf(request.claims)).toBe(Object.prototype);
      expect(Object.hasOwn(request.claims, '__proto__')).toBe(false);
      return 'claims';
    }
    return 'request';
  }

  it('returns or throws an HsmintError for any JSON value', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (value) => {
        check(value);
      }),
      { numRuns: RUNS.parseJson },
    );
  });

  // Objects as JSON.parse builds them from the wire, so `__proto__` arrives as an own key.
  const keyArb = fc.oneof(
    fc.constantFrom(
      'aud',
      'sub',
      'ttl',
      'scope',
      'claims',
      '__proto__',
      'constructor',
      'prototype',
      'iss',
      'azp',
      'hsmint',
      'toString',
    ),
    fc.string({ maxLength: 8 }),
  );
  const wireObject = (value: fc.Arbitrary<unknown>) =>
    fc
      .array(fc.tuple(keyArb, value), { maxLength: 5 })
      .map(
        (entries) =>
          JSON.parse(
            `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${JSON.stringify(item) ?? 'null'}`).join(',')}}`,
          ) as unknown,
      );
  const fieldValueArb = fc.oneof(
    fc.jsonValue({ maxDepth: 2 }),
    fc.constantFrom('api', '5m', 90, ['read'], ['api', 'other']),
    wireObject(fc.jsonValue({ maxDepth: 2 })),
  );
  const bodyArb = fc.oneof(
    wireObject(fieldValueArb),
    fc
      .tuple(fc.constantFrom('api', ['api', 'other']), wireObject(fieldValueArb))
      .map(([aud, claims]) => JSON.parse(JSON.stringify({ aud, claims })) as unknown),
  );

  it('never returns a reserved claim, for objects with any keys', () => {
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(bodyArb, (body) => {
        const outcome = check(body);
        seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
      }),
      { numRuns: RUNS.parseObjects },
    );
    // Some bodies pass with claims, and some are refused for a reserved one.
    expect(seen.get('claims') ?? 0).toBeGreaterThan(RUNS.parseObjects / 100);
    expect(seen.get('ERR_RESERVED_CLAIM') ?? 0).toBeGreaterThan(RUNS.parseObjects / 100);
  });
});

describe('parseConfig policy (property)', () => {
  // Text a YAML writer has to quote or escape, or would read as another type.
  const trickyText = fc.oneof(
    fc.string({
      unit: fc.constantFrom(
        'a',
        'Z',
        '0',
        ' ',
        ':',
        '#',
        '-',
        '"',
        "'",
        '\\',
        '&',
        '!',
        '[',
        ']',
        ',',
        '?',
        '|',
        '>',
        '%',
        '@',
        '`',
        '\t',
        '\n',
        'é',
        '😀',
      ),
      minLength: 1,
      maxLength: 12,
    }),
    fc.constantFrom('null', '~', 'true', 'no', 'yes', '1', '0x10', '1e3', '.inf', '- a', ': b'),
  );
  const safeLiteral = fc.string({
    unit: fc.constantFrom('a', 'b', 'Z', '0', ':', '-', '.', '/', '@', ' ', '#', '"', 'é'),
    minLength: 1,
    maxLength: 8,
  });
  const subjectArb = fc.oneof(
    safeLiteral,
    fc
      .tuple(
        fc.option(safeLiteral, { nil: '' }),
        fc.constantFrom(...TEMPLATE_FIELDS),
        fc.option(safeLiteral, { nil: '' }),
      )
      .map(([before, field, after]) => `${before}{${field}}${after}`),
    safeLiteral.map((literal) => `${literal}*`),
  );
  const scopeArb = fc.string({
    unit: fc
      .integer({ min: 0x21, max: 0x7e })
      .filter((code) => code !== 0x22 && code !== 0x5c)
      .map((code) => String.fromCharCode(code)),
    minLength: 1,
    maxLength: 10,
  });
  const claimNameArb = fc
    .stringMatching(/^[a-z][a-z0-9_]{0,6}$/)
    .filter((name) => !RESERVED_CLAIMS.has(name));
  const configClaimValue: fc.Arbitrary<ClaimValue> = fc.oneof(
    trickyText,
    fc.integer(),
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((n) => !Object.is(n, -0)),
    fc.boolean(),
  );
  const ruleDataArb = fc.record(
    {
      match: fc.record(
        {
          uid: fc.array(fc.nat({ max: 2 ** 32 - 1 }), { minLength: 1, maxLength: 3 }),
          user: fc.array(trickyText, { minLength: 1, maxLength: 3 }),
          group: fc.array(trickyText, { minLength: 1, maxLength: 3 }),
          unit: fc.array(trickyText, { minLength: 1, maxLength: 3 }),
          exe: fc.array(
            trickyText.map((path) => `/${path}`),
            { minLength: 1, maxLength: 3 },
          ),
        },
        { requiredKeys: [], noNullPrototype: true },
      ),
      subjects: fc.array(subjectArb, { maxLength: 4 }),
      audiences: fc.array(trickyText, { maxLength: 4 }),
      scopes: fc.array(scopeArb, { maxLength: 4 }),
      claims: fc.dictionary(
        claimNameArb,
        fc.option(fc.array(configClaimValue, { minLength: 1, maxLength: 3 }), { nil: null }),
        { maxKeys: 3, noNullPrototype: true },
      ),
      maxTtl: fc.integer({ min: 1, max: 86_400 }),
      admin: fc.boolean(),
      metrics: fc.boolean(),
      named: fc.boolean(),
    },
    { noNullPrototype: true },
  );

  it('reads back every field of rules written by a YAML writer', () => {
    fc.assert(
      fc.property(
        fc
          .array(ruleDataArb, { minLength: 1, maxLength: 4 })
          .filter((rules) => rules.every((rule) => Object.keys(rule.match).length > 0)),
        (rules) => {
          const yamlRules = rules.map((rule, i) => ({
            ...(rule.named ? { name: `rule ${i}: ${rule.audiences[0] ?? ''}` } : {}),
            // A scalar for a single uid, a list otherwise: both spellings are read.
            match: {
              ...rule.match,
              ...(rule.match.uid?.length === 1 ? { uid: rule.match.uid[0] } : {}),
            },
            subjects: rule.subjects,
            audiences: rule.audiences,
            scopes: rule.scopes,
            claims: rule.claims,
            max_ttl: `${rule.maxTtl}s`,
            admin: rule.admin,
            metrics: rule.metrics,
          }));
          // Block scalars off: yaml 2.9's writer loses the leading blank of a string whose
          // first line is only blanks (eemeli/yaml#692, #695), a fault of the writer alone.
          const text = stringify(
            {
              issuer: 'urn:test',
              hsm: { token: 't', pin_file: '/etc/hsmint/pin' },
              tokens: { max_ttl: '24h' },
              policy: { rules: yamlRules },
            },
            { blockQuote: false },
          );
          const config = parseConfig(text, '/etc/hsmint/hsmint.yaml');
          expect(config.policy.rules).toEqual(
            rules.map((rule, i) => ({
              name: rule.named ? `rule ${i}: ${rule.audiences[0] ?? ''}` : `rules[${i}]`,
              match: rule.match,
              subjects: rule.subjects,
              audiences: rule.audiences,
              scopes: rule.scopes,
              claims: rule.claims,
              maxTtl: rule.maxTtl,
              admin: rule.admin,
              metrics: rule.metrics,
            })),
          );
        },
      ),
      { numRuns: RUNS.configRoundTrip },
    );
  });
});

describe('property run counts', () => {
  it('add up to at least 60,000 cases', () => {
    expect(Object.values(RUNS).reduce((sum, runs) => sum + runs, 0)).toBeGreaterThanOrEqual(60_000);
  });
});
