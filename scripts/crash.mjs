#!/usr/bin/env node
// `npm run crash`: kill -9 hsmintd at random moments under mint load, again and again, on one
// SoftHSM token, state folder and audit log, and check after each restart and at the end that
// nothing acknowledged was lost:
//   - the daemon starts again after every kill (a torn audit tail is cut: `audit.recover`);
//   - the keys agree: one active key, the daemon's keys are exactly the keys on the token and
//     in the JWKS, and every acknowledged token that has not expired still verifies;
//   - every acknowledged mint (a 201 whose token was fully received) has its `mint` record,
//     and `hsmint audit verify --sealed` accepts the chain;
//   - a `mint` record without an answer is only ever one of the requests in flight at a kill
//     (written, not answered), never more.
// Some kills land while an emergency rotation (POST /v1/keys/rotate) or a SIGHUP reload is in
// flight. Options: --kills N (default 50), --out FILE (the summary as JSON), --keep (keep the
// temp folder: token, state, audit log, daemon log), --seed N (the schedule of kills). Prints
// a summary and exits 1 when any check fails, keeping the folder to look at.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, promisify } from 'node:util';
import { Pool } from 'undici';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../dist/core/config.js';
import { openKeyStore } from '../dist/core/open.js';
import { softhsmInit, stopProcess } from './support/daemon.mjs';

const root = join(import.meta.dirname, '..');
const cli = join(root, 'dist/cli/main.js');
const daemonMain = join(root, 'dist/daemon/main.js');
const { values } = parseArgs({
  options: {
    kills: { type: 'string', default: '50' },
    out: { type: 'string' },
    keep: { type: 'boolean' },
    // The schedule of kills (moments, rotations, reloads) is drawn from this; the timing of
    // the processes themselves is not reproducible.
    seed: { type: 'string' },
  },
});
const kills = Number(values.kills);
if (!Number.isSafeInteger(kills) || kills < 1) {
  process.stderr.write('crash: --kills must be a positive integer\n');
  process.exit(2);
}
const seed = values.seed === undefined ? Date.now() % 2 ** 31 : Number(values.seed);
if (!Number.isSafeInteger(seed)) {
  process.stderr.write('crash: --seed must be an integer\n');
  process.exit(2);
}

/** Concurrent minters, each sending its next mint as soon as the last is answered. */
const MINTERS = 16;
/** A kill lands uniformly this long after the load starts. */
const KILL_AFTER_MS = { min: 50, max: 1500 };
/** A clean stop, the whole audit check, then a fresh start, every this many kills. */
const AUDIT_CHECK_EVERY = 10;
/** Token lifetime: short, so that retiring keys are destroyed (under kills too) within a run. */
const TTL_SECONDS = 30;
const START_TIMEOUT_MS = 30_000;
/** After each restart, the tokens answered last before the kill that are verified again. */
const VERIFIED_PER_RESTART = 200;

/** mulberry32: small, seeded, good enough to spread kill moments. */
function seeded(state) {
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
const random = seeded(seed);
const between = (min, max) => min + Math.floor(random() * (max - min + 1));

const dir = mkdtempSync(join(tmpdir(), 'hsmint-crash-'));
const hsmint = (args) =>
  promisify(execFile)(process.execPath, [cli, ...args], { encoding: 'utf8' }).then(
    ({ stdout }) => ({ code: 0, stdout }),
    (error) => ({ code: typeof error.code === 'number' ? error.code : 1, stdout: error.stdout }),
  );

/**
 * A fresh token from `hsmint softhsm init`, with short token lifetimes, and small audit
 * segments and frequent checkpoints, so that kills also land in segment changes and seals.
 */
function makeToken() {
  const summary = softhsmInit(dir, ['--alg', 'ES256', '--audience', 'api']);
  const document = parse(readFileSync(summary.config, 'utf8'));
  document.tokens = {
    ...document.tokens,
    default_ttl: `${TTL_SECONDS}s`,
    max_ttl: `${TTL_SECONDS}s`,
    clock_skew: '5s',
  };
  document.audit = { checkpoint_every: 100, segment_size: 64 * 1024 };
  writeFileSync(summary.config, stringify(document), { mode: 0o600 });
  return {
    config: summary.config,
    socket: summary.socket,
    auditDir: join(dir, 'state', 'audit'),
    auditKeys: join(dir, 'audit-keys.json'),
  };
}

const failures = [];
const checks = {
  restarts_after_every_kill: true,
  acknowledged_mints_in_log: true,
  chain_verifies: true,
  keys_consistent: true,
  acknowledged_tokens_verify: true,
  no_unexplained_mint_records: true,
  mints_never_refused: true,
};
function fail(check, message) {
  checks[check] = false;
  failures.push(`${check}: ${message}`);
  process.stderr.write(`crash: FAILED ${check}: ${message}\n`);
}

async function request(pool, method, path, body) {
  const response = await pool.request({
    method,
    path,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await response.body.text();
  return { status: response.statusCode, json: text ? JSON.parse(text) : undefined };
}

/** The daemons running now: stopped with this script when it is interrupted (or timed out). */
const daemons = new Set();
for (const signal of ['SIGINT', 'SIGTERM'])
  process.once(signal, () => {
    for (const child of daemons) child.kill('SIGKILL');
    process.stderr.write(`crash: ${signal}: stopped; files kept in ${dir}\n`);
    process.exit(1);
  });

/** hsmintd on the token, once GET /v1/health says ok; undefined when it does not get there. */
async function startDaemon(token, logFd) {
  const child = spawn(process.execPath, [daemonMain, '--config', token.config], {
    stdio: ['ignore', logFd, logFd],
  });
  daemons.add(child);
  child.once('exit', () => daemons.delete(child));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const admin = new Pool('http://localhost', { socketPath: token.socket, connections: 2 });
  const deadline = performance.now() + START_TIMEOUT_MS;
  while (performance.now() < deadline && child.exitCode === null && child.signalCode === null) {
    try {
      const health = await request(admin, 'GET', '/v1/health');
      if (health.json?.status === 'ok') return { child, exited, admin };
    } catch {
      // Not listening yet.
    }
    await sleep(50);
  }
  child.kill('SIGKILL');
  await exited;
  await admin.destroy();
  return undefined;
}

async function stopDaemon(daemon) {
  await daemon.admin.close();
  await stopProcess(daemon.child, 20_000);
}

/**
 * MINTERS callers mint until the daemon dies under them. `acknowledged` gets every mint
 * answered 201 with a whole body; `inFlight()` counts the mints sent and not yet answered.
 */
function mintLoad(socketPath, acknowledged) {
  const pool = new Pool('http://localhost', { socketPath, connections: MINTERS, pipelining: 1 });
  let inFlight = 0;
  let stopped = false;
  const refused = [];
  const workers = Array.from({ length: MINTERS }, async () => {
    while (!stopped) {
      inFlight++;
      try {
        const answer = await request(pool, 'POST', '/v1/tokens', { aud: 'api' });
        if (answer.status === 201) {
          const { jti, kid, token, exp } = answer.json;
          acknowledged.push({ jti, kid, token, exp });
        } else refused.push(`${answer.status} ${JSON.stringify(answer.json)}`);
      } catch {
        return; // the daemon died under this mint: it was never acknowledged
      } finally {
        inFlight--;
      }
    }
  });
  return {
    inFlight: () => inFlight,
    refused,
    async stop() {
      stopped = true;
      await Promise.all(workers);
      await pool.destroy();
    },
  };
}

/** Kills the daemon at a random moment of a mint load, sometimes mid-rotation or mid-reload. */
async function loadAndKill(daemon, token, run, label) {
  const draw = random();
  const action = draw < 0.2 ? 'rotate' : draw < 0.4 ? 'reload' : 'none';
  // An action starts at a random moment of the load and the kill follows within 1.5 s: a
  // rotation under this load takes from a few hundred ms to over a second, so some are
  // answered before the kill and most are caught in their middle.
  const actionAt = action === 'none' ? 0 : between(0, KILL_AFTER_MS.max);
  const killAfter =
    action === 'none'
      ? between(KILL_AFTER_MS.min, KILL_AFTER_MS.max)
      : actionAt + between(0, KILL_AFTER_MS.max);
  const load = mintLoad(token.socket, run.acknowledged);
  await sleep(actionAt);
  let rotation;
  if (action === 'rotate') {
    rotation = { answered: false };
    request(daemon.admin, 'POST', '/v1/keys/rotate').then(
      (answer) => {
        if (answer.status !== 200)
          fail('keys_consistent', `${label}: rotate answered ${answer.status}`);
        rotation.answered = answer.status === 200;
        rotation.activeKid = answer.json?.active?.kid;
      },
      () => undefined,
    );
  } else if (action === 'reload') daemon.child.kill('SIGHUP');
  await sleep(killAfter - actionAt);
  run.inFlightAtKill = load.inFlight();
  daemon.child.kill('SIGKILL');
  await daemon.exited;
  await load.stop();
  await daemon.admin.destroy();
  run.killedAfterMs = killAfter;
  run.action = action;
  run.rotationAnswered = rotation?.answered;
  run.rotatedTo = rotation?.activeKid;
  run.refused = load.refused;
  // Before the kill the daemon is healthy: rotations and reloads must not turn mints away.
  if (load.refused.length > 0)
    fail(
      'mints_never_refused',
      `${label}: ${load.refused.length} mints refused, first: ${load.refused[0]}`,
    );
}

/**
 * The signing keys on the token, read by a second PKCS#11 application while the daemon idles
 * (what `hsmint keys list --config` does, without a process start per check).
 */
async function keysOnToken(configFile) {
  const { store } = await openKeyStore(loadConfig(configFile));
  try {
    return await store.list();
  } finally {
    await store.close();
  }
}

/** After a restart: one active key, and the daemon, the token and the JWKS agree on the keys. */
async function checkKeys(daemon, token, acknowledged, label) {
  const keys = (await request(daemon.admin, 'GET', '/v1/keys')).json.keys;
  const jwks = (await request(daemon.admin, 'GET', '/v1/jwks')).json.keys;
  const health = (await request(daemon.admin, 'GET', '/v1/health')).json;
  const problems = [];
  const onToken = await keysOnToken(token.config).catch((error) => {
    problems.push(`the token cannot be read: ${error}`);
    return [];
  });
  const kids = (list) => JSON.stringify(list.map((key) => key.kid).sort());
  const active = keys.filter((key) => key.state === 'active');
  if (active.length !== 1) problems.push(`${active.length} active keys`);
  else if (active[0].kid !== health.active_kid)
    problems.push(`health says ${health.active_kid} is active, GET /v1/keys ${active[0].kid}`);
  if (keys.filter((key) => key.state === 'next').length > 1) problems.push('more than one next');
  if (kids(onToken) !== kids(keys))
    problems.push(`token holds ${kids(onToken)}, the daemon knows ${kids(keys)}`);
  if (kids(jwks) !== kids(keys))
    problems.push(`JWKS publishes ${kids(jwks)}, the daemon knows ${kids(keys)}`);
  // A token still valid needs its key still published.
  const now = Date.now() / 1000;
  const known = new Set(keys.map((key) => key.kid));
  const lost = new Set(
    acknowledged.filter((entry) => entry.exp > now + 2 && !known.has(entry.kid)).map((e) => e.kid),
  );
  if (lost.size > 0) problems.push(`keys of unexpired tokens are gone: ${[...lost].join(', ')}`);
  if (problems.length > 0) fail('keys_consistent', `${label}: ${problems.join('; ')}`);
  return active[0]?.kid;
}

/** Every token given that will not expire in the next seconds must still verify. */
async function checkTokens(daemon, entries, label) {
  const now = Date.now() / 1000;
  const live = entries.filter((entry) => entry.exp > now + 2);
  const pool = new Pool('http://localhost', { socketPath: daemon.socket, connections: 8 });
  const invalid = [];
  try {
    for (let next = 0; next < live.length; next += 64)
      await Promise.all(
        live.slice(next, next + 64).map(async (entry) => {
          const answer = await request(pool, 'POST', '/v1/tokens/verify', {
            token: entry.token,
            aud: 'api',
          });
          if (answer.json?.valid !== true)
            invalid.push(`${entry.jti} (kid ${entry.kid}): ${JSON.stringify(answer.json)}`);
        }),
      );
  } finally {
    await pool.close();
  }
  if (invalid.length > 0)
    fail(
      'acknowledged_tokens_verify',
      `${label}: ${invalid.length} of ${live.length} do not verify, first ${invalid[0]}`,
    );
  return live.length;
}

/** Every whole record of the log, oldest first (a torn line is skipped: verify judges it). */
function auditRecords(auditDir) {
  const records = [];
  for (const file of readdirSync(auditDir)
    .filter((name) => /^audit-\d{6}\.jsonl$/.test(name))
    .sort()) {
    const lines = readFileSync(join(auditDir, file), 'utf8').split('\n');
    lines.pop(); // the text after the last newline: empty, or a line never finished
    for (const line of lines) {
      try {
        records.push(JSON.parse(line));
      } catch {
        // Left for `hsmint audit verify` to name.
      }
    }
  }
  return records;
}

/**
 * On a cleanly stopped daemon: the chain verifies sealed, every acknowledged mint has its
 * record, and each daemon run wrote no more unanswered mints than it had in flight when killed.
 */
async function checkAudit(token, runs, label) {
  const verified = await hsmint([
    'audit',
    'verify',
    token.auditDir,
    '--keys',
    token.auditKeys,
    '--sealed',
    '--json',
  ]);
  if (verified.code !== 0)
    fail(
      'chain_verifies',
      `${label}: hsmint audit verify exited ${verified.code}: ${verified.stdout}`,
    );
  const records = auditRecords(token.auditDir);
  // Each start writes one daemon.start before it answers anything: the records after the
  // i-th belong to the i-th run.
  const perRun = [];
  for (const record of records) {
    if (record.event === 'daemon.start') perRun.push({ mints: [], aborted: new Set() });
    else if (record.event === 'mint') perRun.at(-1)?.mints.push(record.jti);
    else if (record.event === 'mint.abort') perRun.at(-1)?.aborted.add(record.jti);
  }
  if (perRun.length !== runs.length) {
    fail(
      'no_unexplained_mint_records',
      `${label}: ${perRun.length} daemon.start records for ${runs.length} starts`,
    );
    return records;
  }
  const logged = new Set(records.filter((record) => record.event === 'mint').map((r) => r.jti));
  let missing = 0;
  let firstMissing;
  runs.forEach((run, index) => {
    const answered = new Set(run.acknowledged.map((entry) => entry.jti));
    for (const jti of answered)
      if (!logged.has(jti)) {
        missing++;
        firstMissing ??= `${jti} (run ${index + 1})`;
      }
    const { mints, aborted } = perRun[index];
    run.unanswered = mints.filter((jti) => !answered.has(jti) && !aborted.has(jti)).length;
    const allowed = run.inFlightAtKill ?? 0;
    if (run.unanswered > allowed)
      fail(
        'no_unexplained_mint_records',
        `${label}: run ${index + 1} wrote ${run.unanswered} mints it never answered, with ${allowed} in flight at its end`,
      );
  });
  if (missing > 0)
    fail(
      'acknowledged_mints_in_log',
      `${label}: ${missing} acknowledged mints have no record, first ${firstMissing}`,
    );
  return records;
}

const started = performance.now();
const token = makeToken();
const logFd = openSync(join(dir, 'hsmintd.log'), 'a');
/** One entry per daemon process: what it acknowledged and how it ended. */
const runs = [];
let tokensVerified = 0;
let rotationsInFlight = 0;
let rotationsAnswered = 0;
let reloadsInFlight = 0;
let records = [];

async function start(label) {
  const daemon = await startDaemon(token, logFd);
  if (!daemon) {
    fail(
      'restarts_after_every_kill',
      `${label}: hsmintd did not become healthy; see ${dir}/hsmintd.log`,
    );
    return undefined;
  }
  daemon.socket = token.socket;
  runs.push({ acknowledged: [], inFlightAtKill: null });
  return daemon;
}

const everyAcknowledged = () => runs.flatMap((run) => run.acknowledged);

let daemon = await start('first start');
if (daemon) {
  const keys = await request(daemon.admin, 'GET', '/v1/audit/keys');
  writeFileSync(token.auditKeys, JSON.stringify(keys.json));
}
for (let kill = 1; daemon && kill <= kills; kill++) {
  const run = runs.at(-1);
  await loadAndKill(daemon, token, run, `kill ${kill}`);
  if (run.action === 'rotate' && !run.rotationAnswered) rotationsInFlight++;
  if (run.action === 'rotate' && run.rotationAnswered) rotationsAnswered++;
  if (run.action === 'reload') reloadsInFlight++;
  daemon = await start(`restart after kill ${kill}`);
  if (!daemon) break;
  const label = `after kill ${kill}`;
  const activeKid = await checkKeys(daemon, token, everyAcknowledged(), label);
  if (run.rotatedTo !== undefined && activeKid !== run.rotatedTo)
    fail(
      'keys_consistent',
      `${label}: the rotation to ${run.rotatedTo} was answered, yet ${activeKid} signs`,
    );
  // The last tokens answered before the kill, and the newest of each key; all at the end.
  const newestPerKid = new Map(everyAcknowledged().map((entry) => [entry.kid, entry]));
  tokensVerified += await checkTokens(
    daemon,
    [...run.acknowledged.slice(-VERIFIED_PER_RESTART), ...newestPerKid.values()],
    label,
  );
  if (kill % AUDIT_CHECK_EVERY === 0 || kill === kills) {
    if (kill === kills)
      tokensVerified += await checkTokens(daemon, everyAcknowledged(), 'at the end');
    await stopDaemon(daemon);
    records = await checkAudit(token, runs, label);
    daemon =
      kill === kills ? undefined : await start(`start after the audit check at kill ${kill}`);
  }
}
if (daemon) await stopDaemon(daemon);

const count = (event) => records.filter((record) => record.event === event).length;
const killedRuns = runs.filter((run) => run.inFlightAtKill !== null);
const summary = {
  date: new Date().toISOString(),
  seed,
  kills: killedRuns.length,
  kills_mid_load: killedRuns.filter((run) => run.inFlightAtKill > 0).length,
  kills_during_rotation: rotationsInFlight,
  rotations_answered: rotationsAnswered,
  kills_during_reload: reloadsInFlight,
  starts: runs.length,
  acknowledged: everyAcknowledged().length,
  refused: runs.reduce((sum, run) => sum + (run.refused?.length ?? 0), 0),
  mint_records: count('mint'),
  unanswered_mint_records: runs.reduce((sum, run) => sum + (run.unanswered ?? 0), 0),
  records: records.length,
  recoveries: count('audit.recover'),
  torn_bytes_cut: records
    .filter((record) => record.event === 'audit.recover')
    .reduce((sum, record) => sum + record.cut_bytes, 0),
  checkpoints: count('checkpoint'),
  segments: count('audit.rotate') + 1,
  activations: count('key.activate'),
  reloads_recorded: count('config.reload'),
  keys_adopted: count('key.adopt'),
  keys_destroyed: count('key.destroy'),
  tokens_verified: tokensVerified,
  seconds: Math.round((performance.now() - started) / 100) / 10,
  checks,
  failures,
};
const ok = failures.length === 0;
const refusedExample = runs.find((run) => run.refused?.length)?.refused[0];
process.stdout.write(
  [
    `hsmint crash: ${summary.kills} kills (${summary.kills_mid_load} with mints in flight, ${summary.kills_during_rotation} during a rotation, ${summary.kills_during_reload} after a SIGHUP reload, ${summary.reloads_recorded} of which recorded), seed ${seed}`,
    `acknowledged mints   ${summary.acknowledged}${summary.refused ? ` (and ${summary.refused} refused, first: ${refusedExample})` : ''}`,
    `mint records         ${summary.mint_records} (${summary.unanswered_mint_records} written but not answered before a kill)`,
    `audit log            ${summary.records} records in ${summary.segments} segments, ${summary.checkpoints} checkpoints`,
    `recoveries           ${summary.recoveries} torn tails cut, ${summary.torn_bytes_cut} bytes`,
    `keys                 ${summary.rotations_answered} rotations answered before a kill, ${summary.activations} activations, ${summary.keys_adopted} adopted, ${summary.keys_destroyed} destroyed`,
    `tokens verified      ${summary.tokens_verified} after restarts`,
    ...Object.entries(checks).map(
      ([name, passed]) => `check ${name.padEnd(30)} ${passed ? 'ok' : 'FAILED'}`,
    ),
    `took ${summary.seconds} s${ok && !values.keep ? '' : `; files kept in ${dir}`}`,
    '',
  ].join('\n'),
);
if (values.out) await writeFile(values.out, `${JSON.stringify(summary, null, 2)}\n`);
// A failed run keeps its token, state and logs to look at.
if (ok && !values.keep) rmSync(dir, { recursive: true, force: true });
process.exitCode = ok ? 0 : 1;
