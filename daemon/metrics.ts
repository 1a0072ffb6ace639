/**
 * The daemon's metrics, all in one place, in the Prometheus text format for GET /v1/metrics.
 *
 * Every daemon (and every test) has its own Registry: nothing lands in prom-client's global
 * one. Labels take only bounded values: outcomes, error codes from the fixed ERROR_CODES
 * table, route patterns (never raw paths), key ids of the keys in the lifecycle (three at
 * most) and health states. Never a token, a PIN, a subject or anything else a caller chose.
 */
import {
  Counter,
  Gauge,
  Histogram,
  Registry,
  collectDefaultMetrics,
  type PrometheusContentType,
} from 'prom-client';
import { travels, type ErrorCode } from '../core/errors.js';
import type { KeyRecord } from '../core/keys/lifecycle.js';
import type { SessionUse } from '../core/keys/keystore.js';
import type { HealthStatus } from '../core/protocol.js';

export const METRICS_CONTENT_TYPE: PrometheusContentType =
  'text/plain; version=0.0.4; charset=utf-8';

const HEALTH_STATES: readonly HealthStatus[] = ['ok', 'degraded', 'sealed'];

/** From half a millisecond (a SoftHSM ES256 signature) to ten seconds (a stuck HSM or disk). */
const SECONDS_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** What the gauges read at scrape time; the authority provides it once it exists. */
export interface MetricSources {
  health(): { status: HealthStatus };
  keyRecords(): KeyRecord[];
  /** The token's session pool, when the key store has one; without it, no session metrics. */
  sessions?: () => SessionUse;
  /** Epoch seconds, on the daemon's clock. */
  nowSeconds(): number;
}

export type MintOutcome = 'ok' | 'error';
export type VerifyOutcome = 'valid' | 'invalid' | 'error';

export interface DaemonMetricsOptions {
  /** prom-client's process metrics (memory, CPU, event loop lag, GC); on unless told. */
  processMetrics?: boolean;
}

export class DaemonMetrics {
  readonly registry = new Registry<PrometheusContentType>();
  private sources: MetricSources | undefined;

  private readonly mints: Counter<'outcome' | 'code'>;
  private readonly verifies: Counter<'outcome' | 'code'>;
  private readonly requests: Histogram<'method' | 'route' | 'status_class'>;
  private readonly signing: Histogram<'alg' | 'outcome'>;
  private readonly auditWrites: Histogram;
  private readonly auditRecords: Counter;

  constructor(options: DaemonMetricsOptions = {}) {
    const registers = [this.registry];
    this.mints = new Counter({
      name: 'hsmint_mints_total',
      help: 'Mint requests (POST /v1/tokens) by outcome, and by error code when refused or failed.',
      labelNames: ['outcome', 'code'],
      registers,
    });
    this.verifies = new Counter({
      name: 'hsmint_verifies_total',
      help: 'Verify requests (POST /v1/tokens/verify): valid, invalid (with the reason code), or error (the request itself failed).',
      labelNames: ['outcome', 'code'],
      registers,
    });
    this.requests = new Histogram({
      name: 'hsmint_http_request_duration_seconds',
      help: 'Time from a request arriving to its answer being written, by route pattern and status class.',
      labelNames: ['method', 'route', 'status_class'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.signing = new Histogram({
      name: 'hsmint_token_sign_duration_seconds',
      help: 'Time to sign a JWT on the PKCS#11 token, waiting for a free session included.',
      labelNames: ['alg', 'outcome'],
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.auditWrites = new Histogram({
      name: 'hsmint_audit_write_duration_seconds',
      help: 'Time to write and fdatasync one batch of audit records.',
      buckets: SECONDS_BUCKETS,
      registers,
    });
    this.auditRecords = new Counter({
      name: 'hsmint_audit_records_written_total',
      help: "Audit records made durable, checkpoints and the log's own records included.",
      registers,
    });

    // The gauges below are read from the daemon's state at each scrape, so they cannot go stale.
    const sources = (): MetricSources | undefined => this.sources;
    new Gauge({
      name: 'hsmint_health',
      help: 'The daemon health: 1 for the current status, 0 for the others.',
      labelNames: ['status'],
      registers,
      collect() {
        const status = sources()?.health().status;
        for (const state of HEALTH_STATES) this.set({ status: state }, state === status ? 1 : 0);
      },
    });
    new Gauge({
      name: 'hsmint_key_state',
      help: 'Each key in the lifecycle (next, active, retiring), with its algorithm: always 1.',
      labelNames: ['kid', 'alg', 'state'],
      registers,
      collect() {
        // Reset first: a retired key's series disappears instead of lingering.
        this.reset();
        for (const key of sources()?.keyRecords() ?? [])
          this.set({ kid: key.kid, alg: key.alg, state: key.state }, 1);
      },
    });
    new Gauge({
      name: 'hsmint_key_age_seconds',
      help: 'Seconds since each key in the lifecycle was generated.',
      labelNames: ['kid', 'state'],
      registers,
      collect() {
        this.reset();
        const read = sources();
        if (!read) return;
        const now = read.nowSeconds();
        for (const key of read.keyRecords())
          this.set({ kid: key.kid, state: key.state }, Math.max(0, now - key.created));
      },
    });

    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Where the gauges read the daemon's state; the authority calls it once, when it is built. */
  track(sources: MetricSources): void {
    if (this.sources) throw new Error('these metrics already track an authority');
    this.sources = sources;
    if (sources.sessions) this.trackSessions(sources.sessions);
  }

  private trackSessions(read: () => SessionUse): void {
    const registers = [this.registry];
    new Gauge({
      name: 'hsmint_token_sessions',
      help: 'Sessions open on the PKCS#11 token for signing: busy (one operation each) or idle.',
      labelNames: ['state'],
      registers,
      collect() {
        const use = read();
        this.set({ state: 'busy' }, use.busy);
        this.set({ state: 'idle' }, use.open - use.busy);
      },
    });
    new Gauge({
      name: 'hsmint_token_sessions_limit',
      help: 'The most signing sessions the daemon opens on the token (hsm.sessions or the profile).',
      registers,
      collect() {
        this.set(read().limit);
      },
    });
    new Gauge({
      name: 'hsmint_token_session_waiters',
      help: 'Signatures waiting for a free session: above 0 for long, the token is the bottleneck.',
      registers,
      collect() {
        this.set(read().waiting);
      },
    });
  }

  mint(outcome: MintOutcome, code?: ErrorCode): void {
    this.mints.inc(code === undefined ? { outcome } : { outcome, code });
  }

  verify(outcome: VerifyOutcome, code?: ErrorCode): void {
    this.verifies.inc(code === undefined ? { outcome } : { outcome, code });
  }

  /**
   * One answered request. `route` is the matched route's pattern (`/v1/keys/{kid}/revoke`), or
   * `unmatched`; a method other than GET or POST counts as `other`.
   */
  request(method: string | undefined, route: string, status: number, seconds: number): void {
    this.requests.observe(
      {
        method: method === 'GET' || method === 'POST' ? method : 'other',
        route,
        status_class: `${Math.floor(status / 100)}xx`,
      },
      seconds,
    );
  }

  signature(alg: string, outcome: 'ok' | 'error', seconds: number): void {
    this.signing.observe({ alg, outcome }, seconds);
  }

  /** The audit log's write hook (AuditLogOptions.observeWrite). */
  readonly auditWrite = (seconds: number, records: number): void => {
    this.auditWrites.observe(seconds);
    this.auditRecords.inc(records);
  };

  /** The text exposition of every metric. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/**
 * The code a failed request answers with: the error's own code when it is one that travels,
 * ERR_INTERNAL otherwise (the same rule the server applies), so a label matches the wire.
 */
export function answeredCode(error: unknown): ErrorCode {
  return travels(error) ? error.code : 'ERR_INTERNAL';
}

/** Seconds since `started` (process.hrtime.bigint()). */
export function secondsSince(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e9;
}
