import { X509Certificate } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { KeyInfo, KeyStore } from '../keys/keystore.js';
import {
  createKeyRequest,
  fromPem,
  issueKeyCertificate,
  toPem,
  verifyChain,
} from './certificates.js';
import type { Signer } from './signer.js';
import { signerFor } from './signer.js';

export type CertifierEvent =
  | { event: 'ca.issue'; kid: string; notAfter: string }
  | { event: 'ca.request'; kid: string; path: string }
  | { event: 'ca.accept'; kid: string }
  | { event: 'ca.refuse'; kid: string; path: string; code: string };

export interface CertifierOptions {
  /** The pinned CA certificate (DER): every key certificate must chain to it. */
  root: Buffer;
  /** The CA key when it is online (on the daemon's token); absent when it is kept offline. */
  caSigner?: Signer;
  /** The signing keys' store: CSRs are signed by the key they are for. */
  store: KeyStore;
  /** Certificates (KID.pem) and, for an offline CA, requests (KID.csr.pem). */
  dir: string;
  /** How long a key certificate is valid: the longest a key can be in use. */
  validitySeconds: number;
  now: () => Date;
  report?: (event: CertifierEvent) => void;
}

/**
 * Gives every signing key a certificate from the internal CA. With the CA key online it
 * issues one when a key is born; with the CA offline it writes the key's CSR for an admin to
 * carry across the air gap, and takes the certificate that comes back (KID.pem in `dir`)
 * once it checks out against the pinned root. Verifiers then trust keys they have never seen.
 */
export class KeyCertifier {
  private readonly chains = new Map<string, Buffer[]>();

  constructor(private readonly options: CertifierOptions) {}

  /** The chain (leaf first, DER) of a key, when it has a certificate. */
  chainOf(kid: string): Buffer[] | undefined {
    return this.chains.get(kid);
  }

  /** Makes sure each key has a certificate, or a request waiting for one. */
  async ensure(keys: readonly KeyInfo[]): Promise<void> {
    const { dir, root, caSigner, store, now, report } = this.options;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    for (const key of keys) {
      if (this.chains.has(key.kid)) continue;
      const certificateFile = join(dir, `${key.kid}.pem`);
      const existing = await readFile(certificateFile, 'utf8').catch(() => undefined);
      if (existing !== undefined) {
        try {
          const leaf = fromPem(existing, 'CERTIFICATE');
          const certified = await verifyChain([leaf], root, now());
          if (certified.kid !== key.kid) throw new Error('the certificate is for another key');
          this.chains.set(key.kid, [leaf, root]);
          report?.({ event: 'ca.accept', kid: key.kid });
          continue;
        } catch (error) {
          report?.({
            event: 'ca.refuse',
            kid: key.kid,
            path: certificateFile,
            code: (error as { code?: string }).code ?? 'ERR_CHAIN_INVALID',
          });
        }
      }
      if (caSigner) {
        const caEnd = new X509Certificate(root).validTo;
        const wanted = new Date(now().getTime() + this.options.validitySeconds * 1000);
        const notAfter = new Date(Math.min(wanted.getTime(), new Date(caEnd).getTime()));
        const leaf = await issueKeyCertificate({
          caSigner,
          caCertificate: root,
          subjectJwk: key.publicJwk,
          notBefore: new Date(now().getTime() - 60_000),
          notAfter,
        });
        await writeFile(certificateFile, toPem(leaf, 'CERTIFICATE'), { mode: 0o644 });
        this.chains.set(key.kid, [leaf, root]);
        report?.({ event: 'ca.issue', kid: key.kid, notAfter: notAfter.toISOString() });
      } else {
        const requestFile = join(dir, `${key.kid}.csr.pem`);
        const pending = await readFile(requestFile, 'utf8').catch(() => undefined);
        if (pending === undefined) {
          const csr = await createKeyRequest({
            signer: signerFor(store, key),
            subjectJwk: key.publicJwk,
          });
          await writeFile(requestFile, toPem(csr, 'CERTIFICATE REQUEST'), { mode: 0o644 });
          report?.({ event: 'ca.request', kid: key.kid, path: requestFile });
        }
      }
    }
    for (const kid of [...this.chains.keys()])
      if (!keys.some((key) => key.kid === kid)) this.chains.delete(kid);
  }
}
