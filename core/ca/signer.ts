import type { Algorithm } from '../keys/algorithms.js';
import type { KeyInfo, KeyStore, PublicJwk } from '../keys/keystore.js';
import {
  TAG,
  children,
  encodeElement,
  encodeUnsignedInteger,
  readElement,
  readOid,
  readSingle,
  readUnsignedInteger,
  type DerElement,
} from './der.js';

/**
 * Something that signs with a key it never hands out: a key on a token, seen through its
 * KeyStore. Signatures are in the JWS encoding of `alg` (ECDSA: r||s of fixed width; RSA
 * PKCS#1 v1.5 or PSS with SHA-256 and a 32-byte salt; Ed25519: the raw 64 bytes), whatever the
 * bytes are for: a JWS signing input, or the to-be-signed part of a certificate or CSR.
 */
export interface Signer {
  alg: Algorithm;
  publicJwk: PublicJwk;
  sign(data: Buffer): Promise<Buffer>;
}

/** The Signer for one key of a store: every signature is made by the store (the token). */
export function signerFor(store: KeyStore, key: KeyInfo): Signer {
  return {
    alg: key.alg,
    publicJwk: key.publicJwk,
    sign: (data) => store.sign(key.kid, data),
  };
}

export interface X509SignatureAlgorithm {
  /** The name in RFC 5758, RFC 4055 and RFC 8410. */
  name: string;
  /** The AlgorithmIdentifier OID. */
  oid: string;
  /** The WebCrypto parameters @peculiar/x509 turns into this AlgorithmIdentifier. */
  webCrypto: Record<string, string | number>;
  /** ECDSA only: octets of r and of s in the JWS encoding. */
  ecdsaSize?: number;
}

const OID = {
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  rsassaPss: '1.2.840.113549.1.1.10',
  mgf1: '1.2.840.113549.1.1.8',
  sha256: '2.16.840.1.101.3.4.2.1',
  ed25519: '1.3.101.112',
} as const;

/** How each JWS algorithm signs an X.509 certificate or CSR. */
export const X509_SIGNATURE_ALGORITHMS: Readonly<Record<Algorithm, X509SignatureAlgorithm>> = {
  ES256: {
    name: 'ecdsa-with-SHA256',
    oid: OID.ecdsaWithSha256,
    webCrypto: { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' },
    ecdsaSize: 32,
  },
  ES384: {
    name: 'ecdsa-with-SHA384',
    oid: OID.ecdsaWithSha384,
    webCrypto: { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' },
    ecdsaSize: 48,
  },
  RS256: {
    name: 'sha256WithRSAEncryption',
    oid: OID.sha256WithRsa,
    webCrypto: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
  },
  PS256: {
    name: 'RSASSA-PSS (SHA-256, MGF1 with SHA-256, salt 32)',
    oid: OID.rsassaPss,
    webCrypto: { name: 'RSA-PSS', hash: 'SHA-256', saltLength: 32 },
  },
  EdDSA: {
    name: 'Ed25519',
    oid: OID.ed25519,
    webCrypto: { name: 'Ed25519' },
  },
};

/**
 * The JWS algorithm an X.509 AlgorithmIdentifier (DER) stands for, or undefined for anything
 * else: other hashes, other PSS parameters, parameters where there must be none.
 */
export function algorithmOfX509(algorithmIdentifier: Buffer): Algorithm | undefined {
  try {
    const parts = children(readSingle(algorithmIdentifier, TAG.SEQUENCE));
    const [oidElement, parameters, ...rest] = parts;
    if (!oidElement || rest.length > 0) return undefined;
    switch (readOid(oidElement)) {
      case OID.ecdsaWithSha256:
        return parameters === undefined ? 'ES256' : undefined;
      case OID.ecdsaWithSha384:
        return parameters === undefined ? 'ES384' : undefined;
      case OID.ed25519:
        return parameters === undefined ? 'EdDSA' : undefined;
      case OID.sha256WithRsa:
        // RFC 4055 wants NULL parameters; some encoders leave them out.
        return parameters === undefined || isNull(parameters) ? 'RS256' : undefined;
      case OID.rsassaPss:
        return parameters !== undefined && isPss256(parameters) ? 'PS256' : undefined;
      default:
        return undefined;
    }
  } catch {
    return undefined;
  }
}

function isNull(element: DerElement): boolean {
  return element.tag === TAG.NULL && element.value.length === 0;
}

/** An AlgorithmIdentifier for SHA-256, with NULL or absent parameters (RFC 4055 allows both). */
function isSha256(element: DerElement): boolean {
  if (element.tag !== TAG.SEQUENCE) return false;
  const [oid, parameters, ...rest] = children(element);
  return (
    oid !== undefined &&
    rest.length === 0 &&
    readOid(oid) === OID.sha256 &&
    (parameters === undefined || isNull(parameters))
  );
}

/** RSASSA-PSS-params of exactly SHA-256, MGF1 with SHA-256, a 32-byte salt, trailer 1. */
function isPss256(parameters: DerElement): boolean {
  if (parameters.tag !== TAG.SEQUENCE) return false;
  let hash = false;
  let mgf = false;
  let salt = false;
  let last = -1;
  for (const field of children(parameters)) {
    const number = field.tag - 0xa0;
    if (number < 0 || number > 3 || number <= last) return false;
    last = number;
    const inner = children(field);
    if (inner.length !== 1) return false;
    const value = inner[0]!;
    if (number === 0) hash = isSha256(value);
    else if (number === 1) {
      if (value.tag !== TAG.SEQUENCE) return false;
      const [oid, mgfHash, ...rest] = children(value);
      mgf =
        oid !== undefined &&
        mgfHash !== undefined &&
        rest.length === 0 &&
        readOid(oid) === OID.mgf1 &&
        isSha256(mgfHash);
    } else if (number === 2) {
      const octets = readUnsignedInteger(value);
      salt = octets.length === 1 && octets[0] === 32;
    } else {
      const octets = readUnsignedInteger(value);
      if (octets.length !== 1 || octets[0] !== 1) return false;
    }
  }
  // Absent hash and MGF mean SHA-1: never accepted.
  return hash && mgf && salt;
}

/**
 * A JWS signature in the encoding X.509 wants: ECDSA r||s becomes the DER
 * `SEQUENCE { INTEGER r, INTEGER s }`; RSA and Ed25519 signatures are the same bytes in both.
 */
export function toX509Signature(alg: Algorithm, signature: Buffer): Buffer {
  const size = X509_SIGNATURE_ALGORITHMS[alg].ecdsaSize;
  if (size === undefined) return signature;
  if (signature.length !== 2 * size)
    throw new RangeError(`an ${alg} signature is ${2 * size} bytes, not ${signature.length}`);
  return encodeElement(
    TAG.SEQUENCE,
    Buffer.concat([
      encodeUnsignedInteger(signature.subarray(0, size)),
      encodeUnsignedInteger(signature.subarray(size)),
    ]),
  );
}

/**
 * An X.509 signature in the JWS encoding: the strict inverse of toX509Signature. Refuses DER
 * that is not minimal, negative or oversized integers and trailing bytes.
 */
export function fromX509Signature(alg: Algorithm, signature: Buffer): Buffer {
  const size = X509_SIGNATURE_ALGORITHMS[alg].ecdsaSize;
  if (size === undefined) return signature;
  const { element, next } = readElement(signature);
  if (next !== signature.length || element.tag !== TAG.SEQUENCE)
    throw new RangeError('an ECDSA signature is one DER SEQUENCE');
  const parts = children(element);
  if (parts.length !== 2) throw new RangeError('an ECDSA signature holds exactly r and s');
  const out = Buffer.alloc(2 * size);
  parts.forEach((part, index) => {
    const magnitude = readUnsignedInteger(part);
    if (magnitude.length > size) throw new RangeError(`an ${alg} r or s is at most ${size} bytes`);
    magnitude.copy(out, index * size + size - magnitude.length);
  });
  return out;
}
