/** Public keys as the CA handles them: JWK in, SPKI and KeyObject out, and back. Internal. */
import { createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, type JWK } from 'jose';
import type { Algorithm } from '../keys/algorithms.js';
import { TAG, children, readBitString, readSingle } from './der.js';

/** A certified public key: `kid` is its RFC 7638 thumbprint; see CertifiedJwk in certificates.ts. */
export interface KeyJwk extends JWK {
  kid: string;
  use: 'sig';
  alg?: Algorithm;
}

/** JWK members that only a private or secret key has. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;

export function hasPrivateMembers(jwk: object): boolean {
  return PRIVATE_MEMBERS.some((member) => Object.hasOwn(jwk, member));
}

/** The KeyObject of a public JWK; refuses private and secret keys rather than derive from them. */
export function publicKeyOfJwk(jwk: JWK): KeyObject {
  if (hasPrivateMembers(jwk))
    throw new TypeError('a private key was given where a public key belongs');
  return createPublicKey({ key: publicMembers(jwk), format: 'jwk' });
}

export function spkiOf(key: KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' });
}

/** The JWS algorithm a key type implies: none for RSA, which serves RS256 and PS256 alike. */
export function impliedAlgorithm(key: KeyObject): Algorithm | undefined {
  if (key.asymmetricKeyType === 'ed25519') return 'EdDSA';
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return 'ES256';
    if (curve === 'secp384r1') return 'ES384';
  }
  return undefined;
}

/**
 * Whether `key` can make `alg` signatures: the right curve, or RSA of 2048 to 8192 bits (the
 * upper bound keeps a hostile certificate from costing a verifier seconds).
 */
export function keyFits(alg: Algorithm, key: KeyObject): boolean {
  if (key.type !== 'public') return false;
  if (alg === 'RS256' || alg === 'PS256') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    return key.asymmetricKeyType === 'rsa' && bits >= 2048 && bits <= 8192;
  }
  return impliedAlgorithm(key) === alg;
}

/** The public JWK of a key, with its thumbprint as `kid`, and `alg` where the key type implies one. */
export async function jwkOf(key: KeyObject): Promise<KeyJwk> {
  const jwk = publicMembers(key.export({ format: 'jwk' }));
  const kid = await calculateJwkThumbprint(jwk, 'sha256');
  const alg = impliedAlgorithm(key);
  return { ...jwk, kid, use: 'sig', ...(alg === undefined ? {} : { alg }) };
}

/** The members RFC 7638 hashes for EC, OKP and RSA keys, nothing else. */
export function publicMembers(jwk: JWK | JsonWebKey): Record<string, string> {
  const members: Record<string, string> = {};
  for (const name of ['kty', 'crv', 'x', 'y', 'n', 'e'] as const) {
    const value = jwk[name];
    if (typeof value === 'string') members[name] = value;
  }
  return members;
}

/** RFC 5280 4.2.1.2 method (1): the SHA-1 of the subjectPublicKey BIT STRING's bits. */
export function keyIdentifier(spki: Buffer): Buffer {
  const [, subjectPublicKey] = children(readSingle(spki, TAG.SEQUENCE));
  if (!subjectPublicKey) throw new RangeError('SubjectPublicKeyInfo without a key');
  return createHash('sha1').update(readBitString(subjectPublicKey)).digest();
}
