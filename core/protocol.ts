/**
 * The socket API's request and response shapes (under /v1) and their strict parsers: unknown
 * fields and wrong types are refused with a code, never ignored or coerced.
 */
import { parseDuration } from './duration.js';
import { HsmintError, type ErrorCode } from './errors.js';
import type { Algorithm } from './keys/algorithms.js';
import type { PublicJwk } from './keys/keystore.js';
import type { VerifyResult } from './jwt/verify.js';
import type { Caller } from './policy/caller.js';
import type { ClaimValue } from './policy/policy.js';

export const API_PREFIX = '/v1';
export const MAX_BODY_BYTES = 64 * 1024;

export interface MintRequest {
  aud: string | string[];
  sub?: string;
  /** Seconds; the wire takes a duration string (`5m`) or whole seconds. */
  ttl?: number;
  scope?: string[];
  claims?: Record<string, unknown>;
}

export interface MintResponse {
  token: string;
  /** The subject the token was minted for: the one asked for, or the caller's default. */
  sub: string;
  jti: string;
  kid: string;
  alg: Algorithm;
  iat: number;
  exp: number;
}

export interface VerifyRequest {
  token: string;
  aud?: string;
}

export type VerifyResponse = VerifyResult;

export interface JwksResponse {
  keys: PublicJwk[];
}

export type HealthStatus = 'ok' | 'degraded' | 'sealed';

export interface HealthResponse {
  status: HealthStatus;
  reason?: string;
  issuer: string;
  algorithm: Algorithm;
  active_kid: string;
  keys: number;
  token: { label: string; serial: string };
  uptime_s: number;
}

export interface WhoamiResponse {
  caller: Caller;
  /** The rule that matched, or null: then nothing may be minted. */
  rule: string | null;
  grants: {
    subjects: string[];
    subject_prefixes: string[];
    default_subject: string | null;
    audiences: string[];
    scopes: string[];
    claims: Record<string, ClaimValue[] | null>;
    max_ttl: number;
    admin: boolean;
    /** May read GET /v1/metrics (admins may too). */
    metrics: boolean;
  } | null;
}

export interface ReloadResponse {
  reloaded: true;
  /** Sections that changed but take effect only after a restart. */
  restart_needed: string[];
}

export interface ErrorBody {
  error: { code: ErrorCode; message: string };
}

/**
 * Claims only the daemon sets, and names that would reach into an object's prototype. `azp`
 * and `hsmint` are kept for the caller identity the daemon records.
 */
export const RESERVED_CLAIMS = new Set([
  'iss',
  'sub',
  'aud',
  'exp',
  'nbf',
  'iat',
  'jti',
  'scope',
  'azp',
  'hsmint',
  'cnf',
  '__proto__',
  'constructor',
  'prototype',
]);

const MAX_STRING = 256;
const MAX_AUDIENCES = 16;
const MAX_SCOPES = 32;
const MAX_CLAIMS = 32;
const MAX_CLAIM_DEPTH = 8;
const CLAIM_NAME = /^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$/;
/** RFC 6749 scope-token: printable ASCII but space, `"` and `\`. */
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]{1,128}$/;

function bad(code: ErrorCode, message: string): HsmintError {
  return new HsmintError(code, message);
}

function objectBody(body: unknown, known: readonly string[]): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw bad('ERR_INVALID_REQUEST', 'the body must be a JSON object');
  }
  for (const key of Object.keys(body)) {
    if (!known.includes(key)) {
      throw bad(
        'ERR_UNKNOWN_FIELD',
        `unknown field ${JSON.stringify(key.slice(0, 64))}; expected ${known.join(', ')}`,
      );
    }
  }
  return body as Record<string, unknown>;
}

/** Printable text without control characters: what ends up in tokens and logs stays readable. */
function text(value: unknown, field: string, max = MAX_STRING): string {
  if (typeof value !== 'string') throw bad('ERR_INVALID_REQUEST', `${field} must be a string`);
  if (value.length === 0 || value.length > max)
    throw bad('ERR_INVALID_REQUEST', `${field} must be 1 to ${max} characters`);
  // \p{Cc} is C0, DEL and the C1 controls (U+0080-U+009F: NEL, CSI...), not C0 alone.
  if (/[\p{Cc}\u2028\u2029]/u.test(value) || !value.isWellFormed()) {
    throw bad(
      'ERR_INVALID_REQUEST',
      `${field} must not hold control characters or lone surrogates`,
    );
  }
  return value;
}

function ttl(value: unknown): number {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 1)
      throw bad(
        'ERR_INVALID_REQUEST',
        'ttl must be a whole number of seconds >= 1, or a duration like "5m"',
      );
    return value;
  }
  if (typeof value === 'string') {
    try {
      return parseDuration(value);
    } catch {
      throw bad('ERR_INVALID_REQUEST', 'ttl must be a duration like "90s", "5m" or "1h"');
    }
  }
  throw bad('ERR_INVALID_REQUEST', 'ttl must be a duration string or whole seconds');
}

/** Iterative, so a hostile 100k-level nesting cannot overflow the stack. */
function claimDepth(root: unknown): number {
  let deepest = 0;
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [value, depth] = stack.pop()!;
    if (value === null || typeof value !== 'object') continue;
    deepest = Math.max(deepest, depth);
    if (deepest > MAX_CLAIM_DEPTH) return deepest;
    for (const child of Object.values(value)) stack.push([child, depth + 1]);
  }
  return deepest;
}

function claims(value: unknown): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw bad('ERR_INVALID_REQUEST', 'claims must be an object');
  }
  const names = Object.keys(value);
  if (names.length > MAX_CLAIMS)
    throw bad('ERR_INVALID_REQUEST', `at most ${MAX_CLAIMS} extra claims`);
  for (const name of names) {
    if (RESERVED_CLAIMS.has(name))
      throw bad('ERR_RESERVED_CLAIM', `claim ${name} is set by the daemon only`);
    if (!CLAIM_NAME.test(name))
      throw bad(
        'ERR_INVALID_REQUEST',
        `claim name ${JSON.stringify(name.slice(0, 64))} is not allowed`,
      );
  }
  if (claimDepth(value) > MAX_CLAIM_DEPTH)
    throw bad('ERR_INVALID_REQUEST', `claims nest deeper than ${MAX_CLAIM_DEPTH} levels`);
  // A fresh object built from own entries: nothing inherited, nothing that reaches a prototype.
  return Object.fromEntries(Object.entries(value));
}

export function parseMintRequest(body: unknown): MintRequest {
  const input = objectBody(body, ['aud', 'sub', 'ttl', 'scope', 'claims']);
  if (input['aud'] === undefined) throw bad('ERR_MISSING_FIELD', 'aud is required');
  let aud: string | string[];
  if (Array.isArray(input['aud'])) {
    const list = input['aud'];
    if (list.length === 0 || list.length > MAX_AUDIENCES)
      throw bad('ERR_INVALID_REQUEST', `aud must hold 1 to ${MAX_AUDIENCES} audiences`);
    aud = list.map((item, i) => text(item, `aud[${i}]`));
    if (new Set(aud).size !== aud.length)
      throw bad('ERR_INVALID_REQUEST', 'aud repeats an audience');
    if (aud.length === 1) aud = aud[0]!;
  } else {
    aud = text(input['aud'], 'aud');
  }
  const request: MintRequest = { aud };
  if (input['sub'] !== undefined) request.sub = text(input['sub'], 'sub');
  if (input['ttl'] !== undefined) request.ttl = ttl(input['ttl']);
  if (input['scope'] !== undefined) {
    const scope = input['scope'];
    if (!Array.isArray(scope) || scope.length > MAX_SCOPES)
      throw bad('ERR_INVALID_REQUEST', `scope must be a list of at most ${MAX_SCOPES} strings`);
    request.scope = scope.map((item, i) => {
      if (typeof item !== 'string' || !SCOPE_TOKEN.test(item)) {
        throw bad(
          'ERR_INVALID_REQUEST',
          `scope[${i}] must be a scope token (printable ASCII, no spaces or quotes)`,
        );
      }
      return item;
    });
  }
  if (input['claims'] !== undefined) request.claims = claims(input['claims']);
  return request;
}

/** Mint requests in one call, at most this many. */
export const MAX_BATCH = 100;

export interface MintBatchRequest {
  requests: MintRequest[];
}

/** One answer of a batch, in the request's place: a token, or why that one was refused. */
export type MintBatchResult = MintResponse | ErrorBody;

export interface MintBatchResponse {
  results: MintBatchResult[];
}

/**
 * `{requests: [MintRequest, ...]}`, 1 to MAX_BATCH of them. A malformed request refuses the
 * whole batch, naming its index: that is a bug in the caller, not a policy decision.
 */
export function parseMintBatchRequest(body: unknown): MintBatchRequest {
  const input = objectBody(body, ['requests']);
  const list = input['requests'];
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_BATCH)
    throw bad('ERR_INVALID_REQUEST', `requests must be a list of 1 to ${MAX_BATCH} mint requests`);
  return {
    requests: list.map((item, i) => {
      try {
        return parseMintRequest(item);
      } catch (error) {
        if (error instanceof HsmintError)
          throw new HsmintError(error.code, `requests[${i}]: ${error.message}`);
        throw error;
      }
    }),
  };
}

export type RevokeTokenRequest = { jti: string } | { token: string };

const JTI = /^[A-Za-z0-9_-]{1,256}$/;

/** `{jti}` (admins) or `{token}` (admins, or the caller that minted it): exactly one. */
export function parseRevokeTokenRequest(body: unknown): RevokeTokenRequest {
  const input = objectBody(body, ['jti', 'token']);
  if ((input['jti'] === undefined) === (input['token'] === undefined)) {
    throw bad('ERR_MISSING_FIELD', 'give exactly one of jti or token');
  }
  if (input['jti'] !== undefined) {
    if (typeof input['jti'] !== 'string' || !JTI.test(input['jti']))
      throw bad('ERR_INVALID_REQUEST', 'jti must be 1 to 256 base64url characters');
    return { jti: input['jti'] };
  }
  if (typeof input['token'] !== 'string')
    throw bad('ERR_INVALID_REQUEST', 'token must be a string');
  return { token: input['token'] };
}

export interface KeyView {
  kid: string;
  alg: Algorithm;
  /** `unrecorded` only offline: on the token, not yet in the daemon's state. */
  state: 'next' | 'active' | 'retiring' | 'unrecorded';
  label: string;
  created: number;
  activate_at?: number;
  active_from?: number;
  retire_at?: number;
}

export function parseVerifyRequest(body: unknown): VerifyRequest {
  const input = objectBody(body, ['token', 'aud']);
  if (input['token'] === undefined) throw bad('ERR_MISSING_FIELD', 'token is required');
  // The token itself is judged by the verifier (valid: false, ERR_TOKEN_MALFORMED), not here.
  if (typeof input['token'] !== 'string')
    throw bad('ERR_INVALID_REQUEST', 'token must be a string');
  const request: VerifyRequest = { token: input['token'] };
  if (input['aud'] !== undefined) request.aud = text(input['aud'], 'aud');
  return request;
}
