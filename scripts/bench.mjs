#!/usr/bin/env node
// `npm run bench`: hsmint against its token's own limit and against a peer, side by side in one
// run, as ratios; never timed assertions in tests (these machines are shared and noisy).
//
// For each algorithm (ES256 in full; a shorter pass for EdDSA, PS256 and ES384), on fresh
// SoftHSM tokens:
//   raw      in-process pkcs11js signing on the token: one session synchronous, async with N
//            sessions, 2 worker threads; the best is the token's ceiling (bench/raw.mjs)
//   peer     the same signature through p11-kit server + p11-kit-client.so, one client
//            process, one session (bench/peer.mjs), when p11-kit is installed
//   mint     hsmintd over its Unix socket at concurrency 1, 16 and 64, audit on (the real
//            daemon) and off (the same classes without the log, bench/unaudited-server.mjs)
//   verify   POST /v1/tokens/verify over the socket at concurrency 16, and jose in-process
//            (the ceiling of any verifier written in Node)
// It prints a table and the ratios and, with --out FILE, writes the same as JSON.
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { Pool } from 'undici';
import { quantiles, runLoad } from './bench/load.mjs';
import { measurePeer } from './bench/peer.mjs';
import { measureRaw } from './bench/raw.mjs';
import { rssKb, softhsmInit, stopProcess } from './support/daemon.mjs';

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
const quick = values.quick === true;
/** Seconds per measurement, for ES256 and for the shorter pass of the other algorithms. */
const seconds = quick ? 2 : 10;
const shortSeconds = 3;
const otherAlgorithms = quick ? [] : ['EdDSA', 'PS256', 'ES384'];

/** A fresh token and config from `hsmint softhsm init`, with room for 64 callers of one uid. */
function makeToken(name, alg) {
  const dir = mkdtempSync(join(tmpdir(), `hsmint-bench-${name}-`));
  const { config } = softhsmInit(dir, ['--alg', alg, '--audience', 'api']);
  const text = readFileSync(config, 'utf8');
  const limits = '  max_connections_per_uid: 256\n  max_requests_per_uid: 256\n';
  if (!text.includes('  mode: "0600"\n')) throw new Error('unexpected config from softhsm init');
  let written = text.replace('  mode: "0600"\n', `  mode: "0600"\n${limits}`);
  if (values['audit-dir'] && name.startsWith('on'))
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
  return { cpu_s: ticks / 100, rss_mb: rssKb(pid) / 1024 };
}

const mintRequest = () => ({ method: 'POST', path: '/v1/tokens', body: '{"aud":"api"}' });
/** A batch call of BATCH mints, made by BATCH_CALLERS callers at once. */
const BATCH = 100;
const BATCH_CALLERS = 4;
const batchBody = JSON.stringify({
  requests: Array.from({ length: BATCH }, () => ({ aud: 'api' })),
});
const batchRequest = () => ({ method: 'POST', path: '/v1/tokens:batch', body: batchBody });
const refusedInBatch = (text) => JSON.parse(text).results.filter((result) => result.error).length;

/** One load over a server's socket, with that server's CPU and RSS. */
async function overSocket(server, socketPath, request, concurrency, duration, batch = {}) {
  await runLoad({ socketPath, request, concurrency, seconds: Math.min(1, duration), ...batch }); // warm-up
  const before = usage(server.pid);
  const started = performance.now();
  const result = await runLoad({ socketPath, request, concurrency, seconds: duration, ...batch });
  const elapsed = (performance.now() - started) / 1000;
  const after = usage(server.pid);
  return {
    ...result,
    server_cpu_percent: (100 * (after.cpu_s - before.cpu_s)) / elapsed,
    server_rss_mb: after.rss_mb,
  };
}

/** jose in-process: the fastest any Node verifier of these tokens can be. */
async function joseVerify(jwks, tokens, duration) {
  const keySet = createLocalJWKSet(jwks);
  const options = { algorithms: [jwks.keys[0].alg], audience: 'api' };
  const latencies = [];
  let errors = 0;
  const end = performance.now() + duration * 1000;
  const started = performance.now();
  for (let i = 0; performance.now() < end; i++) {
    const sent = performance.now();
    try {
      await jwtVerify(tokens[i % tokens.length], keySet, options);
      latencies.push(performance.now() - sent);
    } catch {
      errors++;
    }
  }
  const elapsed = (performance.now() - started) / 1000;
  return { ops_per_s: latencies.length / elapsed, ...quantiles(latencies), errors };
}

async function mintSome(socketPath, count) {
  const pool = new Pool('http://localhost', { socketPath, connections: 8 });
  try {
    return await Promise.all(
      Array.from({ length: count }, async () => {
        const response = await pool.request({
          ...mintRequest(),
          headers: { 'content-type': 'application/json' },
        });
        return JSON.parse(await response.body.text()).token;
      }),
    );
  } finally {
    await pool.close();
  }
}

async function jwksOf(socketPath) {
  const pool = new Pool('http://localhost', { socketPath });
  try {
    const response = await pool.request({ method: 'GET', path: '/v1/jwks' });
    return JSON.parse(await response.body.text());
  } finally {
    await pool.close();
  }
}

const results = [];
const record = (entry) => {
  results.push(entry);
  return entry;
};
const stat = (result) => ({
  ops_per_s: result.ops_per_s,
  p50_ms: result.p50_ms,
  p99_ms: result.p99_ms,
  max_ms: result.max_ms,
  errors: result.errors,
});

/** Every measurement for one algorithm. */
async function benchAlgorithm(alg, duration, concurrencies) {
  const tokens = { on: makeToken(`on-${alg}`, alg), off: makeToken(`off-${alg}`, alg) };
  const servers = {};
  try {
    const raw = await measureRaw({ config: tokens.off.config, alg, seconds: duration });
    for (const [mode, figures] of Object.entries(raw))
      if (mode !== 'best')
        record({ name: `raw ${mode}`, alg, concurrency: null, ...stat(figures) });
    const peer = await measurePeer({ config: tokens.off.config, alg, seconds: duration });
    if (!peer.skipped) record({ name: 'peer p11-kit', alg, concurrency: 1, ...stat(peer) });

    servers.on = await startServer('hsmintd', tokens.on, [
      join(root, 'dist/daemon/main.js'),
      '--config',
      tokens.on.config,
    ]);
    servers.off = await startServer('unaudited', tokens.off, [
      join(root, 'scripts/bench/unaudited-server.mjs'),
      tokens.off.config,
    ]);
    const mint = {};
    for (const concurrency of concurrencies) {
      // Alternating, so that machine noise hits both alike.
      for (const side of ['off', 'on']) {
        const result = await overSocket(
          servers[side],
          tokens[side].socket,
          mintRequest,
          concurrency,
          duration,
        );
        mint[`${side}_c${concurrency}`] = record({
          name: `mint audit ${side}`,
          alg,
          concurrency,
          ...stat(result),
          first_error: result.first_error,
          server_cpu_percent: result.server_cpu_percent,
          server_rss_mb: result.server_rss_mb,
        });
      }
    }
    const batched = await overSocket(
      servers.on,
      tokens.on.socket,
      batchRequest,
      BATCH_CALLERS,
      duration,
      { perCall: BATCH, failures: refusedInBatch },
    );
    mint.batch = record({
      name: `mint batch x${BATCH}`,
      alg,
      concurrency: BATCH_CALLERS,
      ...stat(batched),
      first_error: batched.first_error,
      server_cpu_percent: batched.server_cpu_percent,
      server_rss_mb: batched.server_rss_mb,
    });
    const minted = await mintSome(tokens.on.socket, 200);
    const verifyRequest = (() => {
      let next = 0;
      return () => ({
        method: 'POST',
        path: '/v1/tokens/verify',
        body: JSON.stringify({ token: minted[next++ % minted.length], aud: 'api' }),
      });
    })();
    const verify = record({
      name: 'verify',
      alg,
      concurrency: 16,
      ...stat(await overSocket(servers.on, tokens.on.socket, verifyRequest, 16, duration)),
    });
    const jose = record({
      name: 'jose verify in-process',
      alg,
      concurrency: 1,
      ...stat(await joseVerify(await jwksOf(tokens.on.socket), minted, duration)),
    });
    const rss = usage(servers.on.pid).rss_mb;
    return { raw, peer, mint, verify, jose, rss };
  } finally {
    for (const server of Object.values(servers)) await stopProcess(server);
    for (const token of Object.values(tokens)) rmSync(token.dir, { recursive: true, force: true });
  }
}

const ratio = (a, b) => (a && b ? a / b : null);
const started = performance.now();
const es256 = await benchAlgorithm('ES256', seconds, [1, 16, 64]);
const others = {};
for (const alg of otherAlgorithms) others[alg] = await benchAlgorithm(alg, shortSeconds, [16]);

const ratios = {
  mint_vs_raw: ratio(es256.mint.on_c16.ops_per_s, es256.raw.best.ops_per_s),
  mint_vs_peer: es256.peer.skipped
    ? null
    : ratio(es256.mint.on_c16.ops_per_s, es256.peer.ops_per_s),
  verify_vs_jose: ratio(es256.verify.ops_per_s, es256.jose.ops_per_s),
  batch_mint_vs_raw: ratio(es256.mint.batch.ops_per_s, es256.raw.best.ops_per_s),
  batch_mint_vs_peer: es256.peer.skipped
    ? null
    : ratio(es256.mint.batch.ops_per_s, es256.peer.ops_per_s),
  audit_on_vs_off_c16: ratio(es256.mint.on_c16.ops_per_s, es256.mint.off_c16.ops_per_s),
  ...(es256.mint.on_c64
    ? { audit_on_vs_off_c64: ratio(es256.mint.on_c64.ops_per_s, es256.mint.off_c64.ops_per_s) }
    : {}),
};
for (const [alg, figures] of Object.entries(others)) {
  ratios[`mint_vs_raw_${alg}`] = ratio(figures.mint.on_c16.ops_per_s, figures.raw.best.ops_per_s);
  ratios[`verify_vs_jose_${alg}`] = ratio(figures.verify.ops_per_s, figures.jose.ops_per_s);
}
const targets = {
  mint_vs_raw: { want: '>= 0.5', met: ratios.mint_vs_raw >= 0.5 },
  mint_vs_peer: {
    want: '>= 1.5',
    met: ratios.mint_vs_peer === null ? null : ratios.mint_vs_peer >= 1.5,
  },
  verify_vs_jose: { want: '>= 0.5', met: ratios.verify_vs_jose >= 0.5 },
  mint_p99_c16_ms: {
    want: '<= 10',
    value: es256.mint.on_c16.p99_ms,
    met: es256.mint.on_c16.p99_ms <= 10,
  },
  ...(es256.mint.on_c64
    ? {
        mint_p99_c64_ms: {
          want: '<= 50',
          value: es256.mint.on_c64.p99_ms,
          met: es256.mint.on_c64.p99_ms <= 50,
        },
      }
    : {}),
  daemon_rss_mb: { want: '<= 150', value: es256.rss, met: es256.rss <= 150 },
  errors: { want: '0', value: results.reduce((sum, entry) => sum + entry.errors, 0) },
};
targets.errors.met = targets.errors.value === 0;

const fmt = (value, digits = 0) =>
  value === null || value === undefined ? '-' : value.toFixed(digits);
const lines = [
  `hsmint bench${quick ? ' (quick)' : ''}: ${cpus().length} cores (${cpus()[0]?.model ?? '?'}), Node ${process.versions.node}, ${new Date().toISOString()}`,
  `${'measurement'.padEnd(26)}${'alg'.padEnd(7)}${'conc'.padStart(5)}${'ops/s'.padStart(9)}${'p50 ms'.padStart(9)}${'p99 ms'.padStart(9)}${'max ms'.padStart(9)}${'errors'.padStart(8)}${'cpu%'.padStart(7)}${'rss MB'.padStart(8)}`,
  ...results.map(
    (entry) =>
      `${entry.name.padEnd(26)}${entry.alg.padEnd(7)}${String(entry.concurrency ?? '-').padStart(5)}${fmt(entry.ops_per_s).padStart(9)}${fmt(entry.p50_ms, 2).padStart(9)}${fmt(entry.p99_ms, 2).padStart(9)}${fmt(entry.max_ms, 1).padStart(9)}${String(entry.errors).padStart(8)}${fmt(entry.server_cpu_percent).padStart(7)}${fmt(entry.server_rss_mb).padStart(8)}`,
  ),
  '',
  ...Object.entries(ratios).map(([name, value]) => `${name.padEnd(26)}${fmt(value, 3)}`),
  '',
  ...Object.entries(targets).map(
    ([name, target]) =>
      `target ${name.padEnd(19)}${String(target.want).padEnd(8)}${target.value === undefined ? '' : ` (${fmt(target.value, 1)})`} ${target.met === null ? 'not measured' : target.met ? 'met' : 'NOT met'}`,
  ),
  `took ${fmt((performance.now() - started) / 1000)} s`,
];
process.stdout.write(`${lines.join('\n')}\n`);
if (values.out)
  await writeFile(
    values.out,
    `${JSON.stringify(
      {
        date: new Date().toISOString(),
        machine: { cores: cpus().length, model: cpus()[0]?.model, node: process.versions.node },
        quick,
        seconds,
        ratios,
        targets,
        peer: es256.peer.skipped ? { skipped: es256.peer.skipped } : undefined,
        results,
      },
      null,
      2,
    )}\n`,
  );
if (targets.errors.value > 0) {
  process.stderr.write(
    `bench: ${targets.errors.value} requests failed; first: ${results.find((entry) => entry.first_error)?.first_error}\n`,
  );
  process.exitCode = 1;
}
