import {
  decodeProtectedHeader,
  importJWK,
  jwtVerify,
  type JWTPayload,
  type ProtectedHeaderParameters,
} from 'jose';
import { errors as joseErrors } from 'jose';
import type { VerifyErrorCode } from '../errors.js';
import { isAlgorithm } from '../keys/algorithms.js';
import type { PublicJwk } from '../keys/keystore.js';

export type VerifyResult =
  | { valid: true; header: ProtectedHeaderParameters; claims: JWTPayload }
  | { valid: false; error: { code: VerifyErrorCode; message: string } };

export interface VerifierOptions {
  issuer: string;
  /** Seconds of clock skew tolerated on exp, nbf and iat. */
  clockSkew: number;
  now?: () => Date;
  /** A revoked jti is refused until the token would have expired anyway. */
  isRevoked?: (jti: unknown) => boolean;
  /** A revoked key is gone from the trusted keys; this gives its tokens their own code. */
  isKeyRevoked?: (kid: string) => boolean;
}

/** Larger than any token hsmint mints (claims are capped by the 64 KiB request body). */
export const MAX_TOKEN_LENGTH = 96 * 1024;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const KID = /^[A-Za-z0-9_-]{1,128}$/;

type VerificationKey = Awaited<ReturnType<typeof importJWK>>;

const fail = (code: VerifyErrorCode, message: string): VerifyResult => ({
  valid: false,
  error: { code, message },
});

/**
 * Verifies hsmint tokens against a set of public keys. Only the algorithms hsmint signs with
 * are accepted, and only the one that belongs to the named key: `none` and HMAC never pass,
 * and a key is never used under an algorithm it was not made for. Keys in the token header
 * (`jwk`, `jku`, `x5u`, `x5c`) are ignored: the keys are the issuer's, never the token's.
 */
export class TokenVerifier {
  private keys = new Map<string, { jwk: PublicJwk; key: VerificationKey }>();

  constructor(private options: VerifierOptions) {}

  setOptions(options: VerifierOptions): void {
    this.options = options;
  }

  /** Replaces the trusted keys (imported once here, not per request). */
  async setKeys(jwks: readonly PublicJwk[]): Promise<void> {
    const next = new Map<string, { jwk: PublicJwk; key: VerificationKey }>();
    for (const jwk of jwks) {
      const known = this.keys.get(jwk.kid);
      next.set(jwk.kid, known ?? { jwk, key: await importJWK(jwk, jwk.alg) });
    }
    this.keys = next;
  }

  async verify(token: unknown, expected: { audience?: string } = {}): Promise<VerifyResult> {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) {
      return fail(
        'ERR_TOKEN_MALFORMED',
        'expected a compact JWS: three base64url parts joined by dots',
      );
    }
    let header: ProtectedHeaderParameters;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      return fail('ERR_TOKEN_MALFORMED', 'the header is not base64url JSON');
    }
    const alg = header.alg;
    if (typeof alg !== 'string') return fail('ERR_TOKEN_MALFORMED', 'the header has no alg');
    if (!isAlgorithm(alg))
      return fail(
        'ERR_TOKEN_ALG_NOT_ALLOWED',
        `alg ${JSON.stringify(alg.slice(0, 32))} is not allowed`,
      );
    const kid = header.kid;
    if (typeof kid !== 'string' || !KID.test(kid))
      return fail('ERR_TOKEN_KID_UNKNOWN', 'the header has no usable kid');
    const entry = this.keys.get(kid);
    if (!entry) {
      if (this.options.isKeyRevoked?.(kid))
        return fail('ERR_TOKEN_KEY_REVOKED', `key ${kid} was revoked`);
      return fail('ERR_TOKEN_KID_UNKNOWN', `no trusted key has kid ${kid}`);
    }
    if (entry.jwk.alg !== alg)
      return fail('ERR_TOKEN_ALG_NOT_ALLOWED', `key ${kid} signs ${entry.jwk.alg}, not ${alg}`);

    const now = this.options.now?.() ?? new Date();
    try {
      const { payload, protectedHeader } = await jwtVerify(token, entry.key, {
        algorithms: [alg],
        issuer: this.options.issuer,
        ...(expected.audience === undefined ? {} : { audience: expected.audience }),
        clockTolerance: this.options.clockSkew,
        requiredClaims: ['iss', 'iat', 'exp', 'jti'],
        typ: 'JWT',
        currentDate: now,
      });
      // jose checks iat only against a max age; a token from the future is not valid yet.
      if (
        typeof payload.iat === 'number' &&
        payload.iat > now.getTime() / 1000 + this.options.clockSkew
      ) {
        return fail('ERR_TOKEN_NOT_YET_VALID', 'iat is in the future');
      }
      // Revocation and audit key on the jti: it must be a real identifier, not just present.
      if (typeof payload.jti !== 'string' || payload.jti === '' || payload.jti.length > 256) {
        return fail('ERR_TOKEN_CLAIM_INVALID', 'jti must be a non-empty string');
      }
      if (this.options.isRevoked?.(payload.jti))
        return fail('ERR_TOKEN_REVOKED', 'the token was revoked');
      return { valid: true, header: protectedHeader, claims: payload };
    } catch (error) {
      return classify(error);
    }
  }
}

function classify(error: unknown): VerifyResult {
  if (error instanceof joseErrors.JWTExpired)
    return fail('ERR_TOKEN_EXPIRED', 'the token has expired');
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case 'iss':
        return fail('ERR_TOKEN_ISSUER_MISMATCH', 'iss is not this issuer');
      case 'aud':
        return fail('ERR_TOKEN_AUDIENCE_MISMATCH', 'aud does not hold the expected audience');
      case 'nbf':
        return fail(
          error.reason === 'check_failed' ? 'ERR_TOKEN_NOT_YET_VALID' : 'ERR_TOKEN_CLAIM_INVALID',
          error.reason === 'check_failed' ? 'the token is not valid yet' : 'nbf is ill-typed',
        );
      default:
        return fail(
          'ERR_TOKEN_CLAIM_INVALID',
          `claim ${error.claim} is ${error.reason === 'missing' ? 'missing' : 'invalid'}`,
        );
    }
  }
  if (error instanceof joseErrors.JWSSignatureVerificationFailed)
    return fail('ERR_TOKEN_SIGNATURE_INVALID', 'the signature does not verify');
  if (error instanceof joseErrors.JOSEAlgNotAllowed)
    return fail('ERR_TOKEN_ALG_NOT_ALLOWED', 'alg is not allowed');
  if (error instanceof joseErrors.JOSENotSupported)
    return fail('ERR_TOKEN_MALFORMED', 'the token uses an unsupported feature');
  if (error instanceof joseErrors.JWSInvalid || error instanceof joseErrors.JWTInvalid) {
    return fail('ERR_TOKEN_MALFORMED', 'the token is not a well-formed JWT');
  }
  throw error;
}
