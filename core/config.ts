import { readFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { isMap, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { parseDuration } from './duration.js';
import { HsmintError } from './errors.js';
import {
  ALGORITHMS,
  DEFAULT_ALGORITHM,
  RSA_KEY_SIZES,
  type Algorithm,
  type RsaKeySize,
} from './keys/algorithms.js';
import { parseTokenReference, type Pkcs11Uri } from './pkcs11/uri.js';
import {
  MATCH_KEYS,
  TEMPLATE_FIELDS,
  isSubjectPrefix,
  type ClaimValue,
  type Policy,
  type PolicyRule,
} from './policy/policy.js';
import { RESERVED_CLAIMS } from './protocol.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  /** The file this came from; relative paths in it are resolved against its folder. */
  source: string;
  issuer: string;
  socket: {
    path: string;
    mode: number;
    group: string | undefined;
    maxConnectionsPerUid: number;
    maxRequestsPerUid: number;
  };
  hsm: {
    profile: string;
    /** Absolute path, or undefined to take the profile's first module found on this machine. */
    module: string | undefined;
    token: Pkcs11Uri;
    pinFile: string;
    /** Signing sessions; undefined takes the profile's number (a YubiKey takes one at a time). */
    sessions: number | undefined;
    environment: Record<string, string>;
    /** Seconds an operation waits for a free session before ERR_HSM_BUSY. */
    queueTimeout: number;
    /** Seconds one signature may take before the token counts as hung and seals. */
    callTimeout: number;
  };
  keys: {
    algorithm: Algorithm;
    rsaBits: RsaKeySize;
    rotationPeriod: number;
    publishAhead: number;
    /** Where the key states and the revocation list live (absolute). */
    stateDir: string;
  };
  tokens: {
    defaultTtl: number;
    maxTtl: number;
    clockSkew: number;
    maxRevocations: number;
    /** Put each token's certificate chain in its JWS header (x5c). */
    embedX5c: boolean;
  };
  /** The tamper-evident audit log. */
  audit: { dir: string; checkpointEvery: number; checkpointInterval: number; segmentSize: number };
  /** The internal CA; absent when keys are trusted through the JWKS alone. */
  ca: { certificate: string; key: string | undefined } | undefined;
  policy: Policy;
  log: { level: LogLevel };
}

/** Every default in one place; systemd/hsmint.example.yaml shows the same values. */
export const DEFAULTS = {
  socketPath: '/run/hsmint/hsmint.sock',
  socketMode: 0o660,
  maxConnectionsPerUid: 64,
  maxRequestsPerUid: 32,
  profile: 'softhsm',
  queueTimeout: '2s',
  callTimeout: '2s',
  algorithm: DEFAULT_ALGORITHM,
  rsaBits: 3072 as RsaKeySize,
  rotationPeriod: '7d',
  publishAhead: '1h',
  stateDir: '/var/lib/hsmint',
  maxRevocations: 100_000,
  checkpointEvery: 1000,
  checkpointInterval: '60s',
  segmentSize: 16 * 1024 * 1024,
  defaultTtl: '5m',
  maxTtl: '1h',
  clockSkew: '30s',
  logLevel: 'info' as LogLevel,
} as const;

/**
 * How long a verifier may cache the JWKS (`Cache-Control: max-age` on GET /v1/jwks). Key
 * rotation publishes every new key at least this long before it signs.
 */
export const JWKS_MAX_AGE_SECONDS = 300;

/** Skew beyond this makes `exp` meaningless; refuse it rather than trust a broken clock. */
const MAX_CLOCK_SKEW_SECONDS = 300;
/** Short-lived means short-lived: a day is the longest any token may live. */
const MAX_TTL_CEILING_SECONDS = 86400;

type Path = Array<string | number>;

/**
 * Reads values out of a parsed YAML document with their line numbers, so that every error
 * names the key path and the line: `tokens.max_ttl: expected a duration (hsmint.yaml:12)`.
 */
class ConfigReader {
  /** Aliases are refused outright: they buy nothing in a config and enable "billion laughs". */
  private readonly data: unknown;

  constructor(
    private readonly doc: Document,
    private readonly lines: LineCounter,
    private readonly file: string,
  ) {
    try {
      this.data = doc.toJS({ maxAliasCount: 0 });
    } catch (cause) {
      throw new HsmintError(
        'ERR_CONFIG_INVALID',
        `YAML aliases are not allowed (${basename(file)})`,
        { cause },
      );
    }
  }

  fail(path: Path, message: string): never {
    const where = this.lineOf(path);
    const at = where === undefined ? basename(this.file) : `${basename(this.file)}:${where}`;
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `${formatPath(path) || '(top)'}: ${message} (${at})`,
    );
  }

  /** The line of the node at `path`, or of its nearest parent that exists. */
  private lineOf(path: Path): number | undefined {
    for (let depth = path.length; depth >= 0; depth--) {
      const node = (
        depth === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, depth), true)
      ) as Node | null;
      if (node?.range) return this.lines.linePos(node.range[0]).line;
    }
    return undefined;
  }

  private keyLine(path: Path, key: string): number | undefined {
    const node = (
      path.length === 0 ? this.doc.contents : this.doc.getIn(path, true)
    ) as Node | null;
    if (!isMap(node)) return undefined;
    const pair = node.items.find((item) => (item.key as { value?: unknown } | null)?.value === key);
    const range = (pair?.key as Node | undefined)?.range;
    return range ? this.lines.linePos(range[0]).line : undefined;
  }

  /** A mapping whose keys must all be known; an absent section reads as empty. */
  section(path: Path, known: readonly string[], required = false): Record<string, unknown> {
    const value = this.value(path);
    if (value === undefined || value === null) {
      if (required) this.fail(path, 'is required');
      return {};
    }
    if (typeof value !== 'object' || Array.isArray(value)) this.fail(path, 'expected a mapping');
    for (const key of Object.keys(value)) {
      if (!known.includes(key)) {
        const line = this.keyLine(path, key);
        const at = line === undefined ? basename(this.file) : `${basename(this.file)}:${line}`;
        throw new HsmintError(
          'ERR_CONFIG_INVALID',
          `${formatPath([...path, key])}: unknown key; expected one of ${known.join(', ')} (${at})`,
        );
      }
    }
    return value as Record<string, unknown>;
  }

  value(path: Path): unknown {
    let current: unknown = this.data;
    for (const step of path) {
      if (current === null || typeof current !== 'object') return undefined;
      current = (current as Record<string | number, unknown>)[step];
    }
    return current;
  }

  string(path: Path, fallback?: string): string {
    const value = this.value(path);
    if (value === undefined || value === null) {
      if (fallback === undefined) this.fail(path, 'is required');
      return fallback;
    }
    if (typeof value !== 'string' || value === '') this.fail(path, 'expected a non-empty string');
    return value;
  }

  optionalString(path: Path): string | undefined {
    const value = this.value(path);
    return value === undefined || value === null ? undefined : this.string(path);
  }

  integer(path: Path, fallback: number, min: number, max: number): number {
    const value = this.value(path) ?? fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      this.fail(path, `expected a whole number from ${min} to ${max}`);
    }
    return value;
  }

  duration(path: Path, fallback: string): number {
    const value = this.value(path) ?? fallback;
    if (typeof value !== 'string') this.fail(path, 'expected a duration like 90s, 5m, 12h or 30d');
    try {
      return parseDuration(value);
    } catch (error) {
      this.fail(path, (error as Error).message);
    }
  }

  oneOf<T extends string | number>(path: Path, choices: readonly T[], fallback: T): T {
    const value = this.value(path) ?? fallback;
    if (!choices.includes(value as T)) this.fail(path, `expected one of ${choices.join(', ')}`);
    return value as T;
  }

  stringList(path: Path, fallback: string[]): string[] {
    const value = this.value(path) ?? fallback;
    if (!Array.isArray(value) || !value.every((item) => typeof item === 'string' && item !== '')) {
      this.fail(path, 'expected a list of non-empty strings');
    }
    return value as string[];
  }

  /** A scalar or a list of scalars, as a list: `uid: 1000` or `uid: [1000, 1001]`. */
  oneOrMany<T>(path: Path, check: (value: unknown) => value is T, expected: string): T[] {
    const value = this.value(path);
    const list = Array.isArray(value) ? value : [value];
    if (list.length === 0 || !list.every(check))
      this.fail(path, `expected ${expected}, or a list of them`);
    return list as T[];
  }

  stringMap(path: Path): Record<string, string> {
    const value = this.value(path) ?? {};
    if (typeof value !== 'object' || Array.isArray(value))
      this.fail(path, 'expected a mapping of names to strings');
    const out: Record<string, string> = {};
    for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
      if (!/^[A-Z_][A-Z0-9_]*$/.test(key))
        this.fail([...path, key], 'expected an environment variable name');
      if (typeof item !== 'string') this.fail([...path, key], 'expected a string');
      out[key] = item;
    }
    return out;
  }
}

function formatPath(path: Path): string {
  return path
    .map((step, i) => (typeof step === 'number' ? `[${step}]` : i === 0 ? step : `.${step}`))
    .join('');
}

/** Parses and validates a configuration file's text. Nothing here touches the token. */
export function parseConfig(text: string, file: string): Config {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  const problem = doc.errors[0];
  if (problem) {
    // yaml may point just past the previous line's end; the problem starts at the next token.
    let at = problem.pos[0];
    while (at < text.length && /\s/.test(text[at]!)) at++;
    const line = lines.linePos(at).line;
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `${problem.message.split('\n')[0]} (${basename(file)}${line ? `:${line}` : ''})`,
    );
  }
  const read: ConfigReader = new ConfigReader(doc, lines, file);
  const base = dirname(resolve(file));
  const absolute = (value: string) => (isAbsolute(value) ? value : resolve(base, value));

  read.section(
    [],
    ['issuer', 'socket', 'hsm', 'keys', 'tokens', 'policy', 'ca', 'audit', 'log'],
    true,
  );
  const issuer = read.string(['issuer']);
  if (issuer.length > 256 || /[\s\0]/.test(issuer))
    read.fail(['issuer'], 'expected a URI or name without spaces, at most 256 characters');

  read.section(
    ['socket'],
    ['path', 'mode', 'group', 'max_connections_per_uid', 'max_requests_per_uid'],
  );
  const socketPath = absolute(read.string(['socket', 'path'], DEFAULTS.socketPath));
  const modeText = read.value(['socket', 'mode']);
  let mode: number = DEFAULTS.socketMode;
  if (modeText !== undefined) {
    if (typeof modeText !== 'string' || !/^0?[0-7]{3}$/.test(modeText))
      read.fail(['socket', 'mode'], 'expected an octal mode in quotes, like "0660"');
    mode = parseInt(modeText, 8);
    if (mode & 0o007)
      read.fail(
        ['socket', 'mode'],
        'others may not connect: the socket is the door to the signing keys',
      );
    if ((mode & 0o600) !== 0o600) read.fail(['socket', 'mode'], 'the owner needs read and write');
  }

  read.section(
    ['hsm'],
    [
      'profile',
      'module',
      'token',
      'pin_file',
      'sessions',
      'environment',
      'queue_timeout',
      'call_timeout',
    ],
    true,
  );
  const tokenText = read.string(['hsm', 'token']);
  let token: Pkcs11Uri;
  try {
    token = parseTokenReference(tokenText);
  } catch (error) {
    read.fail(['hsm', 'token'], (error as Error).message);
  }
  const pinFileText = read.optionalString(['hsm', 'pin_file']) ?? token.pinSource;
  if (pinFileText === undefined)
    read.fail(['hsm', 'pin_file'], 'is required (or pin-source in the token URI)');
  const moduleText = read.optionalString(['hsm', 'module']) ?? token.modulePath;
  const queueTimeout = read.duration(['hsm', 'queue_timeout'], DEFAULTS.queueTimeout);
  const callTimeout = read.duration(['hsm', 'call_timeout'], DEFAULTS.callTimeout);
  // Callers hold a connection while they wait: past these, waiting is worse than an answer.
  if (queueTimeout > 60) read.fail(['hsm', 'queue_timeout'], 'at most 1m');
  if (callTimeout > 300) read.fail(['hsm', 'call_timeout'], 'at most 5m');

  read.section(
    ['keys'],
    ['algorithm', 'rsa_bits', 'rotation_period', 'publish_ahead', 'state_dir'],
  );
  read.section(
    ['tokens'],
    ['default_ttl', 'max_ttl', 'clock_skew', 'max_revocations', 'embed_x5c'],
  );
  read.section(['audit'], ['dir', 'checkpoint_every', 'checkpoint_interval', 'segment_size']);
  const caSection = read.section(['ca'], ['certificate', 'key']);
  const ca =
    Object.keys(caSection).length === 0
      ? undefined
      : {
          certificate: absolute(read.string(['ca', 'certificate'])),
          key: read.optionalString(['ca', 'key']),
        };
  const embedX5c = read.value(['tokens', 'embed_x5c']) ?? false;
  if (typeof embedX5c !== 'boolean') read.fail(['tokens', 'embed_x5c'], 'expected true or false');
  if (embedX5c && !ca)
    read.fail(['tokens', 'embed_x5c'], 'needs a ca section: the chain comes from the internal CA');
  const rotationPeriod = read.duration(['keys', 'rotation_period'], DEFAULTS.rotationPeriod);
  const publishAhead = read.duration(['keys', 'publish_ahead'], DEFAULTS.publishAhead);
  // A verifier may cache the JWKS this long: a key published for less could sign tokens
  // that a verifier with a fresh-enough cache has never heard of.
  if (publishAhead < JWKS_MAX_AGE_SECONDS) {
    read.fail(
      ['keys', 'publish_ahead'],
      `at least ${JWKS_MAX_AGE_SECONDS / 60}m, the JWKS cache time verifiers are told (Cache-Control max-age)`,
    );
  }
  if (publishAhead >= rotationPeriod)
    read.fail(['keys', 'publish_ahead'], 'must be shorter than keys.rotation_period');
  const defaultTtl = read.duration(['tokens', 'default_ttl'], DEFAULTS.defaultTtl);
  const maxTtl = read.duration(['tokens', 'max_ttl'], DEFAULTS.maxTtl);
  const clockSkew = read.duration(['tokens', 'clock_skew'], DEFAULTS.clockSkew);
  if (maxTtl > MAX_TTL_CEILING_SECONDS)
    read.fail(['tokens', 'max_ttl'], 'at most 24h: hsmint tokens are short-lived');
  if (defaultTtl > maxTtl)
    read.fail(['tokens', 'default_ttl'], 'must not be longer than tokens.max_ttl');
  if (clockSkew > MAX_CLOCK_SKEW_SECONDS) read.fail(['tokens', 'clock_skew'], 'at most 5m');
  const policy = parsePolicy(read, maxTtl);

  read.section(['log'], ['level']);

  return {
    source: resolve(file),
    issuer,
    socket: {
      path: socketPath,
      mode,
      group: read.optionalString(['socket', 'group']),
      maxConnectionsPerUid: read.integer(
        ['socket', 'max_connections_per_uid'],
        DEFAULTS.maxConnectionsPerUid,
        1,
        4096,
      ),
      maxRequestsPerUid: read.integer(
        ['socket', 'max_requests_per_uid'],
        DEFAULTS.maxRequestsPerUid,
        1,
        4096,
      ),
    },
    hsm: {
      profile: read.string(['hsm', 'profile'], DEFAULTS.profile),
      module: moduleText === undefined ? undefined : absolute(moduleText),
      token,
      pinFile: absolute(pinFileText),
      sessions:
        read.value(['hsm', 'sessions']) == null
          ? undefined
          : read.integer(['hsm', 'sessions'], 1, 1, 64),
      environment: read.stringMap(['hsm', 'environment']),
      queueTimeout,
      callTimeout,
    },
    keys: {
      algorithm: read.oneOf(['keys', 'algorithm'], ALGORITHMS, DEFAULTS.algorithm),
      rsaBits: read.oneOf(['keys', 'rsa_bits'], RSA_KEY_SIZES, DEFAULTS.rsaBits),
      rotationPeriod,
      publishAhead,
      stateDir: absolute(read.string(['keys', 'state_dir'], DEFAULTS.stateDir)),
    },
    tokens: {
      defaultTtl,
      maxTtl,
      clockSkew,
      embedX5c,
      maxRevocations: read.integer(
        ['tokens', 'max_revocations'],
        DEFAULTS.maxRevocations,
        1,
        10_000_000,
      ),
    },
    policy,
    audit: {
      dir: absolute(read.string(['audit', 'dir'], join(stateDirOf(read, absolute), 'audit'))),
      checkpointEvery: read.integer(
        ['audit', 'checkpoint_every'],
        DEFAULTS.checkpointEvery,
        1,
        1_000_000,
      ),
      checkpointInterval: read.duration(
        ['audit', 'checkpoint_interval'],
        DEFAULTS.checkpointInterval,
      ),
      segmentSize: read.integer(
        ['audit', 'segment_size'],
        DEFAULTS.segmentSize,
        64 * 1024,
        2 ** 31,
      ),
    },
    ca,
    log: { level: read.oneOf(['log', 'level'], LOG_LEVELS, DEFAULTS.logLevel) },
  };
}

const RULE_KEYS = [
  'name',
  'match',
  'subjects',
  'audiences',
  'scopes',
  'claims',
  'max_ttl',
  'admin',
  'metrics',
] as const;
const isText = (value: unknown): value is string =>
  typeof value === 'string' && value !== '' && value.length <= 256;
const isUid = (value: unknown): value is number =>
  typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 2 ** 32;
const isClaimValue = (value: unknown): value is ClaimValue =>
  (typeof value === 'string' && value.length <= 256) ||
  typeof value === 'boolean' ||
  (typeof value === 'number' && Number.isFinite(value));
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]{1,128}$/;

/** `policy.rules`: ordered; the first rule that matches a caller decides what it may mint. */
function parsePolicy(read: ConfigReader, maxTtl: number): Policy {
  read.section(['policy'], ['rules']);
  const raw = read.value(['policy', 'rules']) ?? [];
  if (!Array.isArray(raw)) read.fail(['policy', 'rules'], 'expected a list of rules');
  const names = new Set<string>();
  const rules = raw.map((_rule, i): PolicyRule => {
    const at: Path = ['policy', 'rules', i];
    read.section(at, RULE_KEYS, true);
    const name = read.optionalString([...at, 'name']) ?? `rules[${i}]`;
    if (names.has(name)) read.fail([...at, 'name'], `another rule is named ${name}`);
    names.add(name);

    const matchKeys = Object.keys(read.section([...at, 'match'], MATCH_KEYS, true));
    // A rule without criteria would match every process that can open the socket.
    if (matchKeys.length === 0)
      read.fail([...at, 'match'], `name at least one of ${MATCH_KEYS.join(', ')}`);
    const match: PolicyRule['match'] = {};
    for (const key of matchKeys) {
      if (key === 'uid') match.uid = read.oneOrMany([...at, 'match', key], isUid, 'a uid');
      else {
        const values = read.oneOrMany([...at, 'match', key], isText, 'a non-empty string');
        if (key === 'exe' && !values.every((value) => value.startsWith('/')))
          read.fail([...at, 'match', key], 'expected absolute paths');
        match[key as Exclude<(typeof MATCH_KEYS)[number], 'uid'>] = values;
      }
    }

    const subjects = read.stringList([...at, 'subjects'], []);
    subjects.forEach((subject, j) => {
      const path = [...at, 'subjects', j];
      for (const [, field] of subject.matchAll(/\{([^}]*)\}/g)) {
        if (!(TEMPLATE_FIELDS as readonly string[]).includes(field!))
          read.fail(
            path,
            `unknown placeholder {${field}}; use ${TEMPLATE_FIELDS.map((f) => `{${f}}`).join(', ')}`,
          );
      }
      if (
        isSubjectPrefix(subject) &&
        (subject.length < 2 || subject.slice(0, -1).includes('*') || subject.includes('{'))
      ) {
        read.fail(path, 'a prefix subject is literal text ending in one *, like svc:*');
      }
      if (!isSubjectPrefix(subject) && subject.includes('*'))
        read.fail(path, '* may only end a prefix subject');
    });
    const scopes = read.stringList([...at, 'scopes'], []);
    scopes.forEach((scope, j) => {
      if (!SCOPE_TOKEN.test(scope))
        read.fail(
          [...at, 'scopes', j],
          'expected a scope token (printable ASCII, no spaces or quotes)',
        );
    });

    const claimsRaw = read.value([...at, 'claims']) ?? {};
    if (typeof claimsRaw !== 'object' || Array.isArray(claimsRaw))
      read.fail([...at, 'claims'], 'expected a mapping of claim names to null or allowed values');
    const claims: Record<string, ClaimValue[] | null> = {};
    for (const [claim, allowed] of Object.entries(claimsRaw as Record<string, unknown>)) {
      const path = [...at, 'claims', claim];
      if (RESERVED_CLAIMS.has(claim)) read.fail(path, 'this claim is set by the daemon only');
      if (allowed === null) claims[claim] = null;
      else
        claims[claim] = read.oneOrMany(
          path,
          isClaimValue,
          'null (any value), a string, number or boolean',
        );
    }

    const ruleMaxTtl =
      read.value([...at, 'max_ttl']) == null ? maxTtl : read.duration([...at, 'max_ttl'], '1s');
    if (ruleMaxTtl > maxTtl)
      read.fail([...at, 'max_ttl'], 'must not be longer than tokens.max_ttl');
    const admin = read.value([...at, 'admin']) ?? false;
    if (typeof admin !== 'boolean') read.fail([...at, 'admin'], 'expected true or false');
    const metrics = read.value([...at, 'metrics']) ?? false;
    if (typeof metrics !== 'boolean') read.fail([...at, 'metrics'], 'expected true or false');

    return {
      name,
      match,
      subjects,
      audiences: read.stringList([...at, 'audiences'], []),
      scopes,
      claims,
      maxTtl: ruleMaxTtl,
      admin,
      metrics,
    };
  });
  return { rules };
}

function stateDirOf(read: ConfigReader, absolute: (value: string) => string): string {
  return absolute(read.string(['keys', 'state_dir'], DEFAULTS.stateDir));
}

export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (cause) {
    throw new HsmintError('ERR_CONFIG_UNREADABLE', `cannot read config ${file}`, { cause });
  }
  return parseConfig(text, file);
}

/** `--config`, then $HSMINT_CONFIG, then the system path. */
export function configPath(flag: string | undefined): string {
  return flag ?? process.env['HSMINT_CONFIG'] ?? '/etc/hsmint/hsmint.yaml';
}
