import { HsmintError } from '../errors.js';
import type { Algorithm } from './algorithms.js';
import { keyLabel, type KeyInfo, type KeyStore, type PublicJwk } from './keystore.js';
import type { DocumentStore } from './state.js';

export type KeyState = 'next' | 'active' | 'retiring';

/** One key's place in its life; times are epoch seconds. */
export interface KeyRecord {
  kid: string;
  alg: Algorithm;
  label: string;
  state: KeyState;
  created: number;
  /** next: when it starts to sign. */
  activateAt?: number;
  /** active: since when it signs. */
  activeFrom?: number;
  /** retiring: when every token it signed has expired (plus skew) and it may be destroyed. */
  retireAt?: number;
  /**
   * active: the longest max TTL + skew in force while it signed. A reload that shortens
   * max_ttl must not shorten the life of tokens this key already signed.
   */
  retireAfter?: number;
}

export interface LifecycleDocument {
  version: 1;
  keys: KeyRecord[];
  /** A key being generated: if the daemon dies before recording it, start-up finds it by label. */
  pending?: { label: string; alg: Algorithm; since: number };
  /** Revoked keys: refused by verify with their own code, destroyed on the token. */
  revoked: Array<{ kid: string; at: number }>;
  /** Keys being destroyed: recorded first, so a crash between the two steps is finished at start. */
  destroying: string[];
}

export interface Schedule {
  algorithm: Algorithm;
  /** How long a key signs before the next one takes over. */
  rotationPeriod: number;
  /** How long a new key is published before it signs (JWKS caches must have seen it). */
  publishAhead: number;
  /** How long a key keeps verifying after it stops signing: max TTL + clock skew. */
  retireAfter: number;
}

export type LifecycleEvent =
  | { event: 'key.generate'; kid: string; alg: Algorithm; state: KeyState }
  | { event: 'key.activate'; kid: string; emergency: boolean }
  | { event: 'key.retire'; kid: string; retireAt: number }
  | { event: 'key.destroy'; kid: string; reason: 'retired' | 'revoked' | 'orphan' }
  | { event: 'key.revoke'; kid: string }
  | { event: 'key.adopt'; kid: string; state: KeyState }
  | { event: 'key.vanished'; kid: string; state: KeyState };

const MAX_REVOKED_KIDS = 1000;

/**
 * The key lifecycle: next -> active -> retiring -> destroyed, run by the daemon's own timer.
 * The token says which keys exist; the state document says what each is doing. Every change
 * is written before it is acted on where a crash could otherwise leave a key unaccounted for,
 * and `open` reconciles the two, so a kill -9 at any moment leaves a consistent state.
 */
export class KeyLifecycle {
  private doc: LifecycleDocument = { version: 1, keys: [], revoked: [], destroying: [] };
  private tokenKeys = new Map<string, KeyInfo>();
  /** One change at a time: the timer, emergency actions and reloads queue here. */
  private queue: Promise<unknown> = Promise.resolve();
  /**
   * The active key as last written to the state. A key signs only once its activation is on
   * disk: one that signed while active in memory alone would come back after a crash as
   * next, and its acknowledged tokens would no longer verify.
   */
  private signingKid: string | undefined;

  constructor(
    private readonly store: KeyStore,
    private readonly document: DocumentStore<LifecycleDocument>,
    private schedule: Schedule,
    private readonly now: () => number,
    private readonly report: (event: LifecycleEvent) => void = () => {},
  ) {}

  /** Reads the token and the state, settles any half-done change, and makes sure a key signs. */
  open(): Promise<void> {
    return this.serial(() => this.reconcile());
  }

  setSchedule(schedule: Schedule): Promise<void> {
    return this.serial(async () => {
      this.schedule = schedule;
      await this.reconcile();
    });
  }

  /** Runs whatever the schedule says is due now; returns whether anything changed. */
  tick(): Promise<boolean> {
    return this.serial(() => this.advance());
  }

  /** Seconds until the schedule next has something to do (at least 1). */
  secondsToNextEvent(): number {
    const now = this.now();
    const times: number[] = [];
    const active = this.active();
    const next = this.find('next');
    if (next) times.push(next.activateAt ?? now);
    else if (active)
      times.push(
        (active.activeFrom ?? now) + this.schedule.rotationPeriod - this.schedule.publishAhead,
      );
    for (const key of this.doc.keys) if (key.state === 'retiring') times.push(key.retireAt ?? now);
    return Math.max(1, Math.min(...times.map((time) => time - now), 86400));
  }

  /** Emergency rotation: the next key (or a new one) signs now; the active one retires. */
  rotateNow(): Promise<KeyRecord> {
    return this.serial(async () => {
      // The replacement first: while it is generated the active key keeps signing, where
      // retiring it first left mints with no key to sign (ERR_KEY_NOT_FOUND) for that time.
      const next = this.find('next') ?? (await this.generate('next'));
      const active = this.active();
      if (active) this.retire(active);
      this.activate(next, true);
      await this.save();
      return next;
    });
  }

  /** Stops trusting a key at once; if it was signing, another takes over immediately. */
  revoke(kid: string): Promise<void> {
    return this.serial(async () => {
      const record = this.doc.keys.find((key) => key.kid === kid);
      if (!record) throw new HsmintError('ERR_KEY_NOT_FOUND', `no key ${kid} is in use`);
      this.doc.keys = this.doc.keys.filter((key) => key.kid !== kid);
      this.doc.revoked = [...this.doc.revoked, { kid, at: this.now() }].slice(-MAX_REVOKED_KIDS);
      this.doc.destroying.push(kid);
      this.report({ event: 'key.revoke', kid });
      if (record.state === 'active') {
        const next = this.find('next') ?? (await this.generate('next'));
        this.activate(next, true);
      }
      await this.save();
      await this.finishDestroying('revoked');
    });
  }

  /** The key that signs. */
  signingKey(): KeyInfo {
    const info = this.signingKid === undefined ? undefined : this.tokenKeys.get(this.signingKid);
    if (!info) throw new HsmintError('ERR_KEY_NOT_FOUND', 'no active key');
    return info;
  }

  /** Keys whose tokens verify: active and retiring (never next: it has signed nothing). */
  verificationKeys(): PublicJwk[] {
    return this.jwksOf(['active', 'retiring']);
  }

  /** What verifiers need now and soon: next, active and retiring. */
  publishedKeys(): PublicJwk[] {
    return this.jwksOf(['next', 'active', 'retiring']);
  }

  /** The keys in use (next, active, retiring) as the token describes them. */
  keyInfos(): KeyInfo[] {
    return this.doc.keys
      .map((key) => this.tokenKeys.get(key.kid))
      .filter((info): info is KeyInfo => info !== undefined);
  }

  records(): KeyRecord[] {
    return this.doc.keys.map((key) => ({ ...key }));
  }

  /** The longest a token signed by any key still in use may live past its issue, plus skew. */
  longestTokenLife(): number {
    const now = this.now();
    return Math.max(
      this.schedule.retireAfter,
      ...this.doc.keys.map((key) => key.retireAfter ?? 0),
      ...this.doc.keys.map((key) => (key.retireAt === undefined ? 0 : key.retireAt - now)),
    );
  }

  isRevoked(kid: string): boolean {
    return this.doc.revoked.some((entry) => entry.kid === kid);
  }

  private jwksOf(states: KeyState[]): PublicJwk[] {
    const order: Record<KeyState, number> = { active: 0, next: 1, retiring: 2 };
    return this.doc.keys
      .filter((key) => states.includes(key.state))
      .sort((a, b) => order[a.state] - order[b.state] || b.created - a.created)
      .map((key) => this.tokenKeys.get(key.kid)?.publicJwk)
      .filter((jwk): jwk is PublicJwk => jwk !== undefined);
  }

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private active(): KeyRecord | undefined {
    return this.find('active');
  }

  private find(state: KeyState): KeyRecord | undefined {
    return this.doc.keys.find((key) => key.state === state);
  }

  private async save(): Promise<void> {
    await this.document.write(this.doc);
    this.signingKid = this.active()?.kid;
  }

  private async reconcile(): Promise<void> {
    const now = this.now();
    this.doc = (await this.document.read()) ?? {
      version: 1,
      keys: [],
      revoked: [],
      destroying: [],
    };
    this.doc.revoked ??= [];
    this.doc.destroying ??= [];
    await this.store.reload();
    this.tokenKeys = new Map((await this.store.list()).map((key) => [key.kid, key]));

    // Destruction that a crash interrupted, and revoked keys still on the token.
    for (const { kid } of this.doc.revoked) {
      if (this.tokenKeys.has(kid) && !this.doc.destroying.includes(kid))
        this.doc.destroying.push(kid);
    }
    // Records whose key is gone from the token: the token is the truth.
    for (const record of this.doc.keys) {
      if (!this.tokenKeys.has(record.kid))
        this.report({ event: 'key.vanished', kid: record.kid, state: record.state });
    }
    this.doc.keys = this.doc.keys.filter((record) => this.tokenKeys.has(record.kid));

    // Keys on the token that the state does not know: one generated just before a crash, or
    // made offline with `hsmint keys create`. The first becomes next; any other may have
    // signed tokens under a lost state, so it verifies until those expire, then goes.
    const known = new Set([...this.doc.keys.map((key) => key.kid), ...this.doc.destroying]);
    // Newest first; the store lists oldest first, so reversing keeps that order among equals.
    const unknown = [...this.tokenKeys.values()]
      .filter((key) => !known.has(key.kid))
      .reverse()
      .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime());
    for (const key of unknown) {
      const fromCrash = this.doc.pending?.label === key.label;
      // A key whose generation a crash cut short may be on the token only in part: it must
      // prove it can sign before it is trusted with anything. One that cannot never signed.
      if (!(await this.canSign(key))) {
        this.doc.destroying.push(key.kid);
        continue;
      }
      if (!this.find('next') && key.alg === this.schedule.algorithm) {
        this.adopt(key, { state: 'next', activateAt: now + this.schedule.publishAhead });
      } else if (fromCrash) {
        this.doc.destroying.push(key.kid); // never recorded, so never signed
      } else {
        this.adopt(key, { state: 'retiring', retireAt: now + this.schedule.retireAfter });
      }
    }
    delete this.doc.pending;

    // Exactly one active key: with none (first start, or it vanished), the next one, or a
    // new one, signs at once: there is nothing older whose tokens would be left unverifiable.
    const actives = this.doc.keys
      .filter((key) => key.state === 'active')
      .sort((a, b) => (b.activeFrom ?? 0) - (a.activeFrom ?? 0));
    for (const extra of actives.slice(1)) this.retire(extra);
    if (!this.active()) {
      const next = this.find('next') ?? (await this.generate('next'));
      this.activate(next, false);
    }
    await this.save();
    await this.finishDestroying('orphan');
    await this.advance();
  }

  private async advance(): Promise<boolean> {
    const now = this.now();
    let changed = false;
    const active = this.active();
    if (active && (active.retireAfter ?? 0) < this.schedule.retireAfter) {
      active.retireAfter = this.schedule.retireAfter;
      changed = true;
    }
    const schedule = this.schedule;
    const wrongAlgorithm = active !== undefined && active.alg !== schedule.algorithm;
    let next = this.find('next');
    if (next && next.alg !== schedule.algorithm) {
      // The algorithm changed before this key signed: replace it.
      this.doc.keys = this.doc.keys.filter((key) => key !== next);
      this.doc.destroying.push(next.kid);
      next = undefined;
      changed = true;
    }
    const dueForNext =
      active !== undefined &&
      now >= (active.activeFrom ?? now) + schedule.rotationPeriod - schedule.publishAhead;
    if (!next && (dueForNext || wrongAlgorithm)) {
      next = await this.generate('next');
      changed = true;
    }
    if (next && now >= (next.activateAt ?? now)) {
      if (active) this.retire(active);
      this.activate(next, false);
      changed = true;
    }
    for (const key of this.doc.keys) {
      if (key.state === 'retiring' && now >= (key.retireAt ?? now)) {
        this.doc.destroying.push(key.kid);
        changed = true;
      }
    }
    this.doc.keys = this.doc.keys.filter((key) => !this.doc.destroying.includes(key.kid));
    if (changed) {
      await this.save();
      await this.finishDestroying('retired');
    }
    return changed;
  }

  /** Records a key found on the token but not in the state. */
  private adopt(key: KeyInfo, place: Pick<KeyRecord, 'state' | 'activateAt' | 'retireAt'>): void {
    this.doc.keys.push({
      kid: key.kid,
      alg: key.alg,
      label: key.label,
      created: this.now(),
      ...place,
    });
    this.report({ event: 'key.adopt', kid: key.kid, state: place.state });
  }

  private async canSign(key: KeyInfo): Promise<boolean> {
    try {
      await this.store.sign(key.kid, Buffer.from('hsmint key probe'));
      return true;
    } catch {
      return false;
    }
  }

  /** Records the intent, generates on the token, records the key: a crash in between is found at start. */
  private async generate(state: KeyState): Promise<KeyRecord> {
    const now = this.now();
    const alg = this.schedule.algorithm;
    const label = keyLabel(alg, new Date(now * 1000));
    this.doc.pending = { label, alg, since: now };
    await this.save();
    const info = await this.store.generate(alg, { label });
    this.tokenKeys.set(info.kid, info);
    const record: KeyRecord = {
      kid: info.kid,
      alg,
      label: info.label,
      state,
      created: now,
      activateAt: now + this.schedule.publishAhead,
    };
    this.doc.keys.push(record);
    delete this.doc.pending;
    await this.save();
    this.report({ event: 'key.generate', kid: info.kid, alg, state });
    return record;
  }

  private activate(record: KeyRecord, emergency: boolean): void {
    record.state = 'active';
    record.activeFrom = this.now();
    record.retireAfter = this.schedule.retireAfter;
    delete record.activateAt;
    this.report({ event: 'key.activate', kid: record.kid, emergency });
  }

  /** Stops signing; verifies until every token it could have signed has expired, plus skew. */
  private retire(record: KeyRecord): void {
    record.state = 'retiring';
    record.retireAt = this.now() + Math.max(record.retireAfter ?? 0, this.schedule.retireAfter);
    delete record.retireAfter;
    this.report({ event: 'key.retire', kid: record.kid, retireAt: record.retireAt });
  }

  private async finishDestroying(reason: 'retired' | 'revoked' | 'orphan'): Promise<void> {
    if (this.doc.destroying.length === 0) return;
    const left: string[] = [];
    for (const kid of [...this.doc.destroying]) {
      if (!this.tokenKeys.has(kid)) continue;
      try {
        await this.store.destroy(kid);
        this.tokenKeys.delete(kid);
        this.report({ event: 'key.destroy', kid, reason });
      } catch {
        // Kept for the next attempt: a key that cannot be destroyed now must not stop signing.
        left.push(kid);
      }
    }
    this.doc.destroying = left;
    await this.save();
  }
}
