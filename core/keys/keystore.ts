import type { JWK } from 'jose';
import type { Algorithm } from './algorithms.js';

/** A public key as hsmint publishes it: RFC 7638 thumbprint as `kid`, `use` and `alg` set. */
export interface PublicJwk extends JWK {
  kid: string;
  alg: Algorithm;
  use: 'sig';
}

export interface KeyInfo {
  kid: string;
  alg: Algorithm;
  /** The object label on the token (`hsmint-ES256-20261128T140000Z`). */
  label: string;
  createdAt: Date;
  publicJwk: PublicJwk;
}

/** A store's signing sessions on its token, read for metrics. */
export interface SessionUse {
  /** Sessions open now, busy or idle. */
  open: number;
  /** Sessions carrying an operation now. */
  busy: number;
  /** The most sessions the store opens. */
  limit: number;
  /** Operations queued for a free session. */
  waiting: number;
}

/**
 * The narrow seam in front of a key store (after smallstep's KeyManager). Only core/pkcs11
 * implements it for real; tests add an in-memory one and run the same contract suite on both.
 */
export interface KeyStore {
  /** hsmint's keys on the store, oldest first. */
  list(): Promise<KeyInfo[]>;
  /** Re-reads the store, for keys made by another process (`hsmint keys create`). */
  reload(): Promise<void>;
  /**
   * Generates a non-exportable key pair on the store. `label` (from keyLabel) lets a caller
   * record its intent before generating, and find the key again after a crash.
   */
  generate(alg: Algorithm, options?: { label?: string }): Promise<KeyInfo>;
  /** Signs a JWS signing input and returns the JWS signature bytes for the key's algorithm. */
  sign(kid: string, signingInput: Buffer): Promise<Buffer>;
  destroy(kid: string): Promise<void>;
  /**
   * Resolves when the token answers a cheap call (never a signature: a key that wants a touch
   * would wait for a finger). The systemd watchdog pings only while it does. Stores with no
   * device behind them need not have it.
   */
  probe?(): Promise<void>;
  close(): Promise<void>;
  /** The sessions in use, for a store that keeps a pool of them (PKCS#11); read-only. */
  sessions?(): SessionUse;
}

/**
 * What a key is for, as the first part of its label: JWS signing keys, or the internal CA's
 * keys. Each store lists only its own kind, so a CA key never signs a token and never
 * appears in the JWKS.
 */
export const KEY_PURPOSES = { signing: 'hsmint', ca: 'hsmint-ca', audit: 'hsmint-audit' } as const;
export type KeyPurpose = keyof typeof KEY_PURPOSES;

const LABEL = /^(hsmint|hsmint-ca|hsmint-audit)-(ES256|ES384|PS256|RS256|EdDSA)-(\d{8}T\d{6}Z)$/;

/** Keys are named after their purpose, algorithm and creation time, so a token listing reads plainly. */
export function keyLabel(alg: Algorithm, createdAt: Date, purpose: KeyPurpose = 'signing'): string {
  const stamp = createdAt
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
  return `${KEY_PURPOSES[purpose]}-${alg}-${stamp}`;
}

export function parseKeyLabel(
  label: string,
  purpose: KeyPurpose = 'signing',
): { alg: Algorithm; createdAt: Date } | undefined {
  const match = LABEL.exec(label);
  if (!match || match[1] !== KEY_PURPOSES[purpose]) return undefined;
  const stamp = match[3]!;
  const iso = `${stamp.slice(0, 4)}-${stamp.slice(4, 6)}-${stamp.slice(6, 8)}T${stamp.slice(9, 11)}:${stamp.slice(11, 13)}:${stamp.slice(13, 15)}Z`;
  const createdAt = new Date(iso);
  if (Number.isNaN(createdAt.getTime())) return undefined;
  return { alg: match[2] as Algorithm, createdAt };
}
