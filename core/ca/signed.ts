/**
 * Signature checks for certificates and CSRs, done with node:crypto on the exact signed bytes
 * and only for the five algorithms hsmint signs with. Internal to core/ca.
 */
import { constants, verify, type KeyObject } from 'node:crypto';
import type { Algorithm } from '../keys/algorithms.js';
import { TAG, children, readBitString, readSingle, type DerElement } from './der.js';
import { keyFits } from './keys.js';
import { algorithmOfX509, fromX509Signature } from './signer.js';

/** The parts of a signed X.509 structure (Certificate or CertificationRequest). */
export interface SignedParts {
  /** The to-be-signed element (TBSCertificate or CertificationRequestInfo), as signed. */
  tbs: DerElement;
  /** The outer AlgorithmIdentifier, DER. */
  algorithm: Buffer;
  signature: Buffer;
}

/** Splits `SEQUENCE { tbs, AlgorithmIdentifier, BIT STRING }`. Throws RangeError. */
export function splitSigned(der: Buffer): SignedParts {
  const parts = children(readSingle(der, TAG.SEQUENCE));
  const [tbs, algorithm, signature] = parts;
  if (parts.length !== 3 || tbs?.tag !== TAG.SEQUENCE || algorithm?.tag !== TAG.SEQUENCE)
    throw new RangeError('not a signed X.509 structure');
  return { tbs, algorithm: algorithm.raw, signature: readBitString(signature!) };
}

/** The fields of a TBSCertificate, by name (the optional unique IDs and extensions left out). */
export function tbsCertificateFields(tbs: DerElement): {
  signature: DerElement;
  issuer: DerElement;
  subject: DerElement;
  spki: DerElement;
} {
  const fields = children(tbs);
  const offset = fields[0]?.tag === 0xa0 ? 1 : 0; // [0] EXPLICIT version, absent for v1
  const [, signature, issuer, , subject, spki] = fields.slice(offset);
  if (!signature || !issuer || !subject || !spki) throw new RangeError('truncated TBSCertificate');
  return { signature, issuer, subject, spki };
}

/**
 * Checks the signature of a certificate or CSR with the issuer's `key`, under its outer
 * AlgorithmIdentifier, which must be one of the five hsmint algorithms and fit the key.
 * Returns that algorithm, or the reason it does not verify.
 */
export function checkSignature(
  key: KeyObject,
  parts: SignedParts,
): { ok: true; alg: Algorithm } | { ok: false; reason: string } {
  const alg = algorithmOfX509(parts.algorithm);
  if (alg === undefined) return { ok: false, reason: 'the signature algorithm is not allowed' };
  if (!keyFits(alg, key))
    return { ok: false, reason: `the signing key cannot make ${alg} signatures` };
  let valid: boolean;
  try {
    valid = verifyAs(alg, key, parts.tbs.raw, parts.signature);
  } catch {
    valid = false;
  }
  return valid ? { ok: true, alg } : { ok: false, reason: 'the signature does not verify' };
}

function verifyAs(alg: Algorithm, key: KeyObject, data: Buffer, signature: Buffer): boolean {
  // X.509 carries ECDSA signatures as DER; JWS as r||s.
  const jws = alg === 'ES256' || alg === 'ES384' ? fromX509Signature(alg, signature) : signature;
  return verifyJwsSignature(alg, key, data, jws);
}

/** A JWS-format signature check for one of hsmint's five algorithms, with node:crypto. */
export function verifyJwsSignature(
  alg: Algorithm,
  key: KeyObject,
  data: Buffer,
  signature: Buffer,
): boolean {
  switch (alg) {
    case 'ES256':
      return verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
    case 'ES384':
      return verify('sha384', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
    case 'RS256':
      return verify('sha256', data, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
    case 'PS256':
      return verify(
        'sha256',
        data,
        { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
        signature,
      );
    case 'EdDSA':
      return verify(null, data, key, signature);
  }
}
