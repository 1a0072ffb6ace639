// The token as another process reaches it without hsmint: `p11-kit server` exports the
// config's token on a Unix socket, and one client process loads p11-kit's client module and
// signs in a loop on one session (raw.mjs's child, sync_1 only), the way an admin would share
// a token today. Every call is a round trip to the server, which forks a p11-kit-remote per
// connection that makes the call into the real module.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { runChild } from './raw.mjs';

const root = join(import.meta.dirname, '..', '..');

/** A module in the system's PKCS#11 folders (/usr/lib/<multiarch>/pkcs11 on Debian). */
function systemModule(name) {
  const folders = ['/usr/lib/pkcs11', '/usr/lib64/pkcs11'];
  for (const entry of existsSync('/usr/lib') ? readdirSync('/usr/lib') : [])
    if (entry.endsWith('-linux-gnu')) folders.push(join('/usr/lib', entry, 'pkcs11'));
  return folders.map((folder) => join(folder, name)).find((path) => existsSync(path));
}

function p11KitCommand() {
  return ['/usr/bin/p11-kit', '/bin/p11-kit', '/usr/local/bin/p11-kit'].find((path) =>
    existsSync(path),
  );
}

/** The config's token as a PKCS#11 URI for p11-kit (label and serial, as hsmint selects it). */
function tokenUri(token) {
  const parts = [
    ['token', token.token],
    ['manufacturer', token.manufacturer],
    ['serial', token.serial],
    ['model', token.model],
  ]
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${name}=${encodeURIComponent(value)}`);
  return `pkcs11:${parts.join(';')}`;
}

/**
 * Starts `p11-kit server` in the foreground, in a process group of its own (it forks a
 * p11-kit-remote per connection, and stopping it must stop them too); resolves once it has
 * printed its address.
 */
async function startServer(command, { socket, provider, uri, environment }) {
  const child = spawn(
    command,
    ['server', '--foreground', '--name', socket, '--provider', provider, uri],
    {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...environment },
    },
  );
  // If the bench itself dies first, the server and its connections go with it.
  const killGroup = () => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // ESRCH: already gone.
    }
  };
  process.once('exit', killGroup);
  child.once('exit', () => process.off('exit', killGroup));
  let said = '';
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error('p11-kit server did not print its address within 10 s')),
        10_000,
      );
      child.stdout.on('data', (chunk) => {
        said += chunk;
        if (said.includes('P11_KIT_SERVER_PID')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`p11-kit server exited with ${code}: ${stderr.trim()}`));
      });
    });
  } catch (error) {
    await stopServer(child);
    throw error;
  }
  return child;
}

/**
 * SIGTERM to the server's group; after it exits (or 2 s), SIGKILL to whatever of the group is
 * left: a forked p11-kit-remote may outlive the server by a moment.
 */
async function stopServer(child) {
  const signalGroup = (signal) => {
    try {
      process.kill(-child.pid, signal);
    } catch {
      // ESRCH: no one left in the group.
    }
  };
  if (child.pid === undefined) return;
  const exited =
    child.exitCode !== null || child.signalCode !== null
      ? Promise.resolve()
      : new Promise((resolve) => child.once('exit', resolve));
  signalGroup('SIGTERM');
  await Promise.race([exited, sleep(2000)]);
  signalGroup('SIGKILL');
  await exited;
}

/**
 * Signs with `alg` for `seconds` from one client process with one session through p11-kit's
 * server and client, and returns { ops_per_s, p50_ms, p99_ms, max_ms, errors }, or
 * { skipped } when p11-kit or its client module is not installed.
 */
export async function measurePeer({ config, alg, seconds, warmupSeconds = 1 }) {
  const command = p11KitCommand();
  const client = systemModule('p11-kit-client.so');
  if (command === undefined || client === undefined) return { skipped: 'p11-kit is not installed' };
  const { loadConfig } = await import(join(root, 'dist/core/config.js'));
  const { resolveModule } = await import(join(root, 'dist/core/open.js'));
  const loaded = loadConfig(config);
  const dir = mkdtempSync(join(tmpdir(), 'hsmint-bench-p11kit-'));
  const socket = join(dir, 'p11.sock');
  let server;
  try {
    server = await startServer(command, {
      socket,
      provider: resolveModule(loaded),
      uri: tokenUri(loaded.hsm.token),
      environment: loaded.hsm.environment,
    });
    const result = await runChild({
      config,
      alg,
      seconds,
      warmupSeconds,
      modes: ['sync_1'],
      modulePath: client,
      environment: { P11_KIT_SERVER_ADDRESS: `unix:path=${socket}` },
    });
    return result.sync_1;
  } catch (error) {
    // p11-kit's RPC passes only the mechanisms it knows (0.24 knows no Ed25519): not a failure
    // of the bench, and no figure to give.
    if (error.ckr === 'CKR_MECHANISM_INVALID')
      return { skipped: `this p11-kit does not carry ${alg}'s mechanisms (CKR_MECHANISM_INVALID)` };
    throw error;
  } finally {
    if (server) await stopServer(server);
    rmSync(dir, { recursive: true, force: true });
  }
}
