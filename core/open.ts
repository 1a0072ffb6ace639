import type { Config } from './config.js';
import { HsmintError } from './errors.js';
import { Pkcs11KeyStore, requiredMechanisms } from './pkcs11/keystore.js';
import { Pkcs11Token, type TokenCondition, type TokenEvent } from './pkcs11/token.js';
import { readPinFile } from './pin.js';
import { findModule, loadProfile } from './profiles.js';

/** The module a config points at: hsm.module, else the profile's first module on this machine. */
export function resolveModule(config: Config): string {
  return config.hsm.module ?? findModule(loadProfile(config.hsm.profile));
}

/** hsm.sessions, else what the profile says the device takes. */
export function sessionCount(config: Config): number {
  return config.hsm.sessions ?? loadProfile(config.hsm.profile).sessions;
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
  const token = Pkcs11Token.open({
    modulePath: resolveModule(config),
    selector: config.hsm.token,
    pin,
    sessions: sessionCount(config),
    environment: config.hsm.environment,
    queueTimeoutMs: config.hsm.queueTimeout * 1000,
    callTimeoutMs: config.hsm.callTimeout * 1000,
    readPin: () => readPinFile(config.hsm.pinFile),
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
  return {
    store: new Pkcs11KeyStore(token, { rsaBits: config.keys.rsaBits }),
    caStore: new Pkcs11KeyStore(token, { rsaBits: config.keys.rsaBits, purpose: 'ca' }),
    auditStore: new Pkcs11KeyStore(token, { rsaBits: config.keys.rsaBits, purpose: 'audit' }),
    token: { label: token.info.label, serial: token.info.serial },
    tokenHealth: { condition: () => token.condition(), retry: () => token.retryNow() },
  };
}
