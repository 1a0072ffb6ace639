#!/usr/bin/env node
// Makes a fresh clone ready: system packages (SoftHSM, a C++ toolchain for the pkcs11js
// addon) and npm dependencies. Plain Node, no dependencies: it runs before `npm install`.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const say = (line) => process.stderr.write(`setup: ${line}\n`);

const major = Number(process.versions.node.split('.')[0]);
if (major < 20) {
  say(`hsmint needs Node.js >= 20; this is ${process.versions.node}`);
  process.exit(1);
}

function softhsmModule() {
  const profile = readFileSync(join(root, 'hsm-profiles', 'softhsm.yaml'), 'utf8');
  // module_candidates entries read `- { path: /usr/lib/..., distro: ... }`.
  const candidates = [...profile.matchAll(/\bpath:\s*(\/[^\s,}]+\.so)/g)].map((m) => m[1]);
  return candidates.find((path) => existsSync(path));
}

const onPath = (tool) =>
  spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;

/** A PKCS#11 module in the system's module folder (/usr/lib/<multiarch>/pkcs11 on Debian). */
function systemModule(name) {
  const folders = ['/usr/lib/pkcs11', '/usr/lib64/pkcs11', '/usr/lib'];
  for (const entry of existsSync('/usr/lib') ? readdirSync('/usr/lib') : [])
    if (entry.endsWith('-linux-gnu'))
      folders.push(join('/usr/lib', entry, 'pkcs11'), join('/usr/lib', entry));
  return folders.some((folder) => existsSync(join(folder, name)));
}

const missing = [];
if (!softhsmModule()) missing.push('softhsm2');
if (!onPath('g++') || !onPath('make')) missing.push('build-essential');
if (!onPath('python3')) missing.push('python3');
// `npm test` (--tests) also needs what the tests drive: systemd-analyze and
// systemd-socket-activate, p11-kit's server and client module (a token that goes away), and
// OpenSC's pkcs11-spy (counting logins).
if (process.argv.includes('--tests')) {
  if (!onPath('systemd-analyze') || !onPath('systemd-socket-activate')) missing.push('systemd');
  if (!onPath('p11-kit')) missing.push('p11-kit');
  if (!systemModule('p11-kit-client.so')) missing.push('p11-kit-modules');
  if (!systemModule('pkcs11-spy.so')) missing.push('opensc-pkcs11');
}

if (missing.length > 0) {
  const command = `apt-get install -y ${missing.join(' ')}`;
  const isRoot = process.getuid?.() === 0;
  const canSudo =
    !isRoot &&
    onPath('sudo') &&
    spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0;
  if (!onPath('apt-get') || (!isRoot && !canSudo)) {
    say(`missing system packages: ${missing.join(', ')}. Run this once, then try again:`);
    process.stderr.write(`\n    sudo apt-get update && sudo ${command}\n\n`);
    process.exit(1);
  }
  const prefix = isRoot ? [] : ['sudo', '-n'];
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  say(`installing ${missing.join(', ')} with apt-get`);
  for (const args of [
    ['apt-get', 'update'],
    ['apt-get', 'install', '-y', ...missing],
  ]) {
    const [cmd, ...rest] = [...prefix, ...args];
    execFileSync(cmd, rest, { stdio: 'inherit', env });
  }
}

// npm dependencies: install when absent or older than the lock file.
const installed = join(root, 'node_modules', '.package-lock.json');
const lock = join(root, 'package-lock.json');
const stale =
  !existsSync(installed) ||
  (existsSync(lock) && statSync(lock).mtimeMs > statSync(installed).mtimeMs);
const addon = join(root, 'node_modules', 'pkcs11js', 'build', 'Release', 'pkcs11.node');
if (stale || !existsSync(addon)) {
  say('installing npm dependencies');
  execFileSync('npm', [existsSync(lock) ? 'ci' : 'install', '--no-audit', '--no-fund'], {
    cwd: root,
    stdio: 'inherit',
  });
}
if (!existsSync(addon)) {
  say('building the pkcs11js addon');
  execFileSync('npm', ['rebuild', 'pkcs11js'], { cwd: root, stdio: 'inherit' });
}
// hsmint's own addon (SO_PEERCRED, sd_notify); `npm ci` builds it, a stale clone may not have.
if (!existsSync(join(root, 'build', 'Release', 'hsmint_native.node'))) {
  say('building the hsmint native addon');
  execFileSync('npm', ['run', 'build:native'], { cwd: root, stdio: 'inherit' });
}
