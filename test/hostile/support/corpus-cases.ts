/**
 * The malformed-input corpus: loads the hand-written case files under test/hostile/cases/ and
 * turns each into the exact bytes to send. Case files are data, so a case is added without
 * touching code: the types below are their format, and README.md tells how to add one.
 */
import { createHmac, createPublicKey } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PublicJwk } from '../../../core/keys/keystore.js';
import { spkiOf } from '../../support/ca.js';

/** A body: text, JSON, exact bytes, or text assembled from repeated pieces (huge inputs). */
export type BodySpec =
  | string
  | { json: unknown }
  | { base64: string }
  | { hex: string }
  | { segments: Array<string | { repeat: string; times: number }> };

export interface RequestSpec {
  method: string;
  path: string;
  /** `null` leaves a default header out (content-type, content-length). */
  headers?: Record<string, string | null>;
  body?: BodySpec;
  /** Sends the body with Transfer-Encoding: chunked instead of a Content-Length. */
  chunked?: boolean;
}

/** How a token's signature is made. */
export type Signing =
  | 'daemon-key' // the daemon's own key on the token: only the flaw under test differs
  | 'daemon-key-der' // the same signature, DER-encoded as X.509 would have it (not JWS r||s)
  | 'attacker-key' // a P-256 key of the test's own, never known to the daemon
  | 'hs256-public-jwk' // HMAC-SHA256 keyed with the daemon's public JWK as JSON text
  | 'hs256-public-pem' // HMAC-SHA256 keyed with the daemon's public key as SPKI PEM
  | 'none' // an empty signature
  | 'literal'; // `signature` as given

export interface TokenSpec {
  header?: unknown;
  /** The header's JSON text as given, for duplicate keys or text that is not JSON. */
  headerText?: string;
  payload?: unknown;
  payloadText?: string;
  sign: Signing;
  signature?: string;
  /** After signing, the payload part is replaced by this one: a signature over other claims. */
  swapPayload?: unknown;
  /** The compact form from `{{header}}`, `{{payload}}` and `{{signature}}`, for odd shapes. */
  compact?: string;
}

export interface AnswerExpectation {
  status: number;
  /** `error.code` of the answer: an error, or a verify outcome when `valid` is false. */
  code?: string;
  /** For POST /v1/tokens/verify: the `valid` of the answer. */
  valid?: boolean;
  /** For POST /v1/tokens:batch: each result's `error.code`, or "token" for a minted one. */
  results?: string[];
  /** The daemon closes the connection after this answer (as ERRORS.md says for 413, 431...). */
  closes?: boolean;
  /** Headers the answer must carry, by lower-case name. */
  headers?: Record<string, string>;
  /** Fields the JSON answer must hold (a partial match). */
  match?: Record<string, unknown>;
}

/** No answer at all: the daemon closes the connection unanswered. */
export interface ClosedExpectation {
  closed: true;
}

export type Expectation = AnswerExpectation | ClosedExpectation;

export interface CorpusCase {
  /** `group/file` without `.json`: the case's name in the test report. */
  name: string;
  group: string;
  /** What the case probes, in one sentence. */
  probes: string;
  request?: RequestSpec;
  /** Exact bytes as text: each character U+0000 to U+00FF is one byte. */
  raw?: string;
  token?: TokenSpec;
  /** Shuts down our side after writing, so a short body can never complete. */
  endAfterWrite?: boolean;
  /** One expectation per answer, in order (several for pipelined requests). */
  expect: Expectation[];
}

const CASE_KEYS = ['probes', 'request', 'raw', 'token', 'endAfterWrite', 'expect'];
const REQUEST_KEYS = ['method', 'path', 'headers', 'body', 'chunked'];
const TOKEN_KEYS = [
  'header',
  'headerText',
  'payload',
  'payloadText',
  'sign',
  'signature',
  'swapPayload',
  'compact',
];
const EXPECT_KEYS = ['status', 'code', 'valid', 'results', 'closes', 'headers', 'match', 'closed'];
const SIGNINGS: readonly Signing[] = [
  'daemon-key',
  'daemon-key-der',
  'attacker-key',
  'hs256-public-jwk',
  'hs256-public-pem',
  'none',
  'literal',
];

function refuseUnknown(where: string, value: object, known: readonly string[]): void {
  for (const key of Object.keys(value))
    if (!known.includes(key)) throw new Error(`${where}: unknown key ${JSON.stringify(key)}`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * Every case under `root`, by group (folder) in `groups` order, then by file name. A case
 * file with a key this loader does not know is an error: a typo must not pass as a case.
 */
export function loadCorpus(root: string, groups: readonly string[]): CorpusCase[] {
  const found = readdirSync(root).sort();
  const strays = found.filter((group) => !groups.includes(group));
  if (strays.length > 0) throw new Error(`${root}: folders not in the group order: ${strays}`);
  const cases: CorpusCase[] = [];
  for (const group of groups) {
    for (const file of readdirSync(join(root, group)).sort()) {
      const name = `${group}/${file.replace(/\.json$/, '')}`;
      if (!file.endsWith('.json')) throw new Error(`${name}: case files are .json`);
      const data = JSON.parse(readFileSync(join(root, group, file), 'utf8')) as unknown;
      cases.push(checkCase(name, group, data));
    }
  }
  return cases;
}

function checkCase(name: string, group: string, data: unknown): CorpusCase {
  if (!isObject(data)) throw new Error(`${name}: a case is a JSON object`);
  refuseUnknown(name, data, CASE_KEYS);
  if (typeof data['probes'] !== 'string' || data['probes'].length < 10)
    throw new Error(`${name}: "probes" says what the case probes`);
  if ((data['request'] === undefined) === (data['raw'] === undefined))
    throw new Error(`${name}: give exactly one of "request" and "raw"`);
  if (isObject(data['request'])) refuseUnknown(`${name}.request`, data['request'], REQUEST_KEYS);
  if (data['raw'] !== undefined && !/^[\u0000-\u00ff]*$/.test(String(data['raw'])))
    throw new Error(`${name}: "raw" holds one character per byte (U+0000 to U+00FF)`);
  if (data['token'] !== undefined) {
    if (!isObject(data['token'])) throw new Error(`${name}.token: an object`);
    refuseUnknown(`${name}.token`, data['token'], TOKEN_KEYS);
    if (!SIGNINGS.includes(data['token']['sign'] as Signing))
      throw new Error(`${name}.token.sign: one of ${SIGNINGS.join(', ')}`);
  }
  const expect = Array.isArray(data['expect']) ? data['expect'] : [data['expect']];
  for (const [i, one] of expect.entries()) {
    if (!isObject(one)) throw new Error(`${name}.expect[${i}]: an object`);
    refuseUnknown(`${name}.expect[${i}]`, one, EXPECT_KEYS);
    if (one['closed'] !== true && typeof one['status'] !== 'number')
      throw new Error(`${name}.expect[${i}]: a "status", or "closed": true`);
  }
  return { ...(data as Omit<CorpusCase, 'name' | 'group'>), name, group, expect };
}

/** What the placeholders and the signatures of the cases are made from, at run time. */
export interface CorpusWorld {
  /** The daemon's active key. */
  publicJwk: PublicJwk;
  issuer: string;
  /** `http://127.0.0.1:PORT` of a listener that counts the connections it gets. */
  loopback: string;
  /** Seconds since the epoch when the corpus was prepared. */
  now: number;
  attacker: { jwk: PublicJwk; x5c: string[]; sign(input: Buffer): Promise<Buffer> };
  signWithDaemonKey(input: Buffer): Promise<Buffer>;
}

const PLACEHOLDER = /\{\{([a-z_]+)([+-]\d+)?\}\}/g;

/** The value of `{{name}}`, or `{{now+N}}` / `{{now-N}}`. */
function placeholder(world: CorpusWorld, name: string, offset: string | undefined, token?: string) {
  if (offset !== undefined && name !== 'now') throw new Error(`{{${name}${offset}}}: no offset`);
  switch (name) {
    case 'kid':
      return world.publicJwk.kid;
    case 'issuer':
      return world.issuer;
    case 'loopback':
      return world.loopback;
    case 'now':
      return world.now + Number(offset ?? 0);
    case 'attacker_jwk':
      return world.attacker.jwk;
    case 'attacker_kid':
      return world.attacker.jwk.kid;
    case 'attacker_x5c':
      return world.attacker.x5c;
    case 'token':
      if (token === undefined) throw new Error('{{token}} without a "token" in the case');
      return token;
    default:
      throw new Error(`unknown placeholder {{${name}}}`);
  }
}

/** Fills placeholders in text: each becomes its value as text (JSON for objects). */
function fillText(text: string, world: CorpusWorld, token?: string): string {
  return text.replace(PLACEHOLDER, (_, name: string, offset: string | undefined) => {
    const value = placeholder(world, name, offset, token);
    return typeof value === 'object' ? JSON.stringify(value) : String(value);
  });
}

/**
 * Fills placeholders in a JSON value: a string that is one whole placeholder becomes its value
 * with its type (a number for `{{now+60}}`, an object for `{{attacker_jwk}}`), and
 * `{"$repeat": TEXT, "times": N}` becomes TEXT repeated N times.
 */
export function fillJson(value: unknown, world: CorpusWorld, token?: string): unknown {
  if (typeof value === 'string') {
    const whole = /^\{\{([a-z_]+)([+-]\d+)?\}\}$/.exec(value);
    if (whole) return placeholder(world, whole[1]!, whole[2], token);
    return fillText(value, world, token);
  }
  if (Array.isArray(value)) return value.map((item) => fillJson(item, world, token));
  if (isObject(value)) {
    if (typeof value['$repeat'] === 'string' && typeof value['times'] === 'number')
      return value['$repeat'].repeat(value['times']);
    // Own entries only, kept even when named __proto__: the corpus sends such keys on purpose.
    const out: Record<string, unknown> = {};
    for (const [key, item] of Object.entries(value))
      Object.defineProperty(out, key, {
        value: fillJson(item, world, token),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    return out;
  }
  return value;
}

const b64url = (bytes: Buffer | string) => Buffer.from(bytes).toString('base64url');

/** ECDSA r||s (JWS) to the DER SEQUENCE of two INTEGERs that X.509 uses. */
function derSignature(raw: Buffer): Buffer {
  const integer = (half: Buffer) => {
    let bytes = half;
    while (bytes.length > 1 && bytes[0] === 0 && bytes[1]! < 0x80) bytes = bytes.subarray(1);
    if (bytes[0]! >= 0x80) bytes = Buffer.concat([Buffer.from([0]), bytes]);
    return Buffer.concat([Buffer.from([0x02, bytes.length]), bytes]);
  };
  const half = raw.length / 2;
  const body = Buffer.concat([integer(raw.subarray(0, half)), integer(raw.subarray(half))]);
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}

/** The compact JWS a token spec describes. */
export async function buildToken(spec: TokenSpec, world: CorpusWorld): Promise<string> {
  const headerText = spec.headerText
    ? fillText(spec.headerText, world)
    : JSON.stringify(fillJson(spec.header ?? {}, world));
  const payloadText = spec.payloadText
    ? fillText(spec.payloadText, world)
    : JSON.stringify(fillJson(spec.payload ?? {}, world));
  const header = b64url(headerText);
  let payload = b64url(payloadText);
  const input = Buffer.from(`${header}.${payload}`);
  let signature: string;
  switch (spec.sign) {
    case 'daemon-key':
      signature = b64url(await world.signWithDaemonKey(input));
      break;
    case 'daemon-key-der':
      signature = b64url(derSignature(await world.signWithDaemonKey(input)));
      break;
    case 'attacker-key':
      signature = b64url(await world.attacker.sign(input));
      break;
    case 'hs256-public-jwk':
      signature = createHmac('sha256', JSON.stringify(world.publicJwk))
        .update(input)
        .digest('base64url');
      break;
    case 'hs256-public-pem': {
      const pem = createPublicKey({
        key: spkiOf(world.publicJwk),
        format: 'der',
        type: 'spki',
      }).export({ type: 'spki', format: 'pem' });
      signature = createHmac('sha256', pem).update(input).digest('base64url');
      break;
    }
    case 'none':
      signature = '';
      break;
    case 'literal':
      if (spec.signature === undefined) throw new Error('"sign": "literal" needs "signature"');
      signature = spec.signature;
      break;
  }
  if (spec.swapPayload !== undefined)
    payload = b64url(JSON.stringify(fillJson(spec.swapPayload, world)));
  if (spec.compact === undefined) return `${header}.${payload}.${signature}`;
  return spec.compact
    .replaceAll('{{header}}', header)
    .replaceAll('{{payload}}', payload)
    .replaceAll('{{signature}}', signature);
}

function bodyBytes(body: BodySpec, world: CorpusWorld, token?: string): Buffer {
  if (typeof body === 'string') return Buffer.from(fillText(body, world, token), 'utf8');
  if ('json' in body) return Buffer.from(JSON.stringify(fillJson(body.json, world, token)));
  if ('base64' in body) return Buffer.from(body.base64, 'base64');
  if ('hex' in body) return Buffer.from(body.hex.replace(/\s+/g, ''), 'hex');
  return Buffer.from(
    body.segments
      .map((part) =>
        typeof part === 'string' ? fillText(part, world, token) : part.repeat.repeat(part.times),
      )
      .join(''),
    'utf8',
  );
}

/** The exact bytes of a case, and the compact token it carries, if any. */
export async function caseBytes(
  test: CorpusCase,
  world: CorpusWorld,
): Promise<{ bytes: Buffer; token?: string }> {
  const token = test.token ? await buildToken(test.token, world) : undefined;
  if (test.raw !== undefined)
    return {
      bytes: Buffer.from(fillText(test.raw, world, token), 'latin1'),
      ...(token ? { token } : {}),
    };
  const request = test.request!;
  const body = request.body === undefined ? undefined : bodyBytes(request.body, world, token);
  const headers: Record<string, string | null> = {};
  if (body) {
    headers['content-type'] = 'application/json';
    if (request.chunked) headers['transfer-encoding'] = 'chunked';
    else headers['content-length'] = String(body.length);
  }
  for (const [name, value] of Object.entries(request.headers ?? {}))
    headers[name.toLowerCase()] = value === null ? null : fillText(value, world, token);
  const head = [`${request.method} ${fillText(request.path, world, token)} HTTP/1.1`];
  for (const [name, value] of Object.entries(headers))
    if (value !== null) head.push(`${name}: ${value}`);
  let framed = body ?? Buffer.alloc(0);
  if (body && request.chunked) {
    const chunk =
      body.length === 0
        ? []
        : [Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n')];
    framed = Buffer.concat([...chunk, Buffer.from('0\r\n\r\n')]);
  }
  return {
    bytes: Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), framed]),
    ...(token ? { token } : {}),
  };
}

/** Method and path of a case's (first) request, to check that every route has cases. */
export function targetOf(test: CorpusCase): { method: string; path: string } | undefined {
  if (test.request) return { method: test.request.method, path: test.request.path.split('?')[0]! };
  const line = /^([A-Za-z]+) (\/\S*) HTTP\/1\.1\r\n/.exec(test.raw ?? '');
  return line ? { method: line[1]!, path: line[2]!.split('?')[0]! } : undefined;
}
