import { describe, expect, it } from 'vitest';
import {
  matchesToken,
  parsePkcs11Uri,
  parseTokenReference,
  trimPadded,
} from '../../../../core/pkcs11/uri.js';
import { codeOf } from '../../../support/codes.js';

describe('parsePkcs11Uri', () => {
  it('reads every token and object attribute', () => {
    const uri = parsePkcs11Uri(
      'pkcs11:token=hsmint;manufacturer=SoftHSM%20project;serial=abc123;model=SoftHSM%20v2;object=sig-2026-11;id=%01%02%03;type=private',
    );
    expect(uri).toEqual({
      token: 'hsmint',
      manufacturer: 'SoftHSM project',
      serial: 'abc123',
      model: 'SoftHSM v2',
      object: 'sig-2026-11',
      id: Buffer.from([1, 2, 3]),
      type: 'private',
    });
  });

  it('reads an empty path as no selector at all', () => {
    expect(parsePkcs11Uri('pkcs11:')).toEqual({});
  });

  it('percent-decodes values', () => {
    expect(parsePkcs11Uri('pkcs11:token=my%20token%3B%3F%25').token).toBe('my token;?%');
    expect(parsePkcs11Uri('pkcs11:token=caf%C3%A9').token).toBe('café');
  });

  it.each(['private', 'public', 'cert', 'secret-key', 'data'] as const)(
    'accepts type=%s',
    (type) => {
      expect(parsePkcs11Uri(`pkcs11:token=t;type=${type}`).type).toBe(type);
    },
  );

  it('reads pin-source and strips its file: prefix', () => {
    expect(
      parsePkcs11Uri('pkcs11:token=t?pin-source=file:/run/credentials/hsmintd.service/pin')
        .pinSource,
    ).toBe('/run/credentials/hsmintd.service/pin');
    expect(parsePkcs11Uri('pkcs11:token=t?pin-source=/etc/hsmint/pin').pinSource).toBe(
      '/etc/hsmint/pin',
    );
    expect(parsePkcs11Uri('pkcs11:token=t?pin-source=%2Fetc%2Fhsmint%2Fpin').pinSource).toBe(
      '/etc/hsmint/pin',
    );
  });

  it('reads module-path', () => {
    expect(
      parsePkcs11Uri('pkcs11:token=t?module-path=/usr/lib/softhsm/libsofthsm2.so').modulePath,
    ).toBe('/usr/lib/softhsm/libsofthsm2.so');
  });

  it('reads several query attributes joined by &', () => {
    expect(parsePkcs11Uri('pkcs11:token=t?pin-source=/p&module-path=/m.so')).toEqual({
      token: 't',
      pinSource: '/p',
      modulePath: '/m.so',
    });
  });

  it.each([
    ['pin-value in the query', 'pkcs11:token=t?pin-value=1234'],
    ['pin-value in the path', 'pkcs11:token=t;pin-value=1234'],
    ['PIN-VALUE in upper case', 'pkcs11:token=t?PIN-VALUE=1234'],
    ['slot-id', 'pkcs11:slot-id=0'],
    ['slot-description', 'pkcs11:slot-description=reader'],
    ['slot-manufacturer', 'pkcs11:slot-manufacturer=acme'],
    ['module-name', 'pkcs11:token=t?module-name=softhsm2'],
    ['library-version', 'pkcs11:library-version=1'],
    ['an unknown path attribute', 'pkcs11:token=t;colour=blue'],
    ['an unknown query attribute', 'pkcs11:token=t?colour=blue'],
    ['a query attribute in the path', 'pkcs11:token=t;pin-source=/p'],
    ['a path attribute in the query', 'pkcs11:serial=1?token=t'],
    ['a repeated attribute', 'pkcs11:token=a;token=b'],
    ['a repeated query attribute', 'pkcs11:token=t?pin-source=/a&pin-source=/b'],
    ['an attribute with no value', 'pkcs11:token'],
    ['an attribute with no name', 'pkcs11:=t'],
    ['a bad percent escape', 'pkcs11:token=a%zz'],
    ['a truncated percent escape', 'pkcs11:token=a%2'],
    ['a bare percent sign', 'pkcs11:token=100%'],
    ['an unknown type', 'pkcs11:token=t;type=key'],
    ['a missing scheme', 'token=hsmint'],
    ['another scheme', 'pkcs12:token=hsmint'],
    ['the scheme in upper case', 'PKCS11:token=hsmint'],
    ['an empty string', ''],
    ['more than 2048 characters', `pkcs11:token=${'a'.repeat(2048)}`],
  ])('refuses %s', (_name, uri) => {
    expect(codeOf(() => parsePkcs11Uri(uri))).toBe('ERR_PKCS11_URI_INVALID');
  });

  it('refuses a value that is not a string', () => {
    expect(codeOf(() => parsePkcs11Uri(42 as unknown as string))).toBe('ERR_PKCS11_URI_INVALID');
  });
});

describe('percent-decoding', () => {
  it('decodes id to raw bytes', () => {
    expect(parsePkcs11Uri('pkcs11:token=a;id=%c3%a9%ff%00').id).toEqual(
      Buffer.from([0xc3, 0xa9, 0xff, 0x00]),
    );
  });

  it('decodes text attributes as UTF-8', () => {
    expect(parsePkcs11Uri('pkcs11:token=caf%C3%A9').token).toBe('café');
  });

  it.each(['pkcs11:token=%C3', 'pkcs11:token=%ff', 'pkcs11:serial=%80abc'])(
    'refuses %s, which is not UTF-8',
    (uri) => {
      expect(() => parsePkcs11Uri(uri)).toThrow(
        expect.objectContaining({ code: 'ERR_PKCS11_URI_INVALID' }),
      );
    },
  );

  it('refuses a label longer than the 32 bytes a token holds', () => {
    expect(() => parsePkcs11Uri(`pkcs11:token=${'%C3%A9'.repeat(17)}`)).toThrow(
      expect.objectContaining({ code: 'ERR_PKCS11_URI_INVALID' }),
    );
    expect(() => parseTokenReference('é'.repeat(17))).toThrow(
      expect.objectContaining({ code: 'ERR_PKCS11_URI_INVALID' }),
    );
    expect(parseTokenReference('é'.repeat(16)).token).toBe('é'.repeat(16));
  });
});

describe('parseTokenReference', () => {
  it('reads a plain label', () => {
    expect(parseTokenReference('hsmint')).toEqual({ token: 'hsmint' });
  });

  it('reads a label of exactly 32 characters', () => {
    const label = 'x'.repeat(32);
    expect(parseTokenReference(label)).toEqual({ token: label });
  });

  it('refuses a label over 32 characters', () => {
    expect(codeOf(() => parseTokenReference('x'.repeat(33)))).toBe('ERR_PKCS11_URI_INVALID');
  });

  it('refuses an empty label', () => {
    expect(codeOf(() => parseTokenReference(''))).toBe('ERR_PKCS11_URI_INVALID');
  });

  it('reads a URI naming the token by label or by serial', () => {
    expect(parseTokenReference('pkcs11:token=hsmint')).toEqual({ token: 'hsmint' });
    expect(parseTokenReference('pkcs11:serial=0a1b2c')).toEqual({ serial: '0a1b2c' });
  });

  it('refuses a URI with neither token nor serial', () => {
    expect(codeOf(() => parseTokenReference('pkcs11:model=SoftHSM%20v2'))).toBe(
      'ERR_PKCS11_URI_INVALID',
    );
    expect(codeOf(() => parseTokenReference('pkcs11:'))).toBe('ERR_PKCS11_URI_INVALID');
  });

  it('refuses a URI holding a PIN', () => {
    expect(codeOf(() => parseTokenReference('pkcs11:token=hsmint?pin-value=1234'))).toBe(
      'ERR_PKCS11_URI_INVALID',
    );
  });
});

describe('trimPadded', () => {
  it('strips trailing spaces and NULs only', () => {
    expect(trimPadded('hsmint                          ')).toBe('hsmint');
    expect(trimPadded('hsmint\0\0\0')).toBe('hsmint');
    expect(trimPadded('hsmint \0 \0')).toBe('hsmint');
    expect(trimPadded('  hsmint')).toBe('  hsmint');
    expect(trimPadded('my token  ')).toBe('my token');
    expect(trimPadded('')).toBe('');
  });
});

describe('matchesToken', () => {
  const info = {
    label: 'hsmint'.padEnd(32, ' '),
    manufacturerID: 'SoftHSM project'.padEnd(32, ' '),
    serialNumber: '0a1b2c3d4e5f6071',
    model: 'SoftHSM v2\0\0\0\0\0\0',
  };

  it('matches an empty selector', () => {
    expect(matchesToken({}, info)).toBe(true);
  });

  it('matches on every given attribute after trimming padding', () => {
    expect(matchesToken({ token: 'hsmint' }, info)).toBe(true);
    expect(matchesToken({ serial: '0a1b2c3d4e5f6071' }, info)).toBe(true);
    expect(
      matchesToken(
        {
          token: 'hsmint',
          manufacturer: 'SoftHSM project',
          serial: '0a1b2c3d4e5f6071',
          model: 'SoftHSM v2',
        },
        info,
      ),
    ).toBe(true);
  });

  it('refuses when any given attribute differs', () => {
    expect(matchesToken({ token: 'other' }, info)).toBe(false);
    expect(matchesToken({ token: 'hsmint', serial: 'ffff' }, info)).toBe(false);
    expect(matchesToken({ token: 'hsmint', manufacturer: 'Acme' }, info)).toBe(false);
    expect(matchesToken({ token: 'hsmint', model: 'SoftHSM' }, info)).toBe(false);
  });

  it('compares exactly: no prefix or case-insensitive match', () => {
    expect(matchesToken({ token: 'hsm' }, info)).toBe(false);
    expect(matchesToken({ token: 'HSMINT' }, info)).toBe(false);
  });

  it('works on a selector parsed from a URI', () => {
    expect(
      matchesToken(parseTokenReference('pkcs11:token=hsmint;serial=0a1b2c3d4e5f6071'), info),
    ).toBe(true);
  });
});
