import type { Logger } from 'pino';
import type { Config } from '../core/config.js';
import { HsmintError } from '../core/errors.js';
import { mintToken } from '../core/jwt/mint.js';
import { TokenVerifier, type VerifyResult } from '../core/jwt/verify.js';
import type { KeyInfo, KeyStore } from '../core/keys/keystore.js';
import type { Caller } from '../core/policy/caller.js';
import { authorizeMint, grantOf, type Grant, type Policy } from '../core/policy/policy.js';
import type {
  HealthResponse,
  JwksResponse,
  MintRequest,
  MintResponse,
  VerifyRequest,
  WhoamiResponse,
} from '../core/protocol.js';

export interface AuthorityOptions {
  config: Config;
  store: KeyStore;
  token: { label: string; serial: string };
  logger: Logger;
  now?: () => Date;
}

/**
 * What the daemon does, without the transport: mint on the active key, verify against the
 * issuer's own public keys, publish them. Handlers call this; tests drive it with a fake store.
 */
export class Authority {
  private config: Config;
  private readonly store: KeyStore;
  private readonly token: { label: string; serial: string };
  private readonly logger: Logger;
  private readonly now: () => Date;
  private readonly verifier: TokenVerifier;
  private keys: KeyInfo[] = [];
  private active!: KeyInfo;
  private readonly startedAt: number;
  /** The last token failure, cleared by the next good signature; it drives `degraded`. */
  private tokenFault: string | undefined;

  private constructor(options: AuthorityOptions) {
    this.config = options.config;
    this.store = options.store;
    this.token = options.token;
    this.logger = options.logger;
    this.now = options.now ?? (() => new Date());
    this.startedAt = this.now().getTime();
    this.verifier = new TokenVerifier(this.verifierOptions());
  }

  /** Loads the keys; generates the first key of the configured algorithm when there is none. */
  static async create(options: AuthorityOptions): Promise<Authority> {
    const authority = new Authority(options);
    await authority.loadKeys();
    return authority;
  }

  get activeKey(): KeyInfo {
    return this.active;
  }

  get issuer(): string {
    return this.config.issuer;
  }

  private verifierOptions() {
    return { issuer: this.config.issuer, clockSkew: this.config.tokens.clockSkew, now: this.now };
  }

  private async loadKeys(): Promise<void> {
    let keys = await this.store.list();
    const algorithm = this.config.keys.algorithm;
    if (!keys.some((key) => key.alg === algorithm)) {
      const created = await this.store.generate(algorithm);
      this.logger.info(
        { event: 'key.generate', kid: created.kid, alg: created.alg, label: created.label },
        'generated the first signing key',
      );
      keys = await this.store.list();
    }
    // Newest key of the configured algorithm signs; every hsmint key on the token verifies.
    this.active = keys.filter((key) => key.alg === algorithm).at(-1)!;
    this.keys = keys;
    await this.verifier.setKeys(keys.map((key) => key.publicJwk));
  }

  /** Applies a new configuration and re-reads the keys (SIGHUP). Token and socket settings need a restart. */
  async reconfigure(config: Config): Promise<string[]> {
    const restartNeeded: string[] = [];
    if (JSON.stringify(config.hsm) !== JSON.stringify(this.config.hsm)) restartNeeded.push('hsm');
    const bound = this.config.socket;
    const { path, mode, group } = config.socket;
    if (path !== bound.path || mode !== bound.mode || group !== bound.group)
      restartNeeded.push('socket');
    const previous = this.config;
    // The token and the bound socket stay as they are; limits, tokens, policy and keys change.
    this.config = {
      ...config,
      hsm: previous.hsm,
      socket: { ...config.socket, path: bound.path, mode: bound.mode, group: bound.group },
    };
    try {
      await this.store.reload();
      await this.loadKeys();
    } catch (error) {
      this.config = previous;
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
          }
        : null,
    };
  }

  /** Mints under `settings`, the configuration the request arrived under. */
  async mint(request: MintRequest, caller: Caller, settings: Config): Promise<MintResponse> {
    const { tokens, issuer, policy } = settings;
    const grant = this.grant(caller, policy);
    const { subject, ttl: ttlSeconds } = authorizeMint(grant, request, tokens.defaultTtl);
    if (ttlSeconds > tokens.maxTtl) {
      throw new HsmintError(
        'ERR_TTL_TOO_LONG',
        `ttl ${ttlSeconds}s is over the maximum of ${tokens.maxTtl}s`,
      );
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
    try {
      const minted = await mintToken(this.store, this.active, {
        issuer,
        audience: request.aud,
        subject,
        minter,
        ...(request.scope === undefined ? {} : { scope: request.scope }),
        ...(request.claims === undefined ? {} : { claims: request.claims }),
        ttlSeconds,
        now: this.now(),
      });
      this.tokenFault = undefined;
      return {
        token: minted.token,
        sub: subject,
        jti: minted.jti,
        kid: minted.kid,
        alg: minted.alg,
        iat: minted.iat,
        exp: minted.exp,
      };
    } catch (error) {
      const tokenFailed = !(error instanceof HsmintError) || error.code === 'ERR_HSM_UNAVAILABLE';
      if (!tokenFailed) throw error;
      const ckr = error instanceof HsmintError ? error.details?.['ckr'] : undefined;
      this.tokenFault = `signing failed${typeof ckr === 'string' ? `: ${ckr}` : ''}`;
      // The CKR detail goes to the log; the client only learns that the token failed.
      this.logger.error(
        { event: 'token.error', kid: this.active.kid, ckr, err: error },
        'signing on the token failed',
      );
      throw new HsmintError('ERR_HSM_UNAVAILABLE', 'the token could not sign; see the daemon log', {
        cause: error,
      });
    }
  }

  verify(request: VerifyRequest): Promise<VerifyResult> {
    return this.verifier.verify(
      request.token,
      request.aud === undefined ? {} : { audience: request.aud },
    );
  }

  jwks(): JwksResponse {
    return { keys: this.keys.map((key) => key.publicJwk) };
  }

  health(): HealthResponse {
    return {
      status: this.tokenFault ? 'degraded' : 'ok',
      ...(this.tokenFault ? { reason: this.tokenFault } : {}),
      issuer: this.config.issuer,
      algorithm: this.active.alg,
      active_kid: this.active.kid,
      keys: this.keys.length,
      token: this.token,
      uptime_s: Math.floor((this.now().getTime() - this.startedAt) / 1000),
    };
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
