// The token's own ceiling: what pkcs11js gets out of the token in-process, without hsmint in
// between, for the figures hsmint's mint/s is compared against. Each measurement runs in a
// child process of its own (`node raw.mjs --child SPEC`, JSON on stdout): the module is loaded,
// initialized and finalized there, so the orchestrator's process never holds the token, and a
// child that hangs in the module is killed instead of hanging the bench.
//
// The child generates a throwaway key pair as token objects, as hsmint's keys are (a session
// key signs about twice as fast on SoftHSM, which does not decrypt its stored key material on
// each C_SignInit: not a fair ceiling), sensitive and not extractable, destroyed at the end. It
// signs a JWS-sized input the way hsmint does (ECDSA on a hash computed in Node,
// Ed25519 and RSA-PSS on the input itself) and measures, one after the other:
//   sync_1     one session, C_SignInit + C_Sign in a loop on the main thread;
//   async_n    N sessions (the config's signing sessions), each C_SignInit + C_SignAsync;
//   workers_2  2 worker threads, each with its own session, C_SignInit + C_Sign in a loop.
// peer.mjs runs the same child on p11-kit's client module, sync_1 only.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { quantiles } from './load.mjs';

const thisFile = fileURLToPath(import.meta.url);
const root = join(import.meta.dirname, '..', '..');
const require = createRequire(import.meta.url);
const MODES = ['sync_1', 'async_n', 'workers_2'];
/** A mode that fails this often has nothing left to measure: it stops instead of spinning. */
const MAX_ERRORS = 1000;

/**
 * Measures the token of `config` (an hsmint.yaml) for `alg` in the three modes above and
 * returns each one's { ops_per_s, p50_ms, p99_ms, max_ms, errors }, and `best`: the one with
 * the most signatures per second, with its `mode`.
 */
export async function measureRaw({ config, alg, seconds, warmupSeconds = 1 }) {
  const result = await runChild({ config, alg, seconds, warmupSeconds, modes: MODES });
  const best = MODES.map((mode) => ({ mode, ...result[mode] })).reduce((a, b) =>
    b.ops_per_s > a.ops_per_s ? b : a,
  );
  return { ...result, best };
}

/**
 * Runs one child on `spec` and returns what it printed. Every mode takes its warm-up and its
 * measurement; past that and 15 s more (key generation, an RSA key above all), the child is
 * taken as stuck and killed.
 */
export function runChild(spec) {
  const limitMs = (spec.modes.length * (spec.seconds + spec.warmupSeconds) + 15) * 1000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [thisFile, '--child', JSON.stringify(spec)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    // If the bench itself dies first, the child goes with it instead of signing on alone.
    const killChild = () => child.kill('SIGKILL');
    process.once('exit', killChild);
    let stuck = false;
    const timer = setTimeout(() => {
      stuck = true;
      child.kill('SIGKILL');
    }, limitMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      process.off('exit', killChild);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      process.off('exit', killChild);
      let answer;
      try {
        answer = JSON.parse(stdout);
      } catch {
        answer = undefined;
      }
      if (code === 0 && answer && answer.error === undefined) resolve(answer);
      else {
        const why =
          answer?.error ??
          (stuck
            ? `stuck, killed after ${limitMs / 1000} s`
            : signal
              ? `killed by ${signal}`
              : `exit ${code}`);
        const error = new Error(
          `${spec.alg} signing child: ${why}${stderr ? `: ${stderr.trim()}` : ''}`,
        );
        // The PKCS#11 error the child met, if any: a caller may tell "not supported" apart.
        error.ckr = /\bCKR_[A-Z_]+/.exec(answer?.error ?? '')?.[0];
        reject(error);
      }
    });
  });
}

// ---- in the child process ----------------------------------------------------------------

/** A representative JWS signing input: the header and claims hsmint puts in a mint. */
function signingInput(alg) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const header = { alg, kid: 'eG3CQGaO8AMgtzzd7OuEo-qrSEdCIoFajUa8btdg_-8', typ: 'JWT' };
  const claims = {
    iss: 'urn:hsmint:bench',
    sub: 'user:bench',
    aud: 'api',
    iat: now,
    nbf: now,
    exp: now + 300,
    jti: 'Wc5cWJ5zb1t2o3oA7E0ZrQ',
    scope: 'read write',
  };
  return Buffer.from(`${encode(header)}.${encode(claims)}`);
}

/** How each algorithm is generated and signed; the same mechanisms as core/pkcs11/keystore.ts. */
function schemeOf(pkcs11, alg, rsaBits) {
  const ec = (oid, prehash, length) => ({
    keyGen: pkcs11.CKM_EC_KEY_PAIR_GEN,
    keyType: pkcs11.CKK_EC,
    publicAttributes: [{ type: pkcs11.CKA_EC_PARAMS, value: Buffer.from(oid, 'hex') }],
    mechanism: { mechanism: pkcs11.CKM_ECDSA },
    prehash,
    length,
  });
  switch (alg) {
    case 'ES256':
      return ec('06082a8648ce3d030107', 'sha256', 64);
    case 'ES384':
      return ec('06052b81040022', 'sha384', 96);
    case 'EdDSA':
      // PKCS#11 3.0 mechanisms that pkcs11js 2.1 does not name: CKM_EC_EDWARDS_KEY_PAIR_GEN,
      // CKK_EC_EDWARDS, CKM_EDDSA.
      return {
        keyGen: 0x1055,
        keyType: 0x40,
        publicAttributes: [{ type: pkcs11.CKA_EC_PARAMS, value: Buffer.from('06032b6570', 'hex') }],
        mechanism: { mechanism: 0x1057 },
        length: 64,
      };
    case 'PS256':
      return {
        keyGen: pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN,
        keyType: pkcs11.CKK_RSA,
        publicAttributes: [
          { type: pkcs11.CKA_MODULUS_BITS, value: rsaBits },
          { type: pkcs11.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
        ],
        mechanism: {
          mechanism: pkcs11.CKM_SHA256_RSA_PKCS_PSS,
          parameter: {
            type: pkcs11.CK_PARAMS_RSA_PSS,
            hashAlg: pkcs11.CKM_SHA256,
            mgf: pkcs11.CKG_MGF1_SHA256,
            saltLen: 32,
          },
        },
        length: rsaBits / 8,
      };
    default:
      throw new Error(`no benchmark for ${alg} (ES256, ES384, EdDSA, PS256)`);
  }
}

/** What one loop counted: signatures, their latencies (ms), errors and the first one. */
function tally() {
  return { latencies: [], errors: 0, firstError: undefined, elapsedMs: 0 };
}

function countError(counts, error) {
  counts.errors++;
  counts.firstError ??= error instanceof Error ? error.message : String(error);
}

/** Signatures per second over one loop's time. */
const rate = (signatures, elapsedMs) => (elapsedMs > 0 ? (signatures * 1000) / elapsedMs : 0);

function stats(counts, opsPerS) {
  return {
    ops_per_s: opsPerS,
    ...quantiles(counts.latencies),
    errors: counts.errors,
    ...(counts.firstError === undefined ? {} : { first_error: counts.firstError }),
  };
}

/** One signature as hsmint makes it: the hash in Node where the mechanism is raw ECDSA. */
function signOnce(lib, job, out) {
  const data = job.prehash ? createHash(job.prehash).update(job.data).digest() : job.data;
  lib.C_SignInit(job.session, job.mechanism, job.key);
  return lib.C_Sign(job.session, data, out);
}

/** C_SignInit + C_Sign in a loop on one session until `ms` have passed; a warm-up records nothing. */
function signLoop(lib, job, ms, record) {
  const counts = tally();
  const out = Buffer.alloc(job.length);
  const started = performance.now();
  const end = started + ms;
  for (let now = started; now < end && counts.errors < MAX_ERRORS; now = performance.now()) {
    try {
      signOnce(lib, job, out);
      if (record) counts.latencies.push(performance.now() - now);
    } catch (error) {
      countError(counts, error);
    }
  }
  counts.elapsedMs = performance.now() - started;
  return counts;
}

/** `sessions` callers at once, each C_SignInit then C_Sign on libuv's pool, for `ms`. */
async function asyncLoops(lib, job, sessions, ms, record) {
  const counts = tally();
  const started = performance.now();
  const end = started + ms;
  await Promise.all(
    sessions.map(async (session) => {
      const out = Buffer.alloc(job.length);
      // pkcs11js keeps bare pointers to the buffers of a call on libuv's pool: the input must
      // stay reachable until the call returns, or the collector may free it under the token.
      const inFlight = { data: job.data };
      while (performance.now() < end && counts.errors < MAX_ERRORS) {
        const sent = performance.now();
        try {
          inFlight.data = job.prehash
            ? createHash(job.prehash).update(job.data).digest()
            : job.data;
          lib.C_SignInit(session, job.mechanism, job.key);
          await lib.C_SignAsync(session, inFlight.data, out);
          if (record) counts.latencies.push(performance.now() - sent);
        } catch (error) {
          countError(counts, error);
        }
      }
    }),
  );
  counts.elapsedMs = performance.now() - started;
  return counts;
}

/**
 * Two threads, each loading the same module (dlopen counts references: no second
 * C_Initialize, and the process's login and session key serve them as they serve
 * core/pkcs11/sign-pool.ts). Both start together once loaded; their rates add up.
 */
async function workerLoops(modulePath, job, sessions, seconds, warmupSeconds) {
  const workers = sessions.map(
    (session) =>
      new Worker(thisFile, {
        workerData: {
          role: 'raw-bench-signer',
          modulePath,
          job: { ...job, session },
          seconds,
          warmupSeconds,
        },
      }),
  );
  try {
    const replies = workers.map(
      (worker) =>
        new Promise((resolve, reject) => {
          const messages = [];
          worker.on('message', (message) => {
            messages.push(message);
            if (messages.length === 2) resolve(message);
          });
          worker.once('error', reject);
          worker.once('exit', (code) => reject(new Error(`signing worker exited with ${code}`)));
        }),
    );
    // Awaited below once both have started; a worker that fails first rejects there.
    for (const reply of replies) reply.catch(() => undefined);
    await Promise.all(
      workers.map(
        (worker) =>
          new Promise((resolve, reject) => {
            worker.once('message', resolve);
            worker.once('error', reject);
            worker.once('exit', (code) => reject(new Error(`signing worker exited with ${code}`)));
          }),
      ),
    );
    for (const worker of workers) worker.postMessage('go');
    const results = await Promise.all(replies);
    const counts = tally();
    let opsPerS = 0;
    for (const result of results) {
      if (result.error) throw new Error(result.error);
      // One at a time: a spread of a long run's latencies would overflow the call's arguments.
      for (const latency of result.latencies) counts.latencies.push(latency);
      counts.errors += result.errors;
      counts.firstError ??= result.firstError;
      opsPerS += rate(result.latencies.length, result.elapsedMs);
    }
    return stats(counts, opsPerS);
  } finally {
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}

/** A worker thread of workerLoops: loads the module, says so, waits for 'go', signs. */
function runWorker() {
  const pkcs11 = require('pkcs11js');
  const { modulePath, seconds, warmupSeconds } = workerData;
  const job = {
    ...workerData.job,
    session: Buffer.from(workerData.job.session),
    key: Buffer.from(workerData.job.key),
    data: Buffer.from(workerData.job.data),
  };
  const lib = new pkcs11.PKCS11();
  lib.load(modulePath);
  parentPort.postMessage('ready');
  parentPort.once('message', () => {
    try {
      signLoop(lib, job, warmupSeconds * 1000, false);
      const counts = signLoop(lib, job, seconds * 1000, true);
      const latencies = Float64Array.from(counts.latencies);
      parentPort.postMessage(
        {
          latencies,
          errors: counts.errors,
          firstError: counts.firstError,
          elapsedMs: counts.elapsedMs,
        },
        [latencies.buffer],
      );
    } catch (error) {
      parentPort.postMessage({ error: error instanceof Error ? error.message : String(error) });
    }
  });
}

/** The slot of the one initialized token that matches the config's token selector. */
function findSlot(lib, selector, matchesToken) {
  const slots = lib
    .C_GetSlotList(true)
    .filter((slot) => matchesToken(selector, lib.C_GetTokenInfo(slot)));
  if (slots.length !== 1)
    throw new Error(`${slots.length} tokens match ${JSON.stringify(selector)}; expected one`);
  return slots[0];
}

/**
 * The child's whole run. `spec`: config, alg, seconds, warmupSeconds, modes, and optionally
 * modulePath and environment in place of the config's (peer.mjs: p11-kit's client).
 */
async function childMain(spec) {
  const { loadConfig } = await import(join(root, 'dist/core/config.js'));
  const { resolveModule, sessionCount } = await import(join(root, 'dist/core/open.js'));
  const { readPinFile } = await import(join(root, 'dist/core/pin.js'));
  const { matchesToken } = await import(join(root, 'dist/core/pkcs11/uri.js'));
  const pkcs11 = require('pkcs11js');
  const config = loadConfig(spec.config);
  const modulePath = spec.modulePath ?? resolveModule(config);
  // SoftHSM reads SOFTHSM2_CONF at C_Initialize, p11-kit's client P11_KIT_SERVER_ADDRESS.
  Object.assign(process.env, spec.environment ?? config.hsm.environment);
  const pin = await readPinFile(config.hsm.pinFile);
  const scheme = schemeOf(pkcs11, spec.alg, config.keys.rsaBits);
  const lib = new pkcs11.PKCS11();
  lib.load(modulePath);
  // Calls from several threads at once: the module must lock (as core/pkcs11/token.ts asks).
  lib.C_Initialize({ flags: pkcs11.CKF_OS_LOCKING_OK });
  const sessions = [];
  const open = (flags = pkcs11.CKF_SERIAL_SESSION) => {
    const session = lib.C_OpenSession(slot, flags);
    sessions.push(session);
    return session;
  };
  const slot = findSlot(lib, config.hsm.token, matchesToken);
  const result = {};
  try {
    const anchor = open(pkcs11.CKF_SERIAL_SESSION | pkcs11.CKF_RW_SESSION);
    lib.C_Login(anchor, pkcs11.CKU_USER, pin);
    const label = 'hsmint-bench-raw';
    const keys = lib.C_GenerateKeyPair(
      anchor,
      { mechanism: scheme.keyGen },
      [
        { type: pkcs11.CKA_TOKEN, value: true },
        { type: pkcs11.CKA_KEY_TYPE, value: scheme.keyType },
        { type: pkcs11.CKA_LABEL, value: label },
        { type: pkcs11.CKA_VERIFY, value: true },
        ...scheme.publicAttributes,
      ],
      [
        { type: pkcs11.CKA_TOKEN, value: true },
        { type: pkcs11.CKA_KEY_TYPE, value: scheme.keyType },
        { type: pkcs11.CKA_LABEL, value: label },
        { type: pkcs11.CKA_PRIVATE, value: true },
        { type: pkcs11.CKA_SENSITIVE, value: true },
        { type: pkcs11.CKA_EXTRACTABLE, value: false },
        { type: pkcs11.CKA_SIGN, value: true },
      ],
    );
    try {
      const job = {
        key: keys.privateKey,
        mechanism: scheme.mechanism,
        prehash: scheme.prehash,
        data: signingInput(spec.alg),
        length: scheme.length,
      };
      // One signature first: a mechanism the module refuses is an error of the run, with its
      // CKR, rather than a measurement of nothing but errors.
      try {
        signOnce(lib, { ...job, session: anchor }, Buffer.alloc(job.length));
      } catch (error) {
        throw new Error(`the first signature failed: ${error.message}`);
      }
      const warmupMs = spec.warmupSeconds * 1000;
      const ms = spec.seconds * 1000;
      for (const mode of spec.modes) {
        if (mode === 'sync_1') {
          const session = open();
          signLoop(lib, { ...job, session }, warmupMs, false);
          const counts = signLoop(lib, { ...job, session }, ms, true);
          result[mode] = stats(counts, rate(counts.latencies.length, counts.elapsedMs));
        } else if (mode === 'async_n') {
          const list = Array.from({ length: sessionCount(config) }, () => open());
          await asyncLoops(lib, job, list, warmupMs, false);
          const counts = await asyncLoops(lib, job, list, ms, true);
          result[mode] = {
            ...stats(counts, rate(counts.latencies.length, counts.elapsedMs)),
            sessions: list.length,
          };
        } else if (mode === 'workers_2') {
          const list = [open(), open()];
          result[mode] = await workerLoops(modulePath, job, list, spec.seconds, spec.warmupSeconds);
        } else throw new Error(`unknown mode ${mode}`);
      }
    } finally {
      lib.C_DestroyObject(anchor, keys.privateKey);
      lib.C_DestroyObject(anchor, keys.publicKey);
    }
  } finally {
    for (const session of sessions.reverse()) {
      try {
        lib.C_CloseSession(session);
      } catch {
        // Closing is tidiness: C_Finalize below ends them all anyway.
      }
    }
    lib.C_Finalize();
  }
  return result;
}

if (!isMainThread && workerData?.role === 'raw-bench-signer') runWorker();
else if (isMainThread && process.argv[1] === thisFile && process.argv[2] === '--child') {
  try {
    process.stdout.write(JSON.stringify(await childMain(JSON.parse(process.argv[3]))));
  } catch (error) {
    process.stdout.write(
      JSON.stringify({ error: error instanceof Error ? error.message : String(error) }),
    );
    process.exitCode = 1;
  }
}
