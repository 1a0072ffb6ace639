#!/usr/bin/env node
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { configPath, loadConfig, type Config } from '../core/config.js';
import { HsmintError } from '../core/errors.js';
import { openKeyStore } from '../core/open.js';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AuditLog } from '../core/audit/log.js';
import { KeyCertifier } from '../core/ca/certifier.js';
import { fromPem } from '../core/ca/certificates.js';
import { signerFor } from '../core/ca/signer.js';
import type { KeyStore } from '../core/keys/keystore.js';
import { Authority, stateFiles } from './authority.js';
import { createRoutes } from './handlers.js';
import { createLogger } from './logger.js';
import { DaemonMetrics } from './metrics.js';
import { ApiServer } from './server.js';
import { native } from './native.js';
import { currentCaller, identifyPeer } from './peer.js';
import { listenOnFd, listenOnPath } from './socket.js';
import { Notifier, Watchdog, takeListenFd, watchdogMs } from './systemd.js';
import type { ReloadResponse } from '../core/protocol.js';

const DRAIN_TIMEOUT_MS = 10_000;
/** Without a watchdog, STATUS= is refreshed this often (health and the active key change). */
const STATUS_REFRESH_MS = 10_000;
/** The key timer wakes at least this often, so clock jumps and reloads are noticed. */
const MAX_KEY_TIMER_SECONDS = 60;

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
    report: (event) => logger.warn(event, String(event.event)),
    observeWrite: metrics.auditWrite,
  });
  return { log, keys: (await auditStore.list()).map((entry) => entry.publicJwk) };
}

async function start(
  config: Config,
  logger: Logger,
  flags: { allowBrokenAudit: boolean },
): Promise<void> {
  const startedAt = performance.now();
  const addon = native(); // fail at start, not on the first connection, when the addon is missing
  // Taken first, so the LISTEN_* variables are gone before anything else starts.
  const listenFd = takeListenFd();
  const notifier = new Notifier(addon.sdNotify, process.env, (error) =>
    logger.warn(
      { event: 'systemd.notify_failed', err: error },
      'systemd did not take a notification',
    ),
  );
  const { store, caStore, auditStore, token } = await openKeyStore(config);
  let authority: Authority;
  let audit: AuditLog;
  const metrics = new DaemonMetrics();
  try {
    const opened = await openAudit(config, auditStore, logger, flags.allowBrokenAudit, metrics);
    audit = opened.log;
    const certifier = config.ca ? await createCertifier(config, store, caStore, logger) : undefined;
    authority = await Authority.create({
      config,
      store,
      token,
      logger,
      state: stateFiles(config),
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
  if (config.policy.rules.length === 0) {
    logger.warn({ event: 'policy.empty' }, 'policy.rules is empty: every mint is refused');
  }

  // Reloads run one after another. A file that fails validation is refused with its errors
  // and the running config stays: a typo must never take the issuer down.
  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (): Promise<ReloadResponse> => {
    const attempt = reloading.then(async () => {
      notifier.reloading();
      try {
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
        authority.record({
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

  const server = new ApiServer(createRoutes(authority, { reload }), logger, {
    identify: identifyPeer,
    currentCaller,
    config: () => authority.settings,
    perUid: () => authority.limits,
    metrics,
  });
  try {
    if (listenFd === undefined)
      await listenOnPath(server.http, config.socket.path, config.socket.mode, config.socket.group);
    else await listenOnFd(server.http, listenFd);
  } catch (error) {
    await authority.close();
    throw error;
  }
  logger.info(
    {
      event: 'daemon.start',
      socket: listenFd === undefined ? config.socket.path : `fd ${listenFd} from systemd`,
      start_ms: Math.round(performance.now() - startedAt),
      issuer: config.issuer,
      alg: authority.activeKey.alg,
      kid: authority.activeKey.kid,
      hsm_token: token.label,
      rules: config.policy.rules.length,
    },
    'hsmintd is serving',
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
          probe: () => authority.probe(Math.max(1, Math.floor(interval / 2))),
          onTick: () => notifier.status(statusLine()),
        });
  watchdog?.start();
  const statusTimer =
    notifier.enabled && watchdog === undefined
      ? setInterval(() => notifier.status(statusLine()), STATUS_REFRESH_MS).unref()
      : undefined;

  // The key lifecycle runs on the daemon's own timer: nobody has to call an API to rotate.
  let keyTimer: NodeJS.Timeout | undefined;
  const scheduleKeys = () => {
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
  scheduleKeys();

  /** One line for `systemctl status`: health, the active key, and why when not ok. */
  function statusLine(): string {
    try {
      const health = authority.health();
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
    clearTimeout(keyTimer);
    await server.drain(DRAIN_TIMEOUT_MS);
    await audit.append({ event: 'daemon.stop', signal }).catch(() => undefined);
    await audit.close(); // flushes and seals the log with a final checkpoint
    await authority.close();
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
