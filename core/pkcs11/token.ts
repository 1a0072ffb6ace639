import * as graphene from 'graphene-pk11';
import pkcs11js from 'pkcs11js';
import { availableParallelism } from 'node:os';
import { HsmintError, hasCode } from '../errors.js';
import type { SessionUse } from '../keys/keystore.js';
import { ckrCode, ckrName, isCkr } from './ckr.js';
import {
  TokenSeal,
  type Backoff,
  type Fault,
  type TokenCondition,
  type TokenEvent,
} from './recovery.js';
import { SessionPool, type SessionReturn } from './session-pool.js';
import { SignPool, isDeadline } from './sign-pool.js';
import { matchesToken, trimPadded, type TokenSelector } from './uri.js';

export { ckrCode, ckrName, isCkr } from './ckr.js';
export type { TokenCondition, TokenEvent } from './recovery.js';

export type SessionHandle = Buffer;

export interface TokenInfo {
  label: string;
  manufacturer: string;
  model: string;
  serial: string;
}

/** Defaults for the deadlines below; config.ts has the same (hsm.queue_timeout, hsm.call_timeout). */
export const DEFAULT_QUEUE_TIMEOUT_MS = 2_000;
export const DEFAULT_CALL_TIMEOUT_MS = 2_000;

export interface OpenTokenOptions {
  modulePath: string;
  selector: TokenSelector;
  pin: string;
  /** Sessions in the signing pool; each carries one operation at a time. Never more are opened. */
  sessions: number;
  /** Set before the module loads (SoftHSM reads SOFTHSM2_CONF at C_Initialize). */
  environment?: Readonly<Record<string, string>>;
  /** How long an operation waits for a free session before ERR_HSM_BUSY (ms). */
  queueTimeoutMs?: number;
  /** How long a signature or probe may take before the token counts as hung (ms). */
  callTimeoutMs?: number;
  /**
   * Reads the PIN again for each re-open after a fault (the file may have been fixed in the
   * meantime). Without it, re-opens log in with the PIN given here.
   */
  readPin?: () => Promise<string>;
  /** Seals, re-open attempts and recoveries, for the daemon's logs and audit log. */
  onEvent?: (event: TokenEvent) => void;
  /** The re-open back-off; recovery.ts has the default (0.5 s doubling to 30 s). */
  backoff?: Backoff;
  /**
   * For devices whose keys can wait for a touch (the profile's touch policies): a signature's
   * deadline and the hint its ERR_HSM_TOUCH_TIMEOUT gives. Without it, callTimeoutMs holds.
   */
  touch?: { signTimeoutMs: number; hint: string };
}

/**
 * CKR codes that mean the device or its module is gone or broken, not this one call: the token
 * seals at once and re-opens in the background.
 */
const DEVICE_FAULTS = new Set([
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_DEVICE_MEMORY,
  pkcs11js.CKR_GENERAL_ERROR,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
]);

/** CKR codes after which a session cannot be trusted again and is replaced. */
const SESSION_LOST = new Set([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_OPERATION_ACTIVE,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
]);

/**
 * CKR codes that a fresh session or fresh object handles usually cure (another application
 * reset the token, the login was lost): one retry, and only if that fails too, the token seals.
 */
export const RETRY_ONCE = new Set([
  ...SESSION_LOST,
  pkcs11js.CKR_OBJECT_HANDLE_INVALID,
  pkcs11js.CKR_KEY_HANDLE_INVALID,
]);

/**
 * A refused PIN in a context-specific login (a key with CKA_ALWAYS_AUTHENTICATE): each try
 * costs one of the token's PIN attempts, so it is never retried, and only an admin unseals.
 */
export const PIN_REFUSED = new Set([pkcs11js.CKR_PIN_INCORRECT, pkcs11js.CKR_PIN_LOCKED]);

export const WRONG_PIN =
  'wrong PIN: the token refused the PIN in the PIN file; put the right one there, then reload (SIGHUP) or restart';
export const PIN_LOCKED =
  'PIN locked: an SO must reset it; then update the PIN file and reload (SIGHUP) or restart';

/** Loads a module, tolerating a second load in the same process (tests, CLI + offline work). */
export function loadModule(
  modulePath: string,
  environment: Readonly<Record<string, string>> = {},
): graphene.Module {
  for (const [name, value] of Object.entries(environment)) process.env[name] = value;
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(modulePath);
  } catch (cause) {
    throw new HsmintError('ERR_MODULE_NOT_FOUND', `cannot load PKCS#11 module ${modulePath}`, {
      cause,
    });
  }
  const module = new graphene.Module(lib);
  module.libFile = modulePath;
  initialize(module);
  return module;
}

/** C_Initialize, at start and again after each C_Finalize of a recovery. */
function initialize(module: graphene.Module): void {
  try {
    // Without OS locking, SoftHSM and others corrupt memory when sessions sign in parallel.
    module.initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (cause) {
    if (!isCkr(cause, pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
      throw new HsmintError('ERR_MODULE_NOT_FOUND', `C_Initialize failed for ${module.libFile}`, {
        cause,
        details: { ckr: ckrName(cause) },
      });
    }
  }
}

export function tokenInfoOf(slot: graphene.Slot): TokenInfo {
  const token = slot.getToken();
  return {
    label: trimPadded(token.label),
    manufacturer: trimPadded(token.manufacturerID),
    model: trimPadded(token.model),
    serial: trimPadded(token.serialNumber),
  };
}

/** Finds exactly one initialized token matching the selector; slot numbers play no part. */
export function findSlot(module: graphene.Module, selector: TokenSelector): graphene.Slot {
  const slots = module.getSlots(true);
  const matches: graphene.Slot[] = [];
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i);
    const token = slot.getToken();
    if ((token.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) continue;
    if (matchesToken(selector, token)) matches.push(slot);
  }
  const wanted = JSON.stringify(selector);
  if (matches.length === 0) {
    throw new HsmintError('ERR_HSM_TOKEN_NOT_FOUND', `no initialized token matches ${wanted}`);
  }
  if (matches.length > 1) {
    throw new HsmintError(
      'ERR_HSM_TOKEN_AMBIGUOUS',
      `${matches.length} tokens match ${wanted}; add the serial to the token URI`,
    );
  }
  return matches[0]!;
}

/** Opens a session on `slot` and logs the user in; a refused PIN gets its own code. */
function logIn(slot: graphene.Slot, pin: string): graphene.Session {
  if (slot.getToken().flags & pkcs11js.CKF_USER_PIN_LOCKED) {
    throw new HsmintError(
      'ERR_PIN_LOCKED',
      'the token has locked the user PIN; an SO must reset it',
    );
  }
  const anchor = slot.open(graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION);
  try {
    anchor.login(pin, graphene.UserType.USER);
  } catch (cause) {
    if (isCkr(cause, pkcs11js.CKR_USER_ALREADY_LOGGED_IN)) return anchor;
    closeQuietly(() => anchor.close());
    if (isCkr(cause, pkcs11js.CKR_PIN_INCORRECT)) {
      throw new HsmintError('ERR_PIN_INCORRECT', 'the token refused the PIN', { cause });
    }
    if (isCkr(cause, pkcs11js.CKR_PIN_LOCKED)) {
      throw new HsmintError('ERR_PIN_LOCKED', 'the token has locked the user PIN', { cause });
    }
    throw new HsmintError('ERR_HSM_UNAVAILABLE', `login failed: ${ckrName(cause)}`, {
      cause,
      details: { ckr: ckrName(cause) },
    });
  }
  return anchor;
}

/** How a failed re-open reads in health and logs, and whether the loop tries again. */
function reopenFault(error: unknown): Fault {
  if (hasCode(error, 'ERR_PIN_INCORRECT')) return { reason: WRONG_PIN, recovery: 'admin' };
  if (hasCode(error, 'ERR_PIN_LOCKED')) return { reason: PIN_LOCKED, recovery: 'admin' };
  const ckr = ckrName(error) ?? ckrName((error as { cause?: unknown })?.cause);
  const code = error instanceof HsmintError ? ` (${error.code})` : '';
  const message = error instanceof Error ? error.message : String(error);
  return {
    reason: `${message}${code}`,
    ...(ckr === undefined ? {} : { ckr }),
    recovery: 'automatic',
  };
}

/** A device that answers again: the slot, its logged-in anchor, a session pool and signers. */
interface Live {
  slot: graphene.Slot;
  /** Logged in; used for object search, generation and attribute reads. */
  anchor: graphene.Session;
  pool: SessionPool<SessionHandle>;
  signer: SignPool;
}

/**
 * An open, logged-in token that survives its device going away. The anchor session holds the
 * login for the whole application (PKCS#11 login state is per application, not per session)
 * and serves object handling; a pool of at most `sessions` further sessions carries signing,
 * one operation per session at a time, off the main thread (sign-pool.ts).
 *
 * A device-level failure (the token removed, the module's link to it broken) seals the token:
 * everything asked of it fails at once with ERR_HSM_UNAVAILABLE, and recovery.ts re-opens it in
 * the background (C_Finalize, C_Initialize, the slot found again by label and serial, a new
 * login with the PIN read again, the keys' handles found again by label) until it answers.
 * A refused or locked PIN stops that loop: only an admin's reload tries again. A call that
 * does not return by its deadline is abandoned and seals the token until it comes back.
 *
 * Calls on the anchor (key listing, generation) run on the main thread, as graphene makes
 * them: a module that hangs there stops the event loop, and the systemd watchdog restarts the
 * daemon. Signatures and probes, the calls made for requests, have deadlines.
 */
export class Pkcs11Token {
  private readonly lib: pkcs11js.PKCS11;
  private live: Live | undefined;
  private current: TokenInfo;
  private readonly seal: TokenSeal;
  private readonly size: number;
  private readonly queueTimeoutMs: number;
  private readonly callTimeoutMs: number;
  private readonly reopenHooks: Array<() => Promise<void>> = [];
  /** Set while hooks reload keys during a re-open: the anchor may be used though still sealed. */
  private reopening = false;
  private closed = false;
  /** Whether this module needs signatures on the main thread (see sign-pool.ts). */
  private inline = false;
  /** Calls stranded in signers that were torn down: the module stays initialized under them. */
  private readonly retired: SignPool[] = [];
  /** Whether C_Initialize holds now (C_Finalize undoes it). */
  private initialized = true;
  /** The PIN of the current login, for context-specific logins; replaced at each re-open. */
  private pin: string;

  private constructor(
    private readonly module: graphene.Module,
    slot: graphene.Slot,
    anchor: graphene.Session,
    private readonly options: OpenTokenOptions,
  ) {
    this.lib = module.lib;
    this.size = Math.max(1, options.sessions);
    this.queueTimeoutMs = options.queueTimeoutMs ?? DEFAULT_QUEUE_TIMEOUT_MS;
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.pin = options.pin;
    this.current = tokenInfoOf(slot);
    this.seal = new TokenSeal({
      reopen: () => this.reopen(),
      inFlight: () => ({
        calls: this.live?.pool.lent ?? 0,
        stranded: this.stranded(),
      }),
      describe: reopenFault,
      onSeal: () =>
        this.live?.pool.stop(new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is sealed')),
      ...(options.onEvent ? { onEvent: options.onEvent } : {}),
      ...(options.backoff ? { backoff: options.backoff } : {}),
    });
    this.live = this.connect(slot, anchor);
  }

  static open(options: OpenTokenOptions): Pkcs11Token {
    const module = loadModule(options.modulePath, options.environment);
    try {
      const slot = findSlot(module, options.selector);
      const anchor = logIn(slot, options.pin);
      try {
        return new Pkcs11Token(module, slot, anchor, options);
      } catch (error) {
        closeQuietly(() => anchor.logout());
        closeQuietly(() => anchor.close());
        throw error;
      }
    } catch (error) {
      finalizeQuietly(module);
      throw error;
    }
  }

  /** The token as it was found when it was last opened. */
  get info(): TokenInfo {
    return this.current;
  }

  /** Open, or sealed with the reason and the way back. */
  condition(): TokenCondition {
    return this.seal.condition();
  }

  /**
   * One re-open attempt now if the token is sealed (a reload asks for it; after a refused PIN
   * it is the only try made). Resolves with the condition after it.
   */
  retryNow(): Promise<TokenCondition> {
    return this.seal.retryNow();
  }

  /**
   * Runs `hook` at each re-open, after the new login and before the token unseals: key stores
   * find their objects' new handles there. A hook that throws fails the attempt.
   */
  onReopen(hook: () => Promise<void>): void {
    this.reopenHooks.push(hook);
  }

  /** The logged-in anchor session; ERR_HSM_UNAVAILABLE while sealed. Prefer withAnchor. */
  get anchor(): graphene.Session {
    return this.usable().anchor;
  }

  /** Runs `use` on the anchor session; a device-level failure in it seals the token. */
  async withAnchor<T>(use: (anchor: graphene.Session) => T | Promise<T>): Promise<T> {
    const live = this.usable();
    try {
      return await use(live.anchor);
    } catch (error) {
      this.fail(error, false);
      throw error;
    }
  }

  mechanisms(): Set<number> {
    const list = this.usable().slot.getMechanisms();
    const types = new Set<number>();
    for (let i = 0; i < list.length; i++) types.add(list.items(i).type);
    return types;
  }

  /**
   * Runs `work` on a pool session. Callers queue when every session is busy, for at most the
   * queue timeout (then ERR_HSM_BUSY), so a token that takes one operation at a time is never
   * asked for two. Sealed, it fails at once with ERR_HSM_UNAVAILABLE.
   */
  async withSession<T>(work: (session: SessionHandle) => Promise<T>): Promise<T> {
    const live = this.usable();
    let session: SessionHandle;
    try {
      session = await live.pool.acquire();
    } catch (error) {
      this.fail(error, false);
      throw error;
    }
    let how: SessionReturn = 'reuse';
    try {
      return await work(session);
    } catch (error) {
      const code = ckrCode(error);
      if (isDeadline(error)) how = 'abandon';
      else if (
        code !== undefined &&
        (SESSION_LOST.has(code) || DEVICE_FAULTS.has(code) || PIN_REFUSED.has(code))
      )
        // After a refused context-specific login the signing operation is still active.
        how = 'replace';
      this.fail(error, false);
      throw error;
    } finally {
      live.pool.release(session, how);
    }
  }

  /**
   * C_SignInit + C_Sign on a pool session, off the main thread, under the call deadline (see
   * sign-pool.ts). Call it inside withSession. `contextLogin` for a key with
   * CKA_ALWAYS_AUTHENTICATE: C_Login(CKU_CONTEXT_SPECIFIC) with the login's PIN in between.
   */
  sign(
    session: SessionHandle,
    mechanism: pkcs11js.Mechanism,
    key: Buffer,
    data: Buffer,
    length: number,
    contextLogin = false,
  ): Promise<Buffer> {
    const signer = this.usable().signer;
    if (!contextLogin) return signer.sign(session, mechanism, key, data, length);
    return signer.sign(session, mechanism, key, data, length, this.pin);
  }

  /** Resolves when a pool session can be had and the module answers on it (see SignPool.probe). */
  probe(): Promise<void> {
    return this.withSession((session) => this.usable().signer.probe(session));
  }

  /**
   * Seals the token for `error` when it is a device-level failure or a missed deadline, or
   * whatever it is when `retried` says a fresh session and fresh handles failed as well.
   */
  fail(error: unknown, retried = true): void {
    if (this.closed) return;
    const code = ckrCode(error);
    const ckr = ckrName(error);
    if (code !== undefined && PIN_REFUSED.has(code)) {
      this.seal.seal({
        reason: code === pkcs11js.CKR_PIN_LOCKED ? PIN_LOCKED : WRONG_PIN,
        ...(ckr === undefined ? {} : { ckr }),
        recovery: 'admin',
      });
    } else if (isDeadline(error)) {
      this.seal.seal({
        reason: `${(error as Error).message}; waiting for it to return (a restart clears it)`,
        recovery: 'restart',
      });
    } else if (
      code !== undefined &&
      (DEVICE_FAULTS.has(code) || (retried && RETRY_ONCE.has(code)))
    ) {
      this.seal.seal({
        reason: retried && !DEVICE_FAULTS.has(code) ? `${ckr} again on a fresh session` : `${ckr}`,
        ...(ckr === undefined ? {} : { ckr }),
        recovery: 'automatic',
      });
    }
  }

  /** The signing pool now: what is open, what is busy, what waits (for metrics). */
  sessionUse(): SessionUse {
    return this.live?.pool.use() ?? { open: 0, busy: 0, limit: this.size, waiting: 0 };
  }

  /** Waits for signatures in flight, then logs out and finalizes the module. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.seal.close();
    await this.disconnect(new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed'));
  }

  private usable(): Live {
    if (this.closed) throw new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed');
    if (this.live && (!this.seal.sealed || this.reopening)) return this.live;
    const reason = this.seal.condition().reason ?? 'it is being re-opened';
    throw new HsmintError('ERR_HSM_UNAVAILABLE', `the token is sealed: ${reason}`);
  }

  private stranded(): number {
    let calls = this.live?.signer.stranded ?? 0;
    for (const signer of this.retired) calls += signer.stranded;
    return calls;
  }

  /** A fresh pool and signers on a logged-in anchor. */
  private connect(slot: graphene.Slot, anchor: graphene.Session): Live {
    const pool = new SessionPool<SessionHandle>({
      size: this.size,
      queueTimeoutMs: this.queueTimeoutMs,
      open: () =>
        this.lib.C_OpenSession(slot.handle, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION),
      close: (session) => this.lib.C_CloseSession(session),
    });
    pool.fill();
    const signer = new SignPool({
      modulePath: this.options.modulePath,
      // No more threads than sessions: a token that takes one operation at a time gets one.
      size: Math.min(this.size, availableParallelism()),
      lib: this.lib,
      callTimeoutMs: this.callTimeoutMs,
      ...(this.options.touch ? { touch: this.options.touch } : {}),
      inline: this.inline,
      onInline: () => {
        this.inline = true;
        this.options.onEvent?.({ event: 'token.sign_inline' });
      },
    });
    return { slot, anchor, pool, signer };
  }

  /**
   * Stops the pool and signers, logs out, and finalizes the module; not a call more into a
   * module that has a call stranded in it (it would hang as well).
   */
  private async disconnect(error: HsmintError): Promise<void> {
    const live = this.live;
    this.live = undefined;
    if (live) {
      live.pool.stop(error);
      await live.signer.close();
      if (live.signer.stranded > 0) this.retired.push(live.signer);
    }
    if (this.stranded() > 0) return;
    if (live) {
      closeQuietly(() => live.anchor.logout());
      closeQuietly(() => live.anchor.close());
    }
    // Finalized once: a second C_Finalize is an error, and some modules complain on stderr.
    if (this.initialized) {
      finalizeQuietly(this.module);
      this.initialized = false;
    }
  }

  /**
   * One re-open (recovery.ts calls it, never while a call is in the module): finalize,
   * initialize, find the token again (its slot may have changed; its serial must not), log in
   * with the PIN read again, fresh sessions and signers, then the hooks reload key handles.
   */
  private async reopen(): Promise<void> {
    await this.disconnect(new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is sealed'));
    this.retired.splice(0);
    try {
      initialize(this.module);
      this.initialized = true;
      const slot = findSlot(this.module, this.options.selector);
      const info = tokenInfoOf(slot);
      if (info.serial !== this.current.serial) {
        throw new HsmintError(
          'ERR_HSM_TOKEN_NOT_FOUND',
          `the token answering now has serial ${info.serial}, not ${this.current.serial}`,
        );
      }
      const pin = this.options.readPin ? await this.options.readPin() : this.options.pin;
      if (this.closed) throw new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed');
      this.live = this.connect(slot, logIn(slot, pin));
      this.pin = pin;
      this.current = info;
      this.reopening = true;
      for (const hook of this.reopenHooks) {
        await hook();
        if (this.closed) throw new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed');
      }
    } catch (error) {
      await this.disconnect(new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is sealed'));
      throw error;
    } finally {
      this.reopening = false;
    }
  }
}

function closeQuietly(action: () => void): void {
  try {
    action();
  } catch {
    // Closing is best effort: the module is about to be finalized anyway.
  }
}

function finalizeQuietly(module: graphene.Module): void {
  closeQuietly(() => module.finalize());
}
