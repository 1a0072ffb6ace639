import { readFile } from 'node:fs/promises';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { ALGORITHMS } from '../../core/keys/algorithms.js';
import { openKeyStore, resolveModule } from '../../core/open.js';
import { ckrCode } from '../../core/pkcs11/token.js';
import { describeKeyStore } from '../support/keystore-contract.js';
import { MemoryKeyStore } from '../support/memory-keystore.js';
import { makeToken, type TestToken } from './support/harness.js';

describeKeyStore('in-memory fake', async () => ({
  store: new MemoryKeyStore(),
  cleanup: async () => {},
}));

describeKeyStore('SoftHSM', async () => {
  const token = await makeToken(
    'ES256',
    (config) => (config['keys'] = { algorithm: 'ES256', rsa_bits: 2048 }),
  );
  const { store } = await openKeyStore(loadConfig(token.config));
  return { store, cleanup: token.cleanup };
});

/**
 * Reads the token with pkcs11js directly, not through hsmint's own code, so the proof does not
 * depend on the code it checks.
 */
describe('private keys on the token cannot be read out', () => {
  let token: TestToken;
  let lib: pkcs11js.PKCS11;
  let session: Buffer;

  beforeAll(async () => {
    token = await makeToken(
      'ES256',
      (config) => (config['keys'] = { algorithm: 'ES256', rsa_bits: 2048 }),
    );
    const config = loadConfig(token.config);
    // One key of every algorithm, made by hsmint.
    const { store } = await openKeyStore(config);
    for (const alg of ALGORITHMS.filter((a) => a !== 'ES256')) await store.generate(alg);
    await store.close();

    process.env['SOFTHSM2_CONF'] = config.hsm.environment['SOFTHSM2_CONF'];
    lib = new pkcs11js.PKCS11();
    lib.load(resolveModule(config));
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    const slot = lib
      .C_GetSlotList(true)
      .find((s) => lib.C_GetTokenInfo(s).label.trim() === token.label)!;
    // Read-write, so that the refusal to change attributes below is the token's rule, not the session's.
    session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    lib.C_Login(session, pkcs11js.CKU_USER, (await readFile(token.pinFile, 'utf8')).trim());
  });
  afterAll(async () => {
    lib?.C_Finalize();
    await token?.cleanup();
  });

  it('has one private key per algorithm, each sensitive and never extractable', () => {
    lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
    const handles = lib.C_FindObjects(session, 100);
    lib.C_FindObjectsFinal(session);
    expect(handles.length).toBe(ALGORITHMS.length);
    for (const handle of handles) {
      const [label, extractable, neverExtractable, sensitive, alwaysSensitive, onToken, isPrivate] =
        lib
          .C_GetAttributeValue(session, handle, [
            { type: pkcs11js.CKA_LABEL },
            { type: pkcs11js.CKA_EXTRACTABLE },
            { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
            { type: pkcs11js.CKA_SENSITIVE },
            { type: pkcs11js.CKA_ALWAYS_SENSITIVE },
            { type: pkcs11js.CKA_TOKEN },
            { type: pkcs11js.CKA_PRIVATE },
          ])
          .map((attribute) => attribute.value as Buffer);
      expect(label!.toString()).toMatch(/^hsmint-/);
      expect(extractable![0]).toBe(0);
      expect(neverExtractable![0]).toBe(1);
      expect(sensitive![0]).toBe(1);
      expect(alwaysSensitive![0]).toBe(1);
      expect(onToken![0]).toBe(1);
      expect(isPrivate![0]).toBe(1);
      // The value itself (EC, EdDSA) and RSA's private exponent are refused by the token.
      const refusals: number[] = [];
      for (const type of [pkcs11js.CKA_VALUE, pkcs11js.CKA_PRIVATE_EXPONENT]) {
        let failure: unknown;
        try {
          lib.C_GetAttributeValue(session, handle, [{ type }]);
        } catch (error) {
          failure = error;
        }
        expect(ckrCode(failure)).toBeDefined();
        refusals.push(ckrCode(failure)!);
      }
      expect(refusals).toContain(pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
      expect(
        refusals.every(
          (code) =>
            code === pkcs11js.CKR_ATTRIBUTE_SENSITIVE ||
            code === pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID,
        ),
      ).toBe(true);
    }
  });

  it('refuses to make a private key extractable after the fact', () => {
    lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
    const [handle] = lib.C_FindObjects(session, 1);
    lib.C_FindObjectsFinal(session);
    for (const change of [
      { type: pkcs11js.CKA_EXTRACTABLE, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: false },
    ]) {
      let failure: unknown;
      try {
        lib.C_SetAttributeValue(session, handle!, [change]);
      } catch (error) {
        failure = error;
      }
      // pkcs11js throws a plain Error here, with the CKR code in its message.
      expect(ckrCode(failure), `setting attribute ${change.type}`).toBe(
        pkcs11js.CKR_ATTRIBUTE_READ_ONLY,
      );
    }
  });
});
