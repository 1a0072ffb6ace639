import { createHash, randomBytes } from 'node:crypto';
import * as graphene from 'graphene-pk11';
import pkcs11js from 'pkcs11js';
import { calculateJwkThumbprint, type JWK } from 'jose';
import { HsmintError } from '../errors.js';
import type { Algorithm, RsaKeySize } from '../keys/algorithms.js';
import {
  keyLabel,
  parseKeyLabel,
  type KeyPurpose,
  type KeyInfo,
  type KeyStore,
  type PublicJwk,
  type SessionUse,
} from '../keys/keystore.js';
import { nextFreeSlot, slotOfId, type PivLayout, type PivSlotUse } from './piv.js';
import { ckrCode, ckrName, PIN_REFUSED, RETRY_ONCE, type Pkcs11Token } from './token.js';

/** Ed25519 mechanisms are PKCS#11 3.0; pkcs11js 2.1 does not name them yet. */
const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
const CKM_EDDSA = 0x1057;
const CKK_EC_EDWARDS = 0x40;

const OID = {
  p256: Buffer.from('06082a8648ce3d030107', 'hex'), // 1.2.840.10045.3.1.7
  p384: Buffer.from('06052b81040022', 'hex'), // 1.3.132.0.34
  ed25519: Buffer.from('06032b6570', 'hex'), // 1.3.101.112
};

type Family = 'ec' | 'okp' | 'rsa';

interface Scheme {
  family: Family;
  keyGen: number;
  keyType: number;
  ecParams?: Buffer;
  curve?: 'P-256' | 'P-384' | 'Ed25519';
  /** Bytes of the raw public point (EC: 04||X||Y; Ed25519: the key itself). */
  pointLength?: number;
  /** Hashed in Node before a raw mechanism, for tokens (SoftHSM) without hashed ECDSA. */
  prehash?: 'sha256' | 'sha384';
  sign: pkcs11js.Mechanism;
}

const SCHEMES: Record<Algorithm, Scheme> = {
  ES256: {
    family: 'ec',
    keyGen: pkcs11js.CKM_EC_KEY_PAIR_GEN,
    keyType: pkcs11js.CKK_EC,
    ecParams: OID.p256,
    curve: 'P-256',
    pointLength: 65,
    prehash: 'sha256',
    sign: { mechanism: pkcs11js.CKM_ECDSA },
  },
  ES384: {
    family: 'ec',
    keyGen: pkcs11js.CKM_EC_KEY_PAIR_GEN,
    keyType: pkcs11js.CKK_EC,
    ecParams: OID.p384,
    curve: 'P-384',
    pointLength: 97,
    prehash: 'sha384',
    sign: { mechanism: pkcs11js.CKM_ECDSA },
  },
  EdDSA: {
    family: 'okp',
    keyGen: CKM_EC_EDWARDS_KEY_PAIR_GEN,
    keyType: CKK_EC_EDWARDS,
    ecParams: OID.ed25519,
    curve: 'Ed25519',
    pointLength: 32,
    sign: { mechanism: CKM_EDDSA },
  },
  RS256: {
    family: 'rsa',
    keyGen: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN,
    keyType: pkcs11js.CKK_RSA,
    sign: { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS },
  },
  PS256: {
    family: 'rsa',
    keyGen: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN,
    keyType: pkcs11js.CKK_RSA,
    sign: {
      mechanism: pkcs11js.CKM_SHA256_RSA_PKCS_PSS,
      parameter: {
        type: pkcs11js.CK_PARAMS_RSA_PSS,
        hashAlg: pkcs11js.CKM_SHA256,
        mgf: pkcs11js.CKG_MGF1_SHA256,
        saltLen: 32,
      } as pkcs11js.RsaPSS,
    },
  },
};

/**
 * The JWS algorithm a key found on the token serves, from its type and curve (a PIV slot
 * records neither label nor padding: an RSA key serves `rsaAlgorithm`); undefined if hsmint
 * has none for it. Either half of the pair will do.
 */
export function algorithmOfKey(
  key: graphene.SessionObject,
  rsaAlgorithm: 'RS256' | 'PS256' = 'RS256',
): Algorithm | undefined {
  const { keyType } = key.getAttribute({ keyType: null }) as { keyType: number };
  if (keyType === pkcs11js.CKK_RSA) return rsaAlgorithm;
  if (keyType !== pkcs11js.CKK_EC && keyType !== CKK_EC_EDWARDS) return undefined;
  // Numeric read: graphene maps CKA_EC_PARAMS to two names and returns only one of them.
  const params = key.getAttribute(pkcs11js.CKA_EC_PARAMS);
  return (['ES256', 'ES384', 'EdDSA'] as const).find(
    (alg) => SCHEMES[alg].keyType === keyType && params.equals(SCHEMES[alg].ecParams!),
  );
}

/** The mechanisms a token must offer for hsmint to generate and sign with `alg`. */
export function requiredMechanisms(alg: Algorithm): number[] {
  const scheme = SCHEMES[alg];
  return [scheme.keyGen, scheme.sign.mechanism];
}

interface LoadedKey {
  info: KeyInfo;
  privateKey: Buffer;
  /** Exact output size, so the binding never allocates or truncates. */
  signatureLength: number;
  /** CKA_ALWAYS_AUTHENTICATE: each signature needs a context-specific login. */
  alwaysAuthenticate: boolean;
  /** The PIV slot it is in, on a piv-slot token. */
  slot?: PivSlotUse;
}

/** A PIV key carries no creation time; the lifecycle state keeps when hsmint made it. */
const UNKNOWN_CREATION = new Date(0);

export interface Pkcs11KeyStoreOptions {
  rsaBits?: RsaKeySize;
  /** Injected for tests; the creation time goes into the label. */
  now?: () => Date;
  /** Signing keys (default) or the internal CA's keys: a store sees only its own kind. */
  purpose?: KeyPurpose;
  /**
   * A PIV token (profile objects.naming piv-slot): keys are found and made by slot CKA_ID in
   * these slots, not by label (see piv.ts).
   */
  piv?: PivLayout;
  /**
   * What an RSA key found in a PIV slot signs with: the slot says nothing of the padding.
   * The configured algorithm when it is RSA; RS256 otherwise.
   */
  rsaAlgorithm?: 'RS256' | 'PS256';
}

/**
 * hsmint's keys on a PKCS#11 token. Private keys are generated on the token as sensitive,
 * never extractable token objects; this class never asks for their value and never wraps them.
 */
/**
 * The private half of every key hsmint makes, whatever the token: generated on it, sensitive,
 * never extractable, for signing. One template, so no code path can make a key that leaves.
 */
function signingKeyTemplate(common: graphene.ITemplate): graphene.ITemplate {
  return {
    ...common,
    class: graphene.ObjectClass.PRIVATE_KEY,
    private: true,
    sensitive: true,
    extractable: false,
    sign: true,
  };
}

export class Pkcs11KeyStore implements KeyStore {
  private readonly keys = new Map<string, LoadedKey>();
  private loaded = false;
  private readonly rsaBits: RsaKeySize;
  private readonly now: () => Date;
  private readonly purpose: KeyPurpose;
  private readonly piv: PivLayout | undefined;
  private readonly rsaAlgorithm: 'RS256' | 'PS256';
  /**
   * PIV slots whose key hsmint destroyed but the device would not delete: no longer listed,
   * and free for the next key, which overwrites it. Kept in memory only.
   */
  private readonly givenUp = new Set<number>();
  /** When this process made each PIV key (the device keeps no such time). */
  private readonly madeAt = new Map<number, Date>();

  constructor(
    private readonly token: Pkcs11Token,
    options: Pkcs11KeyStoreOptions = {},
  ) {
    this.purpose = options.purpose ?? 'signing';
    this.rsaBits = options.rsaBits ?? 3072;
    this.now = options.now ?? (() => new Date());
    this.piv = options.piv;
    this.rsaAlgorithm = options.rsaAlgorithm ?? 'RS256';
    // After a re-open every object handle is new: find the keys again (by label) before the
    // token takes work.
    token.onReopen(async () => {
      if (this.loaded) await this.readKeys();
    });
  }

  async list(): Promise<KeyInfo[]> {
    if (!this.loaded) await this.reload();
    return [...this.keys.values()]
      .map((key) => key.info)
      .sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || a.kid.localeCompare(b.kid));
  }

  /** Re-reads the token: the token, not any cache, is the truth about which keys exist. */
  async reload(): Promise<void> {
    try {
      await this.readKeys();
    } catch (cause) {
      if (cause instanceof HsmintError) throw cause;
      const ckr = ckrName(cause) ?? 'unknown error';
      throw new HsmintError('ERR_HSM_UNAVAILABLE', `reading the keys on the token failed: ${ckr}`, {
        cause,
        details: { ckr },
      });
    }
  }

  private readKeys(): Promise<void> {
    return this.token.withAnchor((session) => this.readKeysOn(session));
  }

  private async readKeysOn(session: graphene.Session): Promise<void> {
    const found = session.find({ class: graphene.ObjectClass.PRIVATE_KEY, token: true });
    const next = new Map<string, LoadedKey>();
    for (let i = 0; i < found.length; i++) {
      const privateKey = found.items(i);
      const { label, id } = privateKey.getAttribute({ label: null, id: null }) as {
        label: string;
        id: Buffer;
      };
      if (!id) continue;
      const publicKey = session
        .find({ class: graphene.ObjectClass.PUBLIC_KEY, token: true, id })
        .items(0);
      if (!publicKey) continue;
      let loaded: LoadedKey;
      if (this.piv) {
        const slot = slotOfId(this.piv, id);
        if (!slot || this.givenUp.has(slot.ckaId)) continue;
        const alg = algorithmOfKey(publicKey, this.rsaAlgorithm);
        if (!alg) continue;
        const createdAt = this.madeAt.get(slot.ckaId) ?? UNKNOWN_CREATION;
        loaded = await this.describe(alg, label, createdAt, publicKey, privateKey.handle);
        loaded.slot = slot;
      } else {
        const parsed = parseKeyLabel(label, this.purpose);
        if (!parsed) continue;
        loaded = await this.describe(
          parsed.alg,
          label,
          parsed.createdAt,
          publicKey,
          privateKey.handle,
        );
      }
      loaded.alwaysAuthenticate = alwaysAuthenticate(privateKey);
      next.set(loaded.info.kid, loaded);
    }
    this.keys.clear();
    for (const [kid, key] of next) this.keys.set(kid, key);
    this.loaded = true;
  }

  /**
   * `sessionOnly` makes the pair session objects (CKA_TOKEN false) that vanish when the
   * token closes: `doctor` signs with them without leaving a key on the token. Call list() or
   * reload() first, as a later reload forgets keys that are not on the token.
   */
  async generate(
    alg: Algorithm,
    options: { label?: string; sessionOnly?: boolean } = {},
  ): Promise<KeyInfo> {
    if (this.piv) return this.generateInSlot(alg, this.piv);
    const scheme = SCHEMES[alg];
    const parsed =
      options.label === undefined ? undefined : parseKeyLabel(options.label, this.purpose);
    if (options.label !== undefined && parsed?.alg !== alg) {
      throw new HsmintError(
        'ERR_ALG_UNSUPPORTED',
        `label ${options.label} is not an ${alg} key label`,
      );
    }
    const createdAt = parsed?.createdAt ?? this.now();
    const label = options.label ?? keyLabel(alg, createdAt, this.purpose);
    const id = randomBytes(16);
    const common = { token: options.sessionOnly !== true, label, id, keyType: scheme.keyType };
    const publicTemplate: graphene.ITemplate = {
      ...this.publicKeyTemplate(common, scheme),
      private: false,
      encrypt: false,
      wrap: false,
    };
    const privateTemplate: graphene.ITemplate = {
      ...signingKeyTemplate(common),
      decrypt: false,
      unwrap: false,
      derive: false,
    };
    const loaded = await this.token.withAnchor(async (session) => {
      const pair = this.generatePair(session, alg, publicTemplate, privateTemplate);
      return this.describe(alg, label, createdAt, pair.publicKey, pair.privateKey.handle);
    });
    this.keys.set(loaded.info.kid, loaded);
    return loaded.info;
  }

  /**
   * A PIV key: in the first free slot of the store's (see nextFreeSlot), with the slot's CKA_ID,
   * its label where the token keeps labels, and CKA_ALWAYS_AUTHENTICATE where the profile says
   * hsmint sets it. The caller's label is not written: PIV keys are found by slot.
   */
  private async generateInSlot(alg: Algorithm, piv: PivLayout): Promise<KeyInfo> {
    if (!piv.algorithms.includes(alg)) {
      throw new HsmintError(
        'ERR_ALG_UNSUPPORTED',
        `the token's profile does not support ${alg} (it supports ${piv.algorithms.join(', ')})`,
      );
    }
    if (!this.loaded) await this.reload();
    const scheme = SCHEMES[alg];
    const loaded = await this.token.withAnchor(async (session) => {
      const occupied = new Set<number>();
      const found = session.find({ class: graphene.ObjectClass.PRIVATE_KEY, token: true });
      for (let i = 0; i < found.length; i++) {
        const id = found.items(i).getAttribute('id') as Buffer | undefined;
        if (id?.length === 1) occupied.add(id[0]!);
      }
      const slot = nextFreeSlot(piv, occupied, this.givenUp);
      if (!slot) {
        throw new HsmintError(
          'ERR_HSM_UNAVAILABLE',
          `every PIV slot hsmint may use (${piv.slots.map((entry) => entry.slot).join(', ')}) holds a key in use; destroy or revoke one`,
        );
      }
      const id = Buffer.from([slot.ckaId]);
      // A key hsmint gave up that the device would not delete: the new one replaces it (a
      // YubiKey overwrites the slot by itself; SoftHSM would keep both under one CKA_ID).
      if (occupied.has(slot.ckaId)) destroyObjects(session, id, () => undefined);
      const common = {
        token: true,
        id,
        keyType: scheme.keyType,
        ...(piv.labelsKept ? { label: slot.label } : {}),
      };
      // Only what a PIV device takes: ykcs11 and OpenSC may refuse attributes they do not use.
      const publicTemplate = this.publicKeyTemplate(common, scheme);
      const privateTemplate: graphene.ITemplate = {
        ...signingKeyTemplate(common),
        ...(slot.setAlwaysAuthenticate ? { alwaysAuth: true } : {}),
      };
      const pair = this.generatePair(session, alg, publicTemplate, privateTemplate);
      const createdAt = this.now();
      const label = (pair.privateKey.getAttribute('label') as string | undefined) ?? slot.label;
      const described = await this.describe(
        alg,
        label,
        createdAt,
        pair.publicKey,
        pair.privateKey.handle,
      );
      described.slot = slot;
      described.alwaysAuthenticate = alwaysAuthenticate(pair.privateKey);
      this.givenUp.delete(slot.ckaId);
      this.madeAt.set(slot.ckaId, createdAt);
      return described;
    });
    this.keys.set(loaded.info.kid, loaded);
    return loaded.info;
  }

  private generatePair(
    session: graphene.Session,
    alg: Algorithm,
    publicTemplate: graphene.ITemplate,
    privateTemplate: graphene.ITemplate,
  ): graphene.IKeyPair {
    try {
      return session.generateKeyPair(
        SCHEMES[alg].keyGen as graphene.MechanismEnum,
        publicTemplate,
        privateTemplate,
      );
    } catch (cause) {
      // A dead device is not an unsupported algorithm: the token seals on it, and says so.
      this.token.fail(cause, false);
      if (this.token.condition().status !== 'open')
        throw this.unavailable('generating a key', cause);
      throw new HsmintError(
        'ERR_ALG_UNSUPPORTED',
        `the token could not generate an ${alg} key: ${ckrName(cause) ?? 'error'}`,
        { cause },
      );
    }
  }

  /** The PIV slot a key is in (`9c`, `82`...); undefined on a label-naming token. */
  slotOf(kid: string): string | undefined {
    return this.keys.get(kid)?.slot?.slot;
  }

  /** Whether each signature with the key needs a context-specific login (CKA_ALWAYS_AUTHENTICATE). */
  needsContextLogin(kid: string): boolean {
    const key = this.keys.get(kid);
    if (!key) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} on the token`);
    return key.alwaysAuthenticate;
  }

  /** The public half of a new pair: it verifies, and carries the key's size or curve. */
  private publicKeyTemplate(common: graphene.ITemplate, scheme: Scheme): graphene.ITemplate {
    return {
      ...common,
      class: graphene.ObjectClass.PUBLIC_KEY,
      verify: true,
      ...(scheme.family === 'rsa'
        ? { modulusBits: this.rsaBits, publicExponent: Buffer.from([1, 0, 1]) }
        : { paramsEC: scheme.ecParams ?? null }),
    };
  }

  async sign(kid: string, signingInput: Buffer): Promise<Buffer> {
    if (!this.loaded) await this.reload();
    try {
      return await this.signOnce(kid, signingInput);
    } catch (cause) {
      // Sessions and object handles can go stale under us (another application reset the
      // token, a login was lost): withSession has replaced the session; find the key again
      // too, and try once more. Only if that fails as well is the token itself in doubt.
      const code = ckrCode(cause);
      if (code === undefined || !RETRY_ONCE.has(code)) throw this.signFailure(kid, cause);
      if (code === pkcs11js.CKR_KEY_HANDLE_INVALID || code === pkcs11js.CKR_OBJECT_HANDLE_INVALID)
        await this.reload();
      try {
        return await this.signOnce(kid, signingInput);
      } catch (again) {
        this.token.fail(again);
        throw this.signFailure(kid, again);
      }
    }
  }

  private async signOnce(kid: string, signingInput: Buffer): Promise<Buffer> {
    const key = this.keys.get(kid);
    if (!key) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} on the token`);
    const scheme = SCHEMES[key.info.alg];
    const data = scheme.prehash
      ? createHash(scheme.prehash).update(signingInput).digest()
      : signingInput;
    return this.token.withSession((session) =>
      this.token.sign(
        session,
        scheme.sign,
        key.privateKey,
        data,
        key.signatureLength,
        key.alwaysAuthenticate,
      ),
    );
  }

  private signFailure(kid: string, cause: unknown): HsmintError {
    return this.unavailable(`signing with ${kid}`, cause);
  }

  private unavailable(what: string, cause: unknown): HsmintError {
    if (cause instanceof HsmintError) return cause;
    const ckr = ckrName(cause) ?? 'unknown error';
    const code = ckrCode(cause);
    if (code !== undefined && PIN_REFUSED.has(code)) {
      // The token has sealed until an admin fixes the PIN file; the caller hears it is down.
      const refusal = new HsmintError(
        code === pkcs11js.CKR_PIN_LOCKED ? 'ERR_PIN_LOCKED' : 'ERR_PIN_INCORRECT',
        'the token refused the PIN in the context-specific login',
        { cause },
      );
      return new HsmintError(
        'ERR_HSM_UNAVAILABLE',
        `${what} failed: the token refused the PIN (${ckr})`,
        { cause: refusal, details: { ckr } },
      );
    }
    return new HsmintError('ERR_HSM_UNAVAILABLE', `${what} failed: ${ckr}`, {
      cause,
      details: { ckr },
    });
  }

  async destroy(kid: string): Promise<void> {
    if (!this.loaded) await this.reload();
    const key = this.keys.get(kid);
    if (!key) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} on the token`);
    await this.token.withAnchor((session) => {
      const id = session.getObject<graphene.PrivateKey>(key.privateKey)?.getAttribute('id') as
        Buffer | undefined;
      if (!id) throw new HsmintError('ERR_KEY_NOT_FOUND', `key ${kid} vanished from the token`);
      const slot = key.slot;
      if (slot) {
        // The slot's objects (a YubiKey adds a certificate); a device that will not delete a
        // key leaves it in the slot, given up, for the next key to overwrite.
        destroyObjects(session, id, (cause) => {
          this.token.fail(cause, false);
          if (this.token.condition().status !== 'open')
            throw this.unavailable(`destroying ${kid}`, cause);
          this.givenUp.add(slot.ckaId);
        });
        return;
      }
      // By the random id alone, so that session-only keys are destroyed too.
      for (const cls of [graphene.ObjectClass.PRIVATE_KEY, graphene.ObjectClass.PUBLIC_KEY]) {
        const objects = session.find({ class: cls, id });
        for (let i = 0; i < objects.length; i++) objects.items(i).destroy();
      }
    });
    this.keys.delete(kid);
  }

  probe(): Promise<void> {
    return this.token.probe();
  }

  async close(): Promise<void> {
    await this.token.close();
  }

  /** The token's signing sessions; the signing, CA and audit stores share one pool. */
  sessions(): SessionUse {
    return this.token.sessionUse();
  }

  /** The private key's protection attributes, read for tests and `doctor`; never its value. */
  protection(kid: string): {
    extractable: boolean;
    sensitive: boolean;
    neverExtractable: boolean;
    alwaysSensitive: boolean;
  } {
    const key = this.keys.get(kid);
    if (!key) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} on the token`);
    const object = this.token.anchor.getObject<graphene.PrivateKey>(key.privateKey);
    if (!object) throw new HsmintError('ERR_KEY_NOT_FOUND', `key ${kid} vanished from the token`);
    return object.getAttribute({
      extractable: null,
      sensitive: null,
      neverExtractable: null,
      alwaysSensitive: null,
    }) as {
      extractable: boolean;
      sensitive: boolean;
      neverExtractable: boolean;
      alwaysSensitive: boolean;
    };
  }

  /** The private key's object handle, for tests that prove the value cannot be read. */
  privateHandle(kid: string): Buffer {
    const key = this.keys.get(kid);
    if (!key) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} on the token`);
    return key.privateKey;
  }

  private async describe(
    alg: Algorithm,
    label: string,
    createdAt: Date,
    publicKey: graphene.SessionObject,
    privateKey: Buffer,
  ): Promise<LoadedKey> {
    const scheme = SCHEMES[alg];
    let jwk: JWK;
    let signatureLength: number;
    if (scheme.family === 'rsa') {
      const { modulus, publicExponent } = publicKey.getAttribute({
        modulus: null,
        publicExponent: null,
      }) as {
        modulus: Buffer;
        publicExponent: Buffer;
      };
      jwk = {
        kty: 'RSA',
        n: stripLeadingZeros(modulus).toString('base64url'),
        e: stripLeadingZeros(publicExponent).toString('base64url'),
      };
      signatureLength = stripLeadingZeros(modulus).length;
    } else {
      // Numeric reads: graphene maps CKA_EC_PARAMS to two names and returns only one of them.
      const { keyType } = publicKey.getAttribute({ keyType: null }) as { keyType: number };
      const paramsEC = publicKey.getAttribute(pkcs11js.CKA_EC_PARAMS);
      const pointEC = publicKey.getAttribute(pkcs11js.CKA_EC_POINT);
      if (keyType !== scheme.keyType || !paramsEC.equals(scheme.ecParams!)) {
        throw new HsmintError(
          'ERR_ALG_UNSUPPORTED',
          `key ${label} on the token is not an ${alg} key`,
        );
      }
      const point = unwrapPoint(pointEC, scheme.pointLength!);
      if (scheme.family === 'okp') {
        jwk = { kty: 'OKP', crv: 'Ed25519', x: point.toString('base64url') };
        signatureLength = 64;
      } else {
        const size = (scheme.pointLength! - 1) / 2;
        jwk = {
          kty: 'EC',
          crv: scheme.curve!,
          x: point.subarray(1, 1 + size).toString('base64url'),
          y: point.subarray(1 + size).toString('base64url'),
        };
        signatureLength = 2 * size;
      }
    }
    const kid = await calculateJwkThumbprint(jwk, 'sha256');
    const publicJwk: PublicJwk = { ...jwk, kid, alg, use: 'sig' };
    return {
      info: { kid, alg, label, createdAt, publicJwk },
      privateKey,
      signatureLength,
      alwaysAuthenticate: false,
    };
  }
}

/** CKA_ALWAYS_AUTHENTICATE of a private key; a token that does not know it asks no login. */
function alwaysAuthenticate(privateKey: graphene.SessionObject): boolean {
  try {
    const value = privateKey.getAttribute(pkcs11js.CKA_ALWAYS_AUTHENTICATE);
    return value.length > 0 && value[0] !== 0;
  } catch {
    return false;
  }
}

/** Destroys every object with CKA_ID `id`; `refused` hears each one the token would not. */
function destroyObjects(
  session: graphene.Session,
  id: Buffer,
  refused: (cause: unknown) => void,
): void {
  const objects = session.find({ id });
  for (let i = 0; i < objects.length; i++) {
    try {
      objects.items(i).destroy();
    } catch (cause) {
      refused(cause);
    }
  }
}

function stripLeadingZeros(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  return bytes.subarray(start);
}

/**
 * CKA_EC_POINT is a DER OCTET STRING holding the point; some modules return the bare point.
 * The expected length decides, since a bare point's second byte can look like a DER length.
 */
function unwrapPoint(value: Buffer, pointLength: number): Buffer {
  if (value.length === pointLength) return value;
  if (value[0] === 0x04 && value.length === pointLength + 2 && value[1] === pointLength)
    return value.subarray(2);
  if (
    value[0] === 0x04 &&
    value[1] === 0x81 &&
    value.length === pointLength + 3 &&
    value[2] === pointLength
  ) {
    return value.subarray(3);
  }
  throw new HsmintError(
    'ERR_ALG_UNSUPPORTED',
    `unexpected CKA_EC_POINT encoding (${value.length} bytes)`,
  );
}
