/**
 * Issue 9, slow and idle clients: 1,000 connections that drip their headers a byte at a time
 * or send nothing are cut by the daemon within a few seconds of its headers timeout, while a
 * normal client keeps minting; and the daemon keeps no file descriptor for any of them, though
 * none of them ever closes its own side.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { HsmintClient } from '../../core/client/index.js';
import { DEFAULT_LIMITS } from '../../daemon/server.js';
import {
  makeToken,
  startDaemon,
  type RunningDaemon,
  type TestToken,
} from '../integration/support/harness.js';
import {
  openFds,
  pollUntil,
  quantile,
  startAttack,
  within,
  type Attack,
} from './support/slow-connections.js';

const SLOW = 500;
const IDLE = 500;
const HEADERS_TIMEOUT_MS = DEFAULT_LIMITS.headersTimeoutMs;
/** The "within a few seconds of their timeout". */
const CUT_SLACK_MS = 3_000;
/** Descriptors the daemon may open or drop on its own meanwhile (log, audit segment, threads). */
const FD_SLACK = 4;
/** The normal client mints alone this long before the attack starts. */
const CONTROL_MS = 1_500;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('slow and idle clients', () => {
  let token: TestToken | undefined;
  let daemon: RunningDaemon | undefined;
  const attacks: Attack[] = [];

  beforeAll(async () => {
    token = await makeToken('ES256', (config) => {
      // Room for every hostile connection, the minting client and the harness's own: this
      // tests the timeouts, not the per-uid connection limit (the last case does that).
      config['socket'] = { ...config['socket'], max_connections_per_uid: SLOW + IDLE + 64 };
    });
    daemon = await startDaemon(token);
  });

  afterAll(async () => {
    await Promise.all(attacks.map((attack) => attack.stop()));
    await daemon?.stop();
    await token?.cleanup();
  });

  it('cuts 1,000 slow and idle connections on time while a normal client keeps minting', async () => {
    const pid = daemon!.process.pid!;
    const minter = new HsmintClient({ socketPath: token!.socket, maxConnections: 1 });
    /** Each mint's start and latency (ms, performance.now()). */
    const mints: Array<{ at: number; ms: number }> = [];
    const failures: string[] = [];
    let minting = true;
    const mintLoop = async () => {
      while (minting) {
        const at = performance.now();
        try {
          await minter.mint({ aud: 'api', ttl: '1m' });
          mints.push({ at, ms: performance.now() - at });
        } catch (error) {
          failures.push(String((error as { code?: string }).code ?? error));
        }
      }
    };
    try {
      // Warm the minting path and its kept-alive connection before counting descriptors.
      for (let i = 0; i < 5; i++) await minter.mint({ aud: 'api' });
      const baseline = openFds(pid);
      const minted = mintLoop();
      // The same loop before the attack: when the p99 bound fails, this says whether the
      // machine itself was slow.
      await sleep(CONTROL_MS);

      const attackedAt = performance.now();
      const attack = startAttack({
        socketPath: token!.socket,
        slow: SLOW,
        idle: IDLE,
        openOverMs: 1_000,
      });
      attacks.push(attack);
      const connected = await within(attack.connected, 5_000);
      expect(connected).toMatchObject({ connected: SLOW + IDLE, failed: 0 });
      // They really reached the daemon: it held a descriptor for each at once.
      let peak = 0;
      await pollUntil(() => (peak = Math.max(peak, openFds(pid))) >= baseline + SLOW + IDLE, 2_000);
      expect(peak).toBeGreaterThanOrEqual(baseline + SLOW + IDLE);

      const outcomes = await within(attack.ended, HEADERS_TIMEOUT_MS + CUT_SLACK_MS + 1_000);
      // The daemon lets go of every descriptor though the attacker still holds its side open.
      const released = await pollUntil(() => openFds(pid) <= baseline + FD_SLACK, 3_000);
      const fdsAfter = openFds(pid);
      minting = false;
      await minted;

      expect(outcomes, 'the daemon did not end every connection').toBeDefined();
      const lifetimes = outcomes!.map((outcome) => outcome.lifetimeMs ?? Infinity);
      expect(Math.min(...lifetimes)).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS);
      expect(Math.max(...lifetimes)).toBeLessThanOrEqual(HEADERS_TIMEOUT_MS + CUT_SLACK_MS);
      // Each was told why before the daemon closed it.
      const told = outcomes!.filter(
        (outcome) =>
          outcome.status === 408 && outcome.code === 'ERR_REQUEST_TIMEOUT' && !outcome.error,
      );
      expect(told).toHaveLength(SLOW + IDLE);
      // The slow ones were dripping bytes until they were cut, not idle under another name.
      const slow = outcomes!.filter((outcome) => outcome.kind === 'slow');
      expect(slow).toHaveLength(SLOW);
      expect(Math.min(...slow.map((outcome) => outcome.sent))).toBeGreaterThanOrEqual(8);
      expect(released, `daemon fds: ${baseline} before, ${fdsAfter} after`).toBe(true);

      expect(failures).toEqual([]);
      const before = mints.filter((mint) => mint.at < attackedAt).map((mint) => mint.ms);
      const during = mints.filter((mint) => mint.at >= attackedAt).map((mint) => mint.ms);
      const p99 = quantile(during, 0.99);
      expect(during.length).toBeGreaterThanOrEqual(300);
      expect(
        p99,
        `mint p99 ${p99.toFixed(1)} ms over ${during.length} mints under attack; ` +
          `${quantile(before, 0.99).toFixed(1)} ms over ${before.length} just before it`,
      ).toBeLessThan(50);
      expect((await minter.health()).status).toBe('ok');
    } finally {
      minting = false;
      minter.close();
      await Promise.all(attacks.map((attack) => attack.stop()));
    }
  }, 30_000);

  it('lets go of connections refused over the per-uid limit, though they never close', async () => {
    const pid = daemon!.process.pid!;
    const limit = 4;
    const document = parse(await readFile(token!.config, 'utf8')) as Record<string, any>;
    document['socket']['max_connections_per_uid'] = limit;
    await writeFile(token!.config, stringify(document), { mode: 0o600 });
    const reloads = () => daemon!.logs().filter((line) => line['event'] === 'config.reload').length;
    const before = reloads();
    process.kill(pid, 'SIGHUP');
    expect(await pollUntil(() => reloads() > before, 5_000)).toBe(true);
    daemon!.client.close(); // its kept-alive connection would count against the limit
    await sleep(200);
    const baseline = openFds(pid);
    const started = performance.now();

    const held = startAttack({ socketPath: token!.socket, slow: 0, idle: limit, openOverMs: 0 });
    attacks.push(held);
    await within(held.connected, 2_000);
    await pollUntil(() => openFds(pid) >= baseline + limit, 1_000, 20);
    await sleep(100);
    const withHeld = openFds(pid);
    const refused = startAttack({ socketPath: token!.socket, slow: 0, idle: 40, openOverMs: 0 });
    attacks.push(refused);

    const outcomes = await within(refused.ended, 2_000);
    expect(outcomes, 'the daemon did not end every refused connection').toBeDefined();
    for (const outcome of outcomes!) {
      expect(outcome.status).toBe(429);
      expect(outcome.code).toBe('ERR_TOO_MANY_CONNECTIONS');
    }
    // Long before the headers timeout would cut anything, only the held connections remain.
    const released = await pollUntil(() => openFds(pid) <= withHeld + FD_SLACK, 2_500);
    expect(released, `daemon fds: ${withHeld} with the held ones, ${openFds(pid)} now`).toBe(true);
    expect(performance.now() - started).toBeLessThan(HEADERS_TIMEOUT_MS);
  }, 20_000);
});
