import * as graphene from 'graphene-pk11';
import pkcs11js from 'pkcs11js';
import { availableParallelism } from 'node:os';
import { HsmintError } from '../errors.js';
import type { SessionUse } from '../keys/keystore.js';
import { SignPool } from './sign-pool.js';
import { matchesToken, trimPadded, type TokenSelector } from './uri.js';

export type SessionHandle = Buffer;

export interface TokenInfo {
  label: string;
  manufacturer: string;
  model: string;
  serial: string;
}

export interface OpenTokenOptions {
  modulePath: string;
  selector: TokenSelector;
  pin: string;
  /** Sessions in the signing pool; each carries one operation at a time. */
  sessions: number;
  /** Set before the module loads (SoftHSM reads SOFTHSM2_CONF at C_Initialize). */
  environment?: Readonly<Record<string, string>>;
}

/** CKR codes after which a session cannot be trusted again and is replaced. */
const SESSION_LOST = new Set([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_OPERATION_ACTIVE,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
]);

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
  try {
    // Without OS locking, SoftHSM and others corrupt memory when sessions sign in parallel.
    module.initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (cause) {
    if (!isCkr(cause, pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
      throw new HsmintError('ERR_MODULE_NOT_FOUND', `C_Initialize failed for ${modulePath}`, {
        cause,
      });
    }
  }
  return module;
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

const CKR_MESSAGE = /^(CKR_\w+):(\d+)/;

/**
 * The CKR code of a PKCS#11 failure. Some pkcs11js calls throw a plain Error whose message is
 * "CKR_NAME:code" rather than a Pkcs11Error, so the message is read too.
 */
export function ckrCode(error: unknown): number | undefined {
  if (error instanceof pkcs11js.Pkcs11Error) return error.code;
  const match = error instanceof Error ? CKR_MESSAGE.exec(error.message) : null;
  return match ? Number(match[2]) : undefined;
}

export function isCkr(error: unknown, code: number): boolean {
  return ckrCode(error) === code;
}

/** The CKR name of a PKCS#11 failure, for logs (never for clients). */
export function ckrName(error: unknown): string | undefined {
  const match = error instanceof Error ? CKR_MESSAGE.exec(error.message) : null;
  return match?.[1];
}

/**
 * An open, logged-in token. The anchor session holds the login for the whole application
 * (PKCS#11 login state is per application, not per session) and serves object handling; a
 * small pool of further sessions carries signing, one operation per session at a time.
 */
export class Pkcs11Token {
  readonly info: TokenInfo;
  private readonly idle: SessionHandle[] = [];
  private readonly waiters: Array<{
    resolve: (session: SessionHandle) => void;
    reject: (error: Error) => void;
  }> = [];
  private readonly lib: pkcs11js.PKCS11;
  private readonly signer: SignPool;
  private closed = false;
  /** Sessions that exist, idle or busy; the pool refills up to `size` after a loss. */
  private total = 0;

  private constructor(
    private readonly module: graphene.Module,
    private readonly slot: graphene.Slot,
    /** Logged in; used for object search, generation and attribute reads. */
    readonly anchor: graphene.Session,
    private readonly size: number,
    modulePath: string,
  ) {
    this.lib = module.lib;
    // No more threads than sessions: a token that takes one operation at a time gets one.
    this.signer = new SignPool(modulePath, Math.min(size, availableParallelism()));
    this.info = tokenInfoOf(slot);
    for (let i = 0; i < size; i++) this.idle.push(this.openSession());
  }

  static open(options: OpenTokenOptions): Pkcs11Token {
    const module = loadModule(options.modulePath, options.environment);
    try {
      const slot = findSlot(module, options.selector);
      const flags = slot.getToken().flags;
      if (flags & pkcs11js.CKF_USER_PIN_LOCKED) {
        throw new HsmintError(
          'ERR_PIN_LOCKED',
          'the token has locked the user PIN; an SO must reset it',
        );
      }
      const anchor = slot.open(
        graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION,
      );
      try {
        anchor.login(options.pin, graphene.UserType.USER);
      } catch (cause) {
        anchor.close();
        if (isCkr(cause, pkcs11js.CKR_PIN_INCORRECT)) {
          throw new HsmintError('ERR_PIN_INCORRECT', 'the token refused the PIN', { cause });
        }
        if (isCkr(cause, pkcs11js.CKR_PIN_LOCKED)) {
          throw new HsmintError('ERR_PIN_LOCKED', 'the token has locked the user PIN', { cause });
        }
        if (!isCkr(cause, pkcs11js.CKR_USER_ALREADY_LOGGED_IN)) {
          throw new HsmintError('ERR_HSM_UNAVAILABLE', `login failed: ${ckrName(cause)}`, {
            cause,
          });
        }
      }
      return new Pkcs11Token(
        module,
        slot,
        anchor,
        Math.max(1, options.sessions),
        options.modulePath,
      );
    } catch (error) {
      finalizeQuietly(module);
      throw error;
    }
  }

  mechanisms(): Set<number> {
    const list = this.slot.getMechanisms();
    const types = new Set<number>();
    for (let i = 0; i < list.length; i++) types.add(list.items(i).type);
    return types;
  }

  /**
   * Runs `work` on a pool session. Callers queue when every session is busy, so a token that
   * takes one operation at a time is never asked for two.
   */
  async withSession<T>(work: (session: SessionHandle) => Promise<T>): Promise<T> {
    if (this.closed) throw new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed');
    const session =
      this.idle.pop() ??
      (this.total < this.size ? this.openSession() : await this.waitForSession());
    let replacement: SessionHandle | undefined;
    try {
      return await work(session);
    } catch (error) {
      const code = ckrCode(error);
      if (code !== undefined && SESSION_LOST.has(code)) {
        replacement = this.replaceSession(session);
      }
      throw error;
    } finally {
      this.release(replacement ?? session);
    }
  }

  /**
   * C_SignInit + C_Sign on a pool session, off the main thread (see sign-pool.ts). Call it
   * inside withSession.
   */
  sign(
    session: SessionHandle,
    mechanism: pkcs11js.Mechanism,
    key: Buffer,
    data: Buffer,
    length: number,
  ): Promise<Buffer> {
    return this.signer.sign(session, mechanism, key, data, length);
  }

  /** Resolves when a pool session can be had and the module answers on it (see SignPool.probe). */
  probe(): Promise<void> {
    return this.withSession((session) => this.signer.probe(session));
  }

  /** The signing pool now: what is open, what is busy, what waits (for metrics). */
  sessionUse(): SessionUse {
    return {
      open: this.total,
      busy: this.total - this.idle.length,
      limit: this.size,
      waiting: this.waiters.length,
    };
  }

  /** Waits for signatures in flight, then logs out and finalizes the module. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.signer.close();
    for (const session of this.idle.splice(0)) closeQuietly(() => this.lib.C_CloseSession(session));
    const error = new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed');
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    closeQuietly(() => this.anchor.logout());
    closeQuietly(() => this.anchor.close());
    finalizeQuietly(this.module);
  }

  private waitForSession(): Promise<SessionHandle> {
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private openSession(): SessionHandle {
    const session = this.lib.C_OpenSession(
      this.slot.handle,
      pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION,
    );
    this.total++;
    return session;
  }

  /** Closes a broken session and opens a fresh one; if that fails the pool shrinks and refills later. */
  private replaceSession(broken: SessionHandle): SessionHandle | undefined {
    closeQuietly(() => this.lib.C_CloseSession(broken));
    this.total--;
    try {
      return this.openSession();
    } catch {
      return undefined;
    }
  }

  private release(lost: SessionHandle | undefined): void {
    let session = lost;
    if (session === undefined) {
      if (this.waiters.length === 0) return;
      try {
        session = this.openSession();
      } catch (cause) {
        // No session could be had: fail the queue now rather than leave callers hanging.
        if (this.total === 0) {
          const error = new HsmintError(
            'ERR_HSM_UNAVAILABLE',
            'no session can be opened on the token',
            { cause },
          );
          for (const waiter of this.waiters.splice(0)) waiter.reject(error);
        }
        return;
      }
    }
    if (this.closed) {
      closeQuietly(() => this.lib.C_CloseSession(session));
      return;
    }
    const next = this.waiters.shift();
    if (next) next.resolve(session);
    else this.idle.push(session);
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
