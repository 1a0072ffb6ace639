/**
 * An in-memory KeyStore for unit tests: real key pairs from node:crypto, signatures in the JWS
 * encoding of each algorithm, kids that are RFC 7638 thumbprints. Nothing here touches PKCS#11.
 */
import {
  constants,
  createSign,
  generateKeyPairSync,
  sign as cryptoSign,
  type KeyObject,
} from 'node:crypto';
import { calculateJwkThumbprint } from 'jose';
import { HsmintError } from '../../core/errors.js';
import type { Algorithm } from '../../core/keys/algorithms.js';
import { keyLabel, type KeyInfo, type KeyStore, type PublicJwk } from '../../core/keys/keystore.js';

interface MemoryKey {
  info: KeyInfo;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export interface MemoryKeyStoreOptions {
  /** The clock that stamps new keys (their label and createdAt). */
  now?: () => Date;
}

function generatePair(alg: Algorithm): { privateKey: KeyObject; publicKey: KeyObject } {
  switch (alg) {
    case 'ES256':
      return generateKeyPairSync('ec', { namedCurve: 'P-256' });
    case 'ES384':
      return generateKeyPairSync('ec', { namedCurve: 'P-384' });
    case 'PS256':
    case 'RS256':
      return generateKeyPairSync('rsa', { modulusLength: 2048 });
    case 'EdDSA':
      return generateKeyPairSync('ed25519');
  }
}

/** Signs a JWS signing input the way each algorithm's JWS encoding wants it. */
export function signWith(alg: Algorithm, privateKey: KeyObject, data: Buffer): Buffer {
  switch (alg) {
    case 'ES256':
      return createSign('sha256').update(data).sign({ key: privateKey, dsaEncoding: 'ieee-p1363' });
    case 'ES384':
      return createSign('sha384').update(data).sign({ key: privateKey, dsaEncoding: 'ieee-p1363' });
    case 'PS256':
      return createSign('sha256')
        .update(data)
        .sign({ key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    case 'RS256':
      return createSign('sha256').update(data).sign(privateKey);
    case 'EdDSA':
      return cryptoSign(null, data, privateKey);
  }
}

export async function publicJwkOf(alg: Algorithm, publicKey: KeyObject): Promise<PublicJwk> {
  const jwk = publicKey.export({ format: 'jwk' });
  const kid = await calculateJwkThumbprint(jwk, 'sha256');
  return { ...jwk, kid, alg, use: 'sig' };
}

export class MemoryKeyStore implements KeyStore {
  private readonly keys: MemoryKey[] = [];
  private readonly now: () => Date;
  /** Every call to sign(), failed ones included. */
  signCalls = 0;
  /** When set, sign() throws it (a stand-in for a CKR_* failure on a real token). */
  signError: Error | undefined;
  closed = false;

  constructor(options: MemoryKeyStoreOptions = {}) {
    this.now = options.now ?? (() => new Date());
  }

  async list(): Promise<KeyInfo[]> {
    return this.keys.map((key) => key.info);
  }

  async reload(): Promise<void> {}

  async generate(alg: Algorithm, options: { label?: string } = {}): Promise<KeyInfo> {
    const { privateKey, publicKey } = generatePair(alg);
    const publicJwk = await publicJwkOf(alg, publicKey);
    const createdAt = this.now();
    const info: KeyInfo = {
      kid: publicJwk.kid,
      alg,
      label: options.label ?? keyLabel(alg, createdAt),
      createdAt,
      publicJwk,
    };
    this.keys.push({ info, privateKey, publicKey });
    return info;
  }

  async sign(kid: string, signingInput: Buffer): Promise<Buffer> {
    this.signCalls += 1;
    if (this.signError) throw this.signError;
    const key = this.keys.find((candidate) => candidate.info.kid === kid);
    if (!key) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} in the memory store`);
    return signWith(key.info.alg, key.privateKey, signingInput);
  }

  async destroy(kid: string): Promise<void> {
    const at = this.keys.findIndex((candidate) => candidate.info.kid === kid);
    if (at === -1) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} in the memory store`);
    this.keys.splice(at, 1);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Test-only: the public half, e.g. to attempt HMAC key confusion with its bytes. */
  publicKeyOf(kid: string): KeyObject {
    const key = this.keys.find((candidate) => candidate.info.kid === kid);
    if (!key) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} in the memory store`);
    return key.publicKey;
  }
}
