/**
 * Checkpoints seal the chain: a record whose signature, made on the token with the dedicated
 * audit key, covers the seq and hash of the chain head and the checkpoint's own time. The
 * signed bytes are a JWS signing input (`BASE64URL(header).BASE64URL(payload)`), so any JWS
 * library can check them (a test does, with jose), and the `typ` keeps a checkpoint from ever
 * passing for a token. Here they are checked with node:crypto, synchronously: a log holds
 * thousands of checkpoints, and WebCrypto's hop to the thread pool per call costs more than
 * the verification itself.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { verifyJwsSignature } from '../ca/signed.js';
import type { Signer } from '../ca/signer.js';
import { isAlgorithm, type Algorithm } from '../keys/algorithms.js';
import type { PublicJwk } from '../keys/keystore.js';

export const CHECKPOINT_TYP = 'hsmint-audit-checkpoint+jws';

/** The fields a checkpoint record holds beyond seq, ts, prev and event, in this order. */
export interface CheckpointFields {
  /** The seq of the record just before the checkpoint (0 in an empty log). */
  head_seq: number;
  /** hashLine of that record: the checkpoint's own `prev`. */
  head_hash: string;
  kid: string;
  alg: Algorithm;
  /** base64url JWS signature over checkpointSigningInput. */
  sig: string;
}

export const CHECKPOINT_FIELDS = [
  'seq',
  'ts',
  'prev',
  'event',
  'head_seq',
  'head_hash',
  'kid',
  'alg',
  'sig',
] as const;

function encodeParts(
  alg: string,
  kid: string,
  headSeq: number,
  headHash: string,
  ts: string,
): { protected: string; payload: string } {
  const header = JSON.stringify({ alg, kid, typ: CHECKPOINT_TYP });
  const payload = JSON.stringify({ head_seq: headSeq, head_hash: headHash, ts });
  return {
    protected: Buffer.from(header).toString('base64url'),
    payload: Buffer.from(payload).toString('base64url'),
  };
}

/** The exact bytes a checkpoint signature covers. */
export function checkpointSigningInput(
  alg: string,
  kid: string,
  headSeq: number,
  headHash: string,
  ts: string,
): Buffer {
  const parts = encodeParts(alg, kid, headSeq, headHash, ts);
  return Buffer.from(`${parts.protected}.${parts.payload}`);
}

/** Signs the head with the audit key (on the token). */
export async function signCheckpoint(
  signer: Signer,
  head: { seq: number; hash: string },
  ts: string,
): Promise<CheckpointFields> {
  const kid = signer.publicJwk.kid;
  const signature = await signer.sign(
    checkpointSigningInput(signer.alg, kid, head.seq, head.hash, ts),
  );
  return {
    head_seq: head.seq,
    head_hash: head.hash,
    kid,
    alg: signer.alg,
    sig: signature.toString('base64url'),
  };
}

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const B64URL = /^[A-Za-z0-9_-]+$/;

/** Whether `key` can make `alg` signatures: the right curve, or RSA of 2048 to 8192 bits. */
function keyFits(alg: Algorithm, key: KeyObject): boolean {
  const details = key.asymmetricKeyDetails;
  switch (alg) {
    case 'ES256':
      return key.asymmetricKeyType === 'ec' && details?.namedCurve === 'prime256v1';
    case 'ES384':
      return key.asymmetricKeyType === 'ec' && details?.namedCurve === 'secp384r1';
    case 'EdDSA':
      return key.asymmetricKeyType === 'ed25519';
    case 'RS256':
    case 'PS256': {
      const bits = details?.modulusLength ?? 0;
      return key.asymmetricKeyType === 'rsa' && bits >= 2048 && bits <= 8192;
    }
  }
}

export type CheckpointProblem = 'checkpoint-unknown-kid' | 'checkpoint-signature-invalid';

/** Checks checkpoint signatures against the audit public keys, offline. */
export class CheckpointKeys {
  private constructor(private readonly keys: Map<string, { alg: Algorithm; key: KeyObject }>) {}

  /**
   * Imports the audit public keys. Only hsmint's five algorithms are accepted (never `none` or
   * HMAC), each key only under its own `alg` and only if it fits it; private and secret keys
   * are refused. Throws TypeError.
   */
  static import(jwks: readonly PublicJwk[]): CheckpointKeys {
    const keys = new Map<string, { alg: Algorithm; key: KeyObject }>();
    for (const jwk of jwks) {
      if (typeof jwk.kid !== 'string' || jwk.kid === '')
        throw new TypeError('an audit key needs a kid');
      if (!isAlgorithm(jwk.alg))
        throw new TypeError(`audit key ${jwk.kid}: alg ${String(jwk.alg)} is not allowed`);
      if (PRIVATE_MEMBERS.some((member) => Object.hasOwn(jwk, member)))
        throw new TypeError(`audit key ${jwk.kid} is not a public key`);
      let key: KeyObject;
      try {
        key = createPublicKey({ key: { ...jwk }, format: 'jwk' });
      } catch (cause) {
        throw new TypeError(`audit key ${jwk.kid} is not a valid public JWK`, { cause });
      }
      if (!keyFits(jwk.alg, key))
        throw new TypeError(`audit key ${jwk.kid} cannot make ${jwk.alg} signatures`);
      keys.set(jwk.kid, { alg: jwk.alg, key });
    }
    return new CheckpointKeys(keys);
  }

  /** undefined when the signature verifies, else why not. */
  check(
    record: { ts: string } & Omit<CheckpointFields, 'alg'> & { alg: string },
  ): { problem: CheckpointProblem; message: string } | undefined {
    const entry = this.keys.get(record.kid);
    if (!entry)
      return {
        problem: 'checkpoint-unknown-kid',
        message: `the checkpoint is signed by ${record.kid}, which is not a trusted audit key`,
      };
    if (entry.alg !== record.alg)
      return {
        problem: 'checkpoint-signature-invalid',
        message: `audit key ${record.kid} signs ${entry.alg}, not ${record.alg}`,
      };
    // base64url has spare bits in its last character and Buffer.from skips stray characters:
    // only the one canonical spelling of the signature is accepted.
    const signature = Buffer.from(record.sig, 'base64url');
    if (!B64URL.test(record.sig) || signature.toString('base64url') !== record.sig)
      return {
        problem: 'checkpoint-signature-invalid',
        message: 'the checkpoint signature is not canonical base64url',
      };
    const data = checkpointSigningInput(
      entry.alg,
      record.kid,
      record.head_seq,
      record.head_hash,
      record.ts,
    );
    let valid: boolean;
    try {
      valid = verifyJwsSignature(entry.alg, entry.key, data, signature);
    } catch {
      valid = false;
    }
    return valid
      ? undefined
      : {
          problem: 'checkpoint-signature-invalid',
          message: `the checkpoint signature does not verify with audit key ${record.kid}`,
        };
  }
}
