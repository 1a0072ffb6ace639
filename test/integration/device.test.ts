/**
 * The key-store contract on a real device, for admins with hardware: set HSMINT_TEST_PROFILE
 * to the device's profile (yubikey-piv, opensc, yubihsm2, generic...) and HSMINT_TEST_CONFIG
 * to an hsmint.yaml that names its module, token and PIN file. The suite generates, signs
 * with and destroys keys on that token: never point it at a token in service.
 *
 * CI has no hardware, so there the suite is skipped, and says why; the same contract runs on
 * SoftHSM in keystore.test.ts.
 */
import { describe, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { openKeyStore } from '../../core/open.js';
import { loadProfile } from '../../core/profiles.js';
import { describeKeyStore } from '../support/keystore-contract.js';

const profile = process.env['HSMINT_TEST_PROFILE'];
const configPath = process.env['HSMINT_TEST_CONFIG'];

if (profile !== undefined) {
  describeKeyStore(
    `device (${profile})`,
    async () => {
      if (configPath === undefined)
        throw new Error('HSMINT_TEST_PROFILE is set: HSMINT_TEST_CONFIG must name the hsmint.yaml');
      // The CA and audit stores share the token with `store`; closing it closes them too.
      const { store } = await openKeyStore(loadConfig(configPath));
      return { store, cleanup: async () => {} };
    },
    loadProfile(profile).algorithms,
  );
} else {
  describe('KeyStore contract on a real device', () => {
    it.skip('needs hardware, which CI lacks: set HSMINT_TEST_PROFILE and HSMINT_TEST_CONFIG (see this file)', () => {});
  });
}
