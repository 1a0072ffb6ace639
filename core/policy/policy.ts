import { HsmintError } from '../errors.js';
import type { MintRequest } from '../protocol.js';
import type { Caller } from './caller.js';

export const MATCH_KEYS = ['uid', 'user', 'group', 'unit', 'exe'] as const;
export const TEMPLATE_FIELDS = ['uid', 'gid', 'user', 'group', 'unit'] as const;

export type ClaimValue = string | number | boolean;

export interface PolicyRule {
  /** For logs, whoami and the token's `hsmint.rule`: the rule's `name`, or `rules[i]`. */
  name: string;
  /** Every key given must match; a list matches any of its values. */
  match: { uid?: number[]; user?: string[]; group?: string[]; unit?: string[]; exe?: string[] };
  /** Literal subjects, templates like `svc:{unit}`, or prefixes like `svc:*`. */
  subjects: string[];
  audiences: string[];
  scopes: string[];
  /** Extra claims the caller may set: null for any value, or the allowed values. */
  claims: Record<string, ClaimValue[] | null>;
  maxTtl: number;
  admin: boolean;
  /** May read GET /v1/metrics and nothing else of the admin routes (admins may anyway). */
  metrics?: boolean;
}

export interface Policy {
  rules: PolicyRule[];
}

/** What one caller may do: its rule with the subject templates filled in for it. */
export interface Grant {
  rule: string;
  /** Concrete subjects; the first is the default when a request names none. */
  subjects: string[];
  /** Prefixes (`svc:*`) any subject under which may be asked for, never a default. */
  subjectPrefixes: string[];
  audiences: string[];
  scopes: string[];
  claims: Record<string, ClaimValue[] | null>;
  maxTtl: number;
  admin: boolean;
  /** May read the metrics: `metrics: true` in the rule, or an admin. */
  metrics: boolean;
}

const PLACEHOLDER = /\{([a-z]+)\}/g;

function matches(rule: PolicyRule, caller: Caller): boolean {
  const { uid, user, group, unit, exe } = rule.match;
  return (
    (uid === undefined || uid.includes(caller.uid)) &&
    (user === undefined || (caller.user !== undefined && user.includes(caller.user))) &&
    (group === undefined || caller.groups.some((name) => group.includes(name))) &&
    (unit === undefined || (caller.unit !== undefined && unit.includes(caller.unit))) &&
    (exe === undefined || (caller.exe !== undefined && exe.includes(caller.exe)))
  );
}

/** The first rule that matches the caller: rules are ordered, like a firewall's. */
export function findRule(policy: Policy, caller: Caller): PolicyRule | undefined {
  return policy.rules.find((rule) => matches(rule, caller));
}

function templateValue(field: string, caller: Caller): string | undefined {
  switch (field) {
    case 'uid':
      return String(caller.uid);
    case 'gid':
      return String(caller.gid);
    case 'user':
      return caller.user;
    case 'group':
      return caller.group;
    case 'unit':
      return caller.unit;
    default:
      return undefined; // only the five fields above: never pid, exe or anything else
  }
}

/** Fills `{uid}`, `{gid}`, `{user}`, `{group}`, `{unit}`; undefined when the caller lacks one. */
export function renderSubject(template: string, caller: Caller): string | undefined {
  let missing = false;
  const rendered = template.replace(PLACEHOLDER, (_all, field: string) => {
    const value = templateValue(field, caller);
    if (value === undefined) missing = true;
    return value ?? '';
  });
  return missing ? undefined : rendered;
}

export function isSubjectPrefix(subject: string): boolean {
  return subject.endsWith('*');
}

export function grantFor(rule: PolicyRule, caller: Caller): Grant {
  const subjects: string[] = [];
  for (const template of rule.subjects.filter((subject) => !isSubjectPrefix(subject))) {
    const rendered = renderSubject(template, caller);
    if (rendered !== undefined && !subjects.includes(rendered)) subjects.push(rendered);
  }
  return {
    rule: rule.name,
    subjects,
    subjectPrefixes: rule.subjects.filter(isSubjectPrefix).map((prefix) => prefix.slice(0, -1)),
    audiences: rule.audiences,
    scopes: rule.scopes,
    claims: rule.claims,
    maxTtl: rule.maxTtl,
    admin: rule.admin,
    metrics: rule.admin || rule.metrics === true,
  };
}

export function grantOf(policy: Policy, caller: Caller): Grant | undefined {
  const rule = findRule(policy, caller);
  return rule === undefined ? undefined : grantFor(rule, caller);
}

function sameValue(a: unknown, b: ClaimValue): boolean {
  return a === b;
}

/**
 * Checks a mint request against a grant. Anything outside it is refused with its own code,
 * never trimmed to fit: a caller that asked for more must learn that it did not get it.
 */
export function authorizeMint(
  grant: Grant,
  request: MintRequest,
  defaultTtl: number,
): { subject: string; ttl: number } {
  let subject: string;
  if (request.sub === undefined) {
    const fallback = grant.subjects[0];
    if (fallback === undefined) {
      throw new HsmintError(
        'ERR_SUBJECT_NOT_ALLOWED',
        `rule ${grant.rule} gives this caller no default subject; name one with sub`,
      );
    }
    subject = fallback;
  } else {
    const requested = request.sub;
    const allowed =
      grant.subjects.includes(requested) ||
      grant.subjectPrefixes.some(
        (prefix) => requested.startsWith(prefix) && requested.length > prefix.length,
      );
    if (!allowed)
      throw new HsmintError(
        'ERR_SUBJECT_NOT_ALLOWED',
        `subject ${JSON.stringify(requested)} is not granted to this caller`,
      );
    subject = requested;
  }
  for (const audience of Array.isArray(request.aud) ? request.aud : [request.aud]) {
    if (!grant.audiences.includes(audience)) {
      throw new HsmintError(
        'ERR_AUDIENCE_NOT_ALLOWED',
        `audience ${JSON.stringify(audience)} is not granted to this caller`,
      );
    }
  }
  for (const scope of request.scope ?? []) {
    if (!grant.scopes.includes(scope))
      throw new HsmintError(
        'ERR_SCOPE_NOT_ALLOWED',
        `scope ${JSON.stringify(scope)} is not granted to this caller`,
      );
  }
  for (const [name, value] of Object.entries(request.claims ?? {})) {
    if (!Object.hasOwn(grant.claims, name))
      throw new HsmintError('ERR_CLAIM_NOT_ALLOWED', `claim ${name} is not granted to this caller`);
    const allowed = grant.claims[name];
    if (allowed && !allowed.some((candidate) => sameValue(value, candidate))) {
      throw new HsmintError('ERR_CLAIM_NOT_ALLOWED', `claim ${name} may not take that value`);
    }
  }
  const ttl = request.ttl ?? Math.min(defaultTtl, grant.maxTtl);
  if (ttl > grant.maxTtl)
    throw new HsmintError(
      'ERR_TTL_TOO_LONG',
      `ttl ${ttl}s is over this caller's maximum of ${grant.maxTtl}s`,
    );
  return { subject, ttl };
}
