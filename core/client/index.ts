/**
 * The hsmint client for Node services (`hsmint/client`): mint, verify and fetch the JWKS over
 * the daemon's Unix socket, with keep-alive, and a token source that renews ahead of expiry.
 */
import { Agent, request as httpRequest } from 'node:http';
import { HsmintError, isErrorCode } from '../errors.js';
import type { PublicJwk } from '../keys/keystore.js';
import type { VerifyResult } from '../jwt/verify.js';
import type {
  HealthResponse,
  JwksResponse,
  KeyView,
  MintBatchResponse,
  MintBatchResult,
  MintResponse,
  ReloadResponse,
  WhoamiResponse,
} from '../protocol.js';

export { HsmintError } from '../errors.js';
export { verifyWithRoot, type RootVerifyOptions } from '../ca/verify-token.js';
export { verifyBundle, acceptBundle, readBundleState } from '../ca/bundle.js';
export { fromPem } from '../ca/certificates.js';
export type { ErrorCode, VerifyErrorCode } from '../errors.js';
export type {
  HealthResponse,
  JwksResponse,
  KeyView,
  MintBatchResult,
  MintResponse,
  ReloadResponse,
  WhoamiResponse,
} from '../protocol.js';
export type { Caller } from '../policy/caller.js';
export type { VerifyResult } from '../jwt/verify.js';

export const DEFAULT_SOCKET_PATH = '/run/hsmint/hsmint.sock';

export interface MintParams {
  aud: string | string[];
  sub?: string;
  /** A duration (`5m`) or whole seconds. */
  ttl?: string | number;
  scope?: string[];
  claims?: Record<string, unknown>;
}

export interface ClientOptions {
  /** Defaults to $HSMINT_SOCKET, then /run/hsmint/hsmint.sock. */
  socketPath?: string;
  /** Per request; the daemon answers a mint in milliseconds unless the token is slow. */
  timeoutMs?: number;
  /**
   * Connections kept to the daemon (default 8). The daemon limits connections per uid
   * (`socket.max_connections_per_uid`, 64 by default), shared by all of that uid's processes.
   */
  maxConnections?: number;
}

const MAX_RESPONSE_BYTES = 1024 * 1024;

export function defaultSocketPath(): string {
  return process.env['HSMINT_SOCKET'] || DEFAULT_SOCKET_PATH;
}

export class HsmintClient {
  readonly socketPath: string;
  private readonly agent: Agent;
  private readonly timeoutMs: number;

  constructor(options: ClientOptions = {}) {
    this.socketPath = options.socketPath ?? defaultSocketPath();
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.agent = new Agent({ keepAlive: true, maxSockets: options.maxConnections ?? 8 });
  }

  mint(params: MintParams): Promise<MintResponse> {
    return this.call<MintResponse>('POST', '/v1/tokens', params, [201]);
  }

  /**
   * Up to 100 mints in one call, each decided and recorded as if it came alone. The answer
   * keeps the order: a token, or `{error: {code, message}}` where that one was refused.
   */
  async mintBatch(requests: MintParams[]): Promise<MintBatchResult[]> {
    const answer = await this.call<MintBatchResponse>(
      'POST',
      '/v1/tokens:batch',
      { requests },
      [200],
    );
    return answer.results;
  }

  verify(token: string, options: { aud?: string } = {}): Promise<VerifyResult> {
    return this.call<VerifyResult>('POST', '/v1/tokens/verify', { token, ...options }, [200]);
  }

  jwks(): Promise<JwksResponse> {
    return this.call<JwksResponse>('GET', '/v1/jwks', undefined, [200]);
  }

  /** The caller as the daemon sees it, the rule that matched and what it grants. */
  whoami(): Promise<WhoamiResponse> {
    return this.call<WhoamiResponse>('GET', '/v1/whoami', undefined, [200]);
  }

  /** Re-reads hsmint.yaml (admins only); a bad file is refused with ERR_CONFIG_INVALID. */
  reload(): Promise<ReloadResponse> {
    return this.call<ReloadResponse>('POST', '/v1/reload', undefined, [200]);
  }

  /** Every key with its state and times (admins). */
  keys(): Promise<{ keys: KeyView[] }> {
    return this.call('GET', '/v1/keys', undefined, [200]);
  }

  /** Emergency rotation (admins): the next key signs now. */
  rotateKeys(): Promise<{ active: KeyView; keys: KeyView[] }> {
    return this.call('POST', '/v1/keys/rotate', undefined, [200]);
  }

  /** Stops trusting a key at once (admins). */
  revokeKey(kid: string): Promise<{ revoked: string; keys: KeyView[] }> {
    return this.call('POST', `/v1/keys/${encodeURIComponent(kid)}/revoke`, undefined, [200]);
  }

  /** Revokes a token: by jti (admins), or by the token itself (admins or its minter). */
  revokeToken(
    request: { jti: string } | { token: string },
  ): Promise<{ revoked: string; until: number }> {
    return this.call('POST', '/v1/tokens/revoke', request, [200]);
  }

  /** The audit checkpoint key's public keys: what `hsmint audit verify` needs offline. */
  auditKeys(): Promise<{ keys: PublicJwk[] }> {
    return this.call('GET', '/v1/audit/keys', undefined, [200]);
  }

  /** The offline verification bundle, signed, with a version that only grows (admins). */
  bundle(): Promise<{ version: number; bundle: string }> {
    return this.call('GET', '/v1/bundle', undefined, [200]);
  }

  /** The daemon's metrics in the Prometheus text format (admins). */
  metrics(): Promise<string> {
    return this.call('GET', '/v1/metrics', undefined, [200], 'text');
  }

  /** `degraded` comes back with 503 and is still an answer, not an error. */
  health(): Promise<HealthResponse> {
    return this.call<HealthResponse>('GET', '/v1/health', undefined, [200, 503]);
  }

  /** Closes kept-alive connections so the process can exit. */
  close(): void {
    this.agent.destroy();
  }

  private call<T>(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    expected: number[],
    /** How an expected answer is read; failures are always JSON error bodies. */
    answer: 'json' | 'text' = 'json',
  ): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = httpRequest(
        {
          socketPath: this.socketPath,
          path,
          method,
          agent: this.agent,
          timeout: this.timeoutMs,
          headers: {
            host: 'hsmint',
            accept: answer === 'text' ? 'text/plain' : 'application/json',
            ...(payload
              ? { 'content-type': 'application/json', 'content-length': payload.length }
              : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_RESPONSE_BYTES) {
              req.destroy(new HsmintError('ERR_PROTOCOL', 'the daemon answer is too large'));
              return;
            }
            chunks.push(chunk);
          });
          res.on('end', () => {
            if (answer === 'text' && expected.includes(res.statusCode ?? 0)) {
              resolve(Buffer.concat(chunks).toString('utf8') as T);
              return;
            }
            let parsed: unknown;
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              reject(
                new HsmintError(
                  'ERR_PROTOCOL',
                  `the daemon answered ${res.statusCode} without JSON`,
                ),
              );
              return;
            }
            if (expected.includes(res.statusCode ?? 0)) {
              resolve(parsed as T);
              return;
            }
            const error = (parsed as { error?: { code?: unknown; message?: unknown } }).error;
            const code = isErrorCode(error?.code) ? error.code : 'ERR_PROTOCOL';
            reject(
              new HsmintError(
                code,
                typeof error?.message === 'string' ? error.message : `HTTP ${res.statusCode}`,
                {
                  details: { status: res.statusCode },
                },
              ),
            );
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () =>
        req.destroy(
          new HsmintError(
            'ERR_DAEMON_UNREACHABLE',
            `no answer from ${this.socketPath} in ${this.timeoutMs} ms`,
          ),
        ),
      );
      req.on('error', (error: NodeJS.ErrnoException) => {
        if (error instanceof HsmintError) reject(error);
        else
          reject(
            new HsmintError(
              'ERR_DAEMON_UNREACHABLE',
              `cannot reach hsmintd at ${this.socketPath}: ${error.code ?? error.message}`,
              { cause: error },
            ),
          );
      });
      req.end(payload);
    });
  }
}

/**
 * A token that renews itself: `get()` returns the cached token until 80% of its lifetime has
 * passed, then mints a new one. Concurrent callers share one renewal.
 */
export function tokenSource(
  client: HsmintClient,
  params: MintParams,
  now: () => number = Date.now,
): { get(): Promise<string> } {
  let current: { token: string; renewAt: number } | undefined;
  let pending: Promise<string> | undefined;
  return {
    get() {
      if (current && now() < current.renewAt) return Promise.resolve(current.token);
      pending ??= client
        .mint(params)
        .then((minted) => {
          const lifetimeMs = (minted.exp - minted.iat) * 1000;
          current = { token: minted.token, renewAt: now() + lifetimeMs * 0.8 };
          return minted.token;
        })
        .finally(() => {
          pending = undefined;
        });
      return pending;
    },
  };
}
