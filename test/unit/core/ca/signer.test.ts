import {
  createHash,
  createPublicKey,
  generateKeyPairSync,
  sign,
  verify,
  webcrypto,
} from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { splitSigned } from '../../../../core/ca/signed.js';
import {
  X509_SIGNATURE_ALGORITHMS,
  algorithmOfX509,
  fromX509Signature,
  signerFor,
  toX509Signature,
} from '../../../../core/ca/signer.js';
import { signerCrypto } from '../../../../core/ca/x509.js';
import { ALGORITHMS, type Algorithm } from '../../../../core/keys/algorithms.js';
import { newCa, spkiOf } from '../../../support/ca.js';
import { MemoryKeyStore } from '../../../support/memory-keystore.js';

const hex = (text: string) => Buffer.from(text.replace(/\s+/g, ''), 'hex');

describe('signerFor', () => {
  it('signs on the store with the key, in the JWS encoding', async () => {
    const store = new MemoryKeyStore();
    const key = await store.generate('ES256');
    const signer = signerFor(store, key);
    expect(signer.alg).toBe('ES256');
    expect(signer.publicJwk).toEqual(key.publicJwk);
    const data = Buffer.from('eyJhbGciOiJFUzI1NiJ9.e30');
    const signature = await signer.sign(data);
    expect(store.signCalls).toBe(1);
    expect(signature).toHaveLength(64);
    const publicKey = createPublicKey({ key: { ...key.publicJwk }, format: 'jwk' });
    expect(verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature)).toBe(
      true,
    );
  });

  it('passes the store failure through', async () => {
    const store = new MemoryKeyStore();
    const signer = signerFor(store, await store.generate('EdDSA'));
    store.signError = new Error('CKR_DEVICE_ERROR');
    await expect(signer.sign(Buffer.from('x'))).rejects.toThrow('CKR_DEVICE_ERROR');
  });
});

describe('X.509 signature algorithms', () => {
  it.each([
    ['ES256', '1.2.840.10045.4.3.2', 'ecdsa-with-SHA256'],
    ['ES384', '1.2.840.10045.4.3.3', 'ecdsa-with-SHA384'],
    ['RS256', '1.2.840.113549.1.1.11', 'sha256WithRSAEncryption'],
    ['PS256', '1.2.840.113549.1.1.10', 'RSASSA-PSS (SHA-256, MGF1 with SHA-256, salt 32)'],
    ['EdDSA', '1.3.101.112', 'Ed25519'],
  ] as const)('maps %s to %s', (alg, oid, name) => {
    expect(X509_SIGNATURE_ALGORITHMS[alg]).toMatchObject({ oid, name });
  });

  it.each(ALGORITHMS)(
    'reads back the %s AlgorithmIdentifier of a certificate it signed',
    async (alg) => {
      const { root } = await newCa(new MemoryKeyStore(), alg);
      expect(algorithmOfX509(splitSigned(root).algorithm)).toBe(alg);
    },
  );

  it.each([
    ['ES256', '300a06082a8648ce3d040302'],
    ['ES384', '300a06082a8648ce3d040303'],
    ['RS256', '300d06092a864886f70d01010b0500'],
    ['RS256', '300b06092a864886f70d01010b'],
    ['EdDSA', '300506032b6570'],
    // PSS as OpenSSL writes it: NULL hash parameters.
    [
      'PS256',
      '304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120',
    ],
    // PSS as @peculiar/x509 writes it: absent hash parameters.
    [
      'PS256',
      '303d06092a864886f70d01010a3030a00d300b0609608648016503040201a11a301806092a864886f70d010108300b0609608648016503040201a203020120',
    ],
  ] as const)('accepts %s as %s', (alg, der) => {
    expect(algorithmOfX509(hex(der))).toBe(alg);
  });

  it.each([
    ['sha1WithRSAEncryption', '300d06092a864886f70d0101050500'],
    ['sha512WithRSAEncryption', '300d06092a864886f70d01010d0500'],
    ['ecdsa-with-SHA512', '300a06082a8648ce3d040304'],
    ['ecdsa-with-SHA1', '300906072a8648ce3d0401'],
    ['ecdsa-with-SHA256 with NULL parameters', '300c06082a8648ce3d0403020500'],
    ['Ed25519 with NULL parameters', '300706032b65700500'],
    ['Ed448', '300506032b6571'],
    ['RSASSA-PSS without parameters (SHA-1 defaults)', '300b06092a864886f70d01010a'],
    ['RSASSA-PSS with empty parameters', '300d06092a864886f70d01010a3000'],
    [
      'RSASSA-PSS with a 20-byte salt',
      '304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020114',
    ],
    [
      'RSASSA-PSS with MGF1 over SHA-1',
      '303d06092a864886f70d01010a3030a00f300d06096086480165030402010500a118301606092a864886f70d010108300906052b0e03021a0500a203020120',
    ],
    ['trailing bytes', '300a06082a8648ce3d04030200'],
    ['not DER at all', 'ff'],
  ])('refuses %s', (_what, der) => {
    expect(algorithmOfX509(hex(der))).toBeUndefined();
  });
});

describe('ECDSA signatures between JWS and X.509', () => {
  const pairs = {
    ES256: { curve: 'P-256', hash: 'sha256', size: 32 },
    ES384: { curve: 'P-384', hash: 'sha384', size: 48 },
  } as const;

  it.each(['ES256', 'ES384'] as const)('%s: r||s and DER carry the same signature', (alg) => {
    const { curve, hash, size } = pairs[alg];
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
    for (let i = 0; i < 50; i++) {
      const data = Buffer.from(`message ${i}`);
      const jws = sign(hash, data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      const der = toX509Signature(alg, jws);
      // node reads the DER form, and writes the same DER we do.
      expect(verify(hash, data, { key: publicKey, dsaEncoding: 'der' }, der)).toBe(true);
      expect(fromX509Signature(alg, der)).toEqual(jws);
      const nodeDer = sign(hash, data, { key: privateKey, dsaEncoding: 'der' });
      const back = fromX509Signature(alg, nodeDer);
      expect(back).toHaveLength(2 * size);
      expect(toX509Signature(alg, back)).toEqual(nodeDer);
    }
  });

  it('keeps integers positive and minimal: high bits get a 0x00, leading zeros go', () => {
    const r = Buffer.alloc(32, 0xff);
    const s = Buffer.concat([Buffer.alloc(31, 0), Buffer.from([0x05])]);
    const der = toX509Signature('ES256', Buffer.concat([r, s]));
    expect(der.toString('hex')).toBe(`3026022100${'ff'.repeat(32)}020105`);
    expect(fromX509Signature('ES256', der)).toEqual(Buffer.concat([r, s]));
  });

  it.each([
    ['a non-minimal INTEGER', '3008020300000102020105'],
    ['a negative INTEGER', '300602018102010a'],
    ['an r over the field size', `3025022101${'00'.repeat(32)}020101`],
    ['trailing bytes', '300602010102010100'],
    ['a third INTEGER', '3009020101020101020101'],
    ['a long-form length that fits in short form', '30810602010102010a'],
    ['a truncated SEQUENCE', '3008020101'],
  ])('refuses %s', (_what, der) => {
    expect(() => fromX509Signature('ES256', hex(der))).toThrow(RangeError);
  });

  it('refuses a JWS signature of the wrong length', () => {
    expect(() => toX509Signature('ES256', Buffer.alloc(63))).toThrow(RangeError);
    expect(() => toX509Signature('ES384', Buffer.alloc(64))).toThrow(RangeError);
  });

  it.each(['RS256', 'PS256', 'EdDSA'] as Algorithm[])('leaves %s signatures as they are', (alg) => {
    const signature = Buffer.from('any signature bytes');
    expect(toX509Signature(alg, signature)).toBe(signature);
    expect(fromX509Signature(alg, signature)).toBe(signature);
  });
});

describe('the crypto provider @peculiar/x509 signs through', () => {
  it('signs only with its stand-in key, on the store, and never exports a private key', async () => {
    const store = new MemoryKeyStore();
    const signer = signerFor(store, await store.generate('ES384'));
    const { crypto, keys } = signerCrypto(signer, spkiOf(signer.publicJwk));
    const subtle = crypto.subtle as unknown as {
      sign(algorithm: unknown, key: unknown, data: Uint8Array): Promise<ArrayBuffer>;
      exportKey(format: string, key: unknown): Promise<ArrayBuffer>;
      digest(algorithm: string, data: Uint8Array): Promise<ArrayBuffer>;
    };
    const algorithm = X509_SIGNATURE_ALGORITHMS.ES384.webCrypto;
    const data = new TextEncoder().encode('to be signed');
    const signature = Buffer.from(await subtle.sign(algorithm, keys.privateKey, data));
    expect(store.signCalls).toBe(1);
    // r||s, as WebCrypto returns it, for the library to write as DER.
    expect(signature).toHaveLength(96);
    const publicKey = createPublicKey({ key: { ...signer.publicJwk }, format: 'jwk' });
    expect(
      verify('sha384', Buffer.from(data), { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature),
    ).toBe(true);

    expect(Buffer.from(await subtle.exportKey('spki', keys.publicKey))).toEqual(
      spkiOf(signer.publicJwk),
    );
    await expect(subtle.exportKey('pkcs8', keys.privateKey)).rejects.toThrow(TypeError);
    await expect(subtle.exportKey('jwk', keys.publicKey)).rejects.toThrow(TypeError);
    const real = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, [
      'sign',
    ]);
    await expect(subtle.sign(algorithm, real.privateKey, data)).rejects.toThrow(TypeError);
    await expect(subtle.sign({ name: 'RSASSA-PKCS1-v1_5' }, keys.privateKey, data)).rejects.toThrow(
      TypeError,
    );
    expect(store.signCalls).toBe(1);
    // Everything else is node's WebCrypto.
    expect(Buffer.from(await subtle.digest('SHA-256', data))).toEqual(
      createHash('sha256').update(data).digest(),
    );
  });
});
