/**
 * hsmint's internal CA: a self-signed root for a CA key on a token, certificates for JWS
 * signing keys (issued directly, or from a CSR carried across an air gap), and the check a
 * verifier runs with only the root pinned. Every signature is made by a Signer, so no CA
 * private key is ever in this process.
 */
import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { HsmintError, type ErrorCode } from '../errors.js';
import { ALGORITHMS } from '../keys/algorithms.js';
import type { PublicJwk } from '../keys/keystore.js';
import { children } from './der.js';
import { jwkOf, keyFits, keyIdentifier, publicKeyOfJwk, spkiOf, type KeyJwk } from './keys.js';
import { checkSignature, splitSigned, tbsCertificateFields, type SignedParts } from './signed.js';
import { X509_SIGNATURE_ALGORITHMS, type Signer } from './signer.js';
import { signerCrypto, x509 } from './x509.js';

/**
 * A certified signing key as verifyChain returns it: the public JWK with `kid` (its RFC 7638
 * thumbprint, equal to the certificate's CN) and `use`. `alg` is set where the key type
 * implies it (P-256 ES256, P-384 ES384, Ed25519 EdDSA) and absent for RSA, which a
 * certificate does not tie to RS256 or PS256.
 */
export type CertifiedJwk = KeyJwk;

export interface RootCertificateInput {
  signer: Signer;
  /** RFC 4514 text, e.g. `CN=hsmint root CA,O=Example`. */
  subject: string;
  notBefore: Date;
  notAfter: Date;
  /** Hex, at most 20 octets as a positive integer; 16 random octets by default. */
  serial?: string;
}

export interface KeyCertificateInput {
  caSigner: Signer;
  /** DER. */
  caCertificate: Buffer;
  subjectJwk: PublicJwk;
  notBefore: Date;
  notAfter: Date;
  serial?: string;
}

export interface KeyRequestInput {
  /** The signing key the request is for: it signs the request to prove it holds the key. */
  signer: Signer;
  subjectJwk: PublicJwk;
}

export interface SignKeyRequestInput {
  caSigner: Signer;
  /** DER. */
  caCertificate: Buffer;
  /** DER. */
  csr: Buffer;
  notBefore: Date;
  notAfter: Date;
  serial?: string;
}

/** Chains longer than this are refused unread. */
export const MAX_CHAIN_LENGTH = 8;

const OID = {
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
} as const;
/** The extensions verifyChain understands; any other marked critical fails the chain. */
const UNDERSTOOD = new Set<string>(Object.values(OID));
const KID = /^[A-Za-z0-9_-]{43}$/;
const { KeyUsageFlags } = x509;

const fail = (code: ErrorCode, message: string, cause?: unknown): never => {
  throw new HsmintError(code, message, cause === undefined ? {} : { cause });
};

/** A self-signed root: CA, path length 0, keyCertSign and cRLSign, all critical. */
export async function createRootCertificate(input: RootCertificateInput): Promise<Buffer> {
  const { signer } = input;
  const name = parseName(input.subject);
  const { notBefore, notAfter } = validity(input.notBefore, input.notAfter);
  const spki = signerSpki(signer);
  return sign(signer, spki, {
    serialNumber: serialOf(input.serial),
    subject: name,
    issuer: name,
    notBefore,
    notAfter,
    publicKey: spki,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign, true),
      new x509.SubjectKeyIdentifierExtension(keyIdentifier(spki).toString('hex')),
    ],
  });
}

/** A certificate for a JWS signing key: subject `CN=<kid>`, not a CA, digitalSignature only. */
export async function issueKeyCertificate(input: KeyCertificateInput): Promise<Buffer> {
  const { subjectJwk } = input;
  let key: KeyObject;
  try {
    key = publicKeyOfJwk(subjectJwk);
  } catch (cause) {
    return fail('ERR_CA_INVALID', 'the subject key is not a usable public JWK', cause);
  }
  const jwk = await jwkOf(key);
  if (jwk.kid !== subjectJwk.kid)
    fail('ERR_CA_INVALID', `the subject key's kid ${subjectJwk.kid} is not its thumbprint`);
  if (!keyFits(subjectJwk.alg, key))
    fail('ERR_CA_INVALID', `the subject key is not an ${subjectJwk.alg} key`);
  return issue({ ...input, subjectSpki: spkiOf(key), subjectKid: jwk.kid });
}

/** A PKCS#10 request for a signing key, signed by that key, for a CA kept offline. */
export async function createKeyRequest(input: KeyRequestInput): Promise<Buffer> {
  const { signer, subjectJwk } = input;
  if (subjectJwk.kid !== signer.publicJwk.kid)
    fail(
      'ERR_CA_INVALID',
      `the request is for ${subjectJwk.kid} but ${signer.publicJwk.kid} signs it`,
    );
  const spki = signerSpki(signer);
  const kid = (await jwkOf(createPublicKey({ key: spki, format: 'der', type: 'spki' }))).kid;
  if (kid !== subjectJwk.kid)
    fail('ERR_CA_INVALID', `the subject key's kid ${subjectJwk.kid} is not its thumbprint`);
  const { crypto, keys } = signerCrypto(signer, spki);
  let der: Buffer;
  try {
    const request = await x509.Pkcs10CertificateRequestGenerator.create(
      {
        name: `CN=${kid}`,
        keys,
        signingAlgorithm: X509_SIGNATURE_ALGORITHMS[signer.alg]
          .webCrypto as unknown as RequestAlgorithm,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
        ],
      },
      crypto,
    );
    der = Buffer.from(request.rawData);
  } catch (cause) {
    throw signingFailure(cause);
  }
  checkOwnSignature(signer, der);
  return der;
}

/**
 * The offline CA's side of the air gap: checks the request (its self-signature, a subject of
 * `CN=<its key's thumbprint>`, no CA asked for) and issues the same certificate
 * issueKeyCertificate would. Extensions the request asks for are never copied.
 */
export async function signKeyRequest(input: SignKeyRequestInput): Promise<Buffer> {
  let parts: SignedParts;
  let request: InstanceType<typeof x509.Pkcs10CertificateRequest>;
  let key: KeyObject;
  try {
    parts = splitSigned(input.csr);
    request = new x509.Pkcs10CertificateRequest(input.csr);
    // CertificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, [0] attributes }
    const spki = children(parts.tbs)[2];
    if (!spki) throw new RangeError('truncated CertificationRequestInfo');
    key = createPublicKey({ key: spki.raw, format: 'der', type: 'spki' });
  } catch (cause) {
    return fail('ERR_CSR_INVALID', 'the request is not a DER PKCS#10 certificate request', cause);
  }
  const checked = checkSignature(key, parts);
  if (!checked.ok)
    return fail('ERR_CSR_INVALID', `the request's self-signature: ${checked.reason}`);
  const jwk = await jwkOf(key);
  if (!isKeySubject(request.subjectName, jwk.kid))
    fail('ERR_CSR_INVALID', `the request's subject must be CN=${jwk.kid}, its key's thumbprint`);
  for (const extension of request.extensions) {
    if (extension.type === OID.basicConstraints) {
      if (new x509.BasicConstraintsExtension(extension.rawData).ca)
        fail('ERR_CSR_INVALID', 'the request asks for a CA certificate');
    } else if (extension.type === OID.keyUsage) {
      const usages = new x509.KeyUsagesExtension(extension.rawData).usages;
      if (usages & (KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign))
        fail('ERR_CSR_INVALID', 'the request asks to sign certificates or CRLs');
    }
  }
  return issue({ ...input, subjectSpki: spkiOf(key), subjectKid: jwk.kid });
}

/**
 * Checks a chain (leaf first, DER) against the one pinned root at time `at`: each certificate
 * signed by the next with an allowed algorithm and named by it, the last signed by the pinned
 * root or equal to it, all valid at `at`, CA flags and path lengths right, the leaf a
 * digitalSignature, non-CA certificate whose CN is its key's thumbprint. Returns the leaf's
 * public key. Fails with ERR_CHAIN_INVALID.
 */
export async function verifyChain(
  chain: readonly Buffer[],
  pinnedRoot: Buffer,
  at: Date,
): Promise<CertifiedJwk> {
  if (!(at instanceof Date) || Number.isNaN(at.getTime()))
    fail('ERR_CHAIN_INVALID', 'the verification time is not a valid date');
  if (chain.length === 0) fail('ERR_CHAIN_INVALID', 'the chain is empty');
  if (chain.length > MAX_CHAIN_LENGTH)
    fail('ERR_CHAIN_INVALID', `the chain has more than ${MAX_CHAIN_LENGTH} certificates`);
  const root = parseCertificate(pinnedRoot, 'the pinned root');
  const certificates = chain.map((der, index) => parseCertificate(der, `certificate ${index}`));
  // The chain may end with the root itself; the root is trusted because it is pinned, not
  // because the chain carries it.
  if (certificates.length > 1 && certificates.at(-1)!.der.equals(root.der)) certificates.pop();
  if (certificates.some((certificate) => certificate.der.equals(root.der)))
    fail('ERR_CHAIN_INVALID', 'the pinned root is not a signing key certificate');

  // Signatures and names first, root down, then what each CA may sign.
  const path = [...certificates, root];
  for (let index = path.length - 1; index >= 0; index--)
    checkCertificate(path[index]!, path[index + 1] ?? root, at);
  for (let index = 1; index < path.length; index++) checkCa(path[index]!, index - 1);

  const leaf = certificates[0]!;
  const basic = leaf.cert.getExtension(x509.BasicConstraintsExtension);
  if (basic?.ca) fail('ERR_CHAIN_INVALID', `${leaf.what} is a CA certificate, not a key's`);
  const usage = leaf.cert.getExtension(x509.KeyUsagesExtension);
  if (
    !usage ||
    !(usage.usages & KeyUsageFlags.digitalSignature) ||
    usage.usages & (KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign)
  )
    fail('ERR_CHAIN_INVALID', `${leaf.what} is not a digitalSignature, non-CA certificate`);
  if (!ALGORITHMS.some((alg) => keyFits(alg, leaf.key)))
    fail('ERR_CHAIN_INVALID', `${leaf.what} holds a key hsmint does not sign with`);
  const jwk = await jwkOf(leaf.key);
  if (!isKeySubject(leaf.cert.subjectName, jwk.kid))
    fail('ERR_CHAIN_INVALID', `${leaf.what}'s subject is not CN=${jwk.kid}, its key's thumbprint`);
  return jwk;
}

export type PemLabel = 'CERTIFICATE' | 'CERTIFICATE REQUEST';

/** RFC 7468 text of a DER certificate or request. */
export function toPem(der: Buffer, label: PemLabel): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** The one `label` block in PEM text, as DER; text around it is ignored, a second block refused. */
export function fromPem(text: string, label: PemLabel): Buffer {
  const blocks = fromPemAll(text, label);
  if (blocks.length !== 1)
    fail(pemCode(label), `expected one ${label} block, found ${blocks.length}`);
  return blocks[0]!;
}

/** Every `label` block in PEM text, in order (a chain file, leaf first). At least one. */
export function fromPemAll(text: string, label: PemLabel): Buffer[] {
  const blocks: Buffer[] = [];
  const pattern = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]*?)-----END \1-----/g;
  for (const match of text.matchAll(pattern)) {
    if (match[1] !== label) continue;
    const base64 = match[2]!.replace(/\r?\n/g, '');
    const der = Buffer.from(base64, 'base64');
    if (der.length === 0 || der.toString('base64') !== base64)
      fail(pemCode(label), `a ${label} block is not valid base64`);
    blocks.push(der);
  }
  if (blocks.length === 0) fail(pemCode(label), `no ${label} block found`);
  return blocks;
}

// ---------------------------------------------------------------------------------------------

interface ParsedCertificate {
  what: string;
  der: Buffer;
  parts: SignedParts;
  fields: ReturnType<typeof tbsCertificateFields>;
  cert: InstanceType<typeof x509.X509Certificate>;
  key: KeyObject;
}

function parseCertificate(der: Buffer, what: string): ParsedCertificate {
  try {
    const parts = splitSigned(der);
    const fields = tbsCertificateFields(parts.tbs);
    const cert = new x509.X509Certificate(der);
    const key = createPublicKey({ key: fields.spki.raw, format: 'der', type: 'spki' });
    return { what, der, parts, fields, cert, key };
  } catch (cause) {
    return fail('ERR_CHAIN_INVALID', `${what} is not a DER X.509 certificate`, cause);
  }
}

/** Signature, names, validity and extensions of `certificate` as issued by `issuer`. */
function checkCertificate(
  certificate: ParsedCertificate,
  issuer: ParsedCertificate,
  at: Date,
): void {
  const { what, cert, fields, parts } = certificate;
  if (!fields.signature.raw.equals(parts.algorithm))
    fail('ERR_CHAIN_INVALID', `${what} names two different signature algorithms`);
  if (!fields.issuer.raw.equals(issuer.fields.subject.raw))
    fail('ERR_CHAIN_INVALID', `${what} is not issued by ${issuer.what}`);
  const checked = checkSignature(issuer.key, parts);
  if (!checked.ok)
    fail('ERR_CHAIN_INVALID', `${what} is not signed by ${issuer.what}: ${checked.reason}`);
  if (at < cert.notBefore)
    fail('ERR_CHAIN_INVALID', `${what} is not valid before ${cert.notBefore.toISOString()}`);
  if (at > cert.notAfter)
    fail('ERR_CHAIN_INVALID', `${what} expired at ${cert.notAfter.toISOString()}`);
  const seen = new Set<string>();
  for (const extension of cert.extensions) {
    if (seen.has(extension.type))
      fail('ERR_CHAIN_INVALID', `${what} repeats extension ${extension.type}`);
    seen.add(extension.type);
    if (extension.critical && !UNDERSTOOD.has(extension.type))
      fail('ERR_CHAIN_INVALID', `${what} has critical extension ${extension.type}, not understood`);
  }
}

/** A CA certificate that may sign certificates with `below` intermediates under it. */
function checkCa(certificate: ParsedCertificate, below: number): void {
  const { what, cert } = certificate;
  const basic = cert.getExtension(x509.BasicConstraintsExtension);
  if (!basic?.ca) fail('ERR_CHAIN_INVALID', `${what} is not a CA certificate`);
  const usage = cert.getExtension(x509.KeyUsagesExtension);
  if (usage && !(usage.usages & KeyUsageFlags.keyCertSign))
    fail('ERR_CHAIN_INVALID', `${what} may not sign certificates (no keyCertSign)`);
  if (basic!.pathLength !== undefined && below > basic!.pathLength)
    fail(
      'ERR_CHAIN_INVALID',
      `${what} allows ${basic!.pathLength} intermediates below it, not ${below}`,
    );
}

function isKeySubject(name: InstanceType<typeof x509.Name>, kid: string): boolean {
  const rdns = name.toJSON();
  if (rdns.length !== 1) return false;
  const entries = Object.entries(rdns[0]!);
  if (entries.length !== 1) return false;
  const [type, values] = entries[0]!;
  return type === 'CN' && values.length === 1 && values[0] === kid;
}

interface IssueInput {
  caSigner: Signer;
  caCertificate: Buffer;
  subjectSpki: Buffer;
  subjectKid: string;
  notBefore: Date;
  notAfter: Date;
  serial?: string;
}

async function issue(input: IssueInput): Promise<Buffer> {
  const { caSigner } = input;
  const { notBefore, notAfter } = validity(input.notBefore, input.notAfter);
  if (!KID.test(input.subjectKid)) fail('ERR_CA_INVALID', 'the subject kid is not a thumbprint');
  let ca: ParsedCertificate;
  try {
    ca = parseCertificate(input.caCertificate, 'the CA certificate');
  } catch (cause) {
    return fail('ERR_CA_INVALID', 'the CA certificate is not a DER X.509 certificate', cause);
  }
  const caSpki = signerSpki(caSigner);
  if (!spkiOf(ca.key).equals(caSpki))
    fail('ERR_CA_INVALID', `the CA certificate is not for the CA key ${caSigner.publicJwk.kid}`);
  const basic = ca.cert.getExtension(x509.BasicConstraintsExtension);
  const usage = ca.cert.getExtension(x509.KeyUsagesExtension);
  if (!basic?.ca || (usage && !(usage.usages & KeyUsageFlags.keyCertSign)))
    fail('ERR_CA_INVALID', 'the CA certificate may not sign certificates');
  if (notAfter > ca.cert.notAfter)
    fail(
      'ERR_CA_INVALID',
      `the certificate would outlive its CA (until ${ca.cert.notAfter.toISOString()})`,
    );
  const authorityKeyId =
    ca.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ??
    keyIdentifier(caSpki).toString('hex');
  return sign(caSigner, caSpki, {
    serialNumber: serialOf(input.serial),
    subject: new x509.Name(`CN=${input.subjectKid}`),
    issuer: new x509.Name(ca.fields.subject.raw),
    notBefore,
    notAfter,
    publicKey: input.subjectSpki,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(KeyUsageFlags.digitalSignature, true),
      new x509.AuthorityKeyIdentifierExtension(authorityKeyId),
      new x509.SubjectKeyIdentifierExtension(keyIdentifier(input.subjectSpki).toString('hex')),
    ],
  });
}

type CertificateAlgorithm = NonNullable<
  Parameters<typeof x509.X509CertificateGenerator.create>[0]['signingAlgorithm']
>;
type RequestAlgorithm = Parameters<
  typeof x509.Pkcs10CertificateRequestGenerator.create
>[0]['signingAlgorithm'];

type CertificateParams = Omit<
  Parameters<typeof x509.X509CertificateGenerator.create>[0],
  'signingKey' | 'signingAlgorithm' | 'signature'
>;

/** Builds and signs a certificate with `signer`, then checks the token's signature. */
async function sign(
  signer: Signer,
  signerSpkiDer: Buffer,
  params: CertificateParams,
): Promise<Buffer> {
  const { crypto, keys } = signerCrypto(signer, signerSpkiDer);
  let der: Buffer;
  try {
    const certificate = await x509.X509CertificateGenerator.create(
      {
        ...params,
        signingKey: keys.privateKey,
        signingAlgorithm: X509_SIGNATURE_ALGORITHMS[signer.alg]
          .webCrypto as unknown as CertificateAlgorithm,
      } as Parameters<typeof x509.X509CertificateGenerator.create>[0],
      crypto,
    );
    der = Buffer.from(certificate.rawData);
  } catch (cause) {
    throw signingFailure(cause);
  }
  checkOwnSignature(signer, der);
  return der;
}

/** A signature the token made that does not verify is a token fault, never a certificate. */
function checkOwnSignature(signer: Signer, der: Buffer): void {
  const checked = checkSignature(publicKeyOfJwk(signer.publicJwk), splitSigned(der));
  if (!checked.ok || checked.alg !== signer.alg)
    fail(
      'ERR_HSM_UNAVAILABLE',
      `the token's ${signer.alg} signature does not verify with ${signer.publicJwk.kid}`,
    );
}

function signingFailure(cause: unknown): unknown {
  return cause instanceof HsmintError
    ? cause
    : new HsmintError('ERR_CA_INVALID', 'the certificate could not be built', { cause });
}

function signerSpki(signer: Signer): Buffer {
  let key: KeyObject;
  try {
    key = publicKeyOfJwk(signer.publicJwk);
  } catch (cause) {
    return fail('ERR_CA_INVALID', `the signer's public key is not usable`, cause);
  }
  if (!keyFits(signer.alg, key))
    fail('ERR_CA_INVALID', `the signer's key is not an ${signer.alg} key`);
  return spkiOf(key);
}

function parseName(subject: string): InstanceType<typeof x509.Name> {
  let name: InstanceType<typeof x509.Name>;
  try {
    name = new x509.Name(subject);
  } catch (cause) {
    return fail(
      'ERR_CA_INVALID',
      `the subject ${JSON.stringify(subject)} is not a distinguished name`,
      cause,
    );
  }
  if (name.toJSON().length === 0)
    fail('ERR_CA_INVALID', `the subject ${JSON.stringify(subject)} is not like CN=name,O=org`);
  return name;
}

/** The validity period in whole seconds, as X.509 keeps it (fractions are dropped). */
function validity(notBefore: Date, notAfter: Date): { notBefore: Date; notAfter: Date } {
  for (const date of [notBefore, notAfter]) {
    if (!(date instanceof Date) || Number.isNaN(date.getTime()))
      fail('ERR_CA_INVALID', 'notBefore and notAfter must be valid dates');
  }
  const seconds = (date: Date) => new Date(Math.floor(date.getTime() / 1000) * 1000);
  if (seconds(notAfter) <= seconds(notBefore))
    fail('ERR_CA_INVALID', 'notAfter must be after notBefore');
  return { notBefore: seconds(notBefore), notAfter: seconds(notAfter) };
}

/** The serial as hex for @peculiar/x509: given (checked), or 16 random octets, positive. */
function serialOf(serial: string | undefined): string {
  if (serial === undefined) {
    const bytes = randomBytes(16);
    bytes[0] = 0x40 | (bytes[0]! & 0x3f); // positive, and exactly 16 octets once encoded
    return bytes.toString('hex');
  }
  if (!/^[0-9a-fA-F]{1,40}$/.test(serial)) fail('ERR_CA_INVALID', 'the serial must be hex');
  const digits = serial.replace(/^0+/, '');
  if (digits === '') fail('ERR_CA_INVALID', 'the serial must be positive');
  const magnitude = Buffer.from(digits.length % 2 === 0 ? digits : `0${digits}`, 'hex');
  // RFC 5280 4.1.2.2: at most 20 octets, counting the 0x00 that keeps the INTEGER positive.
  if (magnitude.length + (magnitude[0]! & 0x80 ? 1 : 0) > 20)
    fail('ERR_CA_INVALID', 'the serial is over 20 octets');
  return magnitude.toString('hex');
}

function pemCode(label: PemLabel): ErrorCode {
  return label === 'CERTIFICATE' ? 'ERR_CHAIN_INVALID' : 'ERR_CSR_INVALID';
}
