import { createHmac } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BUNDLE_TYPE,
  acceptBundle,
  createBundle,
  readBundleState,
  verifyBundle,
  type BundleInput,
} from '../../../../core/ca/bundle.js';
import type { Signer } from '../../../../core/ca/signer.js';
import { ALGORITHMS } from '../../../../core/keys/algorithms.js';
import type { PublicJwk } from '../../../../core/keys/keystore.js';
import {
  AT,
  newCa,
  newLeaf,
  newSigner,
  rejectionCode,
  spkiOf,
  type TestCa,
  type TestLeaf,
} from '../../../support/ca.js';
import { MemoryKeyStore } from '../../../support/memory-keystore.js';

const store = new MemoryKeyStore();
const ISSUER = 'urn:hsmint:test';
const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
const decode = (part: string) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

let ca: TestCa;
let leaf: TestLeaf;
let keys: PublicJwk[];

beforeAll(async () => {
  ca = await newCa(store, 'ES256');
  leaf = await newLeaf(store, ca, 'ES256');
  keys = [];
  for (const alg of ['ES256', 'EdDSA', 'RS256'] as const)
    keys.push((await store.generate(alg)).publicJwk);
});

const input = (overrides: Partial<BundleInput> = {}): BundleInput => ({
  version: 3,
  issuer: ISSUER,
  jwks: { keys },
  chain: [leaf.certificate, ca.root],
  signer: leaf.signer,
  now: AT,
  ...overrides,
});

/** A compact JWS with any header and payload, signed by `signer` as createBundle signs. */
async function signRaw(header: unknown, payload: unknown, signer: Signer): Promise<string> {
  const signingInput = `${encode(header)}.${encode(payload)}`;
  const signature = await signer.sign(Buffer.from(signingInput, 'ascii'));
  return `${signingInput}.${signature.toString('base64url')}`;
}

const legitHeader = () => ({
  alg: leaf.signer.alg,
  typ: BUNDLE_TYPE,
  kid: leaf.signer.publicJwk.kid,
  x5c: [leaf.certificate, ca.root].map((der) => der.toString('base64')),
});
const legitPayload = () => ({
  version: 3,
  iat: Math.floor(AT.getTime() / 1000),
  iss: ISSUER,
  jwks: { keys },
});

const refused = async (text: string, code = 'ERR_BUNDLE_INVALID', minVersion?: number) =>
  expect(
    await rejectionCode(
      verifyBundle(text, {
        pinnedRoot: ca.root,
        now: AT,
        ...(minVersion === undefined ? {} : { minVersion }),
      }),
    ),
  ).toBe(code);

describe('a bundle', () => {
  it('round-trips: version, issuer, iat and every key', async () => {
    const text = await createBundle(input());
    const verified = await verifyBundle(text, { pinnedRoot: ca.root, now: AT });
    expect(verified).toEqual({
      version: 3,
      issuer: ISSUER,
      iat: Math.floor(AT.getTime() / 1000),
      jwks: { keys },
    });
  });

  it('is a compact JWS: {alg, typ, kid, x5c} over {version, iat, iss, jwks}', async () => {
    const text = await createBundle(input());
    const [header, payload] = text.split('.');
    expect(decode(header!)).toEqual(legitHeader());
    expect(decode(payload!)).toEqual(legitPayload());
    expect(decodeProtectedHeader(text).x5c).toEqual(legitHeader().x5c);
  });

  it('is read from a file with a trailing newline', async () => {
    const text = await createBundle(input());
    expect((await verifyBundle(`${text}\n`, { pinnedRoot: ca.root, now: AT })).version).toBe(3);
  });

  it('carries roots for token verifiers, without trusting them', async () => {
    const other = await newCa(store, 'EdDSA');
    const text = await createBundle(input({ roots: [ca.root, other.root] }));
    expect(decode(text.split('.')[1]!).roots).toEqual([
      ca.root.toString('base64'),
      other.root.toString('base64'),
    ]);
    const verified = await verifyBundle(text, { pinnedRoot: ca.root, now: AT });
    expect(verified.roots).toEqual([ca.root, other.root]);
    // A root inside a bundle does not make that root's bundles acceptable.
    const foreign = await newLeaf(store, other, 'EdDSA');
    const foreignBundle = await createBundle(
      input({ chain: [foreign.certificate, other.root], signer: foreign.signer }),
    );
    await refused(foreignBundle);
  });

  it('verifies at the current time by default', async () => {
    const now = new Date();
    const text = await createBundle(input({ now }));
    expect((await verifyBundle(text, { pinnedRoot: ca.root })).iat).toBe(
      Math.floor(now.getTime() / 1000),
    );
  });

  describe.each(ALGORITHMS)('signed with %s', (alg) => {
    it('round-trips under an EdDSA CA, and one under an RS256 CA', async () => {
      for (const caAlg of ['EdDSA', 'RS256'] as const) {
        const signerCa = await newCa(store, caAlg);
        const signerLeaf = await newLeaf(store, signerCa, alg);
        const text = await createBundle(
          input({ chain: [signerLeaf.certificate, signerCa.root], signer: signerLeaf.signer }),
        );
        expect(decodeProtectedHeader(text).alg).toBe(alg);
        const verified = await verifyBundle(text, { pinnedRoot: signerCa.root, now: AT });
        expect(verified.jwks.keys).toEqual(keys);
        await refused(text);
      }
    });
  });
});

describe('verifyBundle refuses', () => {
  it('a tampered payload or signature', async () => {
    const text = await createBundle(input());
    const [header, , signature] = text.split('.');
    const evil = {
      ...legitPayload(),
      jwks: { keys: [...keys, (await store.generate('ES256')).publicJwk] },
    };
    await refused(`${header}.${encode(evil)}.${signature}`);
    await refused(`${header}.${encode({ ...legitPayload(), version: 99 })}.${signature}`);
    const flipped = signature!.startsWith('A')
      ? `B${signature!.slice(1)}`
      : `A${signature!.slice(1)}`;
    await refused(`${header}.${text.split('.')[1]}.${flipped}`);
  });

  it('a bundle signed by a key another CA certified', async () => {
    const other = await newCa(store, 'ES256');
    const otherLeaf = await newLeaf(store, other, 'ES256');
    const text = await createBundle(
      input({ chain: [otherLeaf.certificate, other.root], signer: otherLeaf.signer }),
    );
    await refused(text);
    // Nor with the foreign leaf presented directly under our root.
    await refused(
      await signRaw(
        {
          ...legitHeader(),
          kid: otherLeaf.signer.publicJwk.kid,
          x5c: [otherLeaf.certificate.toString('base64')],
        },
        legitPayload(),
        otherLeaf.signer,
      ),
    );
  });

  it('our chain in the header with a signature by another key', async () => {
    const impostor = await newSigner(store, 'ES256');
    await refused(await signRaw(legitHeader(), legitPayload(), impostor));
  });

  it('a header kid that is not the certified key', async () => {
    const other = await newLeaf(store, ca, 'ES256');
    await refused(
      await signRaw({ ...legitHeader(), kid: other.key.kid }, legitPayload(), leaf.signer),
    );
  });

  it('alg none', async () => {
    const header = { ...legitHeader(), alg: 'none' };
    await refused(`${encode(header)}.${encode(legitPayload())}.`);
    await refused(`${encode(header)}.${encode(legitPayload())}.c2lnbmF0dXJl`);
  });

  it('HS256, keyed with the public key bytes (key confusion)', async () => {
    const header = { ...legitHeader(), alg: 'HS256' };
    const signingInput = `${encode(header)}.${encode(legitPayload())}`;
    for (const secret of [
      spkiOf(leaf.signer.publicJwk),
      Buffer.from(JSON.stringify(leaf.signer.publicJwk)),
      leaf.certificate,
    ]) {
      const mac = createHmac('sha256', secret).update(signingInput).digest('base64url');
      await refused(`${signingInput}.${mac}`);
    }
  });

  it('an alg that does not fit the certified key', async () => {
    const edLeaf = await newLeaf(store, ca, 'EdDSA');
    const header = {
      ...legitHeader(),
      alg: 'ES256',
      kid: edLeaf.key.kid,
      x5c: [edLeaf.certificate.toString('base64')],
    };
    await refused(await signRaw(header, legitPayload(), edLeaf.signer));
  });

  it('another typ, so that no other JWS passes for a bundle', async () => {
    for (const typ of ['JWT', undefined, 'hsmint-bundle']) {
      await refused(await signRaw({ ...legitHeader(), typ }, legitPayload(), leaf.signer));
    }
  });

  it('a missing, empty or ill-encoded x5c', async () => {
    const { x5c: _x5c, ...noX5c } = legitHeader();
    await refused(await signRaw(noX5c, legitPayload(), leaf.signer));
    for (const x5c of [
      [],
      'not a list',
      [leaf.certificate.toString('base64url')],
      [`${leaf.certificate.toString('base64')}\n`],
      [42],
      Array.from({ length: 9 }, () => leaf.certificate.toString('base64')),
    ]) {
      await refused(await signRaw({ ...legitHeader(), x5c }, legitPayload(), leaf.signer));
    }
  });

  it('a chain that is not valid at the time of verification', async () => {
    const text = await createBundle(input());
    expect(
      await rejectionCode(
        verifyBundle(text, { pinnedRoot: ca.root, now: new Date('2030-01-01T00:00:00Z') }),
      ),
    ).toBe('ERR_BUNDLE_INVALID');
  });

  it('a payload of the wrong shape, even when signed', async () => {
    const payloads = [
      { ...legitPayload(), extra: true },
      { ...legitPayload(), version: 0 },
      { ...legitPayload(), version: '3' },
      { ...legitPayload(), version: 1.5 },
      { ...legitPayload(), iat: -1 },
      { ...legitPayload(), iss: '' },
      { ...legitPayload(), jwks: { keys: 'none' } },
      { ...legitPayload(), jwks: { keys, extra: 1 } },
      { ...legitPayload(), jwks: { keys: [{ ...keys[0]!, d: 'AAAA' }] } },
      { ...legitPayload(), jwks: { keys: [{ ...keys[0]!, kid: keys[1]!.kid }] } },
      { ...legitPayload(), jwks: { keys: [{ ...keys[0]!, alg: 'HS256' }] } },
      { ...legitPayload(), jwks: { keys: [{ ...keys[0]!, alg: 'ES384' }] } },
      { ...legitPayload(), jwks: { keys: [{ ...keys[0]!, use: 'enc' }] } },
      { ...legitPayload(), jwks: { keys: [keys[0]!, keys[0]!] } },
      {
        ...legitPayload(),
        jwks: { keys: [{ kty: 'oct', k: 'c2VjcmV0', kid: 'x', alg: 'ES256', use: 'sig' }] },
      },
      { ...legitPayload(), roots: ['!!'] },
      { ...legitPayload(), roots: [Buffer.from('not a certificate').toString('base64')] },
      [legitPayload()],
    ];
    for (const payload of payloads)
      await refused(await signRaw(legitHeader(), payload, leaf.signer));
    const { iat: _iat, ...noIat } = legitPayload();
    await refused(await signRaw(legitHeader(), noIat, leaf.signer));
  });

  it('text that is not a compact JWS', async () => {
    const text = await createBundle(input());
    for (const bad of ['', 'a.b', `${text}.x`, `${text} trailing`, 'x'.repeat(2 * 1024 * 1024)])
      await refused(bad);
    await refused(`e30.${text.split('.')[1]}.${text.split('.')[2]}`);
  });
});

describe('createBundle refuses', () => {
  it.each([
    ['version 0', { version: 0 }],
    ['a fractional version', { version: 1.5 }],
    ['an empty issuer', { issuer: '' }],
    ['an invalid date', { now: new Date('nonsense') }],
    ['no chain', { chain: [] }],
    ['a root to carry that is not a certificate', { roots: [Buffer.from('nope')] }],
  ])('%s', async (_what, overrides) => {
    expect(await rejectionCode(createBundle(input(overrides)))).toBe('ERR_BUNDLE_INVALID');
  });

  it('a private key among the keys', async () => {
    const jwks = { keys: [{ ...keys[0]!, d: 'AAAA' } as PublicJwk] };
    expect(await rejectionCode(createBundle(input({ jwks })))).toBe('ERR_BUNDLE_INVALID');
  });

  it('a chain that does not certify the signer, or does not end with its root', async () => {
    const other = await newLeaf(store, ca, 'ES256');
    expect(await rejectionCode(createBundle(input({ chain: [other.certificate, ca.root] })))).toBe(
      'ERR_BUNDLE_INVALID',
    );
    expect(await rejectionCode(createBundle(input({ chain: [leaf.certificate] })))).toBe(
      'ERR_BUNDLE_INVALID',
    );
  });

  it('a chain no verifier would accept at `now`', async () => {
    expect(
      await rejectionCode(createBundle(input({ now: new Date('2030-01-01T00:00:00Z') }))),
    ).toBe('ERR_BUNDLE_INVALID');
  });
});

describe('rollback', () => {
  it('refuses a version equal to or below minVersion, after checking the bundle', async () => {
    const text = await createBundle(input({ version: 7 }));
    await refused(text, 'ERR_BUNDLE_ROLLBACK', 7);
    await refused(text, 'ERR_BUNDLE_ROLLBACK', 8);
    await refused(text, 'ERR_BUNDLE_ROLLBACK', 1000);
    expect(
      (await verifyBundle(text, { pinnedRoot: ca.root, now: AT, minVersion: 6 })).version,
    ).toBe(7);
    expect(
      (await verifyBundle(text, { pinnedRoot: ca.root, now: AT, minVersion: 0 })).version,
    ).toBe(7);
    // A forged old bundle is invalid first, whatever its version.
    const [header, , signature] = text.split('.');
    await refused(
      `${header}.${encode({ ...legitPayload(), version: 1 })}.${signature}`,
      'ERR_BUNDLE_INVALID',
      7,
    );
  });

  describe('state file', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'hsmint-bundle-'));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it('is absent until a bundle is accepted, then persists across calls', async () => {
      const file = join(dir, 'state.json');
      expect(await readBundleState(file)).toBeUndefined();
      await acceptBundle(file, 3);
      expect(await readBundleState(file)).toEqual({ lastVersion: 3 });
      expect(await readFile(file, 'utf8')).toBe('{"last_version":3}\n');
      expect(await rejectionCode(acceptBundle(file, 3))).toBe('ERR_BUNDLE_ROLLBACK');
      expect(await rejectionCode(acceptBundle(file, 2))).toBe('ERR_BUNDLE_ROLLBACK');
      expect(await readBundleState(file)).toEqual({ lastVersion: 3 });
      await acceptBundle(file, 10);
      expect(await readBundleState(file)).toEqual({ lastVersion: 10 });
      // No temporary file is left behind.
      expect(await readdir(dir)).toEqual(['state.json']);
    });

    it('drives `bundle verify FILE --state F`: a bundle is accepted once, and only newer ones after', async () => {
      const file = join(dir, 'flow.json');
      const check = async (text: string) => {
        const last = await readBundleState(file);
        const bundle = await verifyBundle(text, {
          pinnedRoot: ca.root,
          now: AT,
          ...(last === undefined ? {} : { minVersion: last.lastVersion }),
        });
        await acceptBundle(file, bundle.version);
        return bundle.version;
      };
      const v4 = await createBundle(input({ version: 4 }));
      const v5 = await createBundle(input({ version: 5 }));
      expect(await check(v4)).toBe(4);
      expect(await rejectionCode(check(v4))).toBe('ERR_BUNDLE_ROLLBACK');
      expect(await check(v5)).toBe(5);
      expect(await rejectionCode(check(v4))).toBe('ERR_BUNDLE_ROLLBACK');
      expect(await rejectionCode(check(v5))).toBe('ERR_BUNDLE_ROLLBACK');
    });

    it.each([
      ['not JSON', 'last_version=3'],
      ['another shape', '{"version":3}'],
      ['an extra field', '{"last_version":3,"x":1}'],
      ['a non-integer version', '{"last_version":"3"}'],
      ['a list', '[3]'],
    ])('refuses a state file that is %s, failing closed', async (_what, content) => {
      const file = join(dir, `bad-${content.length}.json`);
      await writeFile(file, content);
      expect(await rejectionCode(readBundleState(file))).toBe('ERR_BUNDLE_STATE_INVALID');
      expect(await rejectionCode(acceptBundle(file, 100))).toBe('ERR_BUNDLE_STATE_INVALID');
    });

    it('refuses a version that is not a positive integer', async () => {
      expect(await rejectionCode(acceptBundle(join(dir, 'v.json'), 0))).toBe('ERR_BUNDLE_INVALID');
      expect(
        await rejectionCode(verifyBundle('x.y.z', { pinnedRoot: ca.root, minVersion: -1 })),
      ).toBe('ERR_BUNDLE_STATE_INVALID');
    });

    it('reports a state path it cannot write', async () => {
      // A regular file where the folder should be: refused even for root, unlike a chmod.
      const notAFolder = join(dir, 'not-a-folder');
      await writeFile(notAFolder, 'x');
      expect(await rejectionCode(acceptBundle(join(notAFolder, 'state.json'), 1))).toBe(
        'ERR_BUNDLE_STATE_INVALID',
      );
    });
  });
});
