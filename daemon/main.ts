#!/usr/bin/env node
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { configPath, loadConfig, type Config } from '../core/config.js';
import { HsmintError, hasCode } from '../core/errors.js';
import { openKeyStore } from '../core/open.js';
import { PIN_LOCKED, WRONG_PIN, type TokenEvent } from '../core/pkcs11/token.js';
import { mkdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AuditLog } from '../core/audit/log.js';
import { KeyCertifier } from '../core/ca/certifier.js';
import { fromPem } from '../core/ca/certificates.js';
import { signerFor } from '../core/ca/signer.js';
import type { KeyStore } from '../core/keys/keystore.js';
import { Authority, logTokenEvent, stateFiles } from './authority.js';
import { createRoutes, untilTokenOpens } from './handlers.js';
import { createLogger } from './logger.js';
import { DaemonMetrics } from './metrics.js';
import { ApiServer } from './server.js';
import { native, type NativeAddon } from './native.js';
import { currentCaller, identifyPeer } from './peer.js';
import { listenOnFd, listenOnPath, refuseLiveSocket } from './socket.js';
import { Notifier, Watchdog, takeListenFd, watchdogMs } from './systemd.js';
import type { HealthResponse, ReloadResponse } from '../core/protocol.js';

const DRAIN_TIMEOUT_MS = 10_000;
/** Without a watchdog, STATUS= is refreshed this often (health and the active key change). */
const STATUS_REFRESH_MS = 10_000;
/** The key timer wakes at least this often, so clock jumps and reloads are noticed. */
const MAX_KEY_TIMER_SECONDS = 60;
/**
 * Without a watchdog probing it, the token is probed this often, so that a removed token shows
 * as sealed (and starts re-opening) even when nobody mints.
 */
const TOKEN_PROBE_MS = 5_000;

/** A refused or locked PIN: the daemon stays up sealed, and only an admin's reload tries again. */
function isPinRefusal(error: unknown): error is HsmintError {
  return hasCode(error, 'ERR_PIN_INCORRECT') || hasCode(error, 'ERR_PIN_LOCKED');
}

/**
 * The internal CA for the daemon's keys: online when `ca.key` names a CA key on this token,
 * else offline (the daemon writes CSRs; certificates come back by file).
 */
async function createCertifier(
  config: Config,
  store: KeyStore,
  caStore: KeyStore,
  logger: Logger,
): Promise<KeyCertifier> {
  const ca = config.ca!;
  let root: Buffer;
  try {
    root = fromPem(await readFile(ca.certificate, 'utf8'), 'CERTIFICATE');
  } catch (cause) {
    throw new HsmintError('ERR_CA_INVALID', `cannot read the CA certificate ${ca.certificate}`, {
      cause,
    });
  }
  let caSigner;
  if (ca.key !== undefined) {
    const key = (await caStore.list()).find((candidate) => candidate.kid === ca.key);
    if (!key)
      throw new HsmintError(
        'ERR_CA_INVALID',
        `ca.key ${ca.key} is not a CA key on this token (hsmint ca init makes one)`,
      );
    caSigner = signerFor(caStore, key);
  }
  const { rotationPeriod, publishAhead } = config.keys;
  return new KeyCertifier({
    root,
    ...(caSigner ? { caSigner } : {}),
    store,
    dir: join(config.keys.stateDir, 'certs'),
    // The longest a key is in use: published, signing, then verifying its last tokens.
    validitySeconds:
      publishAhead + rotationPeriod + config.tokens.maxTtl + config.tokens.clockSkew + 86400,
    now: () => new Date(),
    report: (event) => logger.info(event, event.event),
  });
}

/**
 * The audit log, sealed by checkpoints signed with a dedicated audit key on the token (made
 * on first start, labelled hsmint-audit-...; never a signing key, never in the JWKS).
 */
async function openAudit(
  config: Config,
  auditStore: KeyStore,
  logger: Logger,
  allowBrokenChain: boolean,
  metrics: DaemonMetrics,
) {
  const existing = (await auditStore.list()).at(-1);
  const key = existing ?? (await auditStore.generate(config.keys.algorithm));
  if (!existing)
    logger.info(
      { event: 'audit.key_generate', kid: key.kid },
      'generated the audit checkpoint key',
    );
  const log = await AuditLog.open({
    dir: config.audit.dir,
    signer: signerFor(auditStore, key),
    checkpointEvery: {
      records: config.audit.checkpointEvery,
      seconds: config.audit.checkpointInterval,
    },
    segmentBytes: config.audit.segmentSize,
    allowBrokenChain,
    // A routine seal is news only at info: at warn, journalctl -p warning filled with them.
    report: (event) =>
      event.event === 'audit.checkpoint'
        ? logger.info(event, 'audit.checkpoint')
        : logger.warn(event, String(event.event)),
    observeWrite: metrics.auditWrite,
  });
  return { log, keys: (await auditStore.list()).map((entry) => entry.publicJwk) };
}

/**
 * One daemon per audit log, whatever else they share: a second one appends at offsets the first
 * then overwrites. An exclusive flock on a file in the folder, held until the process ends
 * (kill -9 included), before the token or the log is opened.
 */
function lockAuditDir(addon: NativeAddon, dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    addon.lockExclusive(join(dir, '.hsmintd.lock'));
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'EWOULDBLOCK')
      throw new HsmintError('ERR_DAEMON_RUNNING', `another hsmintd holds the audit log in ${dir}`);
    throw new HsmintError('ERR_AUDIT_UNAVAILABLE', `cannot lock the audit log in ${dir}`, {
      cause,
    });
  }
}

async function start(
  initialConfig: Config,
  logger: Logger,
  flags: { allowBrokenAudit: boolean },
): Promise<void> {
  const startedAt = performance.now();
  /** The configuration as last applied (a reload that opens a sealed token replaces it). */
  let config = initialConfig;
  const addon = native(); // fail at start, not on the first connection, when the addon is missing
  // Taken first, so the LISTEN_* variables are gone before anything else starts.
  const listenFd = takeListenFd();
  const notifier = new Notifier(addon.sdNotify, process.env, (error) =>
    logger.warn(
      { event: 'systemd.notify_failed', err: error },
      'systemd did not take a notification',
    ),
  );
  const metrics = new DaemonMetrics();
  /** The authority and its audit log, once the token has opened. */
  let running: { authority: Authority; audit: AuditLog } | undefined;
  /** Why the token never opened (a PIN refused at start), while it has not. */
  let sealedReason: string | undefined;
  const sealedSince = Date.now();
  let lastKnownKeys: { active_kid: string; keys: number } = { active_kid: '', keys: 0 };
  const onTokenEvent = (event: TokenEvent) =>
    running ? running.authority.tokenEvent(event) : logTokenEvent(logger, event);

  /** Opens the token, the audit log and the authority: the daemon's work can begin. */
  const bringUp = async (settings: Config) => {
    const { store, caStore, auditStore, token, tokenHealth } = await openKeyStore(settings, {
      onEvent: onTokenEvent,
    });
    let authority: Authority;
    let audit: AuditLog;
    try {
      const opened = await openAudit(settings, auditStore, logger, flags.allowBrokenAudit, metrics);
      audit = opened.log;
      const certifier = settings.ca
        ? await createCertifier(settings, store, caStore, logger)
        : undefined;
      authority = await Authority.create({
        config: settings,
        store,
        token,
        tokenHealth,
        logger,
        state: stateFiles(settings),
        audit,
        auditKeys: opened.keys,
        metrics,
        ...(certifier ? { certifier } : {}),
      });
    } catch (error) {
      await store.close();
      throw error;
    }
    await audit.append({
      event: 'daemon.start',
      kid: authority.activeKey.kid,
      allow_broken_audit: flags.allowBrokenAudit,
    });
    if (settings.policy.rules.length === 0) {
      logger.warn({ event: 'policy.empty' }, 'policy.rules is empty: every mint is refused');
    }
    running = { authority, audit };
  };

  /**
   * A refused PIN at start: the daemon stays up sealed and says why, instead of exiting for
   * systemd to restart it into the same PIN again (each try counts towards the lock-out).
   */
  const sealOnRefusal = async (settings: Config, error: HsmintError) => {
    sealedReason = hasCode(error, 'ERR_PIN_LOCKED') ? PIN_LOCKED : WRONG_PIN;
    logger.error(
      { event: 'token.sealed', code: error.code, reason: sealedReason, recovery: 'admin' },
      'the token refused the PIN: serving sealed until a reload brings one it takes',
    );
    // Health still names the key that will sign once the token opens.
    try {
      const document = await stateFiles(settings).keys.read();
      lastKnownKeys = {
        active_kid: document?.keys.find((key) => key.state === 'active')?.kid ?? '',
        keys: document?.keys.length ?? 0,
      };
    } catch {
      // Unreadable state: health says less, and the token's refusal is still the news.
    }
  };

  // A second daemon on the same path must fail before it opens the token and appends to the
  // audit log: both belong to the daemon serving there, which writes the log at its own offsets.
  if (listenFd === undefined) await refuseLiveSocket(config.socket.path);
  // Two at the same moment both pass that check: only one gets the log.
  lockAuditDir(addon, config.audit.dir);
  try {
    await bringUp(config);
  } catch (error) {
    if (!isPinRefusal(error)) throw error;
    await sealOnRefusal(config, error);
  }

  const sealedHealth = (): HealthResponse | undefined =>
    running
      ? undefined
      : {
          status: 'sealed',
          reason: `token sealed: ${sealedReason ?? 'not open'}`,
          issuer: config.issuer,
          algorithm: config.keys.algorithm,
          ...lastKnownKeys,
          token: { label: config.hsm.token.token ?? '', serial: config.hsm.token.serial ?? '' },
          uptime_s: Math.floor((Date.now() - sealedSince) / 1000),
        };
  const authorityNow = (): Authority => {
    if (!running) throw new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is not open');
    return running.authority;
  };

  /**
   * The reload of a daemon whose token never opened: the configuration and the PIN file are
   * read again and the token gets exactly one login attempt.
   */
  const openAfterRefusal = async (): Promise<ReloadResponse> => {
    // The socket stays as bound; everything else comes from the file as it is now.
    const settings = { ...loadConfig(config.source), socket: config.socket };
    try {
      await bringUp(settings);
    } catch (error) {
      if (isPinRefusal(error)) await sealOnRefusal(settings, error);
      else sealedReason = `the token did not open: ${(error as Error).message}`;
      throw error;
    }
    config = settings;
    sealedReason = undefined;
    logger.level = settings.log.level;
    logger.info({ event: 'token.unsealed' }, 'the token took the PIN: serving');
    scheduleKeys();
    return { reloaded: true, restart_needed: [] };
  };

  // Reloads run one after another. A file that fails validation is refused with its errors
  // and the running config stays: a typo must never take the issuer down.
  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (): Promise<ReloadResponse> => {
    const attempt = reloading.then(async () => {
      notifier.reloading();
      try {
        if (!running) {
          const opened = await openAfterRefusal();
          notifier.ready(statusLine());
          return opened;
        }
        const authority = running.authority;
        // A sealed token gets one re-open attempt first (after a refused PIN, the only one
        // there is): applying a configuration reads the keys on the token.
        await authority.retryToken();
        const next = loadConfig(config.source);
        const restartNeeded = await authority.reconfigure(next);
        logger.level = next.log.level;
        logger.info(
          {
            event: 'config.reload',
            rules: next.policy.rules.length,
            restart_needed: restartNeeded,
          },
          'configuration reloaded',
        );
        authority.record({ event: 'config.reload', restart_needed: restartNeeded });
        notifier.ready(statusLine());
        return { reloaded: true as const, restart_needed: restartNeeded };
      } catch (error) {
        logger.error(
          { event: 'config.reload_failed', code: (error as HsmintError).code, err: error },
          'reload refused; the old configuration stays',
        );
        running?.authority.record({
          event: 'config.reload_failed',
          code: (error as HsmintError).code ?? 'ERR_INTERNAL',
        });
        // The old configuration still serves: systemd must hear READY again either way.
        notifier.ready(
          `${statusLine()}; last reload refused: ${(error as HsmintError).code ?? 'ERR_INTERNAL'}`,
        );
        throw error;
      }
    });
    reloading = attempt.catch(() => undefined);
    return attempt;
  };

  const server = new ApiServer(
    untilTokenOpens(createRoutes(authorityNow, { reload }), sealedHealth),
    logger,
    {
      identify: identifyPeer,
      currentCaller,
      config: () => running?.authority.settings ?? config,
      perUid: () =>
        running?.authority.limits ?? {
          connections: config.socket.maxConnectionsPerUid,
          requests: config.socket.maxRequestsPerUid,
        },
      metrics,
    },
  );
  try {
    if (listenFd === undefined)
      await listenOnPath(server.http, config.socket.path, config.socket.mode, config.socket.group);
    else await listenOnFd(server.http, listenFd);
  } catch (error) {
    await running?.authority.close();
    throw error;
  }
  logger.info(
    {
      event: 'daemon.start',
      socket: listenFd === undefined ? config.socket.path : `fd ${listenFd} from systemd`,
      start_ms: Math.round(performance.now() - startedAt),
      issuer: config.issuer,
      ...(running
        ? { alg: running.authority.activeKey.alg, kid: running.authority.activeKey.kid }
        : { status: 'sealed' }),
      hsm_token: config.hsm.token.token ?? config.hsm.token.serial,
      rules: config.policy.rules.length,
    },
    running
      ? 'hsmintd is serving'
      : 'hsmintd is up, sealed: send SIGHUP once the PIN file is right',
  );
  notifier.ready(statusLine());

  // WATCHDOG=1 while the event loop runs and the token answers; STATUS= kept current.
  const interval = watchdogMs();
  const watchdog =
    interval === undefined
      ? undefined
      : new Watchdog({
          notifier,
          intervalMs: interval,
          // Before the token first opens (a refused PIN), a restart cannot help: keep pinging.
          probe: () =>
            running?.authority.probe(Math.max(1, Math.floor(interval / 2))) ?? Promise.resolve(),
          onTick: () => notifier.status(statusLine()),
        });
  watchdog?.start();
  const statusTimer =
    notifier.enabled && watchdog === undefined
      ? setInterval(() => notifier.status(statusLine()), STATUS_REFRESH_MS).unref()
      : undefined;

  // Without the watchdog's probe, a probe of its own finds a token that went away unused.
  const tokenProbe =
    watchdog === undefined
      ? setInterval(
          () => void running?.authority.probe(TOKEN_PROBE_MS).catch(() => undefined),
          TOKEN_PROBE_MS,
        ).unref()
      : undefined;

  // The key lifecycle runs on the daemon's own timer: nobody has to call an API to rotate.
  let keyTimer: NodeJS.Timeout | undefined;
  const scheduleKeys = () => {
    const authority = running?.authority;
    if (!authority) return;
    const seconds = Math.min(authority.secondsToNextKeyEvent(), MAX_KEY_TIMER_SECONDS);
    keyTimer = setTimeout(() => {
      authority
        .tick()
        .catch((error: unknown) =>
          logger.error(
            { event: 'keys.tick_failed', code: (error as HsmintError).code, err: error },
            'key rotation step failed; retrying',
          ),
        )
        .finally(scheduleKeys);
    }, seconds * 1000);
  };
  // Once the token is open: at start, or at the reload that opens it (openAfterRefusal).
  if (running) scheduleKeys();

  /** One line for `systemctl status`: health, the active key, and why when not ok. */
  function statusLine(): string {
    if (!running) return `sealed (${sealedReason ?? 'the token is not open'})`;
    try {
      const health = running.authority.health();
      return `${health.status}${health.reason ? ` (${health.reason})` : ''}; active key ${health.active_kid} (${health.algorithm}); ${health.keys} keys`;
    } catch (error) {
      return `no active key: ${(error as Error).message}`;
    }
  }

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ event: 'daemon.stopping', signal }, 'draining in-flight requests');
    notifier.stopping(`stopping (${signal}): draining requests, sealing the audit log`);
    watchdog?.stop();
    clearInterval(statusTimer);
    clearInterval(tokenProbe);
    clearTimeout(keyTimer);
    await server.drain(DRAIN_TIMEOUT_MS);
    if (running) {
      const { audit, authority } = running;
      await audit.append({ event: 'daemon.stop', signal }).catch(() => undefined);
      // Flushes and seals the log with a final checkpoint; a sealed token cannot sign it, and
      // the next start's first checkpoint seals the tail instead.
      await audit
        .close()
        .catch((error: unknown) =>
          logger.error(
            { event: 'audit.close_failed', code: (error as HsmintError).code, err: error },
            'the audit log was closed without its final checkpoint',
          ),
        );
      await authority.close();
    }
    logger.info({ event: 'daemon.stop' }, 'hsmintd stopped; the token is closed');
    logger.flush();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGHUP', () => void reload().catch(() => undefined));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      config: { type: 'string', short: 'c' },
      // After tampering or disk damage, start anyway; the override is itself recorded.
      'allow-broken-audit': { type: 'boolean' },
      version: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(
      'usage: hsmintd [--config FILE] [--allow-broken-audit]\n  FILE defaults to $HSMINT_CONFIG or /etc/hsmint/hsmint.yaml\n',
    );
    return;
  }
  if (values.version) {
    process.stdout.write('hsmintd 0.1.0\n');
    return;
  }
  const config = loadConfig(configPath(values.config));
  const logger = createLogger(config.log.level);
  try {
    await start(config, logger, { allowBrokenAudit: values['allow-broken-audit'] === true });
  } catch (error) {
    logger.fatal(
      { event: 'daemon.start_failed', code: (error as HsmintError).code, err: error },
      (error as Error).message,
    );
    logger.flush();
    process.exitCode = 1;
  }
}

main().catch((error: unknown) => {
  // Before the logger exists (bad flags, bad config) the failure still goes out as one JSON line.
  const code = error instanceof HsmintError ? error.code : 'ERR_USAGE';
  process.stdout.write(
    `${JSON.stringify({ level: 'fatal', event: 'daemon.start_failed', code, msg: (error as Error).message })}\n`,
  );
  process.exitCode = 1;
});
