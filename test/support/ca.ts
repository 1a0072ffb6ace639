/**
 * Helpers for the internal CA tests: signers on a key store, a CA with its root, leaves, and
 * certificates and requests the CA itself would never make (a leaf with CA:true, a CN that is
 * not the key's thumbprint...), signed for real by a Signer so only the flaw differs.
 */
import { spawnSync } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRootCertificate, issueKeyCertificate, toPem } from '../../core/ca/certificates.js';
import { children } from '../../core/ca/der.js';
import { splitSigned } from '../../core/ca/signed.js';
import { X509_SIGNATURE_ALGORITHMS, signerFor, type Signer } from '../../core/ca/signer.js';
import { signerCrypto, x509 } from '../../core/ca/x509.js';
import { HsmintError } from '../../core/errors.js';
import type { Algorithm } from '../../core/keys/algorithms.js';
import type { KeyInfo, KeyStore, PublicJwk } from '../../core/keys/keystore.js';

export { x509 };

/** The code a promise rejects with, undefined when it resolves: tests assert on codes only. */
export async function rejectionCode(run: Promise<unknown>): Promise<string | undefined> {
  try {
    await run;
  } catch (error) {
    return error instanceof HsmintError ? error.code : `not an HsmintError: ${String(error)}`;
  }
  return undefined;
}

export const NOT_BEFORE = new Date('2026-01-01T00:00:00Z');
export const NOT_AFTER = new Date('2028-01-01T00:00:00Z');
/** A moment when every certificate made with the defaults above is valid. */
export const AT = new Date('2026-06-01T12:00:00Z');

export interface TestCa {
  signer: Signer;
  root: Buffer;
}

export interface TestLeaf {
  key: KeyInfo;
  signer: Signer;
  certificate: Buffer;
}

export async function newSigner(store: KeyStore, alg: Algorithm): Promise<Signer> {
  return signerFor(store, await store.generate(alg));
}

export async function newCa(
  store: KeyStore,
  alg: Algorithm,
  subject = 'CN=hsmint test root CA,O=hsmint tests',
): Promise<TestCa> {
  const signer = await newSigner(store, alg);
  const root = await createRootCertificate({
    signer,
    subject,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
  });
  return { signer, root };
}

export async function newLeaf(
  store: KeyStore,
  ca: TestCa,
  alg: Algorithm,
  validity: { notBefore?: Date; notAfter?: Date } = {},
): Promise<TestLeaf> {
  const key = await store.generate(alg);
  const certificate = await issueKeyCertificate({
    caSigner: ca.signer,
    caCertificate: ca.root,
    subjectJwk: key.publicJwk,
    notBefore: validity.notBefore ?? NOT_BEFORE,
    notAfter: validity.notAfter ?? NOT_AFTER,
  });
  return { key, signer: signerFor(store, key), certificate };
}

export function spkiOf(jwk: PublicJwk): Buffer {
  const { kty, crv, x, y, n, e } = jwk;
  const members = Object.fromEntries(
    Object.entries({ kty, crv, x, y, n, e }).filter(([, value]) => value !== undefined),
  ) as { kty: string };
  return createPublicKey({ key: members, format: 'jwk' }).export({ type: 'spki', format: 'der' });
}

/** The DER subject of a certificate, to name it as another certificate's issuer. */
export function subjectOf(certificate: Buffer): Buffer {
  return Buffer.from(new x509.X509Certificate(certificate).subjectName.toArrayBuffer());
}

export interface ForgeOptions {
  issuer: Signer;
  /** RFC 4514 text or DER; the subject itself by default (self-signed). */
  issuerName?: string | Buffer;
  subject: string;
  subjectJwk: PublicJwk;
  extensions: InstanceType<typeof x509.Extension>[];
  notBefore?: Date;
  notAfter?: Date;
}

/** Any certificate, signed by `issuer` exactly as the CA signs: only the content differs. */
export async function forgeCertificate(options: ForgeOptions): Promise<Buffer> {
  const { crypto, keys } = signerCrypto(options.issuer, spkiOf(options.issuer.publicJwk));
  const certificate = await x509.X509CertificateGenerator.create(
    {
      serialNumber: '01',
      subject: options.subject,
      issuer: new x509.Name(options.issuerName ?? options.subject),
      notBefore: options.notBefore ?? NOT_BEFORE,
      notAfter: options.notAfter ?? NOT_AFTER,
      publicKey: spkiOf(options.subjectJwk),
      signingKey: keys.privateKey,
      signingAlgorithm: X509_SIGNATURE_ALGORITHMS[options.issuer.alg].webCrypto as never,
      extensions: options.extensions,
    },
    crypto,
  );
  return Buffer.from(certificate.rawData);
}

/** Any certificate request, signed by `signer` for its own key. */
export async function forgeRequest(options: {
  signer: Signer;
  subject: string;
  extensions: InstanceType<typeof x509.Extension>[];
}): Promise<Buffer> {
  const { crypto, keys } = signerCrypto(options.signer, spkiOf(options.signer.publicJwk));
  const request = await x509.Pkcs10CertificateRequestGenerator.create(
    {
      name: options.subject,
      keys,
      signingAlgorithm: X509_SIGNATURE_ALGORITHMS[options.signer.alg].webCrypto as never,
      extensions: options.extensions,
    },
    crypto,
  );
  return Buffer.from(request.rawData);
}

/** The extensions the CA puts in a leaf, with changes. */
export function leafExtensions(
  overrides: { ca?: boolean; usages?: number; critical?: InstanceType<typeof x509.Extension> } = {},
): InstanceType<typeof x509.Extension>[] {
  return [
    new x509.BasicConstraintsExtension(overrides.ca ?? false, undefined, true),
    new x509.KeyUsagesExtension(overrides.usages ?? x509.KeyUsageFlags.digitalSignature, true),
    ...(overrides.critical ? [overrides.critical] : []),
  ];
}

/** The extensions of a CA certificate that allows `pathLength` intermediates below it. */
export function caExtensions(pathLength?: number): InstanceType<typeof x509.Extension>[] {
  return [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
  ];
}

/** A copy with one byte changed. */
export function flipByte(der: Buffer, index: number): Buffer {
  const copy = Buffer.from(der);
  copy[index] = copy[index]! ^ 0x01;
  return copy;
}

/** A copy whose serial number (inside the signed part) differs in its last byte. */
export function tamperSerial(certificate: Buffer): Buffer {
  const fields = children(splitSigned(certificate).tbs);
  const serial = fields[0]?.tag === 0xa0 ? fields[1]! : fields[0]!;
  const offset = serial.value.byteOffset - certificate.byteOffset + serial.value.length - 1;
  return flipByte(certificate, offset);
}

/** A copy whose subject CN (inside the signed part of a certificate or CSR) has one letter changed. */
export function tamperText(der: Buffer, text: string): Buffer {
  const at = der.indexOf(Buffer.from(text, 'latin1'));
  if (at === -1) throw new Error(`${text} is not in the DER`);
  return flipByte(der, at);
}

export const HAS_OPENSSL = spawnSync('openssl', ['version']).status === 0;

/** `openssl verify` of a leaf against a root at `at`, as an independent check. */
export function opensslVerify(
  root: Buffer,
  leaf: Buffer,
  at: Date,
): { ok: boolean; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'hsmint-ca-'));
  try {
    writeFileSync(join(dir, 'root.pem'), toPem(root, 'CERTIFICATE'));
    writeFileSync(join(dir, 'leaf.pem'), toPem(leaf, 'CERTIFICATE'));
    const result = spawnSync(
      'openssl',
      [
        'verify',
        '-x509_strict',
        '-attime',
        String(Math.floor(at.getTime() / 1000)),
        '-CAfile',
        join(dir, 'root.pem'),
        join(dir, 'leaf.pem'),
      ],
      { encoding: 'utf8' },
    );
    return { ok: result.status === 0, output: `${result.stdout}${result.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `openssl req -verify` of a CSR: true when its self-signature verifies. */
export function opensslVerifyRequest(csr: Buffer): boolean {
  const result = spawnSync('openssl', ['req', '-inform', 'DER', '-noout', '-verify'], {
    input: csr,
  });
  return result.status === 0;
}
