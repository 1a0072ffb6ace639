/**
 * Issue 9, soak and secrets: `scripts/soak.mjs --minutes 2`, the run that is part of the test
 * command. The real built daemon on a fresh SoftHSM token serves 64 clients (mint, verify,
 * jwks) while it is reloaded every 10 s and rotated every 15 s; the script fails unless no
 * answer is unexpected, every followed token verifies until its exp (by the daemon and by jose
 * against the JWKS) and is refused after it, memory grows by less than 10% after the warm-up,
 * and neither the PIN nor any minted token shows in the log, the audit and state files or the
 * daemon's /proc cmdline and environ. Here its exit code and its figures are held to that.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../integration/support/harness.js';

const MINUTES = 2;
/** The script's own budget (setup, two minutes of load, the search), with room to spare. */
const RUN_TIMEOUT_MS = 220_000;

interface SoakReport {
  minutes: number;
  clients: number;
  load_s: number;
  requests: Record<'mint' | 'verify' | 'jwks' | 'check_verify' | 'rotate' | 'total', number>;
  errors: { total: number; by_kind: Record<string, number>; first: string[] };
  rotations: Array<{ at_s: number; kid: string }>;
  reloads: { sent: number; applied: number; failed: number };
  tokens: {
    minted: number;
    tracked: number;
    checked_until_exp: number;
    checked_across_rotation: number;
    refused_after_exp: number;
    daemon_checks: number;
    offline_checks: number;
  };
  rss: { warm_kb: number; end_kb: number; growth_percent: number; samples: unknown[] };
  secrets: {
    pin_length: number;
    pin_meaningful: boolean;
    tokens_searched: number;
    sources: string[];
    bytes_searched: number;
    self_check: { pin: number; token: number; token_pattern: number };
    hits: { pin: number; token: number; token_pattern: number };
    hits_total: number;
  };
  checks: Record<string, boolean>;
  passed: boolean;
}

describe(`npm run soak -- --minutes ${MINUTES}`, () => {
  let dir: string;
  let exit: { code: number; stdout: string; stderr: string };
  let report: SoakReport;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hsmint-soak-test-'));
    const out = join(dir, 'soak.json');
    exit = await new Promise((resolve) => {
      execFile(
        process.execPath,
        [join(ROOT, 'scripts/soak.mjs'), '--minutes', String(MINUTES), '--out', out],
        { cwd: ROOT, timeout: RUN_TIMEOUT_MS, killSignal: 'SIGTERM', maxBuffer: 16 << 20 },
        (error, stdout, stderr) =>
          resolve({
            code: error ? (typeof error.code === 'number' ? error.code : -1) : 0,
            stdout,
            stderr,
          }),
      );
    });
    report = JSON.parse(await readFile(out, 'utf8')) as SoakReport;
  }, RUN_TIMEOUT_MS + 20_000);
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('passes every check and exits 0', () => {
    // The summary names the failed check and the first errors.
    expect(exit.code, `${exit.stdout}\n${exit.stderr}`).toBe(0);
    expect(report.passed).toBe(true);
    expect(Object.entries(report.checks).filter(([, passed]) => !passed)).toEqual([]);
    expect(Object.keys(report.checks).sort()).toEqual([
      'daemon_stayed_up',
      'memory_growth_under_10_percent',
      'no_unexpected_errors',
      'ran_to_the_end',
      'reloads_applied',
      'rotations_every_15s',
      'secrets_never_leak',
      'tokens_verify_until_exp',
    ]);
  });

  it('ran the whole time under load from 64 clients, with no unexpected answer', () => {
    expect(report.clients).toBe(64);
    expect(report.load_s).toBeGreaterThanOrEqual(MINUTES * 60 - 1);
    expect(report.errors).toEqual({ total: 0, by_kind: {}, first: [] });
    // Floors far below what a loaded 2-core machine does (about 1,000 requests a second).
    expect(report.requests.total).toBeGreaterThan(10_000);
    expect(report.requests.mint).toBeGreaterThan(5_000);
    expect(report.requests.verify).toBeGreaterThan(1_000);
    expect(report.requests.jwks).toBeGreaterThan(300);
  });

  it('rotated the key at least 4 times and applied at least 6 reloads', () => {
    expect(report.rotations.length).toBeGreaterThanOrEqual(4);
    expect(new Set(report.rotations.map((rotation) => rotation.kid)).size).toBe(
      report.rotations.length,
    );
    expect(report.reloads.sent).toBeGreaterThanOrEqual(6);
    expect(report.reloads.applied).toBe(report.reloads.sent);
    expect(report.reloads.failed).toBe(0);
  });

  it('followed tokens until their exp, across rotations, by the daemon and by jose', () => {
    const { tokens } = report;
    expect(tokens.checked_until_exp).toBeGreaterThan(0);
    expect(tokens.checked_across_rotation).toBeGreaterThan(0);
    expect(tokens.refused_after_exp).toBe(tokens.tracked);
    expect(tokens.offline_checks).toBe(tokens.daemon_checks);
    expect(tokens.daemon_checks).toBeGreaterThan(tokens.tracked);
  });

  it('kept the daemon memory growth after the warm-up under 10%', () => {
    expect(report.rss.samples.length).toBeGreaterThan(20);
    expect(report.rss.warm_kb).toBeGreaterThan(0);
    expect(report.rss.growth_percent).toBeLessThan(10);
  });

  it('found neither the PIN nor any minted token anywhere, with a search that finds plants', () => {
    const { secrets } = report;
    expect(secrets.hits).toEqual({ pin: 0, token: 0, token_pattern: 0 });
    expect(secrets.self_check).toEqual({ pin: 1, token: 2, token_pattern: 1 });
    expect(secrets.pin_meaningful).toBe(true);
    expect(secrets.pin_length).toBeGreaterThanOrEqual(12);
    expect(secrets.tokens_searched).toBe(report.tokens.minted);
    expect(secrets.sources.some((source) => /^\/proc\/\d+\/cmdline$/.test(source))).toBe(true);
    expect(secrets.sources.some((source) => /^\/proc\/\d+\/environ$/.test(source))).toBe(true);
    expect(secrets.sources.some((source) => source.endsWith('hsmintd.log'))).toBe(true);
    expect(secrets.sources.some((source) => /\/audit-\d+\.jsonl$/.test(source))).toBe(true);
    expect(secrets.sources.some((source) => source.endsWith('keys.json'))).toBe(true);
  });
});
