#!/usr/bin/env node
// `npm run bench`: measurements as ratios side by side in one run, never as timed test
// assertions (these machines are shared and noisy).
//
// This part measures what the audit log costs a mint, the way callers see it: the real
// hsmintd (audit on: group commit, every record on disk before its answer) against the same
// classes wired without the log (scripts/bench/unaudited-server.mjs), each on its own fresh
// SoftHSM token, over their Unix sockets, at concurrency 16 and 64, in alternating rounds so
// that machine noise hits both alike. Both log at the configured level to a file.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import { runLoad } from './bench/load.mjs';

const root = join(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    out: { type: 'string' },
    // Where hsmintd's audit log goes (default: under its temp state dir): to compare disks,
    // e.g. a tmpfs, where a sync costs nothing, against the real one.
    'audit-dir': { type: 'string' },
  },
});
const seconds = values.quick ? 3 : 10;
const rounds = values.quick ? 2 : 3;
const concurrencies = values.quick ? [16] : [16, 64];

/** A fresh token and config from `hsmint softhsm init`, with room for 64 callers of one uid. */
function makeToken(name) {
  const dir = mkdtempSync(join(tmpdir(), `hsmint-bench-${name}-`));
  execFileSync(
    process.execPath,
    [join(root, 'dist/cli/main.js'), 'softhsm', 'init', '--dir', dir, '--audience', 'api'],
    { stdio: 'pipe' },
  );
  const config = join(dir, 'hsmint.yaml');
  const text = readFileSync(config, 'utf8');
  const limits = '  max_connections_per_uid: 256\n  max_requests_per_uid: 256\n';
  if (!text.includes('  mode: "0600"\n')) throw new Error('unexpected config from softhsm init');
  let written = text.replace('  mode: "0600"\n', `  mode: "0600"\n${limits}`);
  if (values['audit-dir'] && name === 'on')
    written += `audit:\n  dir: ${JSON.stringify(mkdtempSync(join(values['audit-dir'], 'hsmint-audit-')))}\n`;
  writeFileSync(config, written);
  return { dir, config, socket: join(dir, 'hsmint.sock') };
}

async function healthy(socketPath) {
  const pool = new Pool('http://localhost', { socketPath });
  try {
    const response = await pool.request({ method: 'GET', path: '/v1/health' });
    return JSON.parse(await response.body.text()).status === 'ok';
  } catch {
    return false;
  } finally {
    await pool.close();
  }
}

async function startServer(name, token, args) {
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', openSync(join(token.dir, `${name}.log`), 'w'), 'inherit'],
  });
  let exited;
  child.once('exit', (code) => (exited = code));
  for (let waited = 0; waited < 15_000; waited += 100) {
    if (exited !== undefined) throw new Error(`${name} exited with ${exited}; see its log`);
    if (await healthy(token.socket)) return child;
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error(`${name} did not become healthy within 15 s`);
}

/** CPU seconds (user + system, all threads) and resident memory of a process, from /proc. */
function usage(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
  return { cpu_s: ticks / 100, rss_mb: rss / 1024 };
}

const mintRequest = () => ({ method: 'POST', path: '/v1/tokens', body: '{"aud":"api"}' });

async function measure(server, socketPath, concurrency) {
  const before = usage(server.pid);
  const started = performance.now();
  const result = await runLoad({ socketPath, request: mintRequest, concurrency, seconds });
  const elapsed = (performance.now() - started) / 1000;
  const after = usage(server.pid);
  return {
    ...result,
    server_cpu_percent: (100 * (after.cpu_s - before.cpu_s)) / elapsed,
    server_rss_mb: after.rss_mb,
  };
}

const mean = (list, key) => list.reduce((sum, item) => sum + item[key], 0) / list.length;

const tokens = { on: makeToken('on'), off: makeToken('off') };
const servers = {};
try {
  servers.on = await startServer('hsmintd', tokens.on, [
    join(root, 'dist/daemon/main.js'),
    '--config',
    tokens.on.config,
  ]);
  servers.off = await startServer('unaudited', tokens.off, [
    join(root, 'scripts/bench/unaudited-server.mjs'),
    tokens.off.config,
  ]);
  const results = [];
  const ratios = {};
  const lines = [
    `mint over the Unix socket, ES256, ${rounds} alternating rounds of ${seconds} s per concurrency`,
  ];
  for (const concurrency of concurrencies) {
    // Warm-up: JIT, sessions, keep-alive connections.
    for (const side of ['off', 'on'])
      await runLoad({
        socketPath: tokens[side].socket,
        request: mintRequest,
        concurrency,
        seconds: 1,
      });
    const rows = { on: [], off: [] };
    for (let round = 0; round < rounds; round++)
      for (const side of ['off', 'on'])
        rows[side].push(await measure(servers[side], tokens[side].socket, concurrency));
    for (const side of ['off', 'on']) {
      const list = rows[side];
      const entry = {
        name: `mint audit ${side}`,
        alg: 'ES256',
        concurrency,
        ops_per_s: mean(list, 'ops_per_s'),
        p50_ms: mean(list, 'p50_ms'),
        p99_ms: mean(list, 'p99_ms'),
        max_ms: Math.max(...list.map((item) => item.max_ms)),
        errors: list.reduce((sum, item) => sum + item.errors, 0),
        first_error: list.find((item) => item.first_error)?.first_error,
        server_cpu_percent: mean(list, 'server_cpu_percent'),
        server_rss_mb: Math.max(...list.map((item) => item.server_rss_mb)),
        rounds: list.map((item) => Math.round(item.ops_per_s)),
      };
      results.push(entry);
      lines.push(
        `c${String(concurrency).padEnd(3)} audit ${side.padEnd(3)} ${entry.ops_per_s.toFixed(0).padStart(6)} mints/s   p50 ${entry.p50_ms.toFixed(2)} ms   p99 ${entry.p99_ms.toFixed(2)} ms   max ${entry.max_ms.toFixed(1)} ms   cpu ${entry.server_cpu_percent.toFixed(0)}%   rss ${entry.server_rss_mb.toFixed(0)} MB   errors ${entry.errors}   rounds ${entry.rounds.join(' ')}`,
      );
    }
    const ratio = mean(rows.on, 'ops_per_s') / mean(rows.off, 'ops_per_s');
    ratios[`audit_on_vs_off_c${concurrency}`] = ratio;
    lines.push(`c${concurrency} audit on / off: ${(ratio * 100).toFixed(1)}%`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  const errors = results.reduce((sum, entry) => sum + entry.errors, 0);
  if (values.out)
    await writeFile(
      values.out,
      `${JSON.stringify({ date: new Date().toISOString(), seconds, rounds, ratios, results }, null, 2)}\n`,
    );
  if (errors > 0) {
    process.stderr.write(
      `bench: ${errors} requests failed; first: ${results.find((entry) => entry.first_error)?.first_error}\n`,
    );
    process.exitCode = 1;
  }
} finally {
  for (const server of Object.values(servers)) server.kill('SIGTERM');
  await sleep(1500);
  for (const token of Object.values(tokens)) rmSync(token.dir, { recursive: true, force: true });
}
