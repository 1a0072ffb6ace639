/**
 * @peculiar/x509, loaded the way hsmint needs it, and a WebCrypto provider that signs with a
 * Signer. Internal to core/ca.
 *
 * - The library resolves its algorithms through tsyringe, which needs the Reflect metadata
 *   functions at load: ./reflect-metadata.js defines them and must be imported first.
 * - It hands `subtle.sign` the to-be-signed bytes and expects the WebCrypto encoding back,
 *   which for ECDSA is r||s, the JWS encoding too; it then writes the DER SEQUENCE itself,
 *   splitting r||s by a per-curve size table that is empty out of the box (everything is taken
 *   as P-256), so P-384 is registered here.
 */
import './reflect-metadata.js';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { HsmintError } from '../errors.js';
import { X509_SIGNATURE_ALGORITHMS, type Signer } from './signer.js';

type CryptoKey = webcrypto.CryptoKey;

x509.AsnEcSignatureFormatter.namedCurveSize.set('P-256', 32);
x509.AsnEcSignatureFormatter.namedCurveSize.set('P-384', 48);

export { x509 };

/** What @peculiar/x509 takes as `crypto`: node's WebCrypto, typed as the library declares it. */
export type X509Crypto = Parameters<typeof x509.X509CertificateGenerator.create>[1] & object;

/** Stand-ins for the key pair the generators expect; only this module's provider accepts them. */
export interface SignerKeys {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

/**
 * A crypto provider whose `subtle.sign` is `signer.sign` (so the private key stays on its
 * token) and whose `subtle.exportKey('spki')` of the stand-in public key is the signer's SPKI.
 * Every other call goes to node's WebCrypto.
 */
export function signerCrypto(
  signer: Signer,
  spki: Buffer,
): { crypto: X509Crypto; keys: SignerKeys } {
  const algorithm = { ...X509_SIGNATURE_ALGORITHMS[signer.alg].webCrypto };
  const common = { algorithm, extractable: false } as const;
  const privateKey = { ...common, type: 'private', usages: ['sign'] } as unknown as CryptoKey;
  const publicKey = { ...common, type: 'public', usages: ['verify'] } as unknown as CryptoKey;
  const subtle = webcrypto.subtle;
  const overrides: Record<string | symbol, unknown> = {
    async sign(
      params: { name: string },
      key: unknown,
      data: ArrayBuffer | ArrayBufferView,
    ): Promise<ArrayBuffer> {
      if (key !== privateKey || params.name !== algorithm.name)
        throw new TypeError(`this provider signs only with its ${signer.alg} signer`);
      // Copies both ways: the signer and the library never share a buffer.
      const tbs = Buffer.from(
        ArrayBuffer.isView(data)
          ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
          : new Uint8Array(data),
      );
      try {
        return new Uint8Array(await signer.sign(tbs)).buffer;
      } catch (cause) {
        if (cause instanceof HsmintError) throw cause;
        throw new HsmintError('ERR_HSM_UNAVAILABLE', `the ${signer.alg} signer failed`, { cause });
      }
    },
    async exportKey(format: string, key: unknown, ...rest: unknown[]): Promise<unknown> {
      if (key === publicKey) {
        if (format !== 'spki') throw new TypeError('the signer key exports only as spki');
        return new Uint8Array(spki).buffer;
      }
      if (key === privateKey) throw new TypeError('the signer key is not extractable');
      return (subtle.exportKey as (...args: unknown[]) => Promise<unknown>)(format, key, ...rest);
    },
  };
  const proxy = new Proxy(subtle, {
    get(target, property) {
      if (Object.hasOwn(overrides, property)) return overrides[property];
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? (value as Function).bind(target) : value;
    },
  });
  const crypto = {
    subtle: proxy,
    getRandomValues: webcrypto.getRandomValues.bind(webcrypto),
    randomUUID: webcrypto.randomUUID.bind(webcrypto),
  } as unknown as X509Crypto;
  return { crypto, keys: { privateKey, publicKey } };
}
