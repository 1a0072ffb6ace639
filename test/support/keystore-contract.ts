/**
 * One contract for every KeyStore (after SPIRE's keymanagertest): the same suite runs on the
 * in-memory fake and on a real SoftHSM token, so the fake cannot drift from the real thing.
 */
import { importJWK, compactVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ALGORITHMS, type Algorithm } from '../../core/keys/algorithms.js';
import type { KeyStore } from '../../core/keys/keystore.js';

/**
 * `algorithms`: the ones the backend supports (a device may offer fewer than hsmint); every
 * one is tried.
 */
export function describeKeyStore(
  name: string,
  open: () => Promise<{ store: KeyStore; cleanup: () => Promise<void> }>,
  algorithms: readonly Algorithm[] = ALGORITHMS,
): void {
  describe(`KeyStore contract: ${name}`, () => {
    let store: KeyStore;
    let cleanup: () => Promise<void>;

    beforeAll(async () => {
      ({ store, cleanup } = await open());
    });
    afterAll(async () => {
      await store?.close();
      await cleanup?.();
    });

    it.each([...algorithms])(
      'generates an %s key whose signatures verify with its published JWK',
      async (alg) => {
        const key = await store.generate(alg);
        expect(key.alg).toBe(alg);
        expect(key.publicJwk).toMatchObject({ kid: key.kid, alg, use: 'sig' });
        expect(key.publicJwk).not.toHaveProperty('d');
        expect(key.label).toMatch(new RegExp(`^hsmint-${alg}-\\d{8}T\\d{6}Z$`));
        const listed = await store.list();
        expect(listed.map((k) => k.kid)).toContain(key.kid);

        const header = Buffer.from(JSON.stringify({ alg, kid: key.kid })).toString('base64url');
        const payload = Buffer.from('{"hello":"world"}').toString('base64url');
        const signingInput = `${header}.${payload}`;
        const signature = await store.sign(key.kid, Buffer.from(signingInput));
        const jws = `${signingInput}.${signature.toString('base64url')}`;
        const verified = await compactVerify(jws, await importJWK(key.publicJwk, alg), {
          algorithms: [alg],
        });
        expect(Buffer.from(verified.payload).toString()).toBe('{"hello":"world"}');

        const tampered = `${header}.${Buffer.from('{"hello":"there"}').toString('base64url')}.${signature.toString('base64url')}`;
        await expect(
          compactVerify(tampered, await importJWK(key.publicJwk, alg), { algorithms: [alg] }),
        ).rejects.toThrow();
      },
    );

    const first = algorithms[0]!;
    it(`signs concurrently without mixing up operations (${first})`, async () => {
      const key = await store.generate(first);
      const jwk = await importJWK(key.publicJwk, first);
      const inputs = Array.from(
        { length: 64 },
        (_, i) =>
          `${Buffer.from(JSON.stringify({ alg: first })).toString('base64url')}.${Buffer.from(String(i)).toString('base64url')}`,
      );
      const signatures = await Promise.all(
        inputs.map((input) => store.sign(key.kid, Buffer.from(input))),
      );
      for (const [i, signature] of signatures.entries()) {
        const result = await compactVerify(`${inputs[i]}.${signature.toString('base64url')}`, jwk, {
          algorithms: [first],
        });
        expect(Buffer.from(result.payload).toString()).toBe(String(i));
      }
    });

    it('refuses to sign with an unknown key', async () => {
      await expect(store.sign('no-such-kid', Buffer.from('x'))).rejects.toMatchObject({
        code: 'ERR_KEY_NOT_FOUND',
      });
    });

    it('destroys a key', async () => {
      const key = await store.generate(algorithms.at(-1)!);
      await store.destroy(key.kid);
      expect((await store.list()).map((k) => k.kid)).not.toContain(key.kid);
      await expect(store.sign(key.kid, Buffer.from('x'))).rejects.toMatchObject({
        code: 'ERR_KEY_NOT_FOUND',
      });
    });

    it('finds its keys again after a reload', async () => {
      const before = (await store.list()).map((k) => k.kid).sort();
      await store.reload();
      expect((await store.list()).map((k) => k.kid).sort()).toEqual(before);
    });
  });
}
