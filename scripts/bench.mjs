#!/usr/bin/env node
// `npm run bench`: measurements as ratios side by side in one run, never as timed test
// assertions. This first part measures what the audit log costs a mint: the same authority,
// on the same SoftHSM token, with the audit log on (group commit + fdatasync on disk) and off,
// at concurrency 16, alternating rounds so that machine noise hits both alike.
import { mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { pino } from 'pino';

const root = join(import.meta.dirname, '..');
const dist = (path) => import(join(root, 'dist', path));
const { values } = parseArgs({ options: { quick: { type: 'boolean' }, out: { type: 'string' } } });
const seconds = values.quick ? 3 : 10;
const rounds = values.quick ? 2 : 4;
const concurrency = 16;

const { loadConfig } = await dist('core/config.js');
const { openKeyStore } = await dist('core/open.js');
const { Authority } = await dist('daemon/authority.js');
const { AuditLog } = await dist('core/audit/log.js');
const { signerFor } = await dist('core/ca/signer.js');

const dir = mkdtempSync(join(tmpdir(), 'hsmint-bench-'));
try {
  execFileSync(
    process.execPath,
    [
      join(root, 'dist/cli/main.js'),
      'softhsm',
      'init',
      '--dir',
      dir,
      '--audience',
      'api',
      '--json',
    ],
    { stdio: 'pipe' },
  );
  const config = loadConfig(join(dir, 'hsmint.yaml'));
  const { store, auditStore, token } = await openKeyStore(config);
  const auditKey = await auditStore.generate(config.keys.algorithm);
  const audit = await AuditLog.open({
    dir: join(dir, 'audit'),
    signer: signerFor(auditStore, auditKey),
    checkpointEvery: {
      records: config.audit.checkpointEvery,
      seconds: config.audit.checkpointInterval,
    },
    segmentBytes: config.audit.segmentSize,
  });
  const logger = pino({ level: 'silent' });
  const caller = {
    pid: process.pid,
    uid: process.getuid(),
    gid: process.getgid(),
    user: 'root',
    group: 'root',
    groups: ['root'],
    verified: true,
  };
  const withAudit = await Authority.create({ config, store, token, logger, audit });
  const withoutAudit = await Authority.create({ config, store, token, logger });

  async function measure(authority) {
    const latencies = [];
    const end = performance.now() + seconds * 1000;
    let errors = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < end) {
          const started = performance.now();
          try {
            await authority.mint({ aud: 'api' }, caller, authority.settings);
            latencies.push(performance.now() - started);
          } catch {
            errors++;
          }
        }
      }),
    );
    latencies.sort((a, b) => a - b);
    const at = (q) =>
      latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
    return { ops_per_s: latencies.length / seconds, p50_ms: at(0.5), p99_ms: at(0.99), errors };
  }

  await measure(withoutAudit); // warm-up
  const results = { on: [], off: [] };
  for (let round = 0; round < rounds; round++) {
    results.off.push(await measure(withoutAudit));
    results.on.push(await measure(withAudit));
  }
  const mean = (list, key) => list.reduce((sum, item) => sum + item[key], 0) / list.length;
  const summary = {
    alg: config.keys.algorithm,
    concurrency,
    seconds_per_round: seconds,
    rounds,
    audit_off: {
      ops_per_s: mean(results.off, 'ops_per_s'),
      p50_ms: mean(results.off, 'p50_ms'),
      p99_ms: mean(results.off, 'p99_ms'),
      errors: mean(results.off, 'errors'),
    },
    audit_on: {
      ops_per_s: mean(results.on, 'ops_per_s'),
      p50_ms: mean(results.on, 'p50_ms'),
      p99_ms: mean(results.on, 'p99_ms'),
      errors: mean(results.on, 'errors'),
    },
  };
  summary.ratios = { audit_on_vs_off: summary.audit_on.ops_per_s / summary.audit_off.ops_per_s };
  const row = (name, r) =>
    `${name.padEnd(12)} ${r.ops_per_s.toFixed(0).padStart(8)} ops/s   p50 ${r.p50_ms.toFixed(2)} ms   p99 ${r.p99_ms.toFixed(2)} ms   errors ${r.errors}`;
  process.stdout.write(
    [
      `mint in-process on SoftHSM, ${summary.alg}, concurrency ${concurrency}, ${rounds} alternating rounds of ${seconds} s`,
      row('audit off', summary.audit_off),
      row('audit on', summary.audit_on),
      `audit on / off: ${(summary.ratios.audit_on_vs_off * 100).toFixed(1)}%`,
      '',
    ].join('\n'),
  );
  if (values.out) await writeFile(values.out, `${JSON.stringify(summary, null, 2)}\n`);
  await audit.close();
  await store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
