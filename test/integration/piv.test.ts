import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import type { PublicJwk } from '../../core/keys/keystore.js';
import { openKeyStore, resolveModule } from '../../core/open.js';
import { hsmint, makeToken, useDaemon, type TestToken } from './support/harness.js';

/** The softhsm-piv profile: SoftHSM with a YubiKey's slots, algorithms and one-at-a-time. */
const pivConfig = (config: Record<string, any>) => {
  config['hsm']['profile'] = 'softhsm-piv';
  config['keys'] = { algorithm: 'ES256', rsa_bits: 2048 };
};

/**
 * The token as a second PKCS#11 application sees it, with pkcs11js directly: the proof does not
 * depend on the code it checks.
 */
class RawToken {
  private readonly lib = new pkcs11js.PKCS11();
  private readonly session: Buffer;

  private constructor(token: TestToken, pin: string) {
    const config = loadConfig(token.config);
    process.env['SOFTHSM2_CONF'] = config.hsm.environment['SOFTHSM2_CONF'];
    this.lib.load(resolveModule(config));
    this.lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    const slot = this.lib
      .C_GetSlotList(true)
      .find((s) => this.lib.C_GetTokenInfo(s).label.trim() === token.label)!;
    this.session = this.lib.C_OpenSession(
      slot,
      pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION,
    );
    this.lib.C_Login(this.session, pkcs11js.CKU_USER, pin);
  }

  static async open(token: TestToken): Promise<RawToken> {
    return new RawToken(token, (await readFile(token.pinFile, 'utf8')).trim());
  }

  /** The private key in the slot with this one-byte CKA_ID, and its public key's point. */
  slot(ckaId: number): { alwaysAuthenticate: boolean; point: Buffer } | undefined {
    const id = Buffer.from([ckaId]);
    const find = (cls: number) => {
      this.lib.C_FindObjectsInit(this.session, [
        { type: pkcs11js.CKA_CLASS, value: cls },
        { type: pkcs11js.CKA_ID, value: id },
      ]);
      const found = this.lib.C_FindObjects(this.session, 2);
      this.lib.C_FindObjectsFinal(this.session);
      return found;
    };
    const privateKeys = find(pkcs11js.CKO_PRIVATE_KEY);
    const publicKeys = find(pkcs11js.CKO_PUBLIC_KEY);
    if (privateKeys.length === 0) return undefined;
    expect(privateKeys).toHaveLength(1);
    expect(publicKeys).toHaveLength(1);
    const [always] = this.lib.C_GetAttributeValue(this.session, privateKeys[0]!, [
      { type: pkcs11js.CKA_ALWAYS_AUTHENTICATE },
    ]);
    const [point] = this.lib.C_GetAttributeValue(this.session, publicKeys[0]!, [
      { type: pkcs11js.CKA_EC_POINT },
    ]);
    return {
      alwaysAuthenticate: (always!.value as Buffer)[0] === 1,
      // A DER OCTET STRING around the 65-byte P-256 point.
      point: (point!.value as Buffer).subarray(2),
    };
  }

  close(): void {
    this.lib.C_Finalize();
  }
}

/** The uncompressed point of a P-256 JWK, as CKA_EC_POINT holds it. */
function pointOf(jwk: PublicJwk): Buffer {
  return Buffer.concat([
    Buffer.from([0x04]),
    Buffer.from(jwk.x as string, 'base64url'),
    Buffer.from(jwk.y as string, 'base64url'),
  ]);
}

const codeOf = (result: { valid: boolean; error?: { code: string } }) =>
  result.valid ? 'valid' : result.error!.code;

describe('the daemon on a PIV token (softhsm-piv)', () => {
  const ctx = useDaemon('ES256', pivConfig);
  let raw: RawToken;

  beforeAll(async () => {
    raw = await RawToken.open(ctx.token);
  });
  afterAll(() => raw?.close());

  it('makes its first key in 9c with CKA_ALWAYS_AUTHENTICATE, and signs through the context-specific login', async () => {
    const minted = await ctx.daemon.client.mint({ aud: 'api' });
    expect(codeOf(await ctx.daemon.client.verify(minted.token))).toBe('valid');
    const jwk = (await ctx.daemon.client.jwks()).keys.find((key) => key.kid === minted.kid)!;
    const slot9c = raw.slot(0x02);
    expect(slot9c?.alwaysAuthenticate).toBe(true);
    expect(slot9c?.point.equals(pointOf(jwk as PublicJwk))).toBe(true);
    // The audit key has its own slot, 9d, which asks for no login per signature.
    expect(raw.slot(0x03)?.alwaysAuthenticate).toBe(false);
  });

  it('puts the next key of a rotation in the first retired slot, 82', async () => {
    const before = await ctx.daemon.client.mint({ aud: 'api' });
    const rotated = await ctx.daemon.client.rotateKeys();
    expect(rotated.active.kid).not.toBe(before.kid);
    const after = await ctx.daemon.client.mint({ aud: 'api' });
    expect(after.kid).toBe(rotated.active.kid);
    const jwk = (await ctx.daemon.client.jwks()).keys.find((key) => key.kid === after.kid)!;
    const slot82 = raw.slot(0x05);
    expect(slot82?.point.equals(pointOf(jwk as PublicJwk))).toBe(true);
    expect(slot82?.alwaysAuthenticate).toBe(false);
    // The retiring key stays in 9c and its tokens still verify.
    expect(raw.slot(0x02)).toBeDefined();
    expect(codeOf(await ctx.daemon.client.verify(before.token))).toBe('valid');
  });

  it('has hsmint doctor find the keys in their slots, and prove they cannot leave the token', async () => {
    const result = await hsmint([
      'doctor',
      '--config',
      ctx.token.config,
      '--json',
      '--samples',
      '3',
    ]);
    expect(result.code, result.stdout).toBe(0);
    const report = JSON.parse(result.stdout) as {
      keys: Array<{ label: string; purpose: string; extractable: boolean; wrap: string }>;
    };
    // softhsm init's own first key has a label, not a slot; the daemon's keys have slots:
    // 9c (the first signing key), 82 (after the rotation above) and 9d (the audit key).
    const slots = report.keys
      .map((key) => /PIV slot (\w+)/.exec(key.label)?.[1])
      .filter((slot) => slot !== undefined)
      .sort();
    expect(slots).toEqual(['82', '9c', '9d']);
    for (const key of report.keys) {
      expect(key.extractable).toBe(false);
      expect(key.wrap).toMatch(/^refused/);
    }
  });

  it('queues concurrent mints on the one-operation device instead of failing them', async () => {
    const minted = await Promise.all(
      Array.from({ length: 8 }, () => ctx.daemon.client.mint({ aud: 'api' })),
    );
    for (const token of minted)
      expect(codeOf(await ctx.daemon.client.verify(token.token))).toBe('valid');
  });
});

describe('a PIV key store on SoftHSM (softhsm-piv)', () => {
  let token: TestToken;
  let opened: Awaited<ReturnType<typeof openKeyStore>>;
  /** The same token opened with a wrong PIN (last test); closed after `opened`. */
  let wrong: Awaited<ReturnType<typeof openKeyStore>> | undefined;

  beforeAll(async () => {
    token = await makeToken('ES256', (config) => {
      pivConfig(config);
      // More than the profile's max_in_flight: the bound still holds.
      config['hsm']['sessions'] = 4;
    });
    opened = await openKeyStore(loadConfig(token.config));
  });
  afterAll(async () => {
    await opened?.store.close();
    await wrong?.store.close();
    await token?.cleanup();
  });

  it('refuses an algorithm the profile does not support', async () => {
    await expect(opened.store.generate('EdDSA')).rejects.toMatchObject({
      code: 'ERR_ALG_UNSUPPORTED',
    });
  });

  it('never has more than one operation on the token, and queues the rest', async () => {
    const key = await opened.store.generate('ES256');
    expect(opened.store.slotOf(key.kid)).toBe('9c');
    expect(opened.store.needsContextLogin(key.kid)).toBe(true);
    expect(opened.store.sessions().limit).toBe(1);
    let mostBusy = 0;
    let mostWaiting = 0;
    let sampling = true;
    const sample = () => {
      const use = opened.store.sessions();
      mostBusy = Math.max(mostBusy, use.busy);
      mostWaiting = Math.max(mostWaiting, use.waiting);
      if (sampling) setImmediate(sample);
    };
    sample();
    const signatures = await Promise.all(
      Array.from({ length: 8 }, (_, i) => opened.store.sign(key.kid, Buffer.from(`input ${i}`))),
    );
    sampling = false;
    expect(signatures.every((signature) => signature.length === 64)).toBe(true);
    expect(mostBusy).toBe(1);
    expect(mostWaiting).toBeGreaterThan(0);
  });

  it('seals for an admin when the token refuses the PIN in the context-specific login', async () => {
    const key =
      (await opened.store.list()).find(
        (candidate) => opened.store.slotOf(candidate.kid) === '9c',
      ) ?? (await opened.store.generate('ES256'));
    expect(opened.store.needsContextLogin(key.kid)).toBe(true);
    // A second token instance in this process with a wrong PIN: its login finds the user
    // logged in already (PKCS#11 login is per application), so only the context-specific
    // login checks the PIN, and refuses it.
    const wrongPinFile = join(token.dir, 'wrong.pin');
    await writeFile(wrongPinFile, 'not-the-pin-0000\n', { mode: 0o600 });
    const document = parse(await readFile(token.config, 'utf8')) as Record<string, any>;
    document['hsm']['pin_file'] = wrongPinFile;
    const wrongConfig = join(token.dir, 'wrong-pin.yaml');
    await writeFile(wrongConfig, stringify(document), { mode: 0o600 });
    wrong = await openKeyStore(loadConfig(wrongConfig));
    const failure = wrong.store.sign(key.kid, Buffer.from('after the PIN changed'));
    await expect(failure).rejects.toMatchObject({
      code: 'ERR_HSM_UNAVAILABLE',
      cause: { code: 'ERR_PIN_INCORRECT' },
    });
    expect(wrong.tokenHealth.condition()).toMatchObject({ status: 'sealed', recovery: 'admin' });
    // Never retried by itself: the next request fails at once, without a PIN attempt.
    await expect(wrong.store.sign(key.kid, Buffer.from('again'))).rejects.toMatchObject({
      code: 'ERR_HSM_UNAVAILABLE',
      message: expect.stringContaining('sealed'),
    });
    // The right PIN still signs.
    expect(await opened.store.sign(key.kid, Buffer.from('right PIN'))).toHaveLength(64);
  });
});
