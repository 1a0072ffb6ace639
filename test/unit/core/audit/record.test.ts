import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  GENESIS_PREV,
  LOG_EVENTS,
  RecordSyntaxError,
  assertAuditEvent,
  hashLine,
  parseRecord,
  serializeChained,
  serializeRecord,
  type AuditEvent,
  type AuditRecord,
} from '../../../../core/audit/record.js';
import { codeOf } from '../../../support/codes.js';

const base = { seq: 7, ts: '2026-11-28T12:00:00.000Z', prev: GENESIS_PREV };

describe('serializeRecord', () => {
  it('puts seq, ts, prev and event first, then the fields in their order', () => {
    const line = serializeRecord({ sub: 'svc', event: 'mint', jti: 'j1', ...base, kid: 'k' });
    expect(line).toBe(
      `{"seq":7,"ts":"2026-11-28T12:00:00.000Z","prev":"${GENESIS_PREV}","event":"mint","sub":"svc","jti":"j1","kid":"k"}`,
    );
  });

  it.each([
    ['a newline', 'a\nb'],
    ['a carriage return', 'a\rb'],
    ['U+2028', 'a\u2028b'],
    ['U+2029', 'a\u2029b'],
    ['a forged record', `x"}\n{"seq":8,"ts":"2026-11-28T12:00:00.000Z","event":"mint`],
    ['a lone surrogate', 'a\ud800b'],
    ['NUL and escapes', 'a\u0000\u001b\\"b'],
  ])('keeps %s inside one line that reads back the same', (_name, sub) => {
    const line = serializeRecord({ ...base, event: 'mint', sub });
    expect(line).not.toMatch(/[\n\r\u2028\u2029\u0085]/);
    expect(Buffer.from(line).includes(0x0a)).toBe(false);
    const record = parseRecord(Buffer.from(line));
    expect(record['sub']).toBe(sub);
    expect(record.seq).toBe(7);
  });

  it('escapes U+2028 and U+2029 as \\u2028 and \\u2029', () => {
    expect(serializeRecord({ ...base, event: 'x', s: '\u2028\u2029' })).toContain(
      '"s":"\\u2028\\u2029"',
    );
  });

  it('keeps a field named __proto__ as data', () => {
    const event = JSON.parse('{"event":"x","__proto__":{"a":1}}') as AuditEvent;
    const line = serializeRecord({ ...event, ...base } as AuditRecord);
    expect(line).toContain('"__proto__":{"a":1}');
    expect(Object.hasOwn(parseRecord(Buffer.from(line)), '__proto__')).toBe(true);
  });
});

describe('serializeChained', () => {
  const field = fc
    .string({ minLength: 1, maxLength: 8 })
    .filter((name) => !/^(?:0|[1-9]\d*)$/.test(name));
  const value = fc.jsonValue({ maxDepth: 2 });

  it('writes exactly the line serializeRecord writes, for events in any field order', () => {
    fc.assert(
      fc.property(
        fc.dictionary(field, value, { maxKeys: 6 }),
        fc.boolean(),
        fc.string({ minLength: 1, maxLength: 12 }),
        fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
        (fields, eventFirst, name, seq) => {
          const rest = Object.fromEntries(
            Object.entries(fields).filter(([key]) => !['event', 'seq', 'ts', 'prev'].includes(key)),
          );
          const event = (
            eventFirst ? { event: name, ...rest } : { ...rest, event: name }
          ) as AuditEvent;
          const line = serializeChained(event, seq, base.ts, base.prev);
          expect(line).toBe(serializeRecord({ ...event, seq, ts: base.ts, prev: base.prev }));
          expect(parseRecord(Buffer.from(line)).seq).toBe(seq);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('orders an event with a toJSON or a class prototype the general way', () => {
    class Odd {
      event = 'x';
      a = 1;
    }
    const line = serializeChained(new Odd() as unknown as AuditEvent, 1, base.ts, base.prev);
    expect(line).toBe(`{"seq":1,"ts":"${base.ts}","prev":"${base.prev}","event":"x","a":1}`);
  });
});

describe('hashLine', () => {
  it('is base64url SHA-256 of the bytes; the genesis is that of "hsmint-audit-genesis"', () => {
    expect(hashLine('abc')).toBe('ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0');
    expect(GENESIS_PREV).toBe(hashLine('hsmint-audit-genesis'));
    expect(GENESIS_PREV).toMatch(/^[A-Za-z0-9_-]{43}$/);
  });
});

describe('parseRecord', () => {
  const good = serializeRecord({ ...base, event: 'mint', n: 1 });

  it('reads back what serializeRecord wrote', () => {
    expect(parseRecord(Buffer.from(good))).toEqual({ ...base, event: 'mint', n: 1 });
  });

  it.each([
    ['spaces', good.replace(',"n"', ', "n"')],
    ['another field order', good.replace(/^\{"seq":7,"ts":("[^"]+")/, '{"ts":$1,"seq":7')],
    ['an escaped letter', good.replace('"mint"', '"\\u006dint"')],
    ['a number spelled otherwise', good.replace('"n":1', '"n":1.0')],
    ['a repeated field', good.replace('"n":1', '"n":2,"n":1')],
    ['a bad seq', good.replace('"seq":7', '"seq":0')],
    ['a fractional seq', good.replace('"seq":7', '"seq":7.5')],
    ['a bad ts', good.replace('.000Z', 'Z')],
    ['a short prev', good.replace(GENESIS_PREV, GENESIS_PREV.slice(1))],
    ['no event', good.replace('"event":"mint"', '"event":""')],
    ['an array', '[1]'],
    ['not JSON', good.slice(0, -1)],
  ])('refuses %s', (_name, line) => {
    expect(() => parseRecord(Buffer.from(line))).toThrow(RecordSyntaxError);
  });

  it('refuses invalid UTF-8', () => {
    const bytes = Buffer.from(serializeRecord({ ...base, event: 'mint', s: 'é' }));
    bytes[bytes.indexOf(0xc3)] = 0xff;
    expect(() => parseRecord(bytes)).toThrow(RecordSyntaxError);
  });
});

describe('assertAuditEvent', () => {
  it('takes an ordinary event', () => {
    expect(() =>
      assertAuditEvent({
        event: 'mint',
        caller: { uid: 1000, gid: 1000, pid: 42, unit: 'app.service', exe: '/usr/bin/app' },
        jti: 'j',
        kid: 'k',
        sub: 's',
        aud: ['a'],
        scope: ['read'],
        exp: 1,
        rule: 'apps',
        token_count: 3,
        pin_source: 'file',
      }),
    ).not.toThrow();
  });

  it.each([
    ['token', { event: 'mint', token: 'eyJ...' }],
    ['pin', { event: 'start', pin: '1234' }],
    ['signature', { event: 'mint', signature: 'abc' }],
    ['PIN in capitals', { event: 'start', PIN: '1234' }],
    ['access_token', { event: 'mint', access_token: 'x' }],
    ['idToken', { event: 'mint', idToken: 'x' }],
    ['a nested token', { event: 'verify.failure', request: { token: 'x' } }],
    ['a token in a list', { event: 'verify.failure', items: [{ jwt: 'x' }] }],
    ['user-pin', { event: 'start', 'user-pin': '1' }],
  ])('refuses a field named %s', (_name, event) => {
    expect(codeOf(() => assertAuditEvent(event as AuditEvent))).toBe('ERR_INTERNAL');
  });

  it.each(['seq', 'ts', 'prev'])('refuses %s, which the log sets', (field) => {
    expect(codeOf(() => assertAuditEvent({ event: 'mint', [field]: 1 }))).toBe('ERR_INTERNAL');
  });

  it.each(['0', '7', '4294967294'])(
    'refuses the integer-like field %j, which breaks the order',
    (field) => {
      expect(codeOf(() => assertAuditEvent({ event: 'mint', [field]: 1 }))).toBe('ERR_INTERNAL');
    },
  );

  it('judges a name the same the second time (the verdicts are cached)', () => {
    for (let i = 0; i < 2; i++) {
      expect(codeOf(() => assertAuditEvent({ event: 'mint', refresh_token: 'x' }))).toBe(
        'ERR_INTERNAL',
      );
      expect(() => assertAuditEvent({ event: 'mint', tokens_issued: 1 })).not.toThrow();
    }
  });

  it.each([...LOG_EVENTS])('refuses %s, which only the log records', (event) => {
    expect(codeOf(() => assertAuditEvent({ event }))).toBe('ERR_INTERNAL');
  });

  it.each(['', 'with space', 'a\nb', 'x'.repeat(65)])('refuses the event name %j', (event) => {
    expect(codeOf(() => assertAuditEvent({ event }))).toBe('ERR_INTERNAL');
  });
});
