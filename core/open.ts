import type { Config } from './config.js';
import { HsmintError } from './errors.js';
import { Pkcs11KeyStore, requiredMechanisms } from './pkcs11/keystore.js';
import { pivLayout } from './pkcs11/piv.js';
import { Pkcs11Token, type TokenCondition, type TokenEvent } from './pkcs11/token.js';
import { readPinFile } from './pin.js';
import { findModule, loadProfile, type HsmProfile } from './profiles.js';

/** The module a config points at: hsm.module, else the profile's first module on this machine. */
export function resolveModule(config: Config): string {
  return config.hsm.module ?? findModule(loadProfile(config.hsm.profile));
}

/**
 * hsm.sessions, else what the profile says the device takes; never more than the operations
 * the device takes at once (max_in_flight): each session carries one, and the rest queue.
 */
export function sessionCount(config: Config): number {
  const profile = loadProfile(config.hsm.profile);
  return Math.min(config.hsm.sessions ?? profile.sessions, profile.maxInFlight);
}

/** A signature's deadline and hint on a device whose keys can wait for a touch; else none. */
export function touchDeadline(
  profile: HsmProfile,
): { signTimeoutMs: number; hint: string } | undefined {
  const touch = profile.login.touch;
  if (!touch.policies.some((policy) => policy !== 'never') || touch.hint === undefined)
    return undefined;
  return { signTimeoutMs: profile.signTimeoutMs, hint: touch.hint };
}

/** The token's state for the daemon: open or sealed (see core/pkcs11/recovery.ts). */
export interface TokenHealth {
  condition(): TokenCondition;
  /** One re-open attempt now if sealed (a reload asks; after a refused PIN, the only one). */
  retry(): Promise<TokenCondition>;
}

/**
 * Opens the configured token and its hsmint key store: reads the PIN file, loads the module,
 * logs in, and checks that the token offers the configured algorithm's mechanisms. After a
 * device fault the token seals and re-opens by itself, reading the PIN file again.
 */
export async function openKeyStore(
  config: Config,
  options: { onEvent?: (event: TokenEvent) => void } = {},
): Promise<{
  store: Pkcs11KeyStore;
  /** The internal CA's keys on the same token (labels hsmint-ca-...); never signs tokens. */
  caStore: Pkcs11KeyStore;
  /** The dedicated key that signs audit checkpoints (labels hsmint-audit-...). */
  auditStore: Pkcs11KeyStore;
  token: { label: string; serial: string };
  tokenHealth: TokenHealth;
}> {
  const pin = await readPinFile(config.hsm.pinFile);
  const profile = loadProfile(config.hsm.profile);
  const touch = touchDeadline(profile);
  const token = Pkcs11Token.open({
    modulePath: resolveModule(config),
    selector: config.hsm.token,
    pin,
    sessions: sessionCount(config),
    environment: config.hsm.environment,
    queueTimeoutMs: config.hsm.queueTimeout * 1000,
    callTimeoutMs: config.hsm.callTimeout * 1000,
    readPin: () => readPinFile(config.hsm.pinFile),
    ...(touch ? { touch } : {}),
    ...(options.onEvent ? { onEvent: options.onEvent } : {}),
  });
  const offered = token.mechanisms();
  const missing = requiredMechanisms(config.keys.algorithm).filter(
    (mechanism) => !offered.has(mechanism),
  );
  if (missing.length > 0) {
    await token.close();
    throw new HsmintError(
      'ERR_ALG_UNSUPPORTED',
      `token ${token.info.label} lacks mechanism(s) ${missing.map((m) => `0x${m.toString(16)}`).join(', ')} for ${config.keys.algorithm}`,
    );
  }
  const alg = config.keys.algorithm;
  const storeFor = (purpose: 'signing' | 'ca' | 'audit') => {
    const piv = pivLayout(profile, purpose);
    return new Pkcs11KeyStore(token, {
      rsaBits: config.keys.rsaBits,
      purpose,
      // On a PIV token, keys live in the profile's slots (core/pkcs11/piv.ts).
      ...(piv ? { piv } : {}),
      ...(alg === 'RS256' || alg === 'PS256' ? { rsaAlgorithm: alg } : {}),
    });
  };
  return {
    store: storeFor('signing'),
    caStore: storeFor('ca'),
    auditStore: storeFor('audit'),
    token: { label: token.info.label, serial: token.info.serial },
    tokenHealth: { condition: () => token.condition(), retry: () => token.retryNow() },
  };
}
