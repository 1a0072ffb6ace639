/**
 * `hsmint doctor`: checks a token offline, the way the daemon will use it, and says what to do
 * about each failure. It never risks the token: no login when the PIN is locked or one wrong
 * try from locking, a single login attempt otherwise, and only session objects (which vanish
 * with the session) are created.
 */
import { performance } from 'node:perf_hooks';
import * as graphene from 'graphene-pk11';
import { importJWK, jwtVerify } from 'jose';
import pkcs11js from 'pkcs11js';
import { DEFAULTS, loadConfig } from '../config.js';
import { HsmintError, type ErrorCode } from '../errors.js';
import { prepareToken, signToken } from '../jwt/mint.js';
import { RSA_KEY_SIZES, type Algorithm, type RsaKeySize } from '../keys/algorithms.js';
import { KEY_PURPOSES, parseKeyLabel, type KeyInfo, type KeyPurpose } from '../keys/keystore.js';
import { resolveModule, sessionCount } from '../open.js';
import { readPinFile } from '../pin.js';
import { findModule, loadProfile, type HsmProfile } from '../profiles.js';
import { pivLayout } from './piv.js';
import { algorithmOfKey, Pkcs11KeyStore, requiredMechanisms } from './keystore.js';
import { ckrName, findSlot, loadModule, Pkcs11Token, tokenInfoOf } from './token.js';
import { parseTokenReference, trimPadded, type TokenSelector } from './uri.js';

export type CheckStatus = 'pass' | 'warn' | 'fail' | 'skip';

export interface DoctorCheck {
  /** Stable, for scripts: `login`, `sign:ES256`, `non-exportable:<label>`... */
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  /** What to do, on every failure and warning. */
  fix?: string;
  /** The stable error code behind a failure, when there is one. */
  code?: ErrorCode;
}

export interface DoctorReport {
  /** No check failed (warnings allowed). */
  ok: boolean;
  target: { config?: string; profile?: string; module?: string; token?: string };
  module: {
    path: string;
    description: string;
    manufacturer: string;
    version: string;
    cryptoki: string;
  } | null;
  /** Slots holding an initialized token; a module's spare empty slot is left out. */
  slots: Array<{ description: string; manufacturer: string; token: string }>;
  tokens: Array<{
    label: string;
    serial: string;
    model: string;
    manufacturer: string;
    firmware: string;
    hardware: string;
    /** The token the configuration or URI selects. */
    selected: boolean;
  }>;
  mechanisms: MechanismReport | null;
  /** The protection of every hsmint private key on the token. */
  keys: KeyProtection[];
  latency: Latency[];
  checks: DoctorCheck[];
}

export interface MechanismReport {
  offered: string[];
  needed: Array<{ alg: Algorithm; required: boolean; mechanisms: string[]; missing: string[] }>;
  /** Missing for an algorithm that must work. */
  missing: string[];
}

export interface KeyProtection {
  label: string;
  purpose: KeyPurpose;
  alg: Algorithm;
  extractable: boolean | null;
  never_extractable: boolean | null;
  sensitive: boolean | null;
  always_sensitive: boolean | null;
  private: boolean | null;
  /** Secret attributes the token handed out (their values are never kept). */
  readable: string[];
  /** `refused (CKR_...)`, `wrapped`, or why it was not tried. */
  wrap: string;
}

export interface Latency {
  alg: Algorithm;
  /** `session` for a throwaway key, else the label of the hsmint key used. */
  key: string;
  samples: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
}

/** What to examine: a configuration file, or a profile with a token URI and a PIN file. */
export type DoctorInput =
  /** `pinFile` stands in for hsm.pin_file: under systemd that is a credential only the service sees. */
  | { configFile: string; pinFile?: string }
  | { profile: string; token: string; modulePath?: string; pinFile?: string };

export interface DoctorOptions {
  /** Signatures timed per algorithm. */
  samples: number;
  /** Log in even when the token says one more wrong PIN locks it. */
  allowFinalTry?: boolean;
}

/** What the input resolves to: everything the token checks need. */
interface Target {
  modulePath: () => string;
  selector: TokenSelector;
  pinFile: string;
  environment: Readonly<Record<string, string>>;
  /** Algorithms that must generate, sign and verify. */
  required: Algorithm[];
  /** The profile's algorithms, reported as supported or missing. */
  listed: Algorithm[];
  rsaBits: RsaKeySize;
  sessions: number;
  /** The profile, for PIV devices whose keys are found by slot rather than by label. */
  profile: HsmProfile;
}

/** The stages in order; when one stops the run, the later ones are reported as skipped. */
const STAGES = [
  ['target', 'Configuration'],
  ['module', 'PKCS#11 module loads'],
  ['token', 'Token found'],
  ['mechanisms', 'Mechanisms offered'],
  ['pin-state', 'PIN retry state'],
  ['pin-file', 'PIN file'],
  ['login', 'Login'],
  ['sign', 'Sign and verify'],
  ['non-exportable', 'Keys cannot leave the token'],
  ['latency', 'Sign latency'],
] as const;
type Stage = (typeof STAGES)[number][0];

const TITLES = Object.fromEntries(STAGES) as Record<Stage, string>;

/** Ed25519 mechanisms are PKCS#11 3.0; pkcs11js 2.1 does not name them. */
const EXTRA_MECHANISM_NAMES: Record<number, string> = {
  0x1055: 'CKM_EC_EDWARDS_KEY_PAIR_GEN',
  0x1057: 'CKM_EDDSA',
};

const MECHANISM_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(pkcs11js)) {
  // Aliases share a value (CKM_ECDSA_KEY_PAIR_GEN is CKM_EC_KEY_PAIR_GEN): keep the first.
  if (name.startsWith('CKM_') && typeof value === 'number' && !MECHANISM_NAMES.has(value))
    MECHANISM_NAMES.set(value, name);
}
MECHANISM_NAMES.set(pkcs11js.CKM_EC_KEY_PAIR_GEN, 'CKM_EC_KEY_PAIR_GEN');
for (const [value, name] of Object.entries(EXTRA_MECHANISM_NAMES))
  MECHANISM_NAMES.set(Number(value), name);

export function mechanismName(type: number): string {
  return MECHANISM_NAMES.get(type) ?? `0x${type.toString(16).padStart(8, '0')}`;
}

/** Which algorithms the offered mechanisms cover; `required` ones fail the check when not. */
export function mechanismReport(
  offered: ReadonlySet<number>,
  required: readonly Algorithm[],
  listed: readonly Algorithm[],
): MechanismReport {
  const algorithms = [...new Set([...required, ...listed])];
  const needed = algorithms.map((alg) => {
    const mechanisms = requiredMechanisms(alg);
    return {
      alg,
      required: required.includes(alg),
      mechanisms: mechanisms.map(mechanismName),
      missing: mechanisms.filter((type) => !offered.has(type)).map(mechanismName),
    };
  });
  return {
    offered: [...offered].sort((a, b) => a - b).map(mechanismName),
    needed,
    missing: [...new Set(needed.filter((n) => n.required).flatMap((n) => n.missing))],
  };
}

export function mechanismCheck(report: MechanismReport): DoctorCheck {
  const base = { id: 'mechanisms', title: TITLES.mechanisms };
  const lacking = report.needed.filter((n) => n.missing.length > 0);
  const describe = (n: MechanismReport['needed'][number]) =>
    `${n.alg} (needs ${n.missing.join(', ')})`;
  const required = lacking.filter((n) => n.required);
  const optional = lacking.filter((n) => !n.required);
  const supported = report.needed.filter((n) => n.missing.length === 0).map((n) => n.alg);
  const also =
    optional.length > 0
      ? `; the profile also lists ${optional.map(describe).join(', ')}, which this token lacks`
      : '';
  if (required.length > 0) {
    return {
      ...base,
      status: 'fail',
      detail: `the token lacks what ${required.map(describe).join(', ')} needs${also}`,
      fix: `choose an algorithm the token supports (${supported.join(', ') || 'none'}) in keys.algorithm, or use a token that offers these mechanisms`,
      code: 'ERR_ALG_UNSUPPORTED',
    };
  }
  return {
    ...base,
    status: 'pass',
    detail: `${supported.join(', ')} supported (${report.offered.length} mechanisms offered)${also}`,
  };
}

/**
 * Decides from the token's flags alone whether a login is safe, before any is tried: a locked
 * PIN is never tried, and neither is one at its final try unless the operator asks.
 */
export function pinStateCheck(
  flags: number,
  pinFile: string,
  allowFinalTry = false,
): DoctorCheck & { login: boolean } {
  const base = { id: 'pin-state', title: TITLES['pin-state'] };
  if ((flags & pkcs11js.CKF_USER_PIN_INITIALIZED) === 0) {
    return {
      ...base,
      login: false,
      status: 'fail',
      detail: 'the token has no user PIN yet; doctor did not log in',
      fix: 'have the security officer set the user PIN (C_InitPIN: the vendor tool, or softhsm2-util for SoftHSM), then put it in the PIN file',
    };
  }
  if (flags & pkcs11js.CKF_USER_PIN_LOCKED) {
    return {
      ...base,
      login: false,
      status: 'fail',
      detail: 'the user PIN is locked; doctor did not log in',
      fix: `the security officer must unlock it and set a new user PIN (C_InitPIN with the SO PIN, or the vendor tool); then write the new PIN to ${pinFile}`,
      code: 'ERR_PIN_LOCKED',
    };
  }
  if (flags & pkcs11js.CKF_USER_PIN_FINAL_TRY) {
    if (!allowFinalTry) {
      return {
        ...base,
        login: false,
        status: 'fail',
        detail: 'one more wrong PIN locks the user PIN; doctor did not log in',
        fix: `make sure ${pinFile} holds the right user PIN, then run hsmint doctor --allow-final-try (a good login resets the count)`,
      };
    }
    return {
      ...base,
      login: true,
      status: 'warn',
      detail: 'one more wrong PIN locks the user PIN; logging in once as asked (--allow-final-try)',
      fix: `if the login fails, stop: have the security officer reset the PIN before anything tries ${pinFile} again`,
    };
  }
  if (flags & pkcs11js.CKF_USER_PIN_COUNT_LOW) {
    return {
      ...base,
      login: true,
      status: 'warn',
      detail: 'a wrong user PIN was tried since the last good login; trying the PIN file once',
      fix: `find what tried a wrong PIN (another service, an old PIN file); a good login resets the count`,
    };
  }
  if (flags & pkcs11js.CKF_USER_PIN_TO_BE_CHANGED) {
    return {
      ...base,
      login: true,
      status: 'warn',
      detail: 'the token asks for the user PIN to be changed',
      fix: `change the user PIN with the vendor tool and write the new one to ${pinFile}`,
    };
  }
  return { ...base, login: true, status: 'pass', detail: 'no failed logins recorded' };
}

/** Nearest-rank percentile of sorted samples. */
export function percentile(sorted: readonly number[], fraction: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.max(1, Math.ceil(fraction * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

const ms = (value: number) => Math.round(value * 1000) / 1000;

/** What to do about a failure that carries one of hsmint's codes. */
function fixFor(error: unknown, target?: { pinFile?: string }): string {
  const code = error instanceof HsmintError ? error.code : undefined;
  switch (code) {
    case 'ERR_CONFIG_INVALID':
    case 'ERR_CONFIG_UNREADABLE':
      return 'fix the file where the message points; systemd/hsmint.example.yaml shows every key';
    case 'ERR_PKCS11_URI_INVALID':
      return 'write the token as a label or a pkcs11: URI with token= or serial= (RFC 7512)';
    case 'ERR_MODULE_NOT_FOUND':
      return "install the token's PKCS#11 module, or point hsm.module (--module) at it";
    case 'ERR_HSM_TOKEN_NOT_FOUND':
      return 'compare hsm.token with the tokens listed (label, serial); for SoftHSM, check SOFTHSM2_CONF in hsm.environment';
    case 'ERR_HSM_TOKEN_AMBIGUOUS':
      return 'add serial=... to the token URI so it names exactly one token';
    case 'ERR_PIN_UNAVAILABLE':
      return `put the user PIN, on one line, in ${target?.pinFile ?? 'the PIN file'}, readable by the daemon's user`;
    case 'ERR_PIN_FILE_INSECURE':
      return `chmod 600 ${target?.pinFile ?? 'the PIN file'}`;
    case 'ERR_PIN_INCORRECT':
      return `write the right user PIN to ${target?.pinFile ?? 'the PIN file'}; do not retry until it is right: each wrong try brings the token closer to locking the PIN`;
    case 'ERR_PIN_LOCKED':
      return 'the security officer must unlock the user PIN and set a new one; then update the PIN file';
    default:
      return "see the detail; the module's own log (or OpenSC's pkcs11-spy) shows the PKCS#11 calls";
  }
}

function failure(
  id: string,
  title: string,
  error: unknown,
  target?: { pinFile?: string },
): DoctorCheck {
  const detail =
    error instanceof HsmintError
      ? error.message
      : (ckrName(error) ?? (error instanceof Error ? error.message : String(error)));
  return {
    id,
    title,
    status: 'fail',
    detail,
    fix: fixFor(error, target),
    ...(error instanceof HsmintError ? { code: error.code } : {}),
  };
}

/** Runs every check it safely can and returns the report; it throws only on a bug. */
export async function runDoctor(input: DoctorInput, options: DoctorOptions): Promise<DoctorReport> {
  const report: DoctorReport = {
    ok: false,
    target: {},
    module: null,
    slots: [],
    tokens: [],
    mechanisms: null,
    keys: [],
    latency: [],
    checks: [],
  };
  await diagnose(input, options, report);
  report.ok = report.checks.every((check) => check.status !== 'fail');
  return report;
}

async function diagnose(
  input: DoctorInput,
  options: DoctorOptions,
  report: DoctorReport,
): Promise<void> {
  const checks = report.checks;
  const stopAfter = (stage: Stage) => {
    const failed = checks.at(-1)?.id ?? stage;
    const from = STAGES.findIndex(([id]) => id === stage) + 1;
    for (const [id, title] of STAGES.slice(from))
      checks.push({ id, title, status: 'skip', detail: `not run: ${failed} did not pass` });
  };

  const target = resolveTarget(input, report);
  if (!target) return stopAfter('target');

  // Look at the token before logging in, on a module instance of our own.
  let modulePath: string;
  let module: graphene.Module;
  try {
    modulePath = target.modulePath();
    report.target.module = modulePath;
    module = loadModule(modulePath, target.environment);
  } catch (error) {
    checks.push(failure('module', TITLES.module, error));
    return stopAfter('module');
  }
  let flags: number;
  try {
    const info = module.lib.C_GetInfo();
    report.module = {
      path: modulePath,
      description: trimPadded(info.libraryDescription),
      manufacturer: trimPadded(info.manufacturerID),
      version: `${info.libraryVersion.major}.${info.libraryVersion.minor}`,
      cryptoki: `${info.cryptokiVersion.major}.${info.cryptokiVersion.minor}`,
    };
    checks.push({
      id: 'module',
      title: TITLES.module,
      status: 'pass',
      detail: `${report.module.description} ${report.module.version} (${report.module.manufacturer}, Cryptoki ${report.module.cryptoki}) from ${modulePath}`,
    });

    const found = inspectSlot(module, target, report);
    if (!found) return stopAfter('token');
    flags = found.getToken().flags;

    const offered = new Set<number>();
    const list = found.getMechanisms();
    for (let i = 0; i < list.length; i++) offered.add(list.items(i).type);
    report.mechanisms = mechanismReport(offered, target.required, target.listed);
    checks.push(mechanismCheck(report.mechanisms));
  } catch (error) {
    // The module loaded and answered C_GetInfo; reading its slots or the token failed.
    checks.push(failure('token', TITLES.token, error));
    return stopAfter('token');
  } finally {
    // Released before the login, which loads the module again through Pkcs11Token.
    try {
      module.finalize();
    } catch {
      // Already finalized: nothing holds the module.
    }
  }

  const pinState = pinStateCheck(flags, target.pinFile, options.allowFinalTry);
  const { login, ...pinCheck } = pinState;
  checks.push(pinCheck);
  if (!login) return stopAfter('pin-state');

  let pin: string;
  try {
    pin = await readPinFile(target.pinFile);
    checks.push({
      id: 'pin-file',
      title: TITLES['pin-file'],
      status: 'pass',
      detail: `${target.pinFile} is a private file of one line`,
    });
  } catch (error) {
    checks.push(failure('pin-file', TITLES['pin-file'], error, target));
    return stopAfter('pin-file');
  }

  // The one login attempt. Any refusal ends the run: nothing here tries a PIN twice.
  let token: Pkcs11Token;
  try {
    token = Pkcs11Token.open({
      modulePath,
      selector: target.selector,
      pin,
      sessions: target.sessions,
      environment: target.environment,
    });
    checks.push({
      id: 'login',
      title: TITLES.login,
      status: 'pass',
      detail: `logged in as user, with up to ${target.sessions} signing session(s)`,
    });
  } catch (error) {
    const check = failure('login', TITLES.login, error, target);
    if (!(error instanceof HsmintError)) {
      check.detail = `login or opening ${target.sessions} session(s) failed: ${check.detail}`;
      check.fix = "if the token limits sessions, lower hsm.sessions; the module's log has more";
    }
    checks.push(check);
    return stopAfter('login');
  }

  try {
    await onLoggedIn(token, target, report, options);
  } finally {
    await token.close();
  }
}

/**
 * The RSA size to try with a profile: hsmint's default when every RSA algorithm the profile
 * lists takes it, else the largest size they all take (a YubiKey's PIV takes 2048 only).
 */
function profileRsaBits(profile: HsmProfile): RsaKeySize {
  const lists = profile.algorithms
    .filter((alg) => alg === 'RS256' || alg === 'PS256')
    .map((alg) => profile.algorithmSupport[alg].rsaBits)
    .filter((sizes) => sizes.length > 0);
  const common = RSA_KEY_SIZES.filter((size) => lists.every((sizes) => sizes.includes(size)));
  if (common.includes(DEFAULTS.rsaBits) || common.length === 0) return DEFAULTS.rsaBits;
  return common.at(-1)!;
}

/** The token part of a PKCS#11 URI, for the report (never a PIN source or module path). */
function selectorUri(selector: TokenSelector): string {
  const parts = (['token', 'manufacturer', 'serial', 'model'] as const)
    .filter((name) => selector[name] !== undefined)
    .map((name) => `${name}=${encodeURIComponent(selector[name]!)}`);
  return `pkcs11:${parts.join(';')}`;
}

function resolveTarget(input: DoctorInput, report: DoctorReport): Target | undefined {
  const checks = report.checks;
  if ('configFile' in input) {
    report.target.config = input.configFile;
    try {
      const config = loadConfig(input.configFile);
      const profile = loadProfile(config.hsm.profile);
      report.target.profile = profile.name;
      report.target.token = selectorUri(config.hsm.token);
      checks.push({
        id: 'config',
        title: TITLES.target,
        status: 'pass',
        detail: `${input.configFile}: profile ${profile.name}, keys.algorithm ${config.keys.algorithm}`,
      });
      return {
        modulePath: () => resolveModule(config),
        selector: config.hsm.token,
        pinFile: input.pinFile ?? config.hsm.pinFile,
        environment: config.hsm.environment,
        required: [config.keys.algorithm],
        listed: profile.algorithms,
        rsaBits: config.keys.rsaBits,
        sessions: sessionCount(config),
        profile,
      };
    } catch (error) {
      checks.push(failure('config', TITLES.target, error));
      return undefined;
    }
  }
  report.target.profile = input.profile;
  report.target.token = input.token;
  try {
    const profile = loadProfile(input.profile);
    const uri = parseTokenReference(input.token);
    const pinFile = input.pinFile ?? uri.pinSource;
    if (pinFile === undefined)
      throw new HsmintError(
        'ERR_PIN_UNAVAILABLE',
        'no PIN file: give --pin-file, or pin-source in the token URI',
      );
    const modulePath = input.modulePath ?? uri.modulePath;
    checks.push({
      id: 'profile',
      title: TITLES.target,
      status: 'pass',
      detail: `profile ${profile.name}: ${profile.algorithms.join(', ')}`,
    });
    return {
      modulePath: () => modulePath ?? findModule(profile),
      selector: uri,
      pinFile,
      environment: {},
      required: profile.algorithms,
      listed: profile.algorithms,
      rsaBits: profileRsaBits(profile),
      sessions: profile.sessions,
      profile,
    };
  } catch (error) {
    checks.push(failure('profile', TITLES.target, error));
    return undefined;
  }
}

/** Lists the slots and tokens, and finds the selected one. */
function inspectSlot(
  module: graphene.Module,
  target: Target,
  report: DoctorReport,
): graphene.Slot | undefined {
  const slots = module.getSlots(true);
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i);
    const token = slot.getToken();
    // Modules such as SoftHSM always offer one empty slot for the next token: not a finding.
    if ((token.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) continue;
    const info = tokenInfoOf(slot);
    report.slots.push({
      description: trimPadded(slot.slotDescription),
      manufacturer: trimPadded(slot.manufacturerID),
      token: info.label,
    });
    report.tokens.push({
      label: info.label,
      serial: info.serial,
      model: info.model,
      manufacturer: info.manufacturer,
      firmware: `${token.firmwareVersion.major}.${token.firmwareVersion.minor}`,
      hardware: `${token.hardwareVersion.major}.${token.hardwareVersion.minor}`,
      selected: false,
    });
  }
  let slot: graphene.Slot;
  try {
    slot = findSlot(module, target.selector);
  } catch (error) {
    const check = failure('token', TITLES.token, error);
    const seen = report.tokens.map((t) => `${t.label} (serial ${t.serial})`).join(', ');
    check.detail += seen ? `; tokens seen: ${seen}` : '; the module shows no initialized token';
    report.checks.push(check);
    return undefined;
  }
  const info = tokenInfoOf(slot);
  const selected = report.tokens.find((t) => t.label === info.label && t.serial === info.serial);
  if (selected) selected.selected = true;
  report.checks.push({
    id: 'token',
    title: TITLES.token,
    status: 'pass',
    detail: `${info.label} (serial ${info.serial}, ${info.manufacturer} ${info.model}, firmware ${selected?.firmware ?? '?'})`,
  });
  return slot;
}

const PROBE_ISSUER = 'urn:hsmint:doctor';
const PROBE_AUDIENCE = 'hsmint-doctor';
const LATENCY_INPUT = Buffer.from('hsmint doctor: sign latency probe', 'ascii');

async function onLoggedIn(
  token: Pkcs11Token,
  target: Target,
  report: DoctorReport,
  options: DoctorOptions,
): Promise<void> {
  const checks = report.checks;
  const offered = token.mechanisms();
  // Throwaway keys live in a store of their own, loaded first: a later reload would forget
  // them, as they are not token objects.
  const scratch = new Pkcs11KeyStore(token, { rsaBits: target.rsaBits });
  // The configured keys, found as the daemon finds them: by label, or by PIV slot.
  const piv = pivLayout(target.profile, 'signing');
  const signing = new Pkcs11KeyStore(token, { rsaBits: target.rsaBits, ...(piv ? { piv } : {}) });
  const throwaway: string[] = [];
  const signers: Array<{ key: KeyInfo; name: string }> = [];
  try {
    let storeFailure: string | undefined;
    try {
      await scratch.reload();
    } catch (error) {
      // The daemon would fail the same way at start: an hsmint label on a key that is not
      // what the label says.
      checks.push({
        ...failure('keys', 'hsmint keys readable', error),
        fix: 'a private key with an hsmint label (hsmint-ALG-TIME) is not an ALG key: list the objects (pkcs11-tool --list-objects --login) and rename or remove it; the daemon fails the same way at start',
      });
      storeFailure = 'not run: keys did not pass';
    }
    for (const alg of target.required) {
      const id = `sign:${alg}`;
      const title = `${TITLES.sign} ${alg}`;
      if (storeFailure !== undefined) {
        checks.push({ id, title, status: 'skip', detail: storeFailure });
        continue;
      }
      if (requiredMechanisms(alg).some((type) => !offered.has(type))) {
        checks.push({ id, title, status: 'skip', detail: 'the token lacks its mechanisms' });
        continue;
      }
      const chosen = await signingKey(alg, scratch, signing, throwaway);
      if ('error' in chosen) {
        checks.push({ id, title, status: 'fail', detail: chosen.error, fix: chosen.fix });
        continue;
      }
      try {
        const minted = await signToken(
          chosen.store,
          prepareToken(chosen.key, {
            issuer: PROBE_ISSUER,
            audience: PROBE_AUDIENCE,
            ttlSeconds: 60,
            now: new Date(),
          }),
        );
        await jwtVerify(minted.token, await importJWK(chosen.key.publicJwk, alg), {
          algorithms: [alg],
          issuer: PROBE_ISSUER,
          audience: PROBE_AUDIENCE,
        });
        checks.push({
          id,
          title,
          status: 'pass',
          detail: `a JWT signed on the token verifies with jose (${chosen.how})`,
        });
        signers.push({ key: chosen.key, name: chosen.name });
      } catch (error) {
        checks.push({
          id,
          title,
          status: 'fail',
          detail: `${chosen.how}: ${error instanceof HsmintError ? error.message : (ckrName(error) ?? String(error))}`,
          fix:
            error instanceof HsmintError
              ? fixFor(error)
              : `the module signs ${alg} in a way jose rejects: update the module or firmware, or choose another algorithm`,
        });
      }
    }

    try {
      report.keys = proveNonExportable(token, offered, target.profile);
      if (report.keys.length === 0) {
        checks.push({
          id: 'non-exportable',
          title: TITLES['non-exportable'],
          status: 'skip',
          detail: 'no hsmint keys on the token yet',
        });
      }
      for (const key of report.keys) checks.push(protectionCheck(key));
    } catch (error) {
      checks.push(failure('non-exportable', TITLES['non-exportable'], error));
    }

    for (const { key, name } of signers) {
      const id = `latency:${key.alg}`;
      const title = `${TITLES.latency} ${key.alg}`;
      try {
        const entry = await measure(scratch, signing, key, name, options.samples);
        report.latency.push(entry);
        checks.push({
          id,
          title,
          status: 'pass',
          detail: `p50 ${entry.p50_ms} ms, p99 ${entry.p99_ms} ms, max ${entry.max_ms} ms over ${entry.samples} signatures (${name === 'session' ? 'throwaway key' : name})`,
        });
      } catch (error) {
        checks.push(failure(id, title, error));
      }
    }
  } finally {
    for (const kid of throwaway) {
      try {
        await scratch.destroy(kid);
      } catch {
        // A session object goes with its session anyway, when the token closes.
      }
    }
  }
}

type ChosenKey =
  | { store: Pkcs11KeyStore; key: KeyInfo; how: string; name: string }
  | { error: string; fix: string };

/** A throwaway session key when the token makes one, else the newest hsmint key of `alg`. */
async function signingKey(
  alg: Algorithm,
  scratch: Pkcs11KeyStore,
  signing: Pkcs11KeyStore,
  throwaway: string[],
): Promise<ChosenKey> {
  let refusal: string;
  try {
    const key = await scratch.generate(alg, { sessionOnly: true });
    throwaway.push(key.kid);
    return { store: scratch, key, how: 'throwaway session key', name: 'session' };
  } catch (error) {
    const cause = error instanceof HsmintError ? error.cause : error;
    refusal = ckrName(cause) ?? (error instanceof Error ? error.message : String(error));
  }
  let keys: KeyInfo[];
  try {
    keys = (await signing.list()).filter((key) => key.alg === alg);
  } catch (error) {
    return {
      error: `the token refused a session key (${refusal}), and reading its hsmint keys failed: ${error instanceof Error ? error.message : String(error)}`,
      fix: fixFor(error),
    };
  }
  const key = keys.at(-1);
  if (!key) {
    return {
      error: `the token refused a session key (${refusal}) and holds no hsmint ${alg} key to sign with instead`,
      fix: `create one (hsmint keys create --alg ${alg}), then run doctor again`,
    };
  }
  return {
    store: signing,
    key,
    how: `the token refused a session key (${refusal}), so hsmint key ${key.label} signed`,
    name: key.label,
  };
}

async function measure(
  scratch: Pkcs11KeyStore,
  signing: Pkcs11KeyStore,
  key: KeyInfo,
  name: string,
  samples: number,
): Promise<Latency> {
  const store = name === 'session' ? scratch : signing;
  const times: number[] = [];
  for (let i = 0; i < samples; i++) {
    const start = performance.now();
    await store.sign(key.kid, LATENCY_INPUT);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return {
    alg: key.alg,
    key: name,
    samples,
    p50_ms: ms(percentile(times, 0.5)),
    p99_ms: ms(percentile(times, 0.99)),
    max_ms: ms(times.at(-1) ?? 0),
  };
}

const SECRET_ATTRIBUTES: Array<[string, number]> = [
  ['CKA_VALUE', pkcs11js.CKA_VALUE],
  ['CKA_PRIVATE_EXPONENT', pkcs11js.CKA_PRIVATE_EXPONENT],
  ['CKA_PRIME_1', pkcs11js.CKA_PRIME_1],
  ['CKA_PRIME_2', pkcs11js.CKA_PRIME_2],
  ['CKA_EXPONENT_1', pkcs11js.CKA_EXPONENT_1],
  ['CKA_EXPONENT_2', pkcs11js.CKA_EXPONENT_2],
  ['CKA_COEFFICIENT', pkcs11js.CKA_COEFFICIENT],
];

/** AES wrapping mechanisms, best first; CBC needs an IV. */
const WRAP_MECHANISMS: pkcs11js.Mechanism[] = [
  { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD },
  { mechanism: pkcs11js.CKM_AES_KEY_WRAP },
  { mechanism: pkcs11js.CKM_AES_CBC_PAD, parameter: Buffer.alloc(16) },
];

/** Room for a wrapped RSA-4096 private key and then some. */
const WRAP_BUFFER_BYTES = 16 * 1024;

/**
 * Reads every hsmint private key's protection with raw PKCS#11 calls: the attributes, the
 * secret values (which must be refused), and C_WrapKey under a throwaway AES session key
 * (which must be refused too).
 */
function proveNonExportable(
  token: Pkcs11Token,
  offered: ReadonlySet<number>,
  profile: HsmProfile,
): KeyProtection[] {
  const session = token.anchor;
  const lib = session.lib;
  const keys: KeyProtection[] = [];
  const found = session.find({ class: graphene.ObjectClass.PRIVATE_KEY, token: true });
  const candidates: Array<{
    handle: Buffer;
    label: string;
    purpose: KeyPurpose;
    alg: Algorithm;
  }> = [];
  // On a PIV device hsmint's keys are the ones in its slots (by CKA_ID), whatever their label.
  const pivSlots = new Map<number, { purpose: KeyPurpose; slot: string }>();
  for (const purpose of Object.keys(KEY_PURPOSES) as KeyPurpose[])
    for (const use of pivLayout(profile, purpose)?.slots ?? [])
      pivSlots.set(use.ckaId, { purpose, slot: use.slot });
  for (let i = 0; i < found.length; i++) {
    const object = found.items(i);
    const label = String(object.getAttribute('label') ?? '');
    const id = object.getAttribute('id') as Buffer | null;
    const piv = id?.length === 1 ? pivSlots.get(id[0]!) : undefined;
    if (piv) {
      let alg: Algorithm | undefined;
      try {
        alg = algorithmOfKey(object);
      } catch {
        alg = undefined; // a key hsmint cannot read the type of is none of its keys
      }
      if (alg)
        candidates.push({
          handle: object.handle,
          label: `${label || 'key'} (PIV slot ${piv.slot})`,
          purpose: piv.purpose,
          alg,
        });
      continue;
    }
    for (const purpose of Object.keys(KEY_PURPOSES) as KeyPurpose[]) {
      const parsed = parseKeyLabel(label, purpose);
      if (parsed) candidates.push({ handle: object.handle, label, purpose, alg: parsed.alg });
    }
  }
  if (candidates.length === 0) return keys;

  const wrapper = makeWrappingKey(session, offered);
  try {
    for (const candidate of candidates) {
      const flag = (type: number): boolean | null => {
        try {
          const [attribute] = lib.C_GetAttributeValue(session.handle, candidate.handle, [{ type }]);
          const value = attribute?.value;
          return Buffer.isBuffer(value) && value.length > 0 ? value[0] === 1 : null;
        } catch {
          return null;
        }
      };
      const readable: string[] = [];
      for (const [name, type] of SECRET_ATTRIBUTES) {
        try {
          const [attribute] = lib.C_GetAttributeValue(session.handle, candidate.handle, [{ type }]);
          const value = attribute?.value;
          if (Buffer.isBuffer(value) && value.length > 0) {
            value.fill(0);
            readable.push(name);
          }
        } catch {
          // Refused (CKR_ATTRIBUTE_SENSITIVE) or not an attribute of this key type: both fine.
        }
      }
      let wrap: string;
      if ('why' in wrapper) wrap = `not tried: ${wrapper.why}`;
      else {
        try {
          const wrapped = lib.C_WrapKey(
            session.handle,
            wrapper.mechanism,
            wrapper.handle,
            candidate.handle,
            Buffer.alloc(WRAP_BUFFER_BYTES),
          );
          wrapped.fill(0);
          wrap = 'wrapped';
        } catch (error) {
          wrap = `refused (${ckrName(error) ?? 'error'})`;
        }
      }
      keys.push({
        label: candidate.label,
        purpose: candidate.purpose,
        alg: candidate.alg,
        extractable: flag(pkcs11js.CKA_EXTRACTABLE),
        never_extractable: flag(pkcs11js.CKA_NEVER_EXTRACTABLE),
        sensitive: flag(pkcs11js.CKA_SENSITIVE),
        always_sensitive: flag(pkcs11js.CKA_ALWAYS_SENSITIVE),
        private: flag(pkcs11js.CKA_PRIVATE),
        readable,
        wrap,
      });
    }
  } finally {
    if ('handle' in wrapper) {
      try {
        lib.C_DestroyObject(session.handle, wrapper.handle);
      } catch {
        // A session object goes with its session anyway, when the token closes.
      }
    }
  }
  return keys;
}

/** A session-only AES key that may wrap and nothing else, or why there is none. */
function makeWrappingKey(
  session: graphene.Session,
  offered: ReadonlySet<number>,
): { handle: Buffer; mechanism: pkcs11js.Mechanism } | { why: string } {
  const mechanism = WRAP_MECHANISMS.find((m) => offered.has(m.mechanism));
  if (!offered.has(pkcs11js.CKM_AES_KEY_GEN) || !mechanism)
    return { why: 'the token offers no AES key wrapping' };
  try {
    const handle = session.lib.C_GenerateKey(
      session.handle,
      { mechanism: pkcs11js.CKM_AES_KEY_GEN },
      [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_LABEL, value: 'hsmint-doctor-wrap' },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_WRAP, value: true },
        { type: pkcs11js.CKA_UNWRAP, value: false },
        { type: pkcs11js.CKA_ENCRYPT, value: false },
        { type: pkcs11js.CKA_DECRYPT, value: false },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
      ],
    );
    return { handle, mechanism };
  } catch (error) {
    return { why: `the token refused a session AES key (${ckrName(error) ?? 'error'})` };
  }
}

/** A key passes when every attribute says it never left and never can, and nothing got out. */
export function protectionCheck(key: KeyProtection): DoctorCheck {
  const problems: string[] = [];
  const expect = (name: string, value: boolean | null, wanted: boolean) => {
    if (value === null) problems.push(`${name} is not reported`);
    else if (value !== wanted) problems.push(`${name} is ${value}`);
  };
  expect('CKA_EXTRACTABLE', key.extractable, false);
  expect('CKA_NEVER_EXTRACTABLE', key.never_extractable, true);
  expect('CKA_SENSITIVE', key.sensitive, true);
  expect('CKA_ALWAYS_SENSITIVE', key.always_sensitive, true);
  expect('CKA_PRIVATE', key.private, true);
  if (key.readable.length > 0) problems.push(`the token handed out ${key.readable.join(', ')}`);
  if (key.wrap === 'wrapped') problems.push('C_WrapKey wrapped it');
  const base = {
    id: `non-exportable:${key.label}`,
    title: `Key ${key.label}`,
  };
  if (problems.length > 0) {
    return {
      ...base,
      status: 'fail',
      detail: `can leave the token: ${problems.join('; ')}`,
      fix: `treat ${key.label} as exposed: hsmint never makes keys like this. Revoke it (hsmint keys revoke KID) or delete it with the vendor tool, and have hsmint generate its keys on the token`,
    };
  }
  return {
    ...base,
    status: 'pass',
    detail: `cannot leave the token: never extractable, always sensitive, value unreadable; C_WrapKey ${key.wrap}`,
  };
}
