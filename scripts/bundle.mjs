#!/usr/bin/env node
// `npm run bundle [-- --out DIR]`: one tarball that installs hsmint on a host with no network,
// for the platform, CPU and Node.js major this runs on. It holds the freshly built dist/, the
// production node_modules with their native addons, hsmint's own addon, the systemd files,
// install.sh, and SHA256SUMS of every file. Built from the npm packages already installed here:
// no download, neither now nor at install time.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  createReadStream,
  createWriteStream,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createGzip } from 'node:zlib';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const say = (line) => process.stderr.write(`bundle: ${line}\n`);

const { values } = parseArgs({ options: { out: { type: 'string' } } });
const outDir = resolve(values.out ?? join(root, 'bundle'));

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const nodeMajor = process.versions.node.split('.')[0];
const name = `${pkg.name}-${pkg.version}-${process.platform}-${process.arch}-node${nodeMajor}`;

// The files install.sh puts in place; their owners keep them in systemd/.
const SYSTEMD_FILES = [
  'hsmintd.service',
  'hsmintd.socket',
  'hsmintd.service.d/smartcard.conf',
  'sysusers.d/hsmint.conf',
  'tmpfiles.d/hsmint.conf',
  'hsmint.example.yaml',
];
const DOCS = ['README.md', 'ERRORS.md', 'SoftHSM.md', 'LICENSE'];

const missing = SYSTEMD_FILES.filter((file) => !existsSync(join(root, 'systemd', file)));
if (missing.length > 0) {
  say(`systemd/ lacks ${missing.join(', ')}: nothing to install the daemon with`);
  process.exit(1);
}
if (!existsSync(join(root, 'node_modules', '.package-lock.json'))) {
  say('no node_modules here: run `npm ci` (or `npm run setup`) first');
  process.exit(1);
}

// Children talk on stderr: stdout carries the one line a script may read (digest and path).
const exec = (command, args, options = {}) =>
  execFileSync(command, args, { stdio: ['ignore', 2, 2], ...options });

/** Every path under dir, depth first, relative to dir. */
function walk(dir, base = dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    return entry.isDirectory()
      ? [relative(base, path), ...walk(path, base)]
      : [relative(base, path)];
  });
}

// Inside one temporary folder, so a failed run leaves nothing half-made in bundle/.
const staging = mkdtempSync(join(tmpdir(), 'hsmint-bundle-'));
const top = join(staging, name);
try {
  mkdirSync(top);

  say('compiling dist/');
  // Into the bundle, not the repository's dist/: no stale output from deleted sources.
  exec('npm', ['run', '--silent', 'build', '--', '--outDir', join(top, 'dist')], { cwd: root });

  say('production node_modules (no devDependencies)');
  cpSync(join(root, 'node_modules'), join(top, 'node_modules'), {
    recursive: true,
    verbatimSymlinks: true,
    // Not the tools' caches (.vite, .cache) nor the command shims (.bin); npm's record of the
    // tree (.package-lock.json) stays.
    filter: (source) =>
      dirname(source) !== join(root, 'node_modules') ||
      !basename(source).startsWith('.') ||
      basename(source) === '.package-lock.json',
  });
  copyFileSync(join(root, 'package.json'), join(top, 'package.json'));
  copyFileSync(join(root, 'package-lock.json'), join(top, 'package-lock.json'));
  exec('npm', ['prune', '--omit=dev', '--ignore-scripts', '--offline', '--no-audit', '--no-fund'], {
    cwd: top,
    stdio: ['ignore', 'ignore', 2],
  });
  // node_modules/.package-lock.json now records exactly the packages shipped.
  rmSync(join(top, 'package-lock.json'));
  for (const path of walk(join(top, 'node_modules'))) {
    const full = join(top, 'node_modules', path);
    if (!existsSync(full)) continue; // under a folder removed earlier in this loop
    // Command shims are symlinks, and nothing here runs them.
    if (basename(path) === '.bin') rmSync(full, { recursive: true });
    // A native addon's build folder: keep build/Release/*.node, not the objects, the linker's
    // copy and the Makefiles (which name this machine's paths).
    else if (basename(path) === 'build' && existsSync(join(dirname(full), 'binding.gyp'))) {
      for (const file of walk(full)) {
        const target = join(full, file);
        if (lstatSync(target).isFile() && !/^Release\/[^/]+\.node$/.test(file)) rmSync(target);
      }
    }
  }
  // Scope folders whose packages were all devDependencies.
  removeEmptyFolders(join(top, 'node_modules'));

  say('building native/hsmint_native.c');
  const native = join(staging, 'native-build');
  mkdirSync(native);
  copyFileSync(join(root, 'package.json'), join(native, 'package.json'));
  copyFileSync(join(root, 'binding.gyp'), join(native, 'binding.gyp'));
  cpSync(join(root, 'native'), join(native, 'native'), { recursive: true });
  exec('npm', ['run', '--silent', 'build:native'], {
    cwd: native,
    stdio: ['ignore', 'ignore', 2],
  });
  mkdirSync(join(top, 'build', 'Release'), { recursive: true });
  copyFileSync(
    join(native, 'build', 'Release', 'hsmint_native.node'),
    join(top, 'build', 'Release', 'hsmint_native.node'),
  );

  for (const folder of ['hsm-profiles', 'systemd'])
    cpSync(join(root, folder), join(top, folder), { recursive: true });
  for (const doc of DOCS)
    if (existsSync(join(root, doc))) copyFileSync(join(root, doc), join(top, doc));
  copyFileSync(join(root, 'scripts', 'install.sh'), join(top, 'install.sh'));

  // Both addons load, and the CLI starts with nothing but what is in the bundle.
  exec(process.execPath, [
    '-e',
    `require(${JSON.stringify(join(top, 'node_modules', 'pkcs11js'))});` +
      `require(${JSON.stringify(join(top, 'build', 'Release', 'hsmint_native.node'))});`,
  ]);
  const version = execFileSync(
    process.execPath,
    [join(top, 'dist', 'cli', 'main.js'), '--version'],
    {
      cwd: staging,
      env: { ...process.env, NODE_PATH: '' },
      encoding: 'utf8',
    },
  ).trim();
  if (version !== pkg.version)
    throw new Error(`the bundled CLI says it is ${version}, package.json says ${pkg.version}`);

  const commit = gitCommit();
  const epoch = sourceDateEpoch();
  writeFileSync(
    join(top, 'BUILD-INFO'),
    [
      `name=${pkg.name}`,
      `version=${pkg.version}`,
      `platform=${process.platform}`,
      `arch=${process.arch}`,
      `node=${process.versions.node}`,
      `node_major=${nodeMajor}`,
      `commit=${commit}`,
      `source_date=${new Date(epoch * 1000).toISOString()}`,
      '',
    ].join('\n'),
  );

  // Fixed modes, so the archive depends on the files alone and not on this machine's umask.
  const paths = walk(top);
  const files = [];
  for (const path of paths) {
    const stat = lstatSync(join(top, path));
    if (stat.isSymbolicLink()) throw new Error(`${path} is a symlink; the bundle holds none`);
    // sha256sum escapes these in SHA256SUMS, and install.sh compares names line by line.
    if (/[\\\n\r]/.test(path))
      throw new Error(`${JSON.stringify(path)}: a name SHA256SUMS cannot hold`);
    if (stat.isDirectory()) chmodSync(join(top, path), 0o755);
    else {
      chmodSync(join(top, path), path === 'install.sh' ? 0o755 : 0o644);
      files.push(path);
    }
  }
  files.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  writeFileSync(
    join(top, 'SHA256SUMS'),
    files.map((path) => `${sha256(readFileSync(join(top, path)))}  ${path}\n`).join(''),
  );
  chmodSync(join(top, 'SHA256SUMS'), 0o644);
  chmodSync(top, 0o755);

  say(`archiving ${files.length + 1} files`);
  const tar = join(staging, `${name}.tar`);
  // Sorted entries, root:root, one fixed time, names relative to the bundle's folder.
  exec('tar', [
    '--create',
    '--file',
    tar,
    '--directory',
    staging,
    '--sort=name',
    '--format=gnu',
    '--owner=0',
    '--group=0',
    '--numeric-owner',
    `--mtime=@${epoch}`,
    name,
  ]);
  mkdirSync(outDir, { recursive: true });
  const tarball = join(outDir, `${name}.tar.gz`);
  // Node's gzip header carries no name and no time.
  await pipeline(
    createReadStream(tar),
    createGzip({ level: 9 }),
    createWriteStream(`${tarball}.tmp`),
  );
  renameSync(`${tarball}.tmp`, tarball);
  const digest = sha256(readFileSync(tarball));
  writeFileSync(`${tarball}.sha256`, `${digest}  ${basename(tarball)}\n`);
  say(
    `made ${tarball}; compare its sha256 on the far side of the gap (also in ${basename(tarball)}.sha256):`,
  );
  process.stdout.write(`${digest}  ${tarball}\n`);
} catch (error) {
  say(error instanceof Error ? error.message : String(error));
  process.exitCode = 1;
} finally {
  rmSync(staging, { recursive: true, force: true });
}

function sha256(data) {
  return createHash('sha256').update(data).digest('hex');
}

function removeEmptyFolders(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true }))
    if (entry.isDirectory()) removeEmptyFolders(join(dir, entry.name));
  if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true });
}

function gitCommit() {
  // Read-only: no index refresh behind the back of whoever else works in this clone.
  const env = { ...process.env, GIT_OPTIONAL_LOCKS: '0' };
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], {
      cwd: root,
      env,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain'], {
      cwd: root,
      env,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    return dirty.trim() === '' ? commit : `${commit}+changes`;
  } catch {
    return 'unknown';
  }
}

/** SOURCE_DATE_EPOCH, else the last commit's time: the same sources give the same archive. */
function sourceDateEpoch() {
  const fromEnv = Number(process.env['SOURCE_DATE_EPOCH']);
  if (Number.isInteger(fromEnv) && fromEnv > 0) return fromEnv;
  try {
    return Number(
      execFileSync('git', ['log', '-1', '--format=%ct'], {
        cwd: root,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim(),
    );
  } catch {
    return 0;
  }
}
