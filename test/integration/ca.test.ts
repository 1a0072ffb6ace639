/**
 * The internal CA and the offline bundle with real keys on a real SoftHSM token: the CA key
 * (ES256) and a signing key (EdDSA) are generated on the token and every signature, of the
 * root, the leaf, the CSR and the bundle, is made there.
 */
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBundle, verifyBundle } from '../../core/ca/bundle.js';
import {
  createKeyRequest,
  createRootCertificate,
  issueKeyCertificate,
  signKeyRequest,
  verifyChain,
} from '../../core/ca/certificates.js';
import { signerFor, type Signer } from '../../core/ca/signer.js';
import { loadConfig } from '../../core/config.js';
import type { KeyInfo } from '../../core/keys/keystore.js';
import { openKeyStore } from '../../core/open.js';
import type { Pkcs11KeyStore } from '../../core/pkcs11/keystore.js';
import { HAS_OPENSSL, opensslVerify, opensslVerifyRequest, rejectionCode } from '../support/ca.js';
import { makeToken, type TestToken } from './support/harness.js';

describe('the internal CA on SoftHSM', () => {
  let token: TestToken;
  let store: Pkcs11KeyStore;
  let caKey: KeyInfo;
  let leafKey: KeyInfo;
  let ca: Signer;
  let root: Buffer;
  const now = new Date();
  const notBefore = new Date(now.getTime() - 60 * 60 * 1000);
  const notAfter = new Date(now.getTime() + 365 * 24 * 60 * 60 * 1000);

  beforeAll(async () => {
    token = await makeToken('ES256');
    ({ store } = await openKeyStore(loadConfig(token.config)));
    caKey = await store.generate('ES256');
    leafKey = await store.generate('EdDSA');
    ca = signerFor(store, caKey);
    root = await createRootCertificate({
      signer: ca,
      subject: 'CN=hsmint SoftHSM root CA,O=hsmint tests',
      notBefore,
      notAfter,
    });
  });
  afterAll(async () => {
    await store?.close();
    await token?.cleanup();
  });

  it('keeps the CA private key on the token, not extractable', () => {
    expect(store.protection(caKey.kid)).toMatchObject({
      extractable: false,
      sensitive: true,
      neverExtractable: true,
    });
  });

  it('makes a root and a leaf that verifyChain, node and openssl accept', async () => {
    const leaf = await issueKeyCertificate({
      caSigner: ca,
      caCertificate: root,
      subjectJwk: leafKey.publicJwk,
      notBefore,
      notAfter,
    });
    const jwk = await verifyChain([leaf, root], root, now);
    expect(jwk).toMatchObject({ kid: leafKey.kid, alg: 'EdDSA', kty: 'OKP', crv: 'Ed25519' });
    expect(jwk.x).toBe(leafKey.publicJwk.x);

    const rootCertificate = new X509Certificate(root);
    const leafCertificate = new X509Certificate(leaf);
    expect(rootCertificate.ca).toBe(true);
    expect(rootCertificate.verify(rootCertificate.publicKey)).toBe(true);
    expect(leafCertificate.verify(rootCertificate.publicKey)).toBe(true);
    expect(leafCertificate.checkIssued(rootCertificate)).toBe(true);
    expect(leafCertificate.ca).toBe(false);
    if (HAS_OPENSSL) expect(opensslVerify(root, leaf, now)).toMatchObject({ ok: true });
  });

  it('signs a CSR made on the token with the CA on the token', async () => {
    const csr = await createKeyRequest({
      signer: signerFor(store, leafKey),
      subjectJwk: leafKey.publicJwk,
    });
    if (HAS_OPENSSL) expect(opensslVerifyRequest(csr)).toBe(true);
    const leaf = await signKeyRequest({
      caSigner: ca,
      caCertificate: root,
      csr,
      notBefore,
      notAfter,
    });
    expect((await verifyChain([leaf], root, now)).kid).toBe(leafKey.kid);
    expect(new X509Certificate(leaf).verify(new X509Certificate(root).publicKey)).toBe(true);
  });

  it('signs a bundle on the token that verifies with only the root pinned', async () => {
    const leaf = await issueKeyCertificate({
      caSigner: ca,
      caCertificate: root,
      subjectJwk: leafKey.publicJwk,
      notBefore,
      notAfter,
    });
    const keys = (await store.list()).map((key) => key.publicJwk);
    const text = await createBundle({
      version: 1,
      issuer: 'urn:hsmint:test',
      jwks: { keys },
      chain: [leaf, root],
      signer: signerFor(store, leafKey),
      now,
    });
    const bundle = await verifyBundle(text, { pinnedRoot: root, now });
    expect(bundle.jwks.keys.map((key) => key.kid).sort()).toEqual(
      keys.map((key) => key.kid).sort(),
    );
    expect(await rejectionCode(verifyBundle(text, { pinnedRoot: root, now, minVersion: 1 }))).toBe(
      'ERR_BUNDLE_ROLLBACK',
    );
  });

  it('refuses a leaf that another CA on the same token issued', async () => {
    const otherCa = signerFor(store, await store.generate('ES256'));
    const otherRoot = await createRootCertificate({
      signer: otherCa,
      subject: 'CN=hsmint SoftHSM root CA,O=hsmint tests',
      notBefore,
      notAfter,
    });
    const leaf = await issueKeyCertificate({
      caSigner: otherCa,
      caCertificate: otherRoot,
      subjectJwk: leafKey.publicJwk,
      notBefore,
      notAfter,
    });
    expect(await rejectionCode(verifyChain([leaf, otherRoot], root, now))).toBe(
      'ERR_CHAIN_INVALID',
    );
    expect(new X509Certificate(leaf).verify(new X509Certificate(root).publicKey)).toBe(false);
  });
});
