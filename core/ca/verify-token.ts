import { decodeProtectedHeader, importJWK, jwtVerify } from 'jose';
import { ALGORITHMS, isAlgorithm } from '../keys/algorithms.js';
import type { VerifyResult } from '../jwt/verify.js';
import { verifyChain } from './certificates.js';

export interface RootVerifyOptions {
  /** The pinned root certificate (DER): the one thing this verifier trusts. */
  root: Buffer;
  issuer?: string;
  audience?: string;
  /** Clock skew tolerated on exp and nbf, in seconds. */
  clockSkew?: number;
  now?: Date;
}

const fail = (
  code: Extract<VerifyResult, { valid: false }>['error']['code'],
  message: string,
): VerifyResult => ({
  valid: false,
  error: { code, message },
});

/**
 * Verifies a token offline from a pinned root certificate alone: the chain in its header
 * (x5c, leaf first) must lead to the root, the leaf must certify exactly the header's kid,
 * and the signature must verify under the leaf's key with an allowed algorithm. A key the CA
 * did not certify is refused, whatever else the token claims.
 */
export async function verifyWithRoot(
  token: string,
  options: RootVerifyOptions,
): Promise<VerifyResult> {
  let header;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    return fail('ERR_TOKEN_MALFORMED', 'the header is not base64url JSON');
  }
  if (typeof header.alg !== 'string' || !isAlgorithm(header.alg))
    return fail('ERR_TOKEN_ALG_NOT_ALLOWED', 'alg is not allowed');
  const x5c = header.x5c;
  if (!Array.isArray(x5c) || x5c.length === 0 || !x5c.every((entry) => typeof entry === 'string')) {
    return fail(
      'ERR_TOKEN_KID_UNKNOWN',
      'the token carries no certificate chain (x5c): mint with tokens.embed_x5c',
    );
  }
  const now = options.now ?? new Date();
  let leafJwk;
  try {
    leafJwk = await verifyChain(
      x5c.map((entry) => Buffer.from(entry, 'base64')),
      options.root,
      now,
    );
  } catch {
    return fail('ERR_TOKEN_KID_UNKNOWN', 'the certificate chain does not lead to the pinned root');
  }
  if (leafJwk.kid !== header.kid)
    return fail('ERR_TOKEN_KID_UNKNOWN', 'the certificate is for another key');
  try {
    const key = await importJWK({ ...leafJwk, alg: header.alg }, header.alg);
    const { payload, protectedHeader } = await jwtVerify(token, key, {
      algorithms: [header.alg],
      ...(options.issuer === undefined ? {} : { issuer: options.issuer }),
      ...(options.audience === undefined ? {} : { audience: options.audience }),
      clockTolerance: options.clockSkew ?? 30,
      requiredClaims: ['iss', 'iat', 'exp', 'jti'],
      typ: 'JWT',
      currentDate: now,
    });
    return { valid: true, header: protectedHeader, claims: payload };
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'ERR_JWT_EXPIRED') return fail('ERR_TOKEN_EXPIRED', 'the token has expired');
    if (code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED')
      return fail('ERR_TOKEN_SIGNATURE_INVALID', 'the signature does not verify');
    if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') {
      const claim = (error as { claim?: string }).claim;
      if (claim === 'iss')
        return fail('ERR_TOKEN_ISSUER_MISMATCH', 'iss is not the expected issuer');
      if (claim === 'aud')
        return fail('ERR_TOKEN_AUDIENCE_MISMATCH', 'aud does not hold the expected audience');
      if (claim === 'nbf') return fail('ERR_TOKEN_NOT_YET_VALID', 'the token is not valid yet');
      return fail('ERR_TOKEN_CLAIM_INVALID', `claim ${claim} is invalid`);
    }
    return fail(
      'ERR_TOKEN_MALFORMED',
      `the token is not a well-formed JWT (allowed algorithms: ${ALGORITHMS.join(', ')})`,
    );
  }
}
