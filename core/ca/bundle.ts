/**
 * The offline verification bundle: the public keys verifiers need, carried across an air gap
 * as one signed file. It is a compact JWS made on the token by a signing key the internal CA
 * certified (its chain rides in `x5c`), so a verifier that pins only the root certificate can
 * check it, and its version only grows, so an old bundle cannot be played back.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { compactVerify, decodeProtectedHeader, importJWK, type JWK } from 'jose';
import { HsmintError, hasCode, type ErrorCode } from '../errors.js';
import { ALGORITHMS, isAlgorithm, type Algorithm } from '../keys/algorithms.js';
import type { PublicJwk } from '../keys/keystore.js';
import { MAX_CHAIN_LENGTH, verifyChain, type CertifiedJwk } from './certificates.js';
import { hasPrivateMembers, jwkOf, keyFits, publicKeyOfJwk, publicMembers } from './keys.js';
import { splitSigned, tbsCertificateFields } from './signed.js';
import type { Signer } from './signer.js';

/** The JWS `typ` of a bundle, so that no other JWS passes for one. */
export const BUNDLE_TYPE = 'hsmint-bundle+jwt';
/** Bundles longer than this are refused unread. */
export const MAX_BUNDLE_LENGTH = 1024 * 1024;

export interface BundleInput {
  /** Greater than that of every bundle before it: verifiers refuse any other. */
  version: number;
  issuer: string;
  jwks: { keys: PublicJwk[] };
  /** The signer's certificate chain, DER, leaf first, ending with the root. */
  chain: Buffer[];
  signer: Signer;
  now: Date;
  /**
   * Root certificates (DER) the issuer publishes for verifiers of tokens' `x5c`. Carried,
   * not trusted: a bundle is trusted through the pinned root only, and adds no root to it.
   */
  roots?: Buffer[];
  /** The audit checkpoint key's public keys, so `hsmint audit verify` works across the gap too. */
  auditKeys?: PublicJwk[];
}

export interface VerifiedBundle {
  version: number;
  issuer: string;
  /** Seconds since the epoch, when the bundle was made. */
  iat: number;
  jwks: { keys: PublicJwk[] };
  roots?: Buffer[];
  auditKeys?: PublicJwk[];
}

export interface VerifyBundleOptions {
  /** The root certificate (DER) the verifier trusts. */
  pinnedRoot: Buffer;
  /** The last version accepted: this one and older ones are refused (ERR_BUNDLE_ROLLBACK). */
  minVersion?: number;
  /** When the chain must be valid; now by default. */
  now?: Date;
}

export interface BundleState {
  lastVersion: number;
}

const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const PAYLOAD_FIELDS = new Set(['version', 'iat', 'iss', 'jwks', 'roots', 'audit_keys']);

const fail = (code: ErrorCode, message: string, cause?: unknown): never => {
  throw new HsmintError(code, message, cause === undefined ? {} : { cause });
};
const invalid = (message: string, cause?: unknown): never =>
  fail('ERR_BUNDLE_INVALID', message, cause);

/**
 * Makes a bundle: header `{alg, typ, kid, x5c}`, payload `{version, iat, iss, jwks, roots?}`,
 * signed by `signer` on its token. The chain is checked against its own root first, so a
 * bundle that no verifier could accept (an expired or foreign certificate) is never written.
 */
export async function createBundle(input: BundleInput): Promise<string> {
  const { signer } = input;
  if (!isVersion(input.version)) invalid('the version must be a positive integer');
  if (typeof input.issuer !== 'string' || input.issuer === '') invalid('the issuer is empty');
  if (!(input.now instanceof Date) || Number.isNaN(input.now.getTime()))
    invalid('now is not a valid date');
  if (!isAlgorithm(signer.alg)) invalid(`the signer's alg ${String(signer.alg)} is not allowed`);
  const keys = await checkKeys(input.jwks?.keys);
  if (input.roots !== undefined && !input.roots.every(isCertificate))
    invalid('a root to carry is not a DER certificate');
  if (input.chain.length === 0 || input.chain.length > MAX_CHAIN_LENGTH)
    invalid(`the chain must hold 1 to ${MAX_CHAIN_LENGTH} certificates`);
  const leaf = await chainKey(input.chain, input.chain.at(-1)!, input.now);
  if (leaf.kid !== signer.publicJwk.kid)
    invalid(`the chain certifies ${leaf.kid}, not the signer ${signer.publicJwk.kid}`);
  const header = {
    alg: signer.alg,
    typ: BUNDLE_TYPE,
    kid: signer.publicJwk.kid,
    x5c: input.chain.map((der) => der.toString('base64')),
  };
  const payload = {
    version: input.version,
    iat: Math.floor(input.now.getTime() / 1000),
    iss: input.issuer,
    jwks: { keys },
    ...(input.roots === undefined
      ? {}
      : { roots: input.roots.map((der) => der.toString('base64')) }),
    ...(input.auditKeys === undefined ? {} : { audit_keys: await checkKeys(input.auditKeys) }),
  };
  const signingInput = `${encode(header)}.${encode(payload)}`;
  const signature = await signer.sign(Buffer.from(signingInput, 'ascii'));
  return `${signingInput}.${signature.toString('base64url')}`;
}

/**
 * Verifies a bundle with only the pinned root: the `x5c` chain (verifyChain), the header `kid`
 * against the certified key, the signature with jose under an explicit allow-list (never
 * `none` or HMAC), the payload's shape and every key in it. Then refuses a version not above
 * `minVersion` (ERR_BUNDLE_ROLLBACK). Any other failure is ERR_BUNDLE_INVALID.
 */
export async function verifyBundle(
  text: string,
  options: VerifyBundleOptions,
): Promise<VerifiedBundle> {
  const { minVersion } = options;
  if (minVersion !== undefined && !(Number.isSafeInteger(minVersion) && minVersion >= 0))
    fail('ERR_BUNDLE_STATE_INVALID', 'minVersion must be a non-negative integer');
  if (typeof text !== 'string' || text.length > MAX_BUNDLE_LENGTH)
    invalid(`a bundle is a compact JWS of at most ${MAX_BUNDLE_LENGTH} characters`);
  const token = text.trim();
  if (!COMPACT_JWS.test(token)) invalid('a bundle is a compact JWS: three base64url parts');

  let header: Record<string, unknown>;
  try {
    header = decodeProtectedHeader(token) as Record<string, unknown>;
  } catch (cause) {
    return invalid('the bundle header is not base64url JSON', cause);
  }
  const alg = header['alg'];
  if (!isAlgorithm(alg)) return invalid(`alg ${JSON.stringify(alg)} is not allowed`);
  if (header['typ'] !== BUNDLE_TYPE) invalid(`typ must be ${BUNDLE_TYPE}`);
  const kid = header['kid'];
  if (typeof kid !== 'string') return invalid('the bundle header has no kid');
  const x5c = header['x5c'];
  if (!Array.isArray(x5c) || x5c.length === 0 || x5c.length > MAX_CHAIN_LENGTH)
    return invalid(`x5c must hold 1 to ${MAX_CHAIN_LENGTH} certificates`);
  const chain = x5c.map((entry) => {
    const der = typeof entry === 'string' ? strictBase64(entry) : undefined;
    return der ?? invalid('an x5c entry is not base64 DER');
  });

  const leaf = await chainKey(chain, options.pinnedRoot, options.now ?? new Date());
  if (kid !== leaf.kid) invalid(`the header kid ${kid} is not the certified key ${leaf.kid}`);
  const leafKey = publicKeyOfJwk(leaf);
  if (!keyFits(alg, leafKey) || (leaf.alg !== undefined && leaf.alg !== alg))
    invalid(`the certified key does not sign ${alg}`);

  let payloadBytes: Uint8Array;
  try {
    const { payload } = await compactVerify(token, await importJWK(publicMembers(leaf), alg), {
      algorithms: [...ALGORITHMS],
    });
    payloadBytes = payload;
  } catch (cause) {
    return invalid('the bundle signature does not verify', cause);
  }
  const bundle = await parsePayload(payloadBytes);
  if (minVersion !== undefined && bundle.version <= minVersion)
    fail(
      'ERR_BUNDLE_ROLLBACK',
      `bundle version ${bundle.version} is not newer than ${minVersion}, the last accepted`,
    );
  return bundle;
}

/** The last version accepted, from a state file; undefined when there is no file yet. */
export async function readBundleState(file: string): Promise<BundleState | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return fail('ERR_BUNDLE_STATE_INVALID', `cannot read the bundle state ${file}`, cause);
  }
  let state: unknown;
  try {
    state = JSON.parse(text);
  } catch (cause) {
    return fail('ERR_BUNDLE_STATE_INVALID', `the bundle state ${file} is not JSON`, cause);
  }
  if (
    typeof state !== 'object' ||
    state === null ||
    Array.isArray(state) ||
    Object.keys(state).length !== 1 ||
    !isVersion((state as Record<string, unknown>)['last_version'])
  )
    fail('ERR_BUNDLE_STATE_INVALID', `the bundle state ${file} is not {"last_version": N}`);
  return { lastVersion: (state as { last_version: number }).last_version };
}

/**
 * Records `version` as the last accepted, refusing one not above the last (ERR_BUNDLE_ROLLBACK).
 * Written atomically: a temporary file in the same directory, fsynced, renamed over the
 * state, then the directory fsynced. Call it after verifyBundle; one process per state file.
 */
export async function acceptBundle(file: string, version: number): Promise<void> {
  if (!isVersion(version)) invalid('the version must be a positive integer');
  const last = await readBundleState(file);
  if (last !== undefined && version <= last.lastVersion)
    fail(
      'ERR_BUNDLE_ROLLBACK',
      `bundle version ${version} is not newer than ${last.lastVersion}, the last accepted`,
    );
  const directory = dirname(file);
  const temporary = join(directory, `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const handle = await open(temporary, 'wx', 0o644);
    try {
      await handle.writeFile(`${JSON.stringify({ last_version: version })}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temporary, file);
    const dir = await open(directory, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  } catch (cause) {
    await unlink(temporary).catch(() => {});
    fail('ERR_BUNDLE_STATE_INVALID', `cannot write the bundle state ${file}`, cause);
  }
}

// ---------------------------------------------------------------------------------------------

function isVersion(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

/** verifyChain, with its failure reported as the bundle's. */
async function chainKey(chain: Buffer[], root: Buffer, at: Date): Promise<CertifiedJwk> {
  try {
    return await verifyChain(chain, root, at);
  } catch (cause) {
    if (hasCode(cause, 'ERR_CHAIN_INVALID'))
      return invalid(`the bundle's certificate chain: ${cause.message}`, cause);
    throw cause;
  }
}

function isCertificate(der: Buffer): boolean {
  try {
    tbsCertificateFields(splitSigned(der).tbs);
    return true;
  } catch {
    return false;
  }
}

/** Standard base64 (RFC 7515 4.1.6 for x5c), canonical, or undefined. */
function strictBase64(text: string): Buffer | undefined {
  if (text.length === 0 || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(text))
    return undefined;
  const bytes = Buffer.from(text, 'base64');
  return bytes.toString('base64') === text ? bytes : undefined;
}

/** Every key a bundle carries: public, for an hsmint algorithm, kid its thumbprint, once. */
async function checkKeys(keys: unknown): Promise<PublicJwk[]> {
  if (!Array.isArray(keys)) return invalid('jwks.keys must be a list');
  const seen = new Set<string>();
  const checked: PublicJwk[] = [];
  for (const [index, key] of keys.entries()) {
    const what = `jwks.keys[${index}]`;
    if (typeof key !== 'object' || key === null || Array.isArray(key))
      invalid(`${what} is not a JWK`);
    const jwk = key as Record<string, unknown>;
    if (hasPrivateMembers(jwk)) invalid(`${what} holds private key material`);
    if (!isAlgorithm(jwk['alg'])) invalid(`${what} has no allowed alg`);
    if (jwk['use'] !== 'sig') invalid(`${what} must have use "sig"`);
    let thumbprint: CertifiedJwk;
    let fits: boolean;
    try {
      const publicKey = publicKeyOfJwk(jwk as JWK);
      thumbprint = await jwkOf(publicKey);
      fits = keyFits(jwk['alg'] as Algorithm, publicKey);
    } catch (cause) {
      return invalid(`${what} is not a public key`, cause);
    }
    if (!fits) invalid(`${what} is not an ${String(jwk['alg'])} key`);
    if (jwk['kid'] !== thumbprint.kid) invalid(`${what}'s kid is not its RFC 7638 thumbprint`);
    if (seen.has(thumbprint.kid)) invalid(`${what} repeats kid ${thumbprint.kid}`);
    seen.add(thumbprint.kid);
    checked.push(jwk as unknown as PublicJwk);
  }
  return checked;
}

async function parsePayload(bytes: Uint8Array): Promise<VerifiedBundle> {
  let payload: unknown;
  try {
    payload = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (cause) {
    return invalid('the bundle payload is not UTF-8 JSON', cause);
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload))
    return invalid('the bundle payload is not an object');
  const fields = payload as Record<string, unknown>;
  const unknown = Object.keys(fields).find((name) => !PAYLOAD_FIELDS.has(name));
  if (unknown !== undefined) invalid(`the bundle payload has an unknown field ${unknown}`);
  const { version, iat, iss, jwks, roots, audit_keys: auditKeys } = fields;
  if (!isVersion(version)) return invalid('the bundle version must be a positive integer');
  if (typeof iat !== 'number' || !Number.isSafeInteger(iat) || iat < 0)
    return invalid('the bundle iat must be a number of seconds');
  if (typeof iss !== 'string' || iss === '') return invalid('the bundle iss must be a string');
  if (typeof jwks !== 'object' || jwks === null || Array.isArray(jwks))
    return invalid('the bundle jwks must be an object');
  if (Object.keys(jwks).some((name) => name !== 'keys'))
    invalid('the bundle jwks may hold only keys');
  const keys = await checkKeys((jwks as Record<string, unknown>)['keys']);
  const bundle: VerifiedBundle = { version, issuer: iss, iat, jwks: { keys } };
  if (auditKeys !== undefined) bundle.auditKeys = await checkKeys(auditKeys);
  if (roots !== undefined) {
    if (!Array.isArray(roots) || roots.length > MAX_CHAIN_LENGTH)
      invalid(`the bundle roots must be a list of at most ${MAX_CHAIN_LENGTH}`);
    bundle.roots = (roots as unknown[]).map((root) => {
      const der = typeof root === 'string' ? strictBase64(root) : undefined;
      return der !== undefined && isCertificate(der)
        ? der
        : invalid('a bundle root is not a base64 DER certificate');
    });
  }
  return bundle;
}
