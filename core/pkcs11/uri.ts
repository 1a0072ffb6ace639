import { HsmintError } from '../errors.js';

/** What selects a token: every attribute given must match; the slot number never does. */
export interface TokenSelector {
  token?: string;
  manufacturer?: string;
  serial?: string;
  model?: string;
}

export interface Pkcs11Uri extends TokenSelector {
  object?: string;
  id?: Buffer;
  type?: 'private' | 'public' | 'cert' | 'secret-key' | 'data';
  /** Where the PIN is read from: a file path. `pin-value` is refused. */
  pinSource?: string;
  modulePath?: string;
}

const PATH_ATTRIBUTES = new Set([
  'token',
  'manufacturer',
  'serial',
  'model',
  'object',
  'id',
  'type',
]);
const QUERY_ATTRIBUTES = new Set(['pin-source', 'module-path']);
/** Slot attributes name hardware positions that change when a reader is replugged. */
const REFUSED = new Map([
  ['pin-value', 'a PIN in a URI ends up in shell history and process lists; use pin-source'],
  ['slot-id', 'tokens are chosen by label or serial, never by slot number'],
  ['slot-description', 'tokens are chosen by label or serial, never by slot'],
  ['slot-manufacturer', 'tokens are chosen by label or serial, never by slot'],
  ['module-name', 'set hsm.module or hsm.profile instead'],
  ['library-description', 'not supported'],
  ['library-manufacturer', 'not supported'],
  ['library-version', 'not supported'],
]);
const TYPES = new Set(['private', 'public', 'cert', 'secret-key', 'data']);

function invalid(uri: string, why: string): HsmintError {
  return new HsmintError(
    'ERR_PKCS11_URI_INVALID',
    `${why} in PKCS#11 URI ${JSON.stringify(uri.slice(0, 200))}`,
  );
}

/** ignoreBOM keeps a leading U+FEFF: stripping it would read `%EF%BB%BFx` as the label `x`. */
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** RFC 7512 values are percent-encoded bytes; a bare "%" or a bad escape is an error, not literal. */
function decodeBytes(uri: string, value: string): Buffer {
  // Buffer.from would write a lone surrogate as U+FFFD: a silent change, not a decoding.
  if (!value.isWellFormed()) throw invalid(uri, 'a value is not UTF-8');
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    if (value[i] !== '%') {
      // A whole code point: the halves of a surrogate pair apart would each become U+FFFD.
      const char = String.fromCodePoint(value.codePointAt(i)!);
      bytes.push(...Buffer.from(char, 'utf8'));
      i += char.length - 1;
      continue;
    }
    const hex = value.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) throw invalid(uri, 'bad percent-encoding');
    bytes.push(parseInt(hex, 16));
    i += 2;
  }
  return Buffer.from(bytes);
}

function decodeText(uri: string, value: string): string {
  try {
    return strictUtf8.decode(decodeBytes(uri, value));
  } catch (error) {
    if (error instanceof HsmintError) throw error;
    throw invalid(uri, 'a value is not UTF-8');
  }
}

/** Token-info fields are 32 bytes (label, manufacturer, model) or 16 (serial) of UTF-8. */
const FIELD_BYTES: Record<string, number> = { token: 32, manufacturer: 32, model: 16, serial: 16 };

/** Parses an RFC 7512 PKCS#11 URI, refusing what hsmint must never accept. */
export function parsePkcs11Uri(uri: string): Pkcs11Uri {
  // Not String(uri) in the message: an object without a usable toString would throw a TypeError.
  if (typeof uri !== 'string')
    throw new HsmintError(
      'ERR_PKCS11_URI_INVALID',
      `a PKCS#11 URI is a string, got a value of type ${typeof uri}`,
    );
  if (!uri.startsWith('pkcs11:')) throw invalid(uri, 'missing "pkcs11:" scheme');
  if (uri.length > 2048) throw invalid(uri, 'too long');
  const body = uri.slice('pkcs11:'.length);
  const queryAt = body.indexOf('?');
  const pathPart = queryAt === -1 ? body : body.slice(0, queryAt);
  const queryPart = queryAt === -1 ? '' : body.slice(queryAt + 1);
  const result: Pkcs11Uri = {};
  const seen = new Set<string>();

  const take = (pair: string, allowed: Set<string>) => {
    if (pair === '') return;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw invalid(uri, `attribute ${JSON.stringify(pair)} has no value`);
    const name = pair.slice(0, eq).toLowerCase();
    const raw = pair.slice(eq + 1);
    const refusal = REFUSED.get(name);
    if (refusal) throw invalid(uri, `"${name}" is refused (${refusal})`);
    if (!allowed.has(name)) throw invalid(uri, `unknown attribute "${name}"`);
    if (seen.has(name)) throw invalid(uri, `attribute "${name}" repeated`);
    seen.add(name);
    if (name === 'id') {
      result.id = decodeBytes(uri, raw);
      return;
    }
    const value = decodeText(uri, raw);
    const limit = FIELD_BYTES[name];
    if (limit !== undefined && Buffer.byteLength(value) > limit) {
      throw invalid(uri, `"${name}" is longer than the ${limit} bytes a token holds`);
    }
    switch (name) {
      case 'token':
        result.token = value;
        break;
      case 'manufacturer':
        result.manufacturer = value;
        break;
      case 'serial':
        result.serial = value;
        break;
      case 'model':
        result.model = value;
        break;
      case 'object':
        result.object = value;
        break;
      case 'type':
        if (!TYPES.has(value)) throw invalid(uri, `unknown type "${value}"`);
        result.type = value as NonNullable<Pkcs11Uri['type']>;
        break;
      case 'pin-source': {
        // RFC 7512 lets pin-source be any URI; hsmint reads a file and nothing else (a
        // "|command" or another scheme would run or fetch something to get a secret).
        const path = value.startsWith('file:') ? value.slice('file:'.length) : value;
        if (path === '' || path.startsWith('|') || /^[A-Za-z][A-Za-z0-9+.-]*:/.test(path))
          throw invalid(uri, '"pin-source" must be a file path or a file: URI');
        result.pinSource = path;
        break;
      }
      case 'module-path':
        result.modulePath = value;
        break;
    }
  };
  for (const pair of pathPart.split(';')) take(pair, PATH_ATTRIBUTES);
  for (const pair of queryPart.split('&')) take(pair, QUERY_ATTRIBUTES);
  return result;
}

/** A config may name a token by plain label or by URI. */
export function parseTokenReference(reference: string): Pkcs11Uri {
  if (reference.startsWith('pkcs11:')) {
    const uri = parsePkcs11Uri(reference);
    if (!uri.token && !uri.serial) {
      throw invalid(reference, 'a token URI needs "token" (the label) or "serial"');
    }
    // Ignoring them would let a config look as if it pinned a key that hsmint never uses.
    const objectAttributes = (['object', 'id', 'type'] as const).filter(
      (name) => uri[name] !== undefined,
    );
    if (objectAttributes.length > 0) {
      throw invalid(
        reference,
        `"${objectAttributes.join('", "')}" names a key, but this URI names the token (hsmint finds its own keys by their hsmint-... labels)`,
      );
    }
    return uri;
  }
  if (reference === '' || Buffer.byteLength(reference) > 32) {
    throw new HsmintError('ERR_PKCS11_URI_INVALID', 'a token label is 1 to 32 bytes');
  }
  return { token: reference };
}

/** Token-info strings are fixed-width, padded with spaces (and NULs by some modules). */
export function trimPadded(value: string): string {
  return value.replace(/[\s\0]+$/u, '');
}

export function matchesToken(
  selector: TokenSelector,
  info: { label: string; manufacturerID: string; serialNumber: string; model: string },
): boolean {
  return (
    (selector.token === undefined || trimPadded(info.label) === selector.token) &&
    (selector.manufacturer === undefined ||
      trimPadded(info.manufacturerID) === selector.manufacturer) &&
    (selector.serial === undefined || trimPadded(info.serialNumber) === selector.serial) &&
    (selector.model === undefined || trimPadded(info.model) === selector.model)
  );
}
