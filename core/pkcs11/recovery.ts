/**
 * What the token layer does after a fault: seal (refuse work at once, with the reason), then
 * re-open the token in the background with a growing back-off until it answers again. It knows
 * nothing of PKCS#11: the token supplies `reopen` (finalize, initialize, find, log in, reload
 * the keys) and says how each failure is to be treated.
 */

/**
 * How a sealed token comes back. `automatic`: the back-off loop re-opens it by itself.
 * `admin`: never retried by itself, because each try costs one of the token's PIN attempts; a
 * reload (SIGHUP) tries once. `restart`: a call never returned and may still be inside the
 * module, which must not be finalized under it; the loop waits for the call, else only a
 * restart helps (the systemd watchdog does it).
 */
export type RecoveryMode = 'automatic' | 'admin' | 'restart';

export interface TokenCondition {
  status: 'open' | 'sealed' | 'closed';
  /** Why it is sealed: CKR names and hsmint codes, never a secret. */
  reason?: string;
  recovery?: RecoveryMode;
  /** When it sealed. */
  since?: Date;
  /** Re-open attempts since it sealed. */
  attempts?: number;
}

export interface Fault {
  reason: string;
  /** The CKR name behind it, when there is one (for logs). */
  ckr?: string;
  recovery: RecoveryMode;
}

/** What the token layer reports, for the daemon's log and audit log. */
export type TokenEvent =
  | { event: 'token.sealed'; reason: string; ckr?: string; recovery: RecoveryMode }
  | {
      event: 'token.reopen_failed';
      attempt: number;
      reason: string;
      ckr?: string;
      recovery: RecoveryMode;
      /** When the next attempt is due; absent when none will be made by itself. */
      retry_ms?: number;
    }
  | { event: 'token.unsealed'; attempts: number; sealed_ms: number }
  /** The module gives each load its own state, so signatures run on the main thread. */
  | { event: 'token.sign_inline' };

export interface Backoff {
  /** The first delay (ms); each failed attempt doubles it... */
  initialMs: number;
  /** ...up to this (ms). */
  maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 30_000 };

/**
 * The delay before re-open attempt `attempt` (0 for the first): doubling from `initialMs` to
 * `maxMs`, then cut by a random part of up to half, so that daemons sharing one HSM do not
 * retry in step.
 */
export function backoffDelay(attempt: number, backoff: Backoff, random: () => number): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(base / 2 + (random() * base) / 2);
}

export interface TokenSealOptions {
  /** One full re-open of the token; throws what went wrong. */
  reopen: () => Promise<void>;
  /**
   * Calls inside the module now: sessions lent to work, and calls given up on at their
   * deadline that have not come back. The module is never finalized under either.
   */
  inFlight: () => { calls: number; stranded: number };
  /** How a failed re-open is reported and whether it is retried. */
  describe: (error: unknown) => Fault;
  /** Called once when the token seals, before anyone hears of it (the pool stops here). */
  onSeal?: () => void;
  onEvent?: (event: TokenEvent) => void;
  backoff?: Backoff;
  random?: () => number;
  now?: () => number;
}

/** The token's state: open, or sealed with a reason and a way back. */
export class TokenSeal {
  private fault: (Fault & { since: number; last?: string }) | undefined;
  private attempts = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;
  private readonly backoff: Backoff;
  private readonly random: () => number;
  private readonly now: () => number;

  constructor(private readonly options: TokenSealOptions) {
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.random = options.random ?? Math.random;
    this.now = options.now ?? Date.now;
  }

  get sealed(): boolean {
    return this.fault !== undefined || this.closed;
  }

  condition(): TokenCondition {
    if (this.closed) return { status: 'closed', reason: 'the token is closed' };
    if (!this.fault) return { status: 'open' };
    const { reason, last, recovery, since } = this.fault;
    return {
      status: 'sealed',
      reason: last === undefined ? reason : `${reason}; last re-open attempt: ${last}`,
      recovery,
      since: new Date(since),
      attempts: this.attempts,
    };
  }

  /** Seals the token for `fault`; the first fault is the one reported. */
  seal(fault: Fault): void {
    if (this.closed) return;
    if (this.fault) {
      // A call found hung while already sealed still forbids finalizing under it.
      if (fault.recovery === 'restart' && this.fault.recovery !== 'restart')
        this.fault = { ...fault, since: this.fault.since };
      return;
    }
    this.fault = { ...fault, since: this.now() };
    this.attempts = 0;
    this.options.onSeal?.();
    this.emit({
      event: 'token.sealed',
      reason: fault.reason,
      ...(fault.ckr === undefined ? {} : { ckr: fault.ckr }),
      recovery: fault.recovery,
    });
    if (fault.recovery !== 'admin') this.schedule(this.delay());
  }

  /**
   * One re-open attempt now, whatever the mode (a reload asks for it: for a refused PIN this
   * is the one try an admin's fix gets). Resolves with the condition after it.
   */
  async retryNow(): Promise<TokenCondition> {
    if (this.fault && !this.closed) {
      if (this.running) await this.running;
      else {
        clearTimeout(this.timer);
        this.timer = undefined;
        // An admin acted: whatever follows backs off from the start again.
        this.attempts = 0;
        await this.attempt();
      }
    }
    return this.condition();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private delay(): number {
    return backoffDelay(this.attempts, this.backoff, this.random);
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.attempt();
    }, ms);
    // A CLI command that opened the token must still be able to exit.
    this.timer.unref();
  }

  private attempt(): Promise<void> {
    this.running ??= this.reopenOnce().finally(() => (this.running = undefined));
    return this.running;
  }

  private async reopenOnce(): Promise<void> {
    const fault = this.fault;
    if (!fault || this.closed) return;
    const busy = this.options.inFlight();
    if (busy.stranded > 0 || busy.calls > 0) {
      // Finalizing under a call in the module is undefined behaviour: wait for it to return.
      this.schedule(this.backoff.initialMs);
      return;
    }
    // Whatever hung has come back: the module can be re-opened like after any other fault.
    if (fault.recovery === 'restart') fault.recovery = 'automatic';
    this.attempts++;
    try {
      await this.options.reopen();
    } catch (error) {
      if (this.closed) return;
      const failure = this.options.describe(error);
      const retry = failure.recovery !== 'admin';
      // The first fault stays the reason while retrying; a PIN refusal replaces it.
      if (!retry || fault.recovery === 'admin') this.fault = { ...failure, since: fault.since };
      else this.fault = { ...fault, last: failure.reason };
      const delay = retry ? this.delay() : undefined;
      this.emit({
        event: 'token.reopen_failed',
        attempt: this.attempts,
        reason: failure.reason,
        ...(failure.ckr === undefined ? {} : { ckr: failure.ckr }),
        recovery: retry ? 'automatic' : failure.recovery,
        ...(delay === undefined ? {} : { retry_ms: delay }),
      });
      if (delay !== undefined) this.schedule(delay);
      return;
    }
    if (this.closed) return;
    const attempts = this.attempts;
    this.fault = undefined;
    this.attempts = 0;
    this.emit({ event: 'token.unsealed', attempts, sealed_ms: this.now() - fault.since });
  }

  private emit(event: TokenEvent): void {
    try {
      this.options.onEvent?.(event);
    } catch {
      // A failing listener must not stop the recovery it listens to.
    }
  }
}
