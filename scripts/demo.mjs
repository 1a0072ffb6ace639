#!/usr/bin/env node
// `npm run demo`: a SoftHSM token under ./var, hsmintd on ./var/hsmint.sock, then a token
// minted and verified with the CLI. The daemon is left running; `npm run demo:stop` stops it.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = join(root, 'var');
const config = join(dir, 'hsmint.yaml');
const socket = join(dir, 'hsmint.sock');
const pidFile = join(dir, 'hsmintd.pid');
const logFile = join(dir, 'hsmintd.log');
const cli = join(root, 'dist', 'cli', 'main.js');
const daemon = join(root, 'dist', 'daemon', 'main.js');

const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function stopDaemon() {
  if (!existsSync(pidFile)) return false;
  const pid = Number(readFileSync(pidFile, 'utf8'));
  rmSync(pidFile);
  if (!Number.isInteger(pid) || !alive(pid)) return false;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100 && alive(pid); i++) await sleep(100);
  return true;
}

function hsmint(args, options = {}) {
  return execFileSync(process.execPath, [cli, '--socket', socket, ...args], {
    encoding: 'utf8',
    ...options,
  });
}

function show(command, output) {
  process.stdout.write(`\n$ ${command}\n${output.trimEnd()}\n`);
}

/** Runs a CLI command on this terminal, so it prints for people when there is one. */
function showLive(command, args) {
  process.stdout.write(`\n$ ${command}\n`);
  execFileSync(process.execPath, [cli, ...args], { stdio: ['ignore', 'inherit', 'inherit'] });
}

if (process.argv.includes('--stop')) {
  const stopped = await stopDaemon();
  process.stdout.write(stopped ? 'hsmintd stopped\n' : 'hsmintd was not running\n');
  process.exit(0);
}

if (Buffer.byteLength(socket) > 107) {
  process.stderr.write(
    `demo: ${socket} is over the 107-byte Unix socket limit; clone hsmint to a shorter path\n`,
  );
  process.exit(1);
}
await stopDaemon(); // a daemon from an earlier demo would still run the old build

if (!existsSync(config)) {
  showLive('hsmint softhsm init --dir var', [
    'softhsm',
    'init',
    '--dir',
    dir,
    '--audience',
    'demo',
  ]);
}

const log = openSync(logFile, 'a');
const child = spawn(process.execPath, [daemon, '--config', config], {
  detached: true,
  stdio: ['ignore', log, log],
});
writeFileSync(pidFile, `${child.pid}\n`);
child.unref();

let ready = false;
for (let i = 0; i < 100 && !ready; i++) {
  await sleep(100);
  if (child.exitCode !== null) break;
  try {
    hsmint(['status', '--json'], { stdio: 'pipe' });
    ready = true;
  } catch {
    // not listening yet
  }
}
if (!ready) {
  process.stderr.write(
    `demo: hsmintd did not start; its log (${logFile}):\n${readFileSync(logFile, 'utf8').split('\n').slice(-10).join('\n')}\n`,
  );
  process.exit(1);
}
process.stdout.write(`\nhsmintd is running on ${socket} (pid ${child.pid}, log ${logFile})\n`);
showLive('hsmint status', ['--socket', socket, 'status']);
const token = hsmint(['mint', '--aud', 'demo', '--ttl', '2m', '--scope', 'read']).trim();
show('hsmint mint --aud demo --ttl 2m --scope read', token);
showLive('hsmint verify "$TOKEN" --aud demo', [
  '--socket',
  socket,
  'verify',
  token,
  '--aud',
  'demo',
]);
process.stdout.write(
  [
    '',
    'Try it yourself:',
    `  export HSMINT_SOCKET=${socket}`,
    '  TOKEN=$(node dist/cli/main.js mint --aud demo) && node dist/cli/main.js verify "$TOKEN"',
    '',
    'hsmintd keeps running. Stop it with: npm run demo:stop',
    '',
  ].join('\n'),
);
