import { randomBytes } from 'node:crypto';
import { HsmintError } from '../errors.js';
import type { KeyInfo, KeyStore } from '../keys/keystore.js';
import { RESERVED_CLAIMS } from '../protocol.js';
import type { Algorithm } from '../keys/algorithms.js';

export interface MintInput {
  issuer: string;
  audience: string | string[];
  subject?: string;
  scope?: string[];
  /** Extra claims, already checked against the reserved names by the protocol parser. */
  claims?: Record<string, unknown>;
  /** The signing key's certificate chain (base64 DER, leaf first) for the header, when asked. */
  x5c?: string[];
  /** Who minted it (`azp` and the `hsmint` object), set by the daemon. */
  minter?: { azp: string; hsmint: Record<string, unknown> };
  ttlSeconds: number;
  now: Date;
}

export interface MintedToken {
  token: string;
  jti: string;
  kid: string;
  alg: Algorithm;
  iat: number;
  exp: number;
}

/**
 * 128-bit jtis cut from one 4 KiB draw of the CSPRNG: a draw per token cost more than the rest
 * of the claims together. Each slice is used once and the pool is refilled when spent.
 */
const JTI_BYTES = 16;
let jtiPool = Buffer.alloc(0);
let jtiOffset = 0;

function nextJti(): string {
  if (jtiOffset + JTI_BYTES > jtiPool.length) {
    jtiPool = randomBytes(256 * JTI_BYTES);
    jtiOffset = 0;
  }
  const jti = jtiPool.toString('base64url', jtiOffset, jtiOffset + JTI_BYTES);
  jtiOffset += JTI_BYTES;
  return jti;
}

const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A token whose claims are fixed and whose signing input is built, not yet signed. */
export interface PreparedToken {
  signingInput: string;
  jti: string;
  kid: string;
  alg: Algorithm;
  iat: number;
  exp: number;
}

/**
 * Builds the JWS signing input here, before the token signs it: the daemon alone decides the
 * header, `iss`, `iat`, `nbf`, `exp` and `jti`, and it knows them all (for the audit record)
 * before the signature exists.
 */
export function prepareToken(key: KeyInfo, input: MintInput): PreparedToken {
  const iat = Math.floor(input.now.getTime() / 1000);
  const exp = iat + input.ttlSeconds;
  const jti = nextJti();
  const header = {
    alg: key.alg,
    typ: 'JWT',
    kid: key.kid,
    ...(input.x5c ? { x5c: input.x5c } : {}),
  };
  const extra = input.claims ?? {};
  // The parser refuses these already; a second check here keeps the guarantee local to minting.
  const shadowing = Object.keys(extra).find((name) => RESERVED_CLAIMS.has(name));
  if (shadowing !== undefined)
    throw new HsmintError('ERR_RESERVED_CLAIM', `claim ${shadowing} is set by the daemon only`);
  const payload = {
    iss: input.issuer,
    ...(input.subject === undefined ? {} : { sub: input.subject }),
    aud: input.audience,
    iat,
    nbf: iat,
    exp,
    jti,
    ...(input.scope && input.scope.length > 0 ? { scope: input.scope.join(' ') } : {}),
    ...(input.minter === undefined ? {} : { azp: input.minter.azp, hsmint: input.minter.hsmint }),
    ...extra,
  };
  return {
    signingInput: `${encode(header)}.${encode(payload)}`,
    jti,
    kid: key.kid,
    alg: key.alg,
    iat,
    exp,
  };
}

/** Has the token sign a prepared token; the private key never leaves the token. */
export async function signToken(store: KeyStore, prepared: PreparedToken): Promise<MintedToken> {
  const { signingInput, ...claims } = prepared;
  const signature = await store.sign(prepared.kid, Buffer.from(signingInput, 'ascii'));
  return { token: `${signingInput}.${signature.toString('base64url')}`, ...claims };
}

/** prepareToken then signToken. */
export async function mintToken(
  store: KeyStore,
  key: KeyInfo,
  input: MintInput,
): Promise<MintedToken> {
  return signToken(store, prepareToken(key, input));
}
