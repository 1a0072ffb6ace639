/**
 * `npm run bench -- --quick` as a smoke test: it must finish and write every figure, with no
 * error under load. Speeds are never asserted here (shared, noisy machines): they are ratios
 * for people to read, in BENCHMARKS.md.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './support/harness.js';

const run = promisify(execFile);

interface Entry {
  name: string;
  alg: string;
  concurrency: number | null;
  ops_per_s: number;
  p50_ms: number;
  p99_ms: number;
  errors: number;
}

describe('npm run bench -- --quick', () => {
  let dir: string;
  let report: { ratios: Record<string, number | null>; results: Entry[] };
  let stdout: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hsmint-bench-test-'));
    const out = join(dir, 'bench.json');
    ({ stdout } = await run(
      process.execPath,
      [join(ROOT, 'scripts/bench.mjs'), '--quick', '--out', out],
      {
        cwd: ROOT,
        timeout: 170_000,
      },
    ));
    report = JSON.parse(await readFile(out, 'utf8'));
  }, 180_000);
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes the three headline ratios as positive numbers', () => {
    for (const name of [
      'mint_vs_raw',
      'mint_vs_peer',
      'verify_vs_jose',
      'audit_on_vs_off_c16',
      'batch_mint_vs_raw',
    ])
      expect(report.ratios[name], name).toBeGreaterThan(0);
  });

  it('has one entry per measurement, each with its figures and no error', () => {
    const names = report.results.map(
      (entry) => `${entry.name}${entry.concurrency === null ? '' : ` c${entry.concurrency}`}`,
    );
    for (const expected of [
      'raw sync_1',
      'raw async_n',
      'raw workers_2',
      'peer p11-kit c1',
      'mint audit on c1',
      'mint audit off c1',
      'mint audit on c16',
      'mint audit off c16',
      'mint audit on c64',
      'mint audit off c64',
      'mint batch x100 c4',
      'verify c16',
      'jose verify in-process c1',
    ])
      expect(names).toContain(expected);
    for (const entry of report.results) {
      expect(entry.alg).toBe('ES256');
      expect(entry.ops_per_s, entry.name).toBeGreaterThan(0);
      expect(entry.p99_ms, entry.name).toBeGreaterThanOrEqual(entry.p50_ms);
      expect(entry.errors, entry.name).toBe(0);
    }
  });

  it('prints the table and the targets for people', () => {
    expect(stdout).toMatch(/^measurement\s+alg/m);
    expect(stdout).toMatch(/^target mint_vs_raw\s/m);
  });
});
