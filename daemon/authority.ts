import type { Logger } from 'pino';
import type { Config } from '../core/config.js';
import { HsmintError, hasCode, travels } from '../core/errors.js';
import { prepareToken, signToken } from '../core/jwt/mint.js';
import { TokenVerifier, type VerifyResult } from '../core/jwt/verify.js';
import { join } from 'node:path';
import type { AuditEvent } from '../core/audit/record.js';
import { createBundle } from '../core/ca/bundle.js';
import type { KeyCertifier } from '../core/ca/certifier.js';
import { signerFor } from '../core/ca/signer.js';
import type { KeyInfo, KeyStore, PublicJwk } from '../core/keys/keystore.js';
import {
  KeyLifecycle,
  type KeyRecord,
  type LifecycleDocument,
  type Schedule,
} from '../core/keys/lifecycle.js';
import { RevocationList, type RevocationDocument } from '../core/keys/revocations.js';
import { JsonFile, MemoryDocument, type DocumentStore } from '../core/keys/state.js';
import type { TokenHealth } from '../core/open.js';
import type { TokenEvent } from '../core/pkcs11/recovery.js';
import type { Caller } from '../core/policy/caller.js';
import { authorizeMint, grantOf, type Grant, type Policy } from '../core/policy/policy.js';
import type {
  HealthResponse,
  JwksResponse,
  MintBatchResult,
  MintRequest,
  MintResponse,
  VerifyRequest,
  WhoamiResponse,
} from '../core/protocol.js';
import { DaemonMetrics, secondsSince } from './metrics.js';

export interface AuthorityOptions {
  config: Config;
  store: KeyStore;
  token: { label: string; serial: string };
  /** Whether the token is open or sealed (a device fault, a refused PIN); absent: always open. */
  tokenHealth?: TokenHealth;
  logger: Logger;
  now?: () => Date;
  /** The tamper-evident log every action lands in; mints are answered only once recorded. */
  audit?: AuditSink;
  /** The public keys of the audit checkpoint key, for GET /v1/audit/keys. */
  auditKeys?: PublicJwk[];
  /** Certifies every signing key with the internal CA, when one is configured. */
  certifier?: KeyCertifier;
  /** Where key states and revocations persist; in memory when absent (tests). */
  state?: {
    keys: DocumentStore<LifecycleDocument>;
    revocations: DocumentStore<RevocationDocument>;
    bundle?: DocumentStore<{ version: number }>;
  };
  /**
   * The daemon's metrics, which the authority feeds (signing times, key states, health, token
   * sessions). When absent, a registry of its own without process metrics: tests build many.
   */
  metrics?: DaemonMetrics;
}

/** What the authority needs of the audit log (core/audit/log.ts's AuditLog fits). */
export interface AuditSink {
  append(event: AuditEvent): Promise<{ seq: number }>;
  health(): { ok: boolean; reason?: string };
  lastTimestamp(): Date | undefined;
}

/** One log line per token event: seals and recoveries are errors and news, retries warnings. */
export function logTokenEvent(logger: Logger, event: TokenEvent): void {
  switch (event.event) {
    case 'token.sealed':
      logger.error(event, 'the token is sealed: minting stops until it is re-opened');
      break;
    case 'token.reopen_failed':
      logger.warn(
        event,
        event.retry_ms === undefined
          ? 'the token was not re-opened; no further attempt without an admin'
          : 'the token was not re-opened; trying again',
      );
      break;
    case 'token.unsealed':
      logger.info(event, 'the token is open again; minting resumes');
      break;
    case 'token.sign_inline':
      logger.info(event, 'the PKCS#11 module keeps state per load: signing on the main thread');
      break;
  }
}

/** The caller as the audit log records it. */
function callerFields(caller: Caller): Record<string, unknown> {
  return {
    uid: caller.uid,
    gid: caller.gid,
    pid: caller.pid,
    ...(caller.user === undefined ? {} : { user: caller.user }),
    ...(caller.unit === undefined ? {} : { unit: caller.unit }),
    ...(caller.exe === undefined ? {} : { exe: caller.exe }),
  };
}

/** kid and jti of a token that failed verification, when readable: never the token itself. */
function unverifiedIds(token: unknown): Record<string, string> {
  if (typeof token !== 'string') return {};
  const [header, payload] = token.split('.');
  const read = (part: string | undefined): Record<string, unknown> => {
    try {
      const value: unknown = JSON.parse(Buffer.from(part ?? '', 'base64url').toString('utf8'));
      // A forged part may be any JSON: null, a number, a list. Only an object has ids to read.
      return value !== null && typeof value === 'object' ? (value as Record<string, unknown>) : {};
    } catch {
      return {};
    }
  };
  const ids: Record<string, string> = {};
  const kid = read(header)['kid'];
  const jti = read(payload)['jti'];
  if (typeof kid === 'string' && /^[\w-]{1,128}$/.test(kid)) ids['kid'] = kid;
  if (typeof jti === 'string' && /^[\w-]{1,256}$/.test(jti)) ids['jti'] = jti;
  return ids;
}

/** The lifecycle's schedule from the configuration: retirement waits out max TTL + skew. */
export function scheduleOf(config: Config): Schedule {
  return {
    algorithm: config.keys.algorithm,
    rotationPeriod: config.keys.rotationPeriod,
    publishAhead: config.keys.publishAhead,
    retireAfter: config.tokens.maxTtl + config.tokens.clockSkew,
  };
}

/** The state files in keys.state_dir. */
export function stateFiles(config: Config): NonNullable<AuthorityOptions['state']> {
  return {
    keys: new JsonFile<LifecycleDocument>(join(config.keys.stateDir, 'keys.json')),
    revocations: new JsonFile<RevocationDocument>(join(config.keys.stateDir, 'revocations.json')),
    bundle: new JsonFile<{ version: number }>(join(config.keys.stateDir, 'bundle.json')),
  };
}

/**
 * What the daemon does, without the transport: mint on the active key, verify against the
 * issuer's own public keys, publish them, run the key lifecycle. Handlers call this; tests
 * drive it with a fake store and a fake clock.
 */
export class Authority {
  private config: Config;
  private readonly token: { label: string; serial: string };
  private readonly logger: Logger;
  private readonly now: () => Date;
  private readonly verifier: TokenVerifier;
  private readonly lifecycle: KeyLifecycle;
  private readonly revocations: RevocationList;
  private readonly store: KeyStore;
  private readonly tokenHealth: TokenHealth | undefined;
  private readonly certifier: KeyCertifier | undefined;
  private readonly audit: AuditSink | undefined;
  readonly auditKeys: PublicJwk[];
  readonly metrics: DaemonMetrics;
  /** Records that could not be written while the log was down (verify failures, denials). */
  private unrecorded = 0;
  private readonly bundleVersion: DocumentStore<{ version: number }>;
  private readonly startedAt: number;
  /** The last token failure, cleared by the next good signature; it drives `degraded`. */
  private tokenFault: string | undefined;
  /** The verifier's key updates, one after another: a slow one never undoes a later one. */
  private keysUpdated: Promise<void> = Promise.resolve();

  private constructor(options: AuthorityOptions) {
    this.config = options.config;
    this.store = options.store;
    this.tokenHealth = options.tokenHealth;
    this.certifier = options.certifier;
    this.audit = options.audit;
    this.auditKeys = options.auditKeys ?? [];
    this.bundleVersion = options.state?.bundle ?? new MemoryDocument();
    this.token = options.token;
    this.logger = options.logger;
    this.now = options.now ?? (() => new Date());
    this.startedAt = this.now().getTime();
    const seconds = () => Math.floor(this.now().getTime() / 1000);
    this.metrics = options.metrics ?? new DaemonMetrics({ processMetrics: false });
    this.metrics.track({
      health: () => this.health(),
      keyRecords: () => this.lifecycle.records(),
      ...(options.store.sessions ? { sessions: options.store.sessions.bind(options.store) } : {}),
      nowSeconds: seconds,
    });
    const state = options.state ?? {
      keys: new MemoryDocument(),
      revocations: new MemoryDocument(),
    };
    this.lifecycle = new KeyLifecycle(
      options.store,
      state.keys,
      scheduleOf(this.config),
      seconds,
      (event) => {
        this.logger.info(event, event.event);
        this.record({ ...event });
      },
    );
    this.revocations = new RevocationList(
      state.revocations,
      () => this.config.tokens.maxRevocations,
      seconds,
    );
    this.verifier = new TokenVerifier(this.verifierOptions());
  }

  /** Opens the key lifecycle (settling whatever a crash left) and the revocation list. */
  static async create(options: AuthorityOptions): Promise<Authority> {
    const authority = new Authority(options);
    await authority.lifecycle.open();
    await authority.revocations.load();
    await authority.refreshKeys();
    return authority;
  }

  get activeKey(): KeyInfo {
    return this.lifecycle.signingKey();
  }

  get issuer(): string {
    return this.config.issuer;
  }

  private verifierOptions() {
    return {
      issuer: this.config.issuer,
      clockSkew: this.config.tokens.clockSkew,
      now: this.now,
      isRevoked: (jti: unknown) => this.revocations.isRevoked(jti),
      isKeyRevoked: (kid: string) => this.lifecycle.isRevoked(kid),
    };
  }

  private async refreshKeys(): Promise<void> {
    await this.updateVerifierKeys();
    await this.certify();
  }

  /** Gives the verifier the keys the lifecycle trusts at the moment the update runs. */
  private updateVerifierKeys(): Promise<void> {
    const update = this.keysUpdated.then(() =>
      this.verifier.setKeys(this.lifecycle.verificationKeys()),
    );
    this.keysUpdated = update.catch(() => undefined);
    return update;
  }

  /** Certificates for new keys; a CA failure is logged, and never stops signing or rotation. */
  private async certify(): Promise<void> {
    if (!this.certifier) return;
    try {
      await this.certifier.ensure(this.lifecycle.keyInfos());
    } catch (error) {
      this.logger.error(
        { event: 'ca.failed', code: (error as HsmintError).code, err: error },
        'certifying a key failed; retrying on the next tick',
      );
    }
  }

  private withChain(jwk: PublicJwk): PublicJwk & { x5c?: string[] } {
    const chain = this.certifier?.chainOf(jwk.kid);
    return chain ? { ...jwk, x5c: chain.map((der) => der.toString('base64')) } : jwk;
  }

  /** Runs the rotation schedule; the daemon calls it from its timer. */
  async tick(): Promise<void> {
    if (await this.lifecycle.tick()) await this.refreshKeys();
    else await this.certify(); // an offline CA's certificate may have arrived by file
  }

  secondsToNextKeyEvent(): number {
    return this.lifecycle.secondsToNextEvent();
  }

  keyRecords(): KeyRecord[] {
    return this.lifecycle.records();
  }

  /** Emergency rotation (admins): the next key signs now. */
  async rotateNow(): Promise<KeyRecord> {
    const record = await this.lifecycle.rotateNow();
    await this.refreshKeys();
    return record;
  }

  /** Stops trusting a key at once (admins). */
  async revokeKey(kid: string): Promise<void> {
    await this.lifecycle.revoke(kid);
    await this.refreshKeys();
  }

  /**
   * Revokes a token by jti until it would have expired anyway. Given only the jti, that is
   * now + max TTL + skew (no token can outlive it); given the token, its own exp + skew.
   */
  async revokeToken(
    jti: string,
    exp: number | undefined,
  ): Promise<{ jti: string; until: number; new: boolean }> {
    const now = Math.floor(this.now().getTime() / 1000);
    const skew = this.config.tokens.clockSkew;
    // Without the token, assume the longest life any token of a key in use can have.
    const until = exp === undefined ? now + this.lifecycle.longestTokenLife() : exp + skew;
    return { jti, until, new: await this.revocations.revoke(jti, until) };
  }

  /**
   * The offline verification bundle: the JWKS signed by the active key, with its chain to the
   * internal CA, under a version that only grows (the last one is kept in keys.state_dir, and
   * the clock's seconds are a floor, so even a lost state file cannot make it go back).
   */
  async bundle(): Promise<{ version: number; bundle: string }> {
    const key = this.lifecycle.signingKey();
    const chain = this.certifier?.chainOf(key.kid);
    if (!chain) {
      throw new HsmintError(
        'ERR_CA_NOT_READY',
        'the active key has no certificate from the internal CA yet; configure ca and wait for it',
      );
    }
    const now = this.now();
    const last = (await this.bundleVersion.read())?.version ?? 0;
    const version = Math.max(last + 1, Math.floor(now.getTime() / 1000));
    await this.bundleVersion.write({ version });
    const bundle = await createBundle({
      version,
      issuer: this.config.issuer,
      jwks: { keys: this.lifecycle.publishedKeys() },
      ...(this.auditKeys.length > 0 ? { auditKeys: this.auditKeys } : {}),
      chain,
      signer: signerFor(this.store, key),
      now,
    });
    return { version, bundle };
  }

  /** Applies a new configuration and re-reads the keys (SIGHUP). Token and socket settings need a restart. */
  async reconfigure(config: Config): Promise<string[]> {
    const restartNeeded: string[] = [];
    if (JSON.stringify(config.hsm) !== JSON.stringify(this.config.hsm)) restartNeeded.push('hsm');
    const bound = this.config.socket;
    const { path, mode, group } = config.socket;
    if (path !== bound.path || mode !== bound.mode || group !== bound.group)
      restartNeeded.push('socket');
    if (config.keys.stateDir !== this.config.keys.stateDir) restartNeeded.push('keys.state_dir');
    if (JSON.stringify(config.ca) !== JSON.stringify(this.config.ca)) restartNeeded.push('ca');
    if (JSON.stringify(config.audit) !== JSON.stringify(this.config.audit))
      restartNeeded.push('audit');
    if (config.keys.rsaBits !== this.config.keys.rsaBits) restartNeeded.push('keys.rsa_bits');
    const previous = this.config;
    // The token, the bound socket and the state files stay; limits, tokens, policy and keys change.
    this.config = {
      ...config,
      hsm: previous.hsm,
      socket: { ...config.socket, path: bound.path, mode: bound.mode, group: bound.group },
      keys: { ...config.keys, stateDir: previous.keys.stateDir },
    };
    try {
      await this.lifecycle.setSchedule(scheduleOf(this.config));
      await this.refreshKeys();
    } catch (error) {
      this.config = previous;
      await this.lifecycle.setSchedule(scheduleOf(previous)).catch(() => undefined);
      throw error;
    }
    this.verifier.setOptions(this.verifierOptions());
    return restartNeeded;
  }

  /** The configuration now; each request takes it once, when it arrives. */
  get settings(): Config {
    return this.config;
  }

  get policy(): Policy {
    return this.config.policy;
  }

  get limits(): { connections: number; requests: number } {
    return {
      connections: this.config.socket.maxConnectionsPerUid,
      requests: this.config.socket.maxRequestsPerUid,
    };
  }

  /** The caller's grant under `policy`, or ERR_FORBIDDEN: no rule, no token. */
  grant(caller: Caller, policy: Policy): Grant {
    const grant = grantOf(policy, caller);
    if (!grant)
      throw new HsmintError('ERR_FORBIDDEN', `no policy rule grants uid ${caller.uid} anything`);
    return grant;
  }

  whoami(caller: Caller, policy: Policy): WhoamiResponse {
    const grant = grantOf(policy, caller);
    return {
      caller,
      rule: grant?.rule ?? null,
      grants: grant
        ? {
            subjects: grant.subjects,
            subject_prefixes: grant.subjectPrefixes.map((prefix) => `${prefix}*`),
            default_subject: grant.subjects[0] ?? null,
            audiences: grant.audiences,
            scopes: grant.scopes,
            claims: grant.claims,
            max_ttl: grant.maxTtl,
            admin: grant.admin,
            metrics: grant.metrics,
          }
        : null,
    };
  }

  /** Mints under `settings`, the configuration the request arrived under. */
  async mint(request: MintRequest, caller: Caller, settings: Config): Promise<MintResponse> {
    const { tokens, issuer, policy } = settings;
    this.refuseWhileSealed();
    this.checkClock(tokens.clockSkew);
    let grant: Grant;
    let subject: string;
    let ttlSeconds: number;
    try {
      grant = this.grant(caller, policy);
      ({ subject, ttl: ttlSeconds } = authorizeMint(grant, request, tokens.defaultTtl));
      if (ttlSeconds > tokens.maxTtl) {
        throw new HsmintError(
          'ERR_TTL_TOO_LONG',
          `ttl ${ttlSeconds}s is over the maximum of ${tokens.maxTtl}s`,
        );
      }
    } catch (error) {
      if (error instanceof HsmintError)
        this.record({
          event: 'deny',
          code: error.code,
          aud: request.aud,
          sub: request.sub,
          ...callerFields(caller),
        });
      throw error;
    }
    // Every token names who minted it: the caller's own subject, its uid and unit, the rule.
    const minter = {
      azp: grant.subjects[0] ?? `uid:${caller.uid}`,
      hsmint: {
        uid: caller.uid,
        ...(caller.unit === undefined ? {} : { unit: caller.unit }),
        rule: grant.rule,
      },
    };
    const signingKey = this.lifecycle.signingKey();
    const chain = tokens.embedX5c ? this.certifier?.chainOf(signingKey.kid) : undefined;
    const prepared = prepareToken(signingKey, {
      ...(chain ? { x5c: chain.map((der) => der.toString('base64')) } : {}),
      issuer,
      audience: request.aud,
      subject,
      minter,
      ...(request.scope === undefined ? {} : { scope: request.scope }),
      ...(request.claims === undefined ? {} : { claims: request.claims }),
      ttlSeconds,
      now: this.now(),
    });
    // The record holds nothing the signature adds, so it is written while the token signs:
    // a mint costs the longer of the two, not their sum. The caller still gets the token only
    // once both are done, so no token is ever answered without its record on disk.
    const [signed, recorded] = await Promise.allSettled([
      this.timed(signingKey.alg, () => signToken(this.store, prepared)),
      this.audit?.append({
        event: 'mint',
        jti: prepared.jti,
        kid: prepared.kid,
        sub: subject,
        aud: request.aud,
        ...(request.scope === undefined ? {} : { scope: request.scope }),
        exp: prepared.exp,
        rule: grant.rule,
        ...callerFields(caller),
      }),
    ]);
    if (signed.status === 'rejected') {
      // A record may now name a token that was never made: the abort record says so.
      if (recorded.status === 'fulfilled' && this.audit)
        this.record({ event: 'mint.abort', jti: prepared.jti, kid: prepared.kid });
      throw this.signingFailed(signed.reason);
    }
    this.tokenFault = undefined;
    if (recorded.status === 'rejected') throw recorded.reason;
    this.flushUnrecorded();
    const minted = signed.value;
    return {
      token: minted.token,
      sub: subject,
      jti: minted.jti,
      kid: minted.kid,
      alg: minted.alg,
      iat: minted.iat,
      exp: minted.exp,
    };
  }

  /**
   * Each request of a batch minted as if it came alone (its own grant check, record and
   * signature), all at once: the signatures share the signing threads' batches and the
   * records the log's group commits. A refusal stays in its place in the answer.
   */
  async mintBatch(
    requests: MintRequest[],
    caller: Caller,
    settings: Config,
  ): Promise<MintBatchResult[]> {
    const settled = await Promise.allSettled(
      requests.map((request) => this.mint(request, caller, settings)),
    );
    return settled.map((outcome) => {
      if (outcome.status === 'fulfilled') return outcome.value;
      const error = outcome.reason as unknown;
      // As the server does for a whole request.
      if (travels(error)) return { error: error.toJSON() };
      this.logger.error({ event: 'mint.internal_error', err: error }, 'a batch mint failed');
      return { error: { code: 'ERR_INTERNAL', message: 'internal error; see the daemon log' } };
    });
  }

  /** A sealed token cannot sign: say so at once, before any record is written. */
  private refuseWhileSealed(): void {
    if (this.tokenHealth?.condition().status === 'sealed')
      throw new HsmintError(
        'ERR_HSM_UNAVAILABLE',
        'the token is sealed; GET /v1/health says why (minting resumes when it is re-opened)',
      );
  }

  /**
   * A token event from core/pkcs11 (seal, re-open attempt, recovery): logged, and seals and
   * recoveries recorded in the audit log.
   */
  tokenEvent(event: TokenEvent): void {
    logTokenEvent(this.logger, event);
    if (event.event === 'token.sealed' || event.event === 'token.unsealed') this.record(event);
    if (event.event === 'token.reopen_failed' && event.retry_ms === undefined) this.record(event);
    // A signature failure before the seal belongs to the fault that is now over.
    if (event.event === 'token.unsealed') this.tokenFault = undefined;
  }

  /** A reload's one re-open attempt for a sealed token (the only one after a refused PIN). */
  async retryToken(): Promise<void> {
    if (this.tokenHealth?.condition().status === 'sealed') await this.tokenHealth.retry();
  }

  /** Observes how long a signature on the token took, queueing for a session included. */
  private async timed<T>(alg: string, sign: () => Promise<T>): Promise<T> {
    const started = process.hrtime.bigint();
    try {
      const result = await sign();
      this.metrics.signature(alg, 'ok', secondsSince(started));
      return result;
    } catch (error) {
      this.metrics.signature(alg, 'error', secondsSince(started));
      throw error;
    }
  }

  /** A failed signature: the token's fault unless it says otherwise; the client learns only that. */
  private signingFailed(error: unknown): unknown {
    const tokenFailed = !(error instanceof HsmintError) || error.code === 'ERR_HSM_UNAVAILABLE';
    if (!tokenFailed) return error;
    const ckr = error instanceof HsmintError ? error.details?.['ckr'] : undefined;
    this.tokenFault = `signing failed${typeof ckr === 'string' ? `: ${ckr}` : ''}`;
    // The CKR detail goes to the log.
    this.logger.error(
      { event: 'token.error', kid: this.activeKey.kid, ckr, err: error },
      'signing on the token failed',
    );
    return new HsmintError('ERR_HSM_UNAVAILABLE', 'the token could not sign; see the daemon log', {
      cause: error,
    });
  }

  async verify(request: VerifyRequest, caller?: Caller): Promise<VerifyResult> {
    const expected = request.aud === undefined ? {} : { audience: request.aud };
    let result = await this.verifier.verify(request.token, expected);
    if (result.valid) return result;
    const ids = unverifiedIds(request.token);
    // The lifecycle lets a new key sign once its activation is on disk, and the verifier learns
    // it when the rotation returns: a token minted in between names a kid the lifecycle trusts
    // and the verifier does not know yet. Bring the verifier up to date, and ask once more.
    if (
      result.error.code === 'ERR_TOKEN_KID_UNKNOWN' &&
      this.lifecycle.verificationKeys().some((jwk) => jwk.kid === ids['kid'])
    ) {
      await this.updateVerifierKeys();
      result = await this.verifier.verify(request.token, expected);
    }
    if (!result.valid) {
      this.record({
        event: 'verify.fail',
        code: result.error.code,
        ...ids,
        ...(caller ? callerFields(caller) : {}),
      });
    }
    return result;
  }

  /**
   * Records an event without holding up the answer (denials, verify failures, key events).
   * While the log is down they are counted, and the count is recorded once it is back.
   */
  record(event: AuditEvent): void {
    if (!this.audit) return;
    this.audit.append(event).then(
      () => this.flushUnrecorded(),
      () => {
        this.unrecorded++;
      },
    );
  }

  /** Once the log takes records again, it learns how many it missed meanwhile. */
  private flushUnrecorded(): void {
    if (this.unrecorded === 0 || !this.audit) return;
    const count = this.unrecorded;
    this.unrecorded = 0;
    this.audit.append({ event: 'audit.unrecorded', count }).catch(() => (this.unrecorded += count));
  }

  /** A wall clock behind the last record by more than the skew stops minting: time must not run back. */
  private checkClock(skew: number): void {
    const last = this.audit?.lastTimestamp();
    if (last && this.now().getTime() < last.getTime() - skew * 1000) {
      this.record({
        event: 'clock.rollback',
        last: last.toISOString(),
        now: this.now().toISOString(),
      });
      throw new HsmintError(
        'ERR_CLOCK_ROLLBACK',
        `the clock is behind the last audit record (${last.toISOString()})`,
      );
    }
  }

  jwks(): JwksResponse {
    return { keys: this.lifecycle.publishedKeys().map((jwk) => this.withChain(jwk)) };
  }

  /**
   * Resolves when the token answers, rejects after `timeoutMs` (the watchdog's probe). A token
   * sealed by a fault it recovers from by itself (the back-off loop runs) or that waits for an
   * admin (a refused PIN) passes: the daemon does what it should, and a restart would only cost
   * a PIN try. A token hung in a call fails: only a restart frees it. A busy one passes too.
   */
  async probe(timeoutMs: number): Promise<void> {
    if (!this.store.probe) return;
    try {
      await this.probeStore(timeoutMs);
    } catch (error) {
      if (hasCode(error, 'ERR_HSM_BUSY')) return;
      const condition = this.tokenHealth?.condition();
      if (condition?.status === 'sealed' && condition.recovery !== 'restart') return;
      throw error;
    }
  }

  private async probeStore(timeoutMs: number): Promise<void> {
    if (!this.store.probe) return;
    const condition = this.tokenHealth?.condition();
    if (condition?.status === 'sealed') {
      if (condition.recovery === 'restart')
        throw new HsmintError('ERR_HSM_UNAVAILABLE', `the token is hung: ${condition.reason}`);
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.store.probe(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new HsmintError(
                  'ERR_HSM_UNAVAILABLE',
                  `the token did not answer within ${timeoutMs} ms`,
                ),
              ),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  health(): HealthResponse {
    const active = this.lifecycle.signingKey();
    const audit = this.audit?.health();
    const token = this.tokenHealth?.condition();
    const sealed = token?.status === 'sealed' ? `token sealed: ${token.reason}` : undefined;
    const reason =
      sealed ??
      this.tokenFault ??
      (audit && !audit.ok ? `audit log unavailable: ${audit.reason ?? 'write failed'}` : undefined);
    return {
      status: sealed ? 'sealed' : reason ? 'degraded' : 'ok',
      ...(reason ? { reason } : {}),
      issuer: this.config.issuer,
      algorithm: active.alg,
      active_kid: active.kid,
      keys: this.lifecycle.records().length,
      token: this.token,
      uptime_s: Math.floor((this.now().getTime() - this.startedAt) / 1000),
    };
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
