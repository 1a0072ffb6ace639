/**
 * One audit record is one line of UTF-8 JSON ending in `\n`. Each line has exactly one valid
 * form (JSON.stringify, fields in a fixed order, U+2028/U+2029 escaped), so a verifier can
 * demand byte equality with its own serialisation and no edit hides in an alternative spelling.
 */
import { isUtf8 } from 'node:buffer';
import { createHash, hash as cryptoHash } from 'node:crypto';
import { HsmintError } from '../errors.js';

/** What a caller records: an event name and its fields (caller, jti, kid, sub, aud, ...). */
export interface AuditEvent {
  event: string;
  [field: string]: unknown;
}

/** A record as stored: the event with its place in the chain. */
export interface AuditRecord extends AuditEvent {
  /** 1, 2, 3, ... with no gap across segments. */
  seq: number;
  /** ISO 8601 UTC with milliseconds, as Date.prototype.toISOString writes it. */
  ts: string;
  /** hashLine of the previous record's line, GENESIS_PREV for seq 1. */
  prev: string;
}

/** `prev` of record 1: base64url SHA-256 of "hsmint-audit-genesis". */
export const GENESIS_PREV = createHash('sha256').update('hsmint-audit-genesis').digest('base64url');

/** Events only the log itself writes. */
export const LOG_EVENTS = [
  'checkpoint',
  'audit.rotate',
  'audit.recover',
  'audit.override',
  'audit.resume',
] as const;

const EVENT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

const INTEGER_LIKE = /^(?:0|[1-9]\d*)$/;

/** Fields the log sets itself, and the event name: the first four of every record. */
const CHAIN_FIELDS: ReadonlySet<string> = new Set(['seq', 'ts', 'prev', 'event']);

/** A record line longer than this is refused on write and read (the request body cap is 64 KiB). */
export const MAX_RECORD_BYTES = 256 * 1024;

/**
 * Field names that would put a secret in the log: a token, a signature over a token, a PIN.
 * Compared case-insensitively, at any depth, also as the last word of a longer name
 * (`access_token`, `idToken`, `user-pin`).
 */
const SECRET_WORDS = ['token', 'pin', 'signature', 'jwt', 'jws', 'password', 'secret'];

/** Field names are few and fixed in code, so each is judged once (bounded, in case). */
const secretNameCache = new Map<string, boolean>();

function isSecretName(name: string): boolean {
  let secret = secretNameCache.get(name);
  if (secret === undefined) {
    secret = judgeSecretName(name);
    if (secretNameCache.size < 4096) secretNameCache.set(name, secret);
  }
  return secret;
}

function judgeSecretName(name: string): boolean {
  const words = name
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .toLowerCase()
    .split(/[^a-z0-9]+/)
    .filter((word) => word !== '');
  const last = words.at(-1);
  return last !== undefined && SECRET_WORDS.includes(last);
}

function findSecretField(value: unknown, path: string, depth: number): string | undefined {
  if (depth > 16 || value === null || typeof value !== 'object') return undefined;
  if (Array.isArray(value)) {
    for (const [index, item] of value.entries()) {
      const found = findSecretField(item, `${path}[${index}]`, depth + 1);
      if (found) return found;
    }
    return undefined;
  }
  for (const [name, item] of Object.entries(value)) {
    const at = path === '' ? name : `${path}.${name}`;
    if (isSecretName(name)) return at;
    const found = findSecretField(item, at, depth + 1);
    if (found) return found;
  }
  return undefined;
}

/**
 * Refuses an event that could not be recorded safely: no event name, an event or a field the
 * log sets itself (LOG_EVENTS; seq, ts, prev), or a field named like a secret (token, pin, signature...). These are
 * bugs in hsmint, never a caller's doing, so they throw ERR_INTERNAL.
 */
export function assertAuditEvent(event: AuditEvent): void {
  if (event === null || typeof event !== 'object' || Array.isArray(event))
    throw new HsmintError('ERR_INTERNAL', 'an audit event must be an object');
  if (typeof event.event !== 'string' || !EVENT_NAME.test(event.event))
    throw new HsmintError('ERR_INTERNAL', 'an audit event needs a name like `key.generate`', {
      details: { event: String(event.event).slice(0, 64) },
    });
  if ((LOG_EVENTS as readonly string[]).includes(event.event))
    throw new HsmintError('ERR_INTERNAL', `only the audit log itself records ${event.event}`, {
      details: { event: event.event },
    });
  for (const field of ['seq', 'ts', 'prev'] as const) {
    if (Object.hasOwn(event, field))
      throw new HsmintError('ERR_INTERNAL', `the audit log sets ${field} itself`, {
        details: { event: event.event, field },
      });
  }
  // The engine puts integer-like names before all others, which would break the fixed order.
  const integerLike = Object.keys(event).find((name) => INTEGER_LIKE.test(name));
  if (integerLike !== undefined)
    throw new HsmintError('ERR_INTERNAL', `audit field ${integerLike} is not a name`, {
      details: { event: event.event, field: integerLike },
    });
  const secret = findSecretField(event, '', 0);
  if (secret !== undefined)
    throw new HsmintError(
      'ERR_INTERNAL',
      `audit field ${secret} is refused: the log never holds a token, a signature or a PIN`,
      { details: { event: event.event, field: secret } },
    );
}

/**
 * The line of a record, without its newline: seq, ts, prev, event first, then the event's
 * fields in their own order. JSON.stringify escapes quotes, backslashes and control characters
 * (so `\n` and `\r` inside a string stay inside the record) and lone surrogates; U+2028 and
 * U+2029 are escaped here too, since some readers take them for line breaks.
 */
export function serializeRecord(record: AuditRecord): string {
  const { seq, ts, prev, ...event } = record;
  return serializeChained(event as AuditEvent, seq, ts, prev);
}

/**
 * serializeRecord for an event and its place in the chain, without building the record: the
 * writer's hot path. An event whose first field is `event` (as every event hsmint writes)
 * is stringified once and the chain fields put in front; any other goes the general way.
 */
export function serializeChained(event: AuditEvent, seq: number, ts: string, prev: string): string {
  const head = `{"seq":${JSON.stringify(seq)},"ts":${JSON.stringify(ts)},"prev":${JSON.stringify(prev)},`;
  if (isEventFirst(event)) return escapeSeparators(head + JSON.stringify(event).slice(1));
  return serializeOrdered({ ...event, seq, ts, prev });
}

/** Whether JSON.stringify(event) starts with `{"event":` and holds no chain field or surprise. */
function isEventFirst(event: AuditEvent): boolean {
  let first: string | undefined;
  for (const name in event) {
    first = name;
    break;
  }
  return (
    first === 'event' &&
    Object.getPrototypeOf(event) === Object.prototype &&
    typeof event['toJSON'] !== 'function' &&
    !Object.hasOwn(event, 'seq') &&
    !Object.hasOwn(event, 'ts') &&
    !Object.hasOwn(event, 'prev') &&
    !Object.hasOwn(event, '__proto__')
  );
}

function serializeOrdered(record: AuditRecord): string {
  const ordered: Record<string, unknown> = {
    seq: record.seq,
    ts: record.ts,
    prev: record.prev,
    event: record.event,
  };
  for (const name of Object.keys(record)) {
    if (CHAIN_FIELDS.has(name)) continue;
    // Defined, not assigned, so even a field named `__proto__` is kept as data.
    if (name === '__proto__')
      Object.defineProperty(ordered, name, {
        value: record[name],
        enumerable: true,
        writable: true,
        configurable: true,
      });
    else ordered[name] = record[name];
  }
  return escapeSeparators(JSON.stringify(ordered));
}

const SEPARATORS = /[\u2028\u2029]/g;
const HAS_SEPARATOR = /[\u2028\u2029]/;

function escapeSeparators(json: string): string {
  if (!HAS_SEPARATOR.test(json)) return json;
  return json.replace(SEPARATORS, (c) => (c === '\u2028' ? '\\u2028' : '\\u2029'));
}

/** base64url SHA-256 of a line's exact bytes (without its newline): the next record's `prev`. */
export function hashLine(line: string | Buffer): string {
  return oneShot
    ? oneShot('sha256', line, 'base64url')
    : createHash('sha256').update(line).digest('base64url');
}

/** crypto.hash (Node 20.12+) is several times faster than a Hash object per line. */
const oneShot = typeof cryptoHash === 'function' ? cryptoHash : undefined;

const HASH = /^[A-Za-z0-9_-]{43}$/;

/** Why a line is not a record: the parse failed, or the line is not in its one valid form. */
export class RecordSyntaxError extends Error {
  override readonly name = 'RecordSyntaxError';
}

/**
 * Reads one line (without its newline) back into a record, strictly: valid UTF-8, a JSON
 * object with an integer `seq` >= 1, an ISO `ts`, a 43-character base64url `prev`, an `event`
 * name, and byte-for-byte the line serializeRecord would write. Throws RecordSyntaxError.
 */
export function parseRecord(line: Buffer): AuditRecord {
  if (line.length > MAX_RECORD_BYTES)
    throw new RecordSyntaxError(`the line is over ${MAX_RECORD_BYTES} bytes`);
  if (!isUtf8(line)) throw new RecordSyntaxError('the line is not valid UTF-8');
  const text = line.toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new RecordSyntaxError('the line is not JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw new RecordSyntaxError('the line is not a JSON object');
  const record = value as Record<string, unknown>;
  const { seq, ts, prev, event } = record;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1)
    throw new RecordSyntaxError('seq is not a positive integer');
  if (typeof ts !== 'string' || !isIsoTime(ts))
    throw new RecordSyntaxError('ts is not an ISO 8601 UTC time');
  if (typeof prev !== 'string' || !HASH.test(prev))
    throw new RecordSyntaxError('prev is not a base64url SHA-256');
  if (typeof event !== 'string' || event === '')
    throw new RecordSyntaxError('event is not a non-empty string');
  const parsed = record as AuditRecord;
  // JSON.parse keeps the line's field order, so the line is canonical when the chain fields
  // come first and stringifying gives it back (no spaces, escapes or repeated fields).
  const names = Object.keys(parsed);
  if (
    names[0] !== 'seq' ||
    names[1] !== 'ts' ||
    names[2] !== 'prev' ||
    names[3] !== 'event' ||
    escapeSeparators(JSON.stringify(parsed)) !== text
  )
    throw new RecordSyntaxError(
      'the line is not in canonical form (field order, escapes, spacing)',
    );
  return parsed;
}

/** The shape toISOString writes for years 0000 to 9999. */
const ISO_TIME =
  /^\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z$/;

function isIsoTime(ts: string): boolean {
  return ISO_TIME.test(ts) && Number.isFinite(Date.parse(ts));
}
