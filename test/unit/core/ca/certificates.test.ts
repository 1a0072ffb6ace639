import { X509Certificate, createHash, randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  createKeyRequest,
  createRootCertificate,
  fromPem,
  fromPemAll,
  issueKeyCertificate,
  signKeyRequest,
  toPem,
  verifyChain,
} from '../../../../core/ca/certificates.js';
import { signerFor, type Signer } from '../../../../core/ca/signer.js';
import { ALGORITHMS } from '../../../../core/keys/algorithms.js';
import type { PublicJwk } from '../../../../core/keys/keystore.js';
import {
  AT,
  HAS_OPENSSL,
  NOT_AFTER,
  NOT_BEFORE,
  caExtensions,
  flipByte,
  forgeCertificate,
  forgeRequest,
  leafExtensions,
  newCa,
  newLeaf,
  newSigner,
  opensslVerify,
  opensslVerifyRequest,
  rejectionCode,
  spkiOf,
  subjectOf,
  tamperSerial,
  tamperText,
  x509,
  type TestCa,
} from '../../../support/ca.js';
import { MemoryKeyStore } from '../../../support/memory-keystore.js';

const store = new MemoryKeyStore();

const codeOf = rejectionCode;

const publicMembers = ({ kty, crv, x, y, n, e }: PublicJwk) =>
  Object.fromEntries(Object.entries({ kty, crv, x, y, n, e }).filter(([, v]) => v !== undefined));

const { KeyUsageFlags } = x509;
const parse = (der: Buffer) => new x509.X509Certificate(der);

describe.each(ALGORITHMS)('a %s CA', (caAlg) => {
  let ca: TestCa;
  beforeAll(async () => {
    ca = await newCa(store, caAlg);
  });

  it('makes a self-signed root: CA with path length 0, keyCertSign and cRLSign, critical', () => {
    const root = new X509Certificate(ca.root);
    expect(root.ca).toBe(true);
    expect(root.verify(root.publicKey)).toBe(true);
    expect(root.checkIssued(root)).toBe(true);
    expect(root.subject).toBe('CN=hsmint test root CA\nO=hsmint tests');
    expect(new Date(root.validFrom)).toEqual(NOT_BEFORE);
    expect(new Date(root.validTo)).toEqual(NOT_AFTER);

    const parsed = parse(ca.root);
    const basic = parsed.getExtension(x509.BasicConstraintsExtension)!;
    expect([basic.ca, basic.pathLength, basic.critical]).toEqual([true, 0, true]);
    const usage = parsed.getExtension(x509.KeyUsagesExtension)!;
    expect([usage.usages, usage.critical]).toEqual([
      KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign,
      true,
    ]);
    const ski = parsed.getExtension(x509.SubjectKeyIdentifierExtension)!;
    expect(ski.critical).toBe(false);
    expect(ski.keyId).toMatch(/^[0-9a-f]{40}$/);
  });

  describe.each(ALGORITHMS)('and a %s leaf', (leafAlg) => {
    it('issues a certificate that verifyChain, node and openssl accept', async () => {
      const leaf = await newLeaf(store, ca, leafAlg);
      const jwk = await verifyChain([leaf.certificate, ca.root], ca.root, AT);
      expect(jwk).toEqual({
        ...publicMembers(leaf.key.publicJwk),
        kid: leaf.key.kid,
        use: 'sig',
        // A certificate ties an RSA key to neither RS256 nor PS256.
        ...(leafAlg === 'RS256' || leafAlg === 'PS256' ? {} : { alg: leafAlg }),
      });
      // The chain may also stop short of the root it is pinned to.
      expect(await verifyChain([leaf.certificate], ca.root, AT)).toEqual(jwk);

      const certificate = new X509Certificate(leaf.certificate);
      const root = new X509Certificate(ca.root);
      expect(certificate.verify(root.publicKey)).toBe(true);
      expect(certificate.checkIssued(root)).toBe(true);
      expect(certificate.ca).toBe(false);
      expect(certificate.subject).toBe(`CN=${leaf.key.kid}`);
      if (HAS_OPENSSL)
        expect(opensslVerify(ca.root, leaf.certificate, AT)).toMatchObject({ ok: true });
    });
  });

  it('issues the same certificate from a CSR made on the key', async () => {
    const key = await store.generate(caAlg);
    const csr = await createKeyRequest({
      signer: signerFor(store, key),
      subjectJwk: key.publicJwk,
    });
    if (HAS_OPENSSL) expect(opensslVerifyRequest(csr)).toBe(true);
    const certificate = await signKeyRequest({
      caSigner: ca.signer,
      caCertificate: ca.root,
      csr,
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
    });
    expect((await verifyChain([certificate], ca.root, AT)).kid).toBe(key.kid);
    const direct = await issueKeyCertificate({
      caSigner: ca.signer,
      caCertificate: ca.root,
      subjectJwk: key.publicJwk,
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
    });
    const profile = (der: Buffer) => {
      const parsed = parse(der);
      return {
        subject: parsed.subject,
        issuer: parsed.issuer,
        publicKey: Buffer.from(parsed.publicKey.rawData),
        extensions: parsed.extensions.map((e) => [e.type, e.critical, Buffer.from(e.value)]),
      };
    };
    expect(profile(certificate)).toEqual(profile(direct));
  });
});

describe('leaf certificates', () => {
  let ca: TestCa;
  beforeAll(async () => {
    ca = await newCa(store, 'ES256');
  });

  it('are for one signing key: CN=kid, not a CA, digitalSignature, key identifiers', async () => {
    const leaf = await newLeaf(store, ca, 'ES256');
    const parsed = parse(leaf.certificate);
    expect(parsed.subject).toBe(`CN=${leaf.key.kid}`);
    expect(Buffer.from(parsed.issuerName.toArrayBuffer())).toEqual(subjectOf(ca.root));
    const basic = parsed.getExtension(x509.BasicConstraintsExtension)!;
    expect([basic.ca, basic.pathLength, basic.critical]).toEqual([false, undefined, true]);
    const usage = parsed.getExtension(x509.KeyUsagesExtension)!;
    expect([usage.usages, usage.critical]).toEqual([KeyUsageFlags.digitalSignature, true]);
    const aki = parsed.getExtension(x509.AuthorityKeyIdentifierExtension)!;
    const rootSki = parse(ca.root).getExtension(x509.SubjectKeyIdentifierExtension)!;
    expect(aki.keyId).toBe(rootSki.keyId);
    // RFC 5280 4.2.1.2 (1): SHA-1 of the subjectPublicKey bits, here the EC point 04||x||y.
    const point = Buffer.concat([
      Buffer.from([4]),
      Buffer.from(leaf.key.publicJwk.x!, 'base64url'),
      Buffer.from(leaf.key.publicJwk.y!, 'base64url'),
    ]);
    expect(parsed.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId).toBe(
      createHash('sha1').update(point).digest('hex'),
    );
  });

  it('get a random positive 16-octet serial by default, or the one given', async () => {
    const serials = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const serial = new X509Certificate((await newLeaf(store, ca, 'EdDSA')).certificate)
        .serialNumber;
      expect(serial).toMatch(/^[4-7][0-9A-F]{31}$/);
      serials.add(serial);
    }
    expect(serials.size).toBe(5);
    const key = await store.generate('ES256');
    const certificate = await issueKeyCertificate({
      caSigner: ca.signer,
      caCertificate: ca.root,
      subjectJwk: key.publicJwk,
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
      serial: '0A1b',
    });
    expect(new X509Certificate(certificate).serialNumber).toBe('0A1B');
  });

  it('keep whole seconds: a leaf may end with its CA when both are given with milliseconds', async () => {
    const end = new Date('2027-06-01T00:00:00.750Z');
    const signer = await newSigner(store, 'ES256');
    const root = await createRootCertificate({
      signer,
      subject: 'CN=ms',
      notBefore: new Date('2026-01-01T00:00:00.999Z'),
      notAfter: end,
    });
    expect(parse(root).notBefore).toEqual(new Date('2026-01-01T00:00:00Z'));
    expect(parse(root).notAfter).toEqual(new Date('2027-06-01T00:00:00Z'));
    const key = await store.generate('ES256');
    const leaf = await issueKeyCertificate({
      caSigner: signer,
      caCertificate: root,
      subjectJwk: key.publicJwk,
      notBefore: NOT_BEFORE,
      notAfter: end,
    });
    expect(parse(leaf).notAfter).toEqual(new Date('2027-06-01T00:00:00Z'));
    // Validity ends on the last second, inclusive.
    expect((await verifyChain([leaf], root, new Date('2027-06-01T00:00:00Z'))).kid).toBe(key.kid);
    expect(await codeOf(verifyChain([leaf], root, new Date('2027-06-01T00:00:00.001Z')))).toBe(
      'ERR_CHAIN_INVALID',
    );
  });

  it('are refused when the CA certificate is not the CA key', async () => {
    const other = await newCa(store, 'ES256');
    const key = await store.generate('ES256');
    const input = { subjectJwk: key.publicJwk, notBefore: NOT_BEFORE, notAfter: NOT_AFTER };
    expect(
      await codeOf(
        issueKeyCertificate({ ...input, caSigner: ca.signer, caCertificate: other.root }),
      ),
    ).toBe('ERR_CA_INVALID');
    expect(
      await codeOf(
        issueKeyCertificate({
          ...input,
          caSigner: ca.signer,
          caCertificate: Buffer.from('not a certificate'),
        }),
      ),
    ).toBe('ERR_CA_INVALID');
  });

  it('are refused from a CA certificate that is a leaf', async () => {
    const leaf = await newLeaf(store, ca, 'ES256');
    const key = await store.generate('ES256');
    expect(
      await codeOf(
        issueKeyCertificate({
          caSigner: leaf.signer,
          caCertificate: leaf.certificate,
          subjectJwk: key.publicJwk,
          notBefore: NOT_BEFORE,
          notAfter: NOT_AFTER,
        }),
      ),
    ).toBe('ERR_CA_INVALID');
  });

  it.each([
    ['notAfter before notBefore', NOT_AFTER, NOT_BEFORE],
    ['notAfter equal to notBefore', NOT_BEFORE, NOT_BEFORE],
    ['a certificate that outlives its CA', NOT_BEFORE, new Date('2029-01-01T00:00:00Z')],
    ['an invalid date', new Date('nonsense'), NOT_AFTER],
  ])('are refused for %s', async (_what, notBefore, notAfter) => {
    const key = await store.generate('ES256');
    expect(
      await codeOf(
        issueKeyCertificate({
          caSigner: ca.signer,
          caCertificate: ca.root,
          subjectJwk: key.publicJwk,
          notBefore,
          notAfter,
        }),
      ),
    ).toBe('ERR_CA_INVALID');
  });

  it('are refused for a JWK whose kid is not its thumbprint, whose alg does not fit, or that is private', async () => {
    const key = await store.generate('ES256');
    const other = await store.generate('ES256');
    const input = {
      caSigner: ca.signer,
      caCertificate: ca.root,
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
    };
    for (const subjectJwk of [
      { ...key.publicJwk, kid: other.kid },
      { ...key.publicJwk, alg: 'ES384' as const },
      { ...key.publicJwk, d: 'AAAA' },
      { ...key.publicJwk, x: 'not-a-point' },
    ]) {
      expect(await codeOf(issueKeyCertificate({ ...input, subjectJwk }))).toBe('ERR_CA_INVALID');
    }
  });

  it.each(['xyz', '0', '0000', 'f'.repeat(40), '8' + '0'.repeat(39), ''])(
    'are refused for the serial %j',
    async (serial) => {
      const key = await store.generate('ES256');
      expect(
        await codeOf(
          issueKeyCertificate({
            caSigner: ca.signer,
            caCertificate: ca.root,
            subjectJwk: key.publicJwk,
            notBefore: NOT_BEFORE,
            notAfter: NOT_AFTER,
            serial,
          }),
        ),
      ).toBe('ERR_CA_INVALID');
    },
  );

  it('take a 20-octet serial', async () => {
    const key = await store.generate('ES256');
    const certificate = await issueKeyCertificate({
      caSigner: ca.signer,
      caCertificate: ca.root,
      subjectJwk: key.publicJwk,
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
      serial: '7' + 'f'.repeat(39),
    });
    expect(new X509Certificate(certificate).serialNumber).toBe('7' + 'F'.repeat(39));
  });
});

describe('root certificates', () => {
  it.each(['', '   ', 'no equals sign'])('are refused for the subject %j', async (subject) => {
    const signer = await newSigner(store, 'ES256');
    expect(
      await codeOf(
        createRootCertificate({ signer, subject, notBefore: NOT_BEFORE, notAfter: NOT_AFTER }),
      ),
    ).toBe('ERR_CA_INVALID');
  });

  it('take the serial given', async () => {
    const signer = await newSigner(store, 'ES256');
    const root = await createRootCertificate({
      signer,
      subject: 'CN=x',
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
      serial: '01',
    });
    expect(new X509Certificate(root).serialNumber).toBe('01');
  });
});

describe('signing on the token', () => {
  it('reports a token failure as ERR_HSM_UNAVAILABLE', async () => {
    const failing = new MemoryKeyStore();
    const signer = await newSigner(failing, 'ES256');
    failing.signError = new Error('CKR_DEVICE_ERROR');
    expect(
      await codeOf(
        createRootCertificate({
          signer,
          subject: 'CN=x',
          notBefore: NOT_BEFORE,
          notAfter: NOT_AFTER,
        }),
      ),
    ).toBe('ERR_HSM_UNAVAILABLE');
  });

  it('never returns a certificate whose signature the token got wrong', async () => {
    const real = await newSigner(store, 'ES256');
    const garbage: Signer = { ...real, sign: async () => randomBytes(64) };
    const other = await newSigner(store, 'ES256');
    const wrongKey: Signer = { ...real, sign: (data) => other.sign(data) };
    for (const signer of [garbage, wrongKey]) {
      expect(
        await codeOf(
          createRootCertificate({
            signer,
            subject: 'CN=x',
            notBefore: NOT_BEFORE,
            notAfter: NOT_AFTER,
          }),
        ),
      ).toBe('ERR_HSM_UNAVAILABLE');
    }
  });

  it('signs every certificate on the store, one signature each', async () => {
    const counting = new MemoryKeyStore();
    const ca = await newCa(counting, 'ES256');
    expect(counting.signCalls).toBe(1);
    await newLeaf(counting, ca, 'EdDSA');
    expect(counting.signCalls).toBe(2);
  });
});

describe('verifyChain refuses', () => {
  let ca: TestCa;
  let other: TestCa;
  beforeAll(async () => {
    ca = await newCa(store, 'ES256');
    other = await newCa(store, 'ES256');
  });

  const refused = async (chain: Buffer[], root: Buffer, at = AT) =>
    expect(await codeOf(verifyChain(chain, root, at))).toBe('ERR_CHAIN_INVALID');

  it('a leaf from another CA, even one with the same name', async () => {
    const leaf = await newLeaf(store, other, 'ES256');
    await refused([leaf.certificate], ca.root);
    await refused([leaf.certificate, other.root], ca.root);
    const namesake = await newCa(store, 'EdDSA', 'CN=hsmint test root CA,O=hsmint tests');
    await refused([(await newLeaf(store, namesake, 'ES256')).certificate], ca.root);
  });

  it('a chain whose root is not the pinned one', async () => {
    const leaf = await newLeaf(store, ca, 'ES256');
    await refused([leaf.certificate, ca.root], other.root);
  });

  it('an expired or not yet valid leaf, or at a time the root is not valid', async () => {
    const expired = await newLeaf(store, ca, 'ES256', {
      notAfter: new Date('2026-03-01T00:00:00Z'),
    });
    await refused([expired.certificate], ca.root);
    expect(
      (await verifyChain([expired.certificate], ca.root, new Date('2026-02-01T00:00:00Z'))).kid,
    ).toBe(expired.key.kid);
    const future = await newLeaf(store, ca, 'ES256', {
      notBefore: new Date('2026-09-01T00:00:00Z'),
    });
    await refused([future.certificate], ca.root);
    const leaf = await newLeaf(store, ca, 'ES256');
    await refused([leaf.certificate], ca.root, new Date('2028-01-01T00:00:01Z'));
    await refused([leaf.certificate], ca.root, new Date('2025-12-31T23:59:59Z'));
    await refused([leaf.certificate], ca.root, new Date('nonsense'));
  });

  it("a leaf whose CN is not its key's thumbprint", async () => {
    const key = await store.generate('ES256');
    const decoy = await store.generate('ES256');
    for (const subject of [`CN=${decoy.kid}`, `CN=${key.kid},O=extra`, 'CN=some name']) {
      const certificate = await forgeCertificate({
        issuer: ca.signer,
        issuerName: subjectOf(ca.root),
        subject,
        subjectJwk: key.publicJwk,
        extensions: leafExtensions(),
      });
      await refused([certificate], ca.root);
    }
  });

  it('a leaf that is a CA, or not for digitalSignature', async () => {
    const key = await store.generate('ES256');
    const forge = (extensions: InstanceType<typeof x509.Extension>[]) =>
      forgeCertificate({
        issuer: ca.signer,
        issuerName: subjectOf(ca.root),
        subject: `CN=${key.kid}`,
        subjectJwk: key.publicJwk,
        extensions,
      });
    // The forgery itself is sound: with the CA's extensions it passes.
    expect((await verifyChain([await forge(leafExtensions())], ca.root, AT)).kid).toBe(key.kid);
    await refused([await forge(leafExtensions({ ca: true }))], ca.root);
    await refused(
      [await forge(leafExtensions({ usages: KeyUsageFlags.keyEncipherment }))],
      ca.root,
    );
    await refused(
      [
        await forge(
          leafExtensions({ usages: KeyUsageFlags.digitalSignature | KeyUsageFlags.keyCertSign }),
        ),
      ],
      ca.root,
    );
    await refused(
      [await forge([new x509.BasicConstraintsExtension(false, undefined, true)])],
      ca.root,
    );
  });

  it('a leaf with a critical extension it does not understand (a non-critical one is fine)', async () => {
    const key = await store.generate('ES256');
    const unknown = (critical: boolean) =>
      new x509.Extension('1.3.6.1.4.1.99999.1', critical, Buffer.from([0x05, 0x00]));
    const forge = (critical: boolean) =>
      forgeCertificate({
        issuer: ca.signer,
        issuerName: subjectOf(ca.root),
        subject: `CN=${key.kid}`,
        subjectJwk: key.publicJwk,
        extensions: leafExtensions({ critical: unknown(critical) }),
      });
    await refused([await forge(true)], ca.root);
    expect((await verifyChain([await forge(false)], ca.root, AT)).kid).toBe(key.kid);
  });

  it('a leaf that names another issuer than the CA that signed it', async () => {
    const key = await store.generate('ES256');
    const certificate = await forgeCertificate({
      issuer: ca.signer,
      issuerName: 'CN=someone else',
      subject: `CN=${key.kid}`,
      subjectJwk: key.publicJwk,
      extensions: leafExtensions(),
    });
    await refused([certificate], ca.root);
  });

  it('a tampered certificate, or a tampered root', async () => {
    const leaf = await newLeaf(store, ca, 'ES256');
    await refused([tamperSerial(leaf.certificate)], ca.root);
    await refused([flipByte(leaf.certificate, leaf.certificate.length - 1)], ca.root);
    await refused([tamperText(leaf.certificate, leaf.key.kid)], ca.root);
    await refused([leaf.certificate], tamperSerial(ca.root));
    await refused([leaf.certificate, tamperSerial(ca.root)], ca.root);
  });

  it('bytes that are not a certificate, an empty chain, a long chain, the root as the leaf', async () => {
    const leaf = await newLeaf(store, ca, 'ES256');
    await refused([Buffer.from('not a certificate')], ca.root);
    await refused([leaf.certificate.subarray(0, 100)], ca.root);
    await refused([Buffer.concat([leaf.certificate, Buffer.from([0])])], ca.root);
    await refused([leaf.certificate], Buffer.from('not a root'));
    await refused([], ca.root);
    await refused(
      Array.from({ length: 9 }, () => leaf.certificate),
      ca.root,
    );
    await refused([ca.root], ca.root);
    await refused([leaf.certificate, ca.root, ca.root], ca.root);
  });

  it('an intermediate under a root of path length 0, or one that is not a CA', async () => {
    const intermediateSigner = await newSigner(store, 'ES384');
    const key = await store.generate('EdDSA');
    const intermediate = (extensions: InstanceType<typeof x509.Extension>[], root: TestCa) =>
      forgeCertificate({
        issuer: root.signer,
        issuerName: subjectOf(root.root),
        subject: 'CN=hsmint intermediate',
        subjectJwk: intermediateSigner.publicJwk,
        extensions,
      });
    const leafUnder = () =>
      forgeCertificate({
        issuer: intermediateSigner,
        issuerName: 'CN=hsmint intermediate',
        subject: `CN=${key.kid}`,
        subjectJwk: key.publicJwk,
        extensions: leafExtensions(),
      });
    // hsmint's roots allow no intermediate.
    await refused([await leafUnder(), await intermediate(caExtensions(0), ca), ca.root], ca.root);

    // A root that allows one: the same chain verifies, and openssl agrees.
    const rootSigner = await newSigner(store, 'RS256');
    const wide: TestCa = {
      signer: rootSigner,
      root: await forgeCertificate({
        issuer: rootSigner,
        subject: 'CN=wide root',
        subjectJwk: rootSigner.publicJwk,
        extensions: caExtensions(1),
      }),
    };
    const chain = [await leafUnder(), await intermediate(caExtensions(0), wide)];
    expect((await verifyChain(chain, wide.root, AT)).kid).toBe(key.kid);
    expect((await verifyChain([...chain, wide.root], wide.root, AT)).kid).toBe(key.kid);
    // ...but not through an intermediate that is not a CA, nor without the intermediate.
    await refused([await leafUnder(), await intermediate(leafExtensions(), wide)], wide.root);
    await refused([chain[0]!], wide.root);
  });
});

describe('certificate requests', () => {
  let ca: TestCa;
  beforeAll(async () => {
    ca = await newCa(store, 'ES256');
  });

  const sign = (csr: Buffer) =>
    signKeyRequest({
      caSigner: ca.signer,
      caCertificate: ca.root,
      csr,
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
    });

  it.each(ALGORITHMS)('round-trip for a %s key, through PEM', async (alg) => {
    const signer = await newSigner(store, alg);
    const csr = await createKeyRequest({ signer, subjectJwk: signer.publicJwk });
    const pem = toPem(csr, 'CERTIFICATE REQUEST');
    expect(pem).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----\n/);
    const certificate = await sign(fromPem(pem, 'CERTIFICATE REQUEST'));
    expect((await verifyChain([certificate], ca.root, AT)).kid).toBe(signer.publicJwk.kid);
    const request = new x509.Pkcs10CertificateRequest(csr);
    expect(request.subject).toBe(`CN=${signer.publicJwk.kid}`);
    expect(request.getExtension(x509.BasicConstraintsExtension.NAME)).toBeDefined();
  });

  it('with a bad self-signature are refused', async () => {
    const signer = await newSigner(store, 'ES256');
    const csr = await createKeyRequest({ signer, subjectJwk: signer.publicJwk });
    expect(await codeOf(sign(tamperText(csr, signer.publicJwk.kid)))).toBe('ERR_CSR_INVALID');
    expect(await codeOf(sign(flipByte(csr, csr.length - 1)))).toBe('ERR_CSR_INVALID');
  });

  it('signed by another key than the one they name are refused', async () => {
    const signer = await newSigner(store, 'ES256');
    const impostor = await newSigner(store, 'ES256');
    const csr = await forgeRequest({
      signer: { ...signer, sign: (data) => impostor.sign(data) },
      subject: `CN=${signer.publicJwk.kid}`,
      extensions: [],
    });
    expect(await codeOf(sign(csr))).toBe('ERR_CSR_INVALID');
  });

  it('asking for a CA, or to sign certificates, are refused', async () => {
    const signer = await newSigner(store, 'ES256');
    const subject = `CN=${signer.publicJwk.kid}`;
    const forge = (extensions: InstanceType<typeof x509.Extension>[]) =>
      forgeRequest({ signer, subject, extensions });
    // The forgery is sound: without the CA flag it is signed.
    expect((await verifyChain([await sign(await forge(leafExtensions()))], ca.root, AT)).kid).toBe(
      signer.publicJwk.kid,
    );
    expect(await codeOf(sign(await forge(leafExtensions({ ca: true }))))).toBe('ERR_CSR_INVALID');
    expect(await codeOf(sign(await forge([new x509.BasicConstraintsExtension(true, 0)])))).toBe(
      'ERR_CSR_INVALID',
    );
    expect(
      await codeOf(
        sign(
          await forge(
            leafExtensions({ usages: KeyUsageFlags.digitalSignature | KeyUsageFlags.keyCertSign }),
          ),
        ),
      ),
    ).toBe('ERR_CSR_INVALID');
  });

  it("whose subject is not the key's thumbprint are refused", async () => {
    const signer = await newSigner(store, 'ES256');
    for (const subject of ['CN=something', `CN=${signer.publicJwk.kid},O=x`]) {
      const csr = await forgeRequest({ signer, subject, extensions: [] });
      expect(await codeOf(sign(csr))).toBe('ERR_CSR_INVALID');
    }
  });

  it('that are not requests are refused', async () => {
    expect(await codeOf(sign(Buffer.from('nope')))).toBe('ERR_CSR_INVALID');
    expect(await codeOf(sign(ca.root))).toBe('ERR_CSR_INVALID');
  });

  it('are made only by the key they are for', async () => {
    const signer = await newSigner(store, 'ES256');
    const other = await newSigner(store, 'ES256');
    expect(await codeOf(createKeyRequest({ signer, subjectJwk: other.publicJwk }))).toBe(
      'ERR_CA_INVALID',
    );
  });
});

describe('PEM', () => {
  let ca: TestCa;
  beforeAll(async () => {
    ca = await newCa(store, 'EdDSA');
  });

  it('round-trips, in 64-column lines that node reads', () => {
    const pem = toPem(ca.root, 'CERTIFICATE');
    expect(
      pem
        .split('\n')
        .slice(1, -3)
        .every((line) => line.length === 64),
    ).toBe(true);
    expect(new X509Certificate(pem).raw).toEqual(ca.root);
    expect(fromPem(pem, 'CERTIFICATE')).toEqual(ca.root);
    expect(
      fromPem(`explanatory text\n${pem.replace(/\n/g, '\r\n')}trailer`, 'CERTIFICATE'),
    ).toEqual(ca.root);
  });

  it('reads a chain with fromPemAll, in order, and refuses it in fromPem', async () => {
    const leaf = await newLeaf(store, ca, 'ES256');
    const text = toPem(leaf.certificate, 'CERTIFICATE') + toPem(ca.root, 'CERTIFICATE');
    expect(fromPemAll(text, 'CERTIFICATE')).toEqual([leaf.certificate, ca.root]);
    expect(() => fromPem(text, 'CERTIFICATE')).toThrow(
      expect.objectContaining({ code: 'ERR_CHAIN_INVALID' }),
    );
  });

  it('refuses another label, no block, and bad base64', () => {
    const pem = toPem(ca.root, 'CERTIFICATE');
    expect(() => fromPem(pem, 'CERTIFICATE REQUEST')).toThrow(
      expect.objectContaining({ code: 'ERR_CSR_INVALID' }),
    );
    expect(() => fromPem('', 'CERTIFICATE')).toThrow(
      expect.objectContaining({ code: 'ERR_CHAIN_INVALID' }),
    );
    const broken = pem.replace(/\n([A-Za-z0-9+/]{4})/, '\n====');
    expect(() => fromPem(broken, 'CERTIFICATE')).toThrow(
      expect.objectContaining({ code: 'ERR_CHAIN_INVALID' }),
    );
  });
});

it('spkiOf helper matches the certified key', async () => {
  const ca = await newCa(store, 'ES256');
  const leaf = await newLeaf(store, ca, 'ES384');
  expect(Buffer.from(parse(leaf.certificate).publicKey.rawData)).toEqual(
    spkiOf(leaf.key.publicJwk),
  );
});
