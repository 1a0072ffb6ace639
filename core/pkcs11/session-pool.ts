import { HsmintError } from '../errors.js';
import type { SessionUse } from '../keys/keystore.js';

/** What happens to a session when its work is done. */
export type SessionReturn =
  /** Back to the pool, or straight to the next in the queue. */
  | 'reuse'
  /** Closed: the token no longer knows it (a lost session); a fresh one is opened on demand. */
  | 'replace'
  /** Forgotten, never closed nor reused: a call given up on may still be inside it. */
  | 'abandon';

export interface SessionPoolOptions<S> {
  /** The most sessions that ever exist at once, lent or idle. */
  size: number;
  /** How long work waits for a session before ERR_HSM_BUSY (ms). */
  queueTimeoutMs: number;
  open: () => S;
  close: (session: S) => void;
}

interface Waiter<S> {
  resolve: (session: S) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * The signing sessions of one token: never more than `size`, each lent to one operation at a
 * time. Work beyond that queues, and waits at most `queueTimeoutMs`: a saturated token then
 * answers "busy" at once instead of letting requests pile up behind it.
 */
export class SessionPool<S> {
  private readonly idle: S[] = [];
  private readonly waiters: Array<Waiter<S>> = [];
  /** Sessions that exist now, lent or idle. */
  private total = 0;
  /** Set once the pool is stopped: every acquire fails with it. */
  private stopped: HsmintError | undefined;

  constructor(private readonly options: SessionPoolOptions<S>) {}

  /** Opens sessions up to the bound now, so that a token refusing them says so at once. */
  fill(): void {
    while (this.total < this.options.size) this.idle.push(this.openOne());
  }

  /** A session to work on: an idle one, a new one while under the bound, else the next to come free. */
  acquire(): Promise<S> {
    if (this.stopped) return Promise.reject(this.stopped);
    const session = this.idle.pop();
    if (session !== undefined) return Promise.resolve(session);
    if (this.total < this.options.size) {
      try {
        return Promise.resolve(this.openOne());
      } catch (error) {
        return Promise.reject(error as Error);
      }
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter<S> = {
        resolve,
        reject,
        timer: setTimeout(() => {
          const index = this.waiters.indexOf(waiter);
          if (index !== -1) this.waiters.splice(index, 1);
          reject(
            new HsmintError(
              'ERR_HSM_BUSY',
              `no token session came free within ${this.options.queueTimeoutMs} ms; the token is busy, retry`,
            ),
          );
        }, this.options.queueTimeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** Gives a lent session back (see SessionReturn). */
  release(session: S, how: SessionReturn = 'reuse'): void {
    if (how === 'abandon' || this.stopped) {
      this.total--;
      return;
    }
    let next: S | undefined = session;
    if (how === 'replace') {
      this.closeOne(session);
      next = undefined;
    }
    if (this.waiters.length === 0) {
      if (next !== undefined) this.idle.push(next);
      return;
    }
    if (next === undefined) {
      try {
        next = this.openOne();
      } catch (cause) {
        // Nothing lent will come back to the queue: fail it now rather than at its deadlines.
        if (this.total === 0)
          this.rejectWaiters(
            new HsmintError('ERR_HSM_UNAVAILABLE', 'no session can be opened on the token', {
              cause,
            }),
          );
        return;
      }
    }
    const waiter = this.waiters.shift()!;
    clearTimeout(waiter.timer);
    waiter.resolve(next);
  }

  /**
   * Refuses all further work with `error`: the queue fails now. Sessions are forgotten, idle
   * ones now and lent ones when they come back, never closed: the pool stops when its token
   * fails, and a module that hangs would hang C_CloseSession too. C_Finalize ends them all.
   */
  stop(error: HsmintError): void {
    if (this.stopped) return;
    this.stopped = error;
    this.rejectWaiters(error);
    this.total -= this.idle.splice(0).length;
  }

  /** Sessions lent out now. */
  get lent(): number {
    return this.total - this.idle.length;
  }

  use(): SessionUse {
    return {
      open: this.total,
      busy: this.lent,
      limit: this.options.size,
      waiting: this.waiters.length,
    };
  }

  private openOne(): S {
    const session = this.options.open();
    this.total++;
    return session;
  }

  private closeOne(session: S): void {
    this.total--;
    try {
      this.options.close(session);
    } catch {
      // Best effort: a session the token lost is gone either way.
    }
  }

  private rejectWaiters(error: Error): void {
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
  }
}
