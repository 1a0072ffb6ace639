#!/usr/bin/env node
// `npm run soak -- --minutes N`: the real built daemon on a fresh SoftHSM token, under mixed
// load from 64 clients for N minutes (fractions allowed), while it is reloaded (SIGHUP) every
// 10 s and its key is rotated (POST /v1/keys/rotate) every 15 s. It checks that:
//   - nothing unexpected happens: every answer is 2xx, no connection fails, the daemon logs no
//     error and applies every reload;
//   - every minted token verifies until its exp, across rotations: a sample is re-verified
//     about every second, by the daemon and offline (jose against GET /v1/jwks), until exp,
//     and must be refused as expired once exp + clock skew has passed;
//   - the daemon's memory (VmRSS) grows by less than 10% from the end of the warm-up (the first
//     20% of the run, at least 45 s) to the end (the median of the last 20% of the samples);
//   - no secret leaks: the PIN and every token minted (all of them) appear nowhere in the
//     daemon's log, its audit and state files, /proc/PID/cmdline or /proc/PID/environ.
// It prints a summary and, with --out FILE, writes the same as JSON; it exits 1 when a check
// fails. --keep leaves the temp folder (token, config, log, audit) for inspection.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  createReadStream,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { Pool } from 'undici';
import { parse, stringify } from 'yaml';
import { rssKb, softhsmInit, stopProcess } from './support/daemon.mjs';

const root = join(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    out: { type: 'string' },
    keep: { type: 'boolean' },
    // The hsmintd entry point to soak: another build of it, e.g. one broken on purpose to
    // prove that a check fails.
    daemon: { type: 'string', default: join(root, 'dist/daemon/main.js') },
  },
});
const minutes = Number(values.minutes);
if (!(minutes > 0 && minutes <= 24 * 60)) {
  process.stderr.write('soak: --minutes must be a number of minutes above 0, e.g. 2 or 0.5\n');
  process.exit(2);
}
const runSeconds = minutes * 60;

const CLIENTS = 64;
/** The load mix: the rest of the calls are GET /v1/jwks. */
const MINT_SHARE = 0.6;
const VERIFY_SHARE = 0.3;
const RELOAD_EVERY_S = 10;
const ROTATE_EVERY_S = 15;
/** Short lives, so that tokens reach their exp (and exp + skew) within the run. */
const MAX_TTL_S = 40;
const MIN_TTL_S = 3;
const CLOCK_SKEW_S = 5;
/** Each reload switches the default ttl between these: a real change, applied under load. */
const DEFAULT_TTLS = ['20s', '30s'];
const AUDIENCE = 'soak';
const ISSUER = 'urn:hsmint:soak';
const RSS_SAMPLE_MS = 2000;
// V8 promotes what 64 clients keep in flight and collects it only at a full GC, so the old
// generation climbs for the first minute or so before its sawtooth settles: warm-up covers it.
const WARM_UP_S = Math.max(45, 0.2 * runSeconds);
const MAX_RSS_GROWTH_PERCENT = 10;
/** One mint in this many joins the sample that is re-verified until its exp. */
const TRACK_ONE_IN = 20;
const MAX_TRACKED_LIVE = 300;
const CHECK_PASS_MS = 1000;
const CHECK_CONCURRENCY = 8;
/** A token counts as checked until its exp when it was last found valid this close to it. */
const CHECKED_NEAR_EXP_S = 3;
const RECENT_TOKENS = 1024;
const FIRST_ERRORS_KEPT = 10;
const SCAN_CHUNK_BYTES = 8 * 1024 * 1024;

const started = performance.now();
const elapsedS = () => (performance.now() - started) / 1000;
const nowS = () => Date.now() / 1000;

// ---- token, config and daemon

/** A fresh token and config from `hsmint softhsm init`, shaped for the soak. */
function makeToken() {
  const dir = mkdtempSync(join(tmpdir(), 'hsmint-soak-'));
  const summary = softhsmInit(dir, ['--issuer', ISSUER, '--audience', AUDIENCE]);
  const document = parse(readFileSync(summary.config, 'utf8'));
  // 64 load clients, the checker and the control calls all come from this one uid.
  document.socket.max_connections_per_uid = 256;
  document.socket.max_requests_per_uid = 256;
  document.tokens = {
    default_ttl: DEFAULT_TTLS[0],
    max_ttl: `${MAX_TTL_S}s`,
    clock_skew: `${CLOCK_SKEW_S}s`,
  };
  document.log = { level: 'info' };
  writeFileSync(summary.config, stringify(document), { mode: 0o600 });
  const stateDir = resolve(dir, document.keys.state_dir);
  return {
    dir,
    config: summary.config,
    document,
    socket: summary.socket,
    pinFile: summary.pin_file,
    stateDir,
    auditDir: resolve(dir, document.audit?.dir ?? join(stateDir, 'audit')),
    log: join(dir, 'hsmintd.log'),
  };
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
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.statusCode, json, text };
}

async function startDaemon(token) {
  const logFd = openSync(token.log, 'w');
  const child = spawn(process.execPath, [values.daemon, '--config', token.config], {
    stdio: ['ignore', logFd, logFd],
  });
  const exited = once(child, 'exit');
  const probe = new Pool('http://localhost', { socketPath: token.socket });
  try {
    for (let waited = 0; waited < 15_000; waited += 100) {
      if (child.exitCode !== null)
        throw new Error(`hsmintd exited with ${child.exitCode}; see ${token.log}`);
      try {
        if ((await request(probe, 'GET', '/v1/health')).json?.status === 'ok')
          return { child, exited };
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
  } finally {
    await probe.close();
  }
  child.kill('SIGKILL');
  throw new Error('hsmintd did not become healthy within 15 s');
}

// ---- what the run records

const requests = {
  mint: 0,
  verify: 0,
  jwks: 0,
  check_verify: 0,
  check_jwks: 0,
  rotate: 0,
};
const errors = { total: 0, by_kind: {}, first: [] };
function fail(kind, detail) {
  errors.total++;
  errors.by_kind[kind] = (errors.by_kind[kind] ?? 0) + 1;
  if (errors.first.length < FIRST_ERRORS_KEPT)
    errors.first.push(`${elapsedS().toFixed(1)}s ${kind}: ${String(detail).slice(0, 300)}`);
}
const httpKind = (route, response) =>
  `${route} ${response.status} ${response.json?.error?.code ?? ''}`.trim();
const connectionKind = (route, error) => `${route} ${error.code ?? error.name ?? 'error'}`;

/** The signature of every token minted: unique per token, what the secrets check looks for. */
const signatures = new Set();
let lastToken;
const recent = [];
/** The sample re-verified until exp, then once more after exp + skew (done ones drop out). */
let tracked = [];
const tokenStats = {
  minted: 0,
  tracked: 0,
  checked_until_exp: 0,
  checked_across_rotation: 0,
  refused_after_exp: 0,
  /** Of those, refused because their key had retired in the meantime (ERR_TOKEN_KID_UNKNOWN). */
  refused_after_exp_key_retired: 0,
  daemon_checks: 0,
  offline_checks: 0,
};
let activeKid;
/** Keys that signed until a rotation: a token of one that still verifies crossed a rotation. */
const retiredKids = new Set();
const rotations = [];
const reloads = { sent: 0, applied: 0, failed: 0 };
const rssSamples = [];

// ---- the load

/** The mint body: varied ttl (seconds, a duration, or the default), sometimes a scope. */
function mintBody() {
  const body = { aud: AUDIENCE };
  const roll = Math.random();
  const seconds = MIN_TTL_S + Math.floor(Math.random() * (MAX_TTL_S - MIN_TTL_S + 1));
  if (roll < 0.4) body.ttl = seconds;
  else if (roll < 0.8) body.ttl = `${seconds}s`;
  if (Math.random() < 0.3) body.scope = ['read'];
  return body;
}

async function mintOnce(pool, loadEnd) {
  requests.mint++;
  const response = await request(pool, 'POST', '/v1/tokens', mintBody());
  if (response.status !== 201 || typeof response.json?.token !== 'string') {
    fail(httpKind('mint', response), response.text);
    return;
  }
  const { token, exp, kid } = response.json;
  tokenStats.minted++;
  signatures.add(token.slice(token.lastIndexOf('.') + 1));
  lastToken = token;
  recent[tokenStats.minted % RECENT_TOKENS] = { token, exp };
  // Only tokens whose exp + skew passes before the load ends: each is followed to the end.
  if (
    tokenStats.minted % TRACK_ONE_IN === 0 &&
    tracked.length < MAX_TRACKED_LIVE &&
    exp + CLOCK_SKEW_S + 3 < loadEnd
  ) {
    tokenStats.tracked++;
    tracked.push({ token, exp, kid, mintedAt: nowS(), lastValidAt: 0, crossed: false });
  }
}

async function verifyOnce(pool) {
  const entry = recent[Math.floor(Math.random() * recent.length)];
  if (!entry) return;
  requests.verify++;
  const sentAt = nowS();
  const body = Math.random() < 0.5 ? { token: entry.token, aud: AUDIENCE } : { token: entry.token };
  const response = await request(pool, 'POST', '/v1/tokens/verify', body);
  if (response.status !== 200) fail(httpKind('verify', response), response.text);
  // Valid until exp (+ skew): asked before exp, it must be valid.
  else if (response.json?.valid !== true && sentAt < entry.exp)
    fail('verify: unexpired token invalid', response.text);
}

async function jwksOnce(pool) {
  requests.jwks++;
  const response = await request(pool, 'GET', '/v1/jwks');
  if (response.status !== 200 || !(response.json?.keys?.length > 0))
    fail(httpKind('jwks', response), response.text);
}

async function client(pool, loadEnd, stop) {
  while (nowS() < loadEnd && !stop.now) {
    const roll = Math.random();
    const route = roll < MINT_SHARE ? 'mint' : roll < MINT_SHARE + VERIFY_SHARE ? 'verify' : 'jwks';
    try {
      if (route === 'mint') await mintOnce(pool, loadEnd);
      else if (route === 'verify') await verifyOnce(pool);
      else await jwksOnce(pool);
    } catch (error) {
      fail(connectionKind(route, error), error);
    }
  }
}

/** Waits until `at` (epoch seconds) or the stop, whichever comes first. */
async function until(at, stop) {
  while (nowS() < at && !stop.now) await sleep(Math.min(250, (at - nowS()) * 1000));
}

async function rotator(pool, loadEnd, stop) {
  for (let at = nowS() + ROTATE_EVERY_S; at < loadEnd; at += ROTATE_EVERY_S) {
    await until(at, stop);
    if (stop.now) return;
    requests.rotate++;
    try {
      const response = await request(pool, 'POST', '/v1/keys/rotate');
      const kid = response.json?.active?.kid;
      if (response.status !== 200 || typeof kid !== 'string')
        fail(httpKind('rotate', response), response.text);
      else if (kid === activeKid) fail('rotate: the active key did not change', kid);
      else {
        rotations.push({ at_s: Number(elapsedS().toFixed(1)), kid });
        if (activeKid !== undefined) retiredKids.add(activeKid);
        activeKid = kid;
      }
    } catch (error) {
      fail(connectionKind('rotate', error), error);
    }
  }
}

/** SIGHUP with a harmless but real change: the default ttl switches each time. */
async function reloader(token, pid, loadEnd, stop) {
  for (let at = nowS() + RELOAD_EVERY_S; at < loadEnd; at += RELOAD_EVERY_S) {
    await until(at, stop);
    if (stop.now) return;
    reloads.sent++;
    token.document.tokens.default_ttl = DEFAULT_TTLS[reloads.sent % DEFAULT_TTLS.length];
    writeFileSync(token.config, stringify(token.document), { mode: 0o600 });
    process.kill(pid, 'SIGHUP');
  }
}

async function sampler(pid, loadEnd, stop) {
  while (nowS() < loadEnd && !stop.now) {
    const kb = rssKb(pid);
    if (kb !== undefined) rssSamples.push({ at_s: Number(elapsedS().toFixed(1)), kb });
    await sleep(RSS_SAMPLE_MS);
  }
}

/**
 * Every second: each sampled token minted so far, then the current JWKS, then each of those
 * tokens verified by the daemon and offline. Before exp both must find it valid; once exp +
 * skew has passed the daemon must refuse it as expired (a token that verified forever would
 * pass the rest). A last pass after the load settles the tokens still followed.
 */
async function checker(pool, loadEnd, stop) {
  while (nowS() < loadEnd && !stop.now) {
    const passStarted = performance.now();
    await checkPass(pool);
    await sleep(Math.max(0, CHECK_PASS_MS - (performance.now() - passStarted)));
  }
}

async function checkPass(pool) {
  tracked = tracked.filter((entry) => !entry.done);
  // Taken before the JWKS: each of these keys signed before it was fetched, so it is there.
  const due = [...tracked];
  let keySet;
  try {
    requests.check_jwks++;
    const response = await request(pool, 'GET', '/v1/jwks');
    if (response.status !== 200) fail(httpKind('check jwks', response), response.text);
    else keySet = createLocalJWKSet(response.json);
  } catch (error) {
    fail(connectionKind('check jwks', error), error);
  }
  if (!keySet) return;
  const options = { algorithms: ['ES256'], issuer: ISSUER, audience: AUDIENCE };
  let next = 0;
  await Promise.all(
    Array.from({ length: CHECK_CONCURRENCY }, async () => {
      while (next < due.length) await checkOne(pool, due[next++], keySet, options);
    }),
  );
}

/**
 * Refused once exp + skew has passed: as expired, or as of a key that is gone (retired after
 * the last of its tokens expired, so no longer in the JWKS either).
 */
async function refusedAsExpired(pool, result, kid) {
  if (result?.valid !== false) return undefined;
  if (result.error?.code === 'ERR_TOKEN_EXPIRED') return 'expired';
  if (result.error?.code !== 'ERR_TOKEN_KID_UNKNOWN') return undefined;
  requests.check_jwks++;
  const jwks = await request(pool, 'GET', '/v1/jwks');
  return jwks.status === 200 && !jwks.json.keys.some((jwk) => jwk.kid === kid)
    ? 'key_retired'
    : undefined;
}

async function checkOne(pool, entry, keySet, options) {
  const before = nowS();
  if (before > entry.exp + CLOCK_SKEW_S + 1.5) {
    entry.done = true;
    requests.check_verify++;
    try {
      const response = await request(pool, 'POST', '/v1/tokens/verify', {
        token: entry.token,
        aud: AUDIENCE,
      });
      if (response.status !== 200) fail(httpKind('check verify', response), response.text);
      else {
        const refused = await refusedAsExpired(pool, response.json, entry.kid);
        if (refused === undefined)
          fail('check: token not refused as expired after exp + skew', response.text);
        else {
          tokenStats.refused_after_exp++;
          if (refused === 'key_retired') tokenStats.refused_after_exp_key_retired++;
        }
      }
    } catch (error) {
      fail(connectionKind('check verify', error), error);
    }
    if (entry.lastValidAt >= entry.exp - CHECKED_NEAR_EXP_S) tokenStats.checked_until_exp++;
    if (entry.crossed) tokenStats.checked_across_rotation++;
    return;
  }
  // Between exp and exp + skew either answer is right: the daemon allows the skew.
  if (before >= entry.exp - 0.25) return;
  let valid = true;
  requests.check_verify++;
  tokenStats.daemon_checks++;
  try {
    const response = await request(pool, 'POST', '/v1/tokens/verify', {
      token: entry.token,
      aud: AUDIENCE,
    });
    if (response.status !== 200) {
      valid = false;
      fail(httpKind('check verify', response), response.text);
    } else if (response.json?.valid !== true) {
      valid = false;
      fail('check: unexpired token invalid (daemon)', `kid ${entry.kid}: ${response.text}`);
    }
  } catch (error) {
    valid = false;
    fail(connectionKind('check verify', error), error);
  }
  tokenStats.offline_checks++;
  try {
    await jwtVerify(entry.token, keySet, { ...options, clockTolerance: CLOCK_SKEW_S });
  } catch (error) {
    valid = false;
    fail('check: unexpired token invalid (jose, GET /v1/jwks)', `kid ${entry.kid}: ${error.code}`);
  }
  if (valid) {
    entry.lastValidAt = before;
    if (retiredKids.has(entry.kid)) entry.crossed = true;
  }
}

// ---- the secrets check

/**
 * Finds the PIN, any minted token's signature (a full token holds it; unique per token) and
 * the `"token":"ey` pattern of a logged token in text fed in chunks. A match that straddles
 * two chunks is found once: the tail of each chunk is carried into the next, and a match is
 * counted only if it reaches past the carried part.
 */
function createScanner({ pin, signatureSet, signatureLengths, hits }) {
  const fixed = [
    { kind: 'pin', needle: pin },
    { kind: 'token_pattern', needle: '"token":"ey' },
  ];
  const longest = Math.max(pin.length, 11, ...signatureLengths);
  const base64urlRun =
    signatureLengths.length === 0
      ? undefined
      : new RegExp(`[A-Za-z0-9_-]{${Math.min(...signatureLengths)},}`, 'g');
  return (source) => {
    let carry = '';
    let offset = 0;
    let bytes = 0;
    const record = (kind, at) => hits.push({ source, kind, offset: offset - carry.length + at });
    return {
      feed(chunk) {
        bytes += chunk.length;
        const text = carry + chunk;
        for (const { kind, needle } of fixed)
          for (let at = text.indexOf(needle); at !== -1; at = text.indexOf(needle, at + 1))
            if (at + needle.length > carry.length) record(kind, at);
        for (const run of base64urlRun ? text.matchAll(base64urlRun) : [])
          for (const length of signatureLengths)
            for (let at = run.index; at + length <= run.index + run[0].length; at++)
              if (at + length > carry.length && signatureSet.has(text.slice(at, at + length)))
                record('token', at);
        offset += chunk.length;
        carry = text.slice(Math.max(0, text.length - (longest - 1)));
      },
      get bytes() {
        return bytes;
      },
    };
  };
}

function filesUnder(dir) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.flatMap((entry) =>
    entry.isDirectory()
      ? filesUnder(join(dir, entry.name))
      : entry.isFile()
        ? [join(dir, entry.name)]
        : [],
  );
}

async function scanFile(scan, path) {
  const scanner = scan(path);
  for await (const chunk of createReadStream(path, {
    encoding: 'latin1',
    highWaterMark: SCAN_CHUNK_BYTES,
  }))
    scanner.feed(chunk);
  return scanner.bytes;
}

function scanText(scan, source, text, pieceSize = SCAN_CHUNK_BYTES) {
  const scanner = scan(source);
  for (let at = 0; at < text.length; at += pieceSize) scanner.feed(text.slice(at, at + pieceSize));
  return scanner.bytes;
}

/**
 * Proves the search can find what it looks for: a copy of the start of the real log, with the
 * PIN, a real minted token and a logged-token line planted in it, fed in small pieces so the
 * plants straddle chunk boundaries, must give exactly the planted hits.
 */
function selfCheck(makeScan, logHead, pin, token) {
  const hits = [];
  const scan = makeScan(hits);
  const planted = `${logHead}\n{"planted":"${pin}"}\n${token}\n{"token":"${token}"}\n${logHead}`;
  scanText(scan, 'self-check', planted, 1000);
  const count = (kind) => hits.filter((hit) => hit.kind === kind).length;
  return { pin: count('pin'), token: count('token'), token_pattern: count('token_pattern') };
}

async function secretsCheck(token, pid, phase, result) {
  const hits = [];
  const signatureLengths = new Set();
  for (const signature of signatures) signatureLengths.add(signature.length);
  const makeScan = (into) =>
    createScanner({
      pin: result.pin,
      signatureSet: signatures,
      signatureLengths: [...signatureLengths],
      hits: into,
    });
  const scan = makeScan(hits);
  if (phase === 'process') {
    // While the daemon runs: what the kernel shows of it to anyone who may read /proc/PID.
    for (const name of ['cmdline', 'environ']) {
      const path = `/proc/${pid}/${name}`;
      result.bytes_searched += scanText(scan, path, readFileSync(path, 'latin1'));
      result.sources.push(path);
    }
  } else {
    const logHead = readFileSync(token.log, 'latin1').slice(0, 64 * 1024);
    if (lastToken !== undefined)
      result.self_check = selfCheck(makeScan, logHead, result.pin, lastToken);
    const files = [
      token.log,
      ...new Set([...filesUnder(token.stateDir), ...filesUnder(token.auditDir)]),
    ];
    for (const path of files) {
      result.bytes_searched += await scanFile(scan, path);
      result.sources.push(path);
    }
  }
  for (const hit of hits) {
    result.hits[hit.kind]++;
    if (result.first_hits.length < FIRST_ERRORS_KEPT) result.first_hits.push(hit);
  }
}

// ---- the run

function summarise(report) {
  const fmt = (value, digits = 0) => (typeof value === 'number' ? value.toFixed(digits) : '-');
  const { rss, secrets, tokens } = report;
  const lines = [
    `hsmint soak: ${report.minutes} min, ${CLIENTS} clients, ${report.machine.cores} cores, Node ${report.machine.node}, ${report.date}`,
    `requests   ${Object.entries(report.requests)
      .map(([kind, count]) => `${kind} ${count}`)
      .join(', ')} (${fmt(report.requests_per_s)}/s)`,
    `keys       ${report.rotations.length} rotations, reloads ${report.reloads.sent} sent / ${report.reloads.applied} applied / ${report.reloads.failed} refused`,
    `tokens     ${tokens.minted} minted, ${tokens.tracked} followed: ${tokens.checked_until_exp} checked until exp (${tokens.checked_across_rotation} across a rotation), ${tokens.refused_after_exp} refused after exp + skew (${tokens.refused_after_exp_key_retired} with their key retired); ${tokens.daemon_checks} daemon and ${tokens.offline_checks} jose checks`,
    `memory     VmRSS ${fmt(rss.warm_kb / 1024, 1)} MB after warm-up (${fmt(rss.warm_up_s)} s), ${fmt(rss.end_kb / 1024, 1)} MB at the end: ${fmt(rss.growth_percent, 1)}%`,
    `secrets    PIN (${secrets.pin_length} digits) and ${secrets.tokens_searched} tokens in ${secrets.sources.length} sources, ${fmt(secrets.bytes_searched / 1024 / 1024, 1)} MB: ${secrets.hits_total} hits; self-check found ${JSON.stringify(secrets.self_check)}`,
    `errors     ${report.errors.total}${report.errors.total ? `: ${JSON.stringify(report.errors.by_kind)}` : ''}`,
    ...report.errors.first.map((line) => `  ${line}`),
    ...secrets.first_hits.map((hit) => `  secret ${hit.kind} in ${hit.source} at ${hit.offset}`),
    '',
    ...Object.entries(report.checks).map(
      ([name, passed]) => `check ${name.padEnd(32)}${passed ? 'passed' : 'FAILED'}`,
    ),
    `took ${fmt(report.took_s)} s (setup ${fmt(report.setup_s)}, load ${fmt(report.load_s)}, checks ${fmt(report.checks_s)}): ${report.passed ? 'PASSED' : 'FAILED'}`,
  ];
  return `${lines.join('\n')}\n`;
}

/**
 * RSS growth from the end of the warm-up to the end: the median of the last samples of the
 * warm-up against the median of the last 20% of the run. Medians, because the old generation
 * is a sawtooth between full GCs: a leak moves the middle of it, one GC's timing only its top.
 */
function memoryFigures(loadStartedS) {
  const loadEndS = loadStartedS + runSeconds;
  const warmUpEndS = loadStartedS + WARM_UP_S;
  const warm = rssSamples
    .filter((sample) => sample.at_s <= warmUpEndS && sample.at_s > warmUpEndS - 6)
    .map((sample) => sample.kb)
    .sort((a, b) => a - b);
  const last = rssSamples
    .filter((sample) => sample.at_s >= loadEndS - Math.max(10, 0.2 * runSeconds))
    .map((sample) => sample.kb);
  const warmKb = warm[Math.floor(warm.length / 2)];
  last.sort((a, b) => a - b);
  const endKb = last.length ? last[Math.floor(last.length / 2)] : undefined;
  const growth =
    warmKb !== undefined && endKb !== undefined ? (100 * (endKb - warmKb)) / warmKb : undefined;
  return {
    warm_up_s: WARM_UP_S,
    warm_kb: warmKb,
    end_kb: endKb,
    growth_percent: growth,
    max_growth_percent: MAX_RSS_GROWTH_PERCENT,
    samples: rssSamples,
  };
}

/** What the daemon's own log says: reloads applied or refused, and error lines. */
async function readDaemonLog(path) {
  const log = { reloads_applied: 0, reloads_failed: 0, errors: [], warnings: {} };
  for await (const line of createInterface({
    input: createReadStream(path),
    crlfDelay: Infinity,
  })) {
    if (line === '') continue;
    // Request lines are most of the log; only the few others are parsed.
    if (line.includes('"event":"http.request"') && line.includes('"level":"info"')) continue;
    let entry;
    try {
      entry = JSON.parse(line);
    } catch {
      log.errors.push(`not JSON: ${line.slice(0, 200)}`);
      continue;
    }
    if (entry.event === 'config.reload') log.reloads_applied++;
    if (entry.event === 'config.reload_failed') log.reloads_failed++;
    if (entry.level === 'error' || entry.level === 'fatal')
      log.errors.push(`${entry.event ?? ''} ${entry.msg ?? ''} ${entry.code ?? ''}`.trim());
    if (entry.level === 'warn')
      log.warnings[entry.event ?? entry.msg] = (log.warnings[entry.event ?? entry.msg] ?? 0) + 1;
  }
  return log;
}

async function main() {
  const token = makeToken();
  let daemon;
  const stop = { now: false };
  const interrupted = (signal) => {
    stop.now = true;
    process.stderr.write(`soak: ${signal}, stopping\n`);
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    daemon = await startDaemon(token);
    const pid = daemon.child.pid;
    let daemonExit;
    daemon.exited.then(([code, signal]) => {
      daemonExit = `hsmintd exited (${code ?? signal})`;
      if (!stop.now) fail('daemon exited during the load', daemonExit);
      stop.now = true;
    });
    const pin = readFileSync(token.pinFile, 'utf8').trim();
    const poolOptions = { socketPath: token.socket, headersTimeout: 15_000, bodyTimeout: 15_000 };
    const loadPool = new Pool('http://localhost', { ...poolOptions, connections: CLIENTS });
    const checkPool = new Pool('http://localhost', {
      ...poolOptions,
      connections: CHECK_CONCURRENCY,
    });
    const controlPool = new Pool('http://localhost', { ...poolOptions, connections: 2 });
    activeKid = (await request(controlPool, 'GET', '/v1/health')).json?.active_kid;

    const loadStartedS = elapsedS();
    const loadEnd = nowS() + runSeconds;
    await Promise.all([
      ...Array.from({ length: CLIENTS }, () => client(loadPool, loadEnd, stop)),
      checker(checkPool, loadEnd, stop),
      rotator(controlPool, loadEnd, stop),
      reloader(token, pid, loadEnd, stop),
      sampler(pid, loadEnd, stop),
    ]);
    const loadSeconds = elapsedS() - loadStartedS;
    const interruptedEarly = stop.now && daemonExit === undefined;
    // From here on the daemon is stopped on purpose.
    stop.now = true;
    const daemonAlive = daemonExit === undefined;
    // Every token still followed is past exp + skew now: the last pass settles each.
    if (daemonAlive) await checkPass(checkPool);

    // Still serving after it all?
    let healthy = false;
    if (daemonAlive)
      try {
        healthy = (await request(controlPool, 'GET', '/v1/health')).json?.status === 'ok';
      } catch (error) {
        fail(connectionKind('health', error), error);
      }
    await Promise.all([loadPool.close(), checkPool.close(), controlPool.close()]);

    const secrets = {
      pin_length: pin.length,
      // A long all-digit PIN: a chance match in these files is out of the question.
      pin_meaningful: /^[0-9]{12,}$/.test(pin),
      tokens_searched: signatures.size,
      sources: [],
      bytes_searched: 0,
      self_check: undefined,
      hits: { pin: 0, token: 0, token_pattern: 0 },
      first_hits: [],
      pin,
    };
    if (daemonAlive) await secretsCheck(token, pid, 'process', secrets);
    // The files once the daemon has stopped: its last log lines and audit records included.
    await stopProcess(daemon.child);
    await secretsCheck(token, pid, 'files', secrets);
    delete secrets.pin;
    secrets.hits_total = secrets.hits.pin + secrets.hits.token + secrets.hits.token_pattern;

    const log = await readDaemonLog(token.log);
    reloads.applied = log.reloads_applied;
    reloads.failed = log.reloads_failed;
    for (const line of log.errors) fail('daemon log error', line);
    const rss = memoryFigures(loadStartedS);
    const totalRequests = Object.values(requests).reduce((sum, count) => sum + count, 0);
    const selfCheckFound =
      secrets.self_check !== undefined &&
      secrets.self_check.pin === 1 &&
      secrets.self_check.token === 2 &&
      secrets.self_check.token_pattern === 1;
    const checks = {
      no_unexpected_errors: errors.total === 0,
      ran_to_the_end: !interruptedEarly,
      daemon_stayed_up: daemonAlive && healthy,
      rotations_every_15s: rotations.length === Math.ceil(runSeconds / ROTATE_EVERY_S) - 1,
      reloads_applied: reloads.sent > 0 && reloads.applied === reloads.sent && reloads.failed === 0,
      tokens_verify_until_exp:
        tokenStats.checked_until_exp > 0 && tokenStats.refused_after_exp === tokenStats.tracked,
      memory_growth_under_10_percent:
        rss.growth_percent !== undefined && rss.growth_percent < MAX_RSS_GROWTH_PERCENT,
      secrets_never_leak:
        secrets.pin_meaningful &&
        selfCheckFound &&
        secrets.sources.length > 0 &&
        secrets.hits_total === 0,
    };
    const report = {
      date: new Date().toISOString(),
      machine: { cores: cpus().length, model: cpus()[0]?.model, node: process.versions.node },
      minutes,
      clients: CLIENTS,
      settings: {
        mix: { mint: MINT_SHARE, verify: VERIFY_SHARE, jwks: 1 - MINT_SHARE - VERIFY_SHARE },
        ttl_s: [MIN_TTL_S, MAX_TTL_S],
        clock_skew_s: CLOCK_SKEW_S,
        reload_every_s: RELOAD_EVERY_S,
        rotate_every_s: ROTATE_EVERY_S,
      },
      load_s: loadSeconds,
      setup_s: loadStartedS,
      checks_s: elapsedS() - loadStartedS - loadSeconds,
      requests: { ...requests, total: totalRequests },
      requests_per_s: totalRequests / loadSeconds,
      errors,
      rotations,
      reloads,
      daemon_log_warnings: log.warnings,
      tokens: tokenStats,
      rss,
      secrets,
      checks,
      passed: Object.values(checks).every(Boolean),
      took_s: elapsedS(),
    };
    process.stdout.write(summarise(report));
    if (values.out) await writeFile(values.out, `${JSON.stringify(report, null, 2)}\n`);
    process.exitCode = report.passed ? 0 : 1;
  } finally {
    if (daemon) await stopProcess(daemon.child);
    if (values.keep) process.stdout.write(`kept ${token.dir}\n`);
    else rmSync(token.dir, { recursive: true, force: true });
  }
}

await main();
