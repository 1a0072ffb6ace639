/**
 * Properties of the RFC 7512 PKCS#11 URI parser, on URIs spelled from generated attribute sets
 * and on hostile strings. Each property states its run count in RUNS.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HsmintError } from '../../../../core/errors.js';
import {
  parsePkcs11Uri,
  parseTokenReference,
  type Pkcs11Uri,
} from '../../../../core/pkcs11/uri.js';

const RUNS = {
  roundTrip: 6_000,
  fieldLimits: 3_000,
  refusedAttributes: 3_000,
  repeatedAttributes: 2_000,
  loneSurrogates: 2_000,
  pinSourceNotAFile: 2_000,
  anyString: 8_000,
  notAString: 500,
  tokenReference: 3_000,
} as const;

const TYPES = ['private', 'public', 'cert', 'secret-key', 'data'] as const;
const REFUSED = [
  'pin-value',
  'slot-id',
  'slot-description',
  'slot-manufacturer',
  'module-name',
  'library-description',
  'library-manufacturer',
  'library-version',
];
/** Each attribute, the part of the URI it belongs in, and the field it fills. */
const ATTRIBUTES = [
  ['token', 'path', 'token'],
  ['manufacturer', 'path', 'manufacturer'],
  ['serial', 'path', 'serial'],
  ['model', 'path', 'model'],
  ['object', 'path', 'object'],
  ['id', 'path', 'id'],
  ['type', 'path', 'type'],
  ['pin-source', 'query', 'pinSource'],
  ['module-path', 'query', 'modulePath'],
] as const;
type Part = 'path' | 'query';
/** The bytes of token-info fields (CK_TOKEN_INFO). */
const FIELD_BYTES = { token: 32, manufacturer: 32, serial: 16, model: 16 } as const;
const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:/;

/** Code points of every kind a value may hold: ASCII, the URI's delimiters, multi-byte, astral. */
const codePointArb = fc.oneof(
  { arbitrary: fc.integer({ min: 0x20, max: 0x7e }), weight: 6 },
  // The delimiters, `/`, `:` and `|` of paths and commands, and the byte-order mark.
  {
    arbitrary: fc.constantFrom(0x25, 0x3b, 0x3f, 0x26, 0x3d, 0x2f, 0x3a, 0x7c, 0xfeff),
    weight: 2,
  },
  { arbitrary: fc.integer({ min: 0, max: 0x1f }), weight: 1 },
  { arbitrary: fc.integer({ min: 0x80, max: 0xd7ff }), weight: 2 },
  { arbitrary: fc.integer({ min: 0xe000, max: 0xffff }), weight: 1 },
  { arbitrary: fc.integer({ min: 0x10000, max: 0x10ffff }), weight: 2 },
);
const textUnit = codePointArb.map((code) => String.fromCodePoint(code));
const textArb = (maxLength: number) => fc.string({ unit: textUnit, maxLength });
const withinBytes = (limit: number) =>
  textArb(limit).filter((value) => Buffer.byteLength(value) <= limit);

const uriArb: fc.Arbitrary<Pkcs11Uri> = fc.record(
  {
    token: withinBytes(FIELD_BYTES.token),
    manufacturer: withinBytes(FIELD_BYTES.manufacturer),
    serial: withinBytes(FIELD_BYTES.serial),
    model: withinBytes(FIELD_BYTES.model),
    object: textArb(40),
    id: fc.uint8Array({ maxLength: 20 }).map((bytes) => Buffer.from(bytes)),
    type: fc.constantFrom(...TYPES),
    pinSource: textArb(30).map((path) => `/${path}`),
    modulePath: textArb(30),
  },
  { requiredKeys: [], noNullPrototype: true },
);

/** How a URI is spelled: which characters are escaped, the case of names and hex, the order. */
interface Spelling {
  escapes: boolean[];
  lowerHex: boolean;
  upperNames: boolean[];
  order: number[];
  emptySegments: boolean[];
  filePrefix: boolean;
}
const spellingArb: fc.Arbitrary<Spelling> = fc.record({
  escapes: fc.array(fc.boolean(), { minLength: 1, maxLength: 7 }),
  lowerHex: fc.boolean(),
  upperNames: fc.array(fc.boolean(), { minLength: 1, maxLength: 5 }),
  order: fc.array(fc.nat({ max: 100 }), {
    minLength: ATTRIBUTES.length,
    maxLength: ATTRIBUTES.length,
  }),
  emptySegments: fc.array(fc.boolean(), { minLength: 1, maxLength: 5 }),
  filePrefix: fc.boolean(),
});

function escapeBytes(bytes: Uint8Array, lowerHex: boolean): string {
  return [...bytes]
    .map((byte) => {
      const hex = byte.toString(16).padStart(2, '0');
      return `%${lowerHex ? hex : hex.toUpperCase()}`;
    })
    .join('');
}

/** The characters each part gives a meaning to, which a value must always escape. */
const DELIMITERS: Record<Part, string> = { path: '%;?', query: '%&' };

function encodeText(value: string, part: Part, spelling: Spelling): string {
  let out = '';
  let i = 0;
  for (const char of value) {
    const escape =
      DELIMITERS[part].includes(char) || spelling.escapes[i++ % spelling.escapes.length];
    out += escape ? escapeBytes(Buffer.from(char, 'utf8'), spelling.lowerHex) : char;
  }
  return out;
}

function encodeId(bytes: Buffer, spelling: Spelling): string {
  return [...bytes]
    .map((byte, i) => {
      const char = String.fromCharCode(byte);
      const raw = /^[A-Za-z0-9._~-]$/.test(char) && !spelling.escapes[i % spelling.escapes.length];
      return raw ? char : escapeBytes(Uint8Array.of(byte), spelling.lowerHex);
    })
    .join('');
}

function spellName(name: string, spelling: Spelling): string {
  return [...name]
    .map((char, i) =>
      spelling.upperNames[i % spelling.upperNames.length] ? char.toUpperCase() : char,
    )
    .join('');
}

interface Pair {
  name: string;
  value: string;
  part: Part;
}

/** The attribute pairs that spell `uri`, in the spelling's order. */
function pairsOf(uri: Pkcs11Uri, spelling: Spelling): Pair[] {
  return ATTRIBUTES.map(([name, part, field], index) => ({ name, part, field, index }))
    .filter(({ field }) => uri[field] !== undefined)
    .sort((a, b) => spelling.order[a.index]! - spelling.order[b.index]! || a.index - b.index)
    .map(({ name, part, field }) => {
      const value = uri[field]!;
      let encoded: string;
      if (Buffer.isBuffer(value)) encoded = encodeId(value, spelling);
      else if (field === 'pinSource')
        encoded = (spelling.filePrefix ? 'file:' : '') + encodeText(value, part, spelling);
      else encoded = encodeText(value, part, spelling);
      return { name: spellName(name, spelling), value: encoded, part };
    });
}

/** Joins pairs into a URI, with empty segments (which the parser skips) where asked. */
function join(pairs: Pair[], spelling: Spelling): string {
  const segments = (part: Part) => {
    const out: string[] = [];
    pairs
      .filter((pair) => pair.part === part)
      .forEach((pair, i) => {
        if (spelling.emptySegments[i % spelling.emptySegments.length]) out.push('');
        out.push(`${pair.name}=${pair.value}`);
      });
    return out;
  };
  const path = segments('path').join(';');
  const query = segments('query').join('&');
  return `pkcs11:${path}${query === '' ? '' : `?${query}`}`;
}

/** The URI parsePkcs11Uri reads, or the code it refuses it with (anything else fails the test). */
function outcome(input: unknown): Pkcs11Uri | string {
  try {
    return parsePkcs11Uri(input as string);
  } catch (error) {
    expect(error).toBeInstanceOf(HsmintError);
    return (error as HsmintError).code;
  }
}

const generatedArb = fc.tuple(uriArb, spellingArb);

describe('parsePkcs11Uri (property)', () => {
  it('reads back every generated attribute set, however it is escaped, cased and ordered', () => {
    fc.assert(
      fc.property(generatedArb, ([uri, spelling]) => {
        const text = join(pairsOf(uri, spelling), spelling);
        expect(outcome(text)).toEqual(uri);
      }),
      { numRuns: RUNS.roundTrip },
    );
  });

  it('takes token-info fields up to the bytes a token holds, and refuses longer ones', () => {
    let refused = 0;
    fc.assert(
      fc.property(
        fc.constantFrom(...(Object.keys(FIELD_BYTES) as Array<keyof typeof FIELD_BYTES>)),
        fc.string({ unit: textUnit, minLength: 8, maxLength: 40 }),
        spellingArb,
        (field, value, spelling) => {
          const text = `pkcs11:${field}=${encodeText(value, 'path', spelling)}`;
          if (Buffer.byteLength(value) <= FIELD_BYTES[field]) {
            expect(outcome(text)).toEqual({ [field]: value });
          } else {
            refused++;
            expect(outcome(text)).toBe('ERR_PKCS11_URI_INVALID');
          }
        },
      ),
      { numRuns: RUNS.fieldLimits },
    );
    expect(refused).toBeGreaterThan(RUNS.fieldLimits / 10);
  });

  it('refuses pin-value, slot and library attributes anywhere, in any case', () => {
    fc.assert(
      fc.property(
        generatedArb,
        fc.constantFrom(...REFUSED),
        textArb(12),
        fc.constantFrom<Part>('path', 'query'),
        fc.nat(),
        ([uri, spelling], name, value, part, at) => {
          const pairs = pairsOf(uri, spelling);
          expect(outcome(join(pairs, spelling))).toEqual(uri);
          const refused = {
            name: spellName(name, spelling),
            value: encodeText(value, part, spelling),
            part,
          };
          pairs.splice(at % (pairs.length + 1), 0, refused);
          expect(outcome(join(pairs, spelling))).toBe('ERR_PKCS11_URI_INVALID');
        },
      ),
      { numRuns: RUNS.refusedAttributes },
    );
  });

  it('refuses an attribute given twice, whatever the case of the second', () => {
    fc.assert(
      fc.property(
        generatedArb.filter(([uri]) => Object.keys(uri).length > 0),
        spellingArb,
        fc.nat(),
        fc.nat(),
        ([uri, spelling], otherSpelling, pick, at) => {
          const pairs = pairsOf(uri, spelling);
          const again = pairsOf(uri, otherSpelling)[pick % pairs.length]!;
          pairs.splice(at % (pairs.length + 1), 0, again);
          expect(outcome(join(pairs, spelling))).toBe('ERR_PKCS11_URI_INVALID');
        },
      ),
      { numRuns: RUNS.repeatedAttributes },
    );
  });

  it('refuses a URI with a lone surrogate anywhere: it has no UTF-8 form', () => {
    fc.assert(
      fc.property(
        generatedArb,
        fc.constantFrom('\ud800', '\udbff', '\udc00', '\udfff'),
        fc.nat(),
        ([uri, spelling], surrogate, at) => {
          const text = join(pairsOf(uri, spelling), spelling);
          const i = 'pkcs11:'.length + (at % (text.length - 'pkcs11:'.length + 1));
          expect(outcome(text.slice(0, i) + surrogate + text.slice(i))).toBe(
            'ERR_PKCS11_URI_INVALID',
          );
        },
      ),
      { numRuns: RUNS.loneSurrogates },
    );
  });

  it('refuses a pin-source that is a command or another scheme, escaped or not', () => {
    const schemeArb = fc.stringMatching(/^[A-Za-z][A-Za-z0-9+.-]{0,8}$/);
    const notAFileArb = fc.oneof(
      textArb(12).map((command) => `|${command}`),
      fc.tuple(schemeArb, textArb(12)).map(([scheme, rest]) => `${scheme}:${rest}`),
      fc.constant(''),
    );
    fc.assert(
      fc.property(
        notAFileArb,
        fc.boolean(),
        spellingArb,
        fc.constantFrom('', 'token=t', 'serial=1;token=t'),
        (pinSource, filePrefix, spelling, path) => {
          const value = encodeText((filePrefix ? 'file:' : '') + pinSource, 'query', spelling);
          const text = `pkcs11:${path}?${spellName('pin-source', spelling)}=${value}`;
          expect(outcome(text)).toBe('ERR_PKCS11_URI_INVALID');
        },
      ),
      { numRuns: RUNS.pinSourceNotAFile },
    );
  });

  // Pieces of the grammar and of broken escapes, glued in any order, and strings of any kind.
  const pieceArb = fc.oneof(
    fc.constantFrom(';', '?', '&', '=', '%', '%2', '%zz', '%41', '%C3', '%A9', '%ff', '%00'),
    fc.constantFrom(...ATTRIBUTES.map(([name]) => name), ...REFUSED, 'TOKEN', 'Pin-Value', 'x'),
    fc.constantFrom('|', 'file:', 'http:', '/', 'private', 'cert', 'key', '\ud800', '\udc00'),
    textArb(4),
  );
  const stringArb = fc.oneof(
    {
      arbitrary: fc.array(pieceArb, { maxLength: 16 }).map((pieces) => `pkcs11:${pieces.join('')}`),
      weight: 6,
    },
    { arbitrary: fc.string({ unit: 'binary', maxLength: 40 }), weight: 1 },
    {
      arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }).map((rest) => `pkcs11:${rest}`),
      weight: 1,
    },
    // Around the 2048-character cap.
    {
      arbitrary: fc
        .integer({ min: 2_020, max: 2_060 })
        .map((length) => `pkcs11:token=t;object=`.padEnd(length, 'o')),
      weight: 1,
    },
  );

  /** Splits a URI the way RFC 7512 does: path segments by `;`, query ones by `&`. */
  function segmentNames(text: string): Array<[string, Part]> {
    const body = text.slice('pkcs11:'.length);
    const queryAt = body.indexOf('?');
    const path = queryAt === -1 ? body : body.slice(0, queryAt);
    const query = queryAt === -1 ? '' : body.slice(queryAt + 1);
    const names = (segments: string[], part: Part) =>
      segments
        .filter((segment) => segment !== '')
        .map((segment): [string, Part] => [segment.split('=')[0]!.toLowerCase(), part]);
    return [...names(path.split(';'), 'path'), ...names(query.split('&'), 'query')];
  }

  it('reads any string within the rules, or refuses it with ERR_PKCS11_URI_INVALID', () => {
    let parsed = 0;
    fc.assert(
      fc.property(stringArb, (text) => {
        const result = outcome(text);
        if (typeof result === 'string') {
          expect(result).toBe('ERR_PKCS11_URI_INVALID');
          return;
        }
        parsed++;
        expect(text.startsWith('pkcs11:')).toBe(true);
        expect(text.length).toBeLessThanOrEqual(2048);
        // Each attribute is one the parser knows, in its own part, given once.
        const names = segmentNames(text);
        const allowed = new Map<string, Part>(ATTRIBUTES.map(([name, part]) => [name, part]));
        for (const [name, part] of names) expect(allowed.get(name)).toBe(part);
        expect(new Set(names.map(([name]) => name)).size).toBe(names.length);
        expect(Object.keys(result).length).toBe(names.length);
        for (const [field, limit] of Object.entries(FIELD_BYTES)) {
          const value = result[field as keyof typeof FIELD_BYTES];
          if (value !== undefined) expect(Buffer.byteLength(value)).toBeLessThanOrEqual(limit);
        }
        for (const value of Object.values(result))
          if (typeof value === 'string') expect(value.isWellFormed()).toBe(true);
        if (result.type !== undefined) expect(TYPES).toContain(result.type);
        if (result.id !== undefined) expect(Buffer.isBuffer(result.id)).toBe(true);
        if (result.pinSource !== undefined) {
          expect(result.pinSource).not.toBe('');
          expect(result.pinSource.startsWith('|')).toBe(false);
          expect(result.pinSource).not.toMatch(SCHEME);
        }
      }),
      { numRuns: RUNS.anyString },
    );
    expect(parsed).toBeGreaterThan(RUNS.anyString / 100);
  });

  it('refuses any value that is not a string with ERR_PKCS11_URI_INVALID', () => {
    const valueArb = fc
      .anything({ withNullPrototype: true, withBoxedValues: true, withBigInt: true })
      .filter((value) => typeof value !== 'string');
    fc.assert(
      fc.property(valueArb, (value) => {
        expect(outcome(value)).toBe('ERR_PKCS11_URI_INVALID');
      }),
      { numRuns: RUNS.notAString },
    );
  });
});

describe('parseTokenReference (property)', () => {
  // Multi-byte labels too, where a count of characters and of bytes part ways.
  const labelArb = fc
    .oneof(
      textArb(40),
      fc.string({ unit: fc.constantFrom('a', 'é', '中', '😀'), minLength: 8, maxLength: 32 }),
    )
    .filter((label) => !label.startsWith('pkcs11:'));
  /** Mostly URIs that name no key, so that many are accepted. */
  const referenceUriArb = fc.oneof(
    {
      arbitrary: generatedArb.map(([uri, spelling]): [Pkcs11Uri, Spelling] => {
        const tokenOnly = { ...uri };
        delete tokenOnly.object;
        delete tokenOnly.id;
        delete tokenOnly.type;
        return [tokenOnly, spelling];
      }),
      weight: 3,
    },
    { arbitrary: generatedArb, weight: 1 },
  );

  it('reads a label of 1 to 32 bytes, or a URI naming the token and no key', () => {
    const seen = { label: 0, uri: 0, refused: 0 };
    fc.assert(
      fc.property(fc.oneof(labelArb, referenceUriArb), (reference) => {
        let text: string;
        let expected: Pkcs11Uri | undefined;
        if (typeof reference === 'string') {
          text = reference;
          const bytes = Buffer.byteLength(reference);
          expected = bytes >= 1 && bytes <= 32 ? { token: reference } : undefined;
        } else {
          const [uri, spelling] = reference;
          text = join(pairsOf(uri, spelling), spelling);
          const namesToken = (uri.token ?? '') !== '' || (uri.serial ?? '') !== '';
          const namesKey =
            uri.object !== undefined || uri.id !== undefined || uri.type !== undefined;
          expected = namesToken && !namesKey ? uri : undefined;
        }
        let result: Pkcs11Uri | undefined;
        try {
          result = parseTokenReference(text);
        } catch (error) {
          expect(error).toBeInstanceOf(HsmintError);
          expect((error as HsmintError).code).toBe('ERR_PKCS11_URI_INVALID');
        }
        expect(result).toEqual(expected);
        if (result === undefined) seen.refused++;
        else if (typeof reference === 'string') seen.label++;
        else seen.uri++;
      }),
      { numRuns: RUNS.tokenReference },
    );
    for (const count of Object.values(seen))
      expect(count).toBeGreaterThan(RUNS.tokenReference / 100);
  });
});
