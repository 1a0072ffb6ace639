/**
 * `npm run bundle` and install.sh as an admin uses them across an air gap: the tarball is made
 * once and unpacked, install.sh installs it into a temporary root with no network at all
 * (`unshare --net`; the tests run as root), and then the installed tree alone, still without a
 * network, makes a SoftHSM token, runs the daemon and mints.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  writeFile,
} from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const REPO = resolve(import.meta.dirname, '../..');
const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as {
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

// What an admin's shell would have: no NODE_PATH or NODE_OPTIONS from the test runner, and the
// node that runs these tests first on PATH, so install.sh finds that one.
const ENV = {
  PATH: `${dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
  HOME: process.env['HOME'] ?? '/root',
  LANG: 'C.UTF-8',
};

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end; never throws on a non-zero exit. */
function run(command: string, args: string[], cwd?: string): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { env: ENV, encoding: 'utf8', maxBuffer: 64 << 20, ...(cwd ? { cwd } : {}) },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 127) : 0;
        resolve({ code, stdout, stderr: stderr || (error && code === 127 ? error.message : '') });
      },
    );
  });
}

/** With no network at all: a network namespace of its own, holding only a loopback that is down. */
const offline = (command: string, args: string[]) =>
  run('unshare', ['--net', '--', command, ...args]);

/**
 * Inside fresh network and mount namespaces, with the installed tree mounted at /opt/hsmint,
 * where the wrappers and hsmintd.service name it, and the host's own /opt folders still there
 * (node may live in one). Nothing outside the namespace sees the mounts.
 */
const IN_PLACE = `set -eu
installed=$1 host_opt=$2
shift 2
mount --rbind /opt "$host_opt"
mount -t tmpfs tmpfs /opt
for entry in "$host_opt"/*; do
  [ -d "$entry" ] || continue
  mkdir "/opt/\${entry##*/}"
  mount --rbind "$entry" "/opt/\${entry##*/}"
done
mkdir -p /opt/hsmint
mount --bind "$installed" /opt/hsmint
exec "$@"`;

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const mode = async (path: string) => (await lstat(path)).mode & 0o7777;

/** Every file under dir (not folders), relative to it. */
async function files(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => !entry.isDirectory())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)));
}

/** The numeric id of a name in an /etc/passwd or /etc/group file. */
async function idIn(file: string, name: string): Promise<number> {
  const line = (await readFile(file, 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`${name} is not in ${file}`);
  return Number(line.split(':')[2]);
}

async function health(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ socketPath, path: '/v1/health', headers: { host: 'hsmint' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode === 200));
    });
    req.on('error', () => resolve(false));
    req.end();
  });
}

describe('npm run bundle and install.sh, offline', () => {
  let work: string;
  let tarball: string;
  let printedDigest: string;
  let name: string;
  let bundle: string;
  let root: string;
  let install: Result;

  /** unshare's arguments to run `command` offline, with the installed tree at /opt/hsmint. */
  const inPlaceArgs = (command: string, args: string[]) => [
    '--net',
    '--mount',
    '--',
    'sh',
    '-c',
    IN_PLACE,
    'sh',
    join(root, 'opt', 'hsmint'),
    join(work, 'host-opt'),
    command,
    ...args,
  ];
  const inPlace = (command: string, args: string[]) => run('unshare', inPlaceArgs(command, args));

  beforeAll(async () => {
    const probe = await run('unshare', ['--net', '--mount', '--', 'true']);
    if (probe.code !== 0) {
      throw new Error(
        `these tests install with no network through \`unshare --net --mount\` (util-linux), as root; it failed here (exit ${probe.code}): ${probe.stderr.trim()}`,
      );
    }
    work = await mkdtemp(join(tmpdir(), 'hsmint-bundle-test-'));
    await mkdir(join(work, 'host-opt'));

    const made = await run(process.execPath, [
      join(REPO, 'scripts', 'bundle.mjs'),
      '--out',
      join(work, 'out'),
    ]);
    if (made.code !== 0) throw new Error(`scripts/bundle.mjs failed:\n${made.stderr}`);
    [printedDigest, tarball] = made.stdout.trim().split(/ {2}/) as [string, string];
    name = basename(tarball, '.tar.gz');

    await mkdir(join(work, 'unpacked'));
    const unpacked = await run('tar', ['-xzf', tarball, '-C', join(work, 'unpacked')]);
    expect(unpacked.code, unpacked.stderr).toBe(0);
    bundle = join(work, 'unpacked', name);

    root = join(work, 'root');
    await mkdir(root);
    install = await offline(join(bundle, 'install.sh'), ['--root', root]);
    if (install.code !== 0) throw new Error(`install.sh failed:\n${install.stderr}`);
  }, 180_000);

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('makes one tarball for this platform: sorted, root:root, one time, relative names, and the sha256 it prints', async () => {
    const major = process.versions.node.split('.')[0];
    expect(name).toBe(`hsmint-${pkg.version}-${process.platform}-${process.arch}-node${major}`);
    expect(sha256(await readFile(tarball))).toBe(printedDigest);
    expect(await readFile(`${tarball}.sha256`, 'utf8')).toBe(`${printedDigest}  ${name}.tar.gz\n`);

    const listing = await run('tar', ['-tvzf', tarball, '--numeric-owner', '--full-time']);
    expect(listing.code).toBe(0);
    const entries = listing.stdout
      .trim()
      .split('\n')
      .map((line) => {
        const [, owner, , date, time, ...path] = line.split(/\s+/);
        return { owner, when: `${date} ${time}`, path: path.join(' ') };
      });
    expect(new Set(entries.map((entry) => entry.owner))).toEqual(new Set(['0/0']));
    expect(new Set(entries.map((entry) => entry.when)).size).toBe(1);
    for (const { path } of entries) {
      expect(path.startsWith(`${name}/`) || path === `${name}/`).toBe(true);
      expect(path.split('/')).not.toContain('..');
    }
    // Depth first, each folder's entries in byte order: the same as sorting by path components.
    const paths = entries.map((entry) => entry.path.replace(/\/$/, '').split('/'));
    const byComponents = (a: string[], b: string[]) => {
      for (let i = 0; i < Math.min(a.length, b.length); i++)
        if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
      return a.length - b.length;
    };
    expect(paths).toEqual([...paths].sort(byComponents));
  });

  it('holds the built code, production dependencies only, both native addons and SHA256SUMS of every file', async () => {
    const all = await files(bundle);
    for (const path of [
      'install.sh',
      'BUILD-INFO',
      'package.json',
      'README.md',
      'ERRORS.md',
      'SoftHSM.md',
      'dist/daemon/main.js',
      'dist/cli/main.js',
      'build/Release/hsmint_native.node',
      'node_modules/pkcs11js/build/Release/pkcs11.node',
      'hsm-profiles/softhsm.yaml',
      'systemd/hsmintd.service',
      'systemd/hsmintd.socket',
      'systemd/hsmintd.service.d/smartcard.conf',
      'systemd/sysusers.d/hsmint.conf',
      'systemd/tmpfiles.d/hsmint.conf',
      'systemd/hsmint.example.yaml',
    ])
      expect(all).toContain(path);
    for (const dependency of Object.keys(pkg.dependencies))
      expect(all).toContain(`node_modules/${dependency}/package.json`);
    for (const dependency of Object.keys(pkg.devDependencies))
      expect(all.some((path) => path.startsWith(`node_modules/${dependency}/`))).toBe(false);
    // No symlinks (.bin shims), tool caches or object files.
    expect(all.filter((path) => /(^|\/)(\.bin|\.vite|\.cache)\/|\.o$/.test(path))).toEqual([]);

    const listed = (await readFile(join(bundle, 'SHA256SUMS'), 'utf8'))
      .trim()
      .split('\n')
      .map((line) => line.slice(66));
    expect(listed.sort()).toEqual(all.filter((path) => path !== 'SHA256SUMS').sort());
    const check = await run('sha256sum', ['--check', '--strict', '--quiet', 'SHA256SUMS'], bundle);
    expect(check.code, check.stdout).toBe(0);
  });

  it('installs every file where it belongs, with its mode and owner', async () => {
    const opt = join(root, 'opt', 'hsmint');
    const uid = await idIn(join(root, 'etc', 'passwd'), 'hsmint');
    const gid = await idIn(join(root, 'etc', 'group'), 'hsmint');
    await idIn(join(root, 'etc', 'group'), 'hsmint-clients');

    expect(await mode(opt)).toBe(0o755);
    expect(await mode(join(opt, 'dist', 'cli', 'main.js'))).toBe(0o644);
    expect(await mode(join(opt, 'build', 'Release', 'hsmint_native.node'))).toBe(0o644);
    expect(await mode(join(opt, 'install.sh'))).toBe(0o755);
    // The installed tree is the bundle, file for file.
    const check = await run('sha256sum', ['--check', '--strict', '--quiet', 'SHA256SUMS'], opt);
    expect(check.code, check.stdout).toBe(0);

    for (const [wrapper, entry] of [
      ['hsmintd', 'daemon'],
      ['hsmint', 'cli'],
    ] as const) {
      const path = join(opt, 'bin', wrapper);
      expect(await mode(path)).toBe(0o755);
      const text = await readFile(path, 'utf8');
      // The final path, not the --root one, and the node install.sh found, by absolute path.
      expect(text).toMatch(/^#!\/bin\/sh\n/);
      expect(text).toContain(`\nexec ${process.execPath} /opt/hsmint/dist/${entry}/main.js "$@"\n`);
    }
    expect(await readlink(join(root, 'usr', 'local', 'bin', 'hsmint'))).toBe(
      '/opt/hsmint/bin/hsmint',
    );

    for (const [installed, source] of [
      ['etc/systemd/system/hsmintd.service', 'hsmintd.service'],
      ['etc/systemd/system/hsmintd.socket', 'hsmintd.socket'],
      ['usr/lib/sysusers.d/hsmint.conf', 'sysusers.d/hsmint.conf'],
      ['usr/lib/tmpfiles.d/hsmint.conf', 'tmpfiles.d/hsmint.conf'],
    ] as const) {
      expect(await mode(join(root, installed)), installed).toBe(0o644);
      expect(await readFile(join(root, installed), 'utf8')).toBe(
        await readFile(join(bundle, 'systemd', source), 'utf8'),
      );
    }
    // The smartcard drop-in only with --smartcard.
    await expect(lstat(join(root, 'etc/systemd/system/hsmintd.service.d'))).rejects.toThrow();

    const etc = await lstat(join(root, 'etc', 'hsmint'));
    expect([etc.mode & 0o7777, etc.uid, etc.gid]).toEqual([0o750, 0, gid]);
    const config = await lstat(join(root, 'etc', 'hsmint', 'hsmint.yaml'));
    expect([config.mode & 0o7777, config.uid, config.gid]).toEqual([0o640, 0, gid]);
    expect(await readFile(join(root, 'etc', 'hsmint', 'hsmint.yaml'), 'utf8')).toBe(
      await readFile(join(bundle, 'systemd', 'hsmint.example.yaml'), 'utf8'),
    );
    // systemd-tmpfiles made the state directory, for the user systemd-sysusers made.
    const state = await lstat(join(root, 'var', 'lib', 'hsmint'));
    expect([state.isDirectory(), state.mode & 0o7777, state.uid, state.gid]).toEqual([
      true,
      0o700,
      uid,
      gid,
    ]);
    expect(install.stdout).toContain('systemctl enable --now hsmintd.socket hsmintd.service');
    expect(install.stdout).toContain('/etc/hsmint/pin');
  });

  it('runs: the installed CLI by its path, and by its wrapper at /opt/hsmint', async () => {
    const direct = await offline(process.execPath, [
      join(root, 'opt', 'hsmint', 'dist', 'cli', 'main.js'),
      '--version',
    ]);
    expect(direct.stdout.trim(), direct.stderr).toBe(pkg.version);
    const wrapped = await inPlace('/opt/hsmint/bin/hsmint', ['--version']);
    expect(wrapped.stdout.trim(), wrapped.stderr).toBe(pkg.version);
  });

  it('the installed tree alone makes a SoftHSM token, serves it and mints, with no network', async () => {
    // A short path of its own: a Unix socket path must stay under 108 bytes.
    const dir = await mkdtemp(join(tmpdir(), 'hsmint-'));
    let daemon: ChildProcess | undefined;
    try {
      const init = await inPlace('/opt/hsmint/bin/hsmint', [
        'softhsm',
        'init',
        '--dir',
        dir,
        '--audience',
        'api',
        '--json',
      ]);
      expect(init.code, init.stderr).toBe(0);
      const token = JSON.parse(init.stdout) as { config: string; socket: string; kid: string };

      // As hsmintd.service runs it: the wrapper, which execs node (unshare and sh exec too).
      daemon = spawn(
        'unshare',
        inPlaceArgs('/opt/hsmint/bin/hsmintd', ['--config', token.config]),
        { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let output = '';
      daemon.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      daemon.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const exited = new Promise<number | null>((resolve) =>
        daemon!.once('exit', (code) => resolve(code)),
      );
      const deadline = Date.now() + 15_000;
      while (!(await health(token.socket))) {
        if (daemon.exitCode !== null) throw new Error(`hsmintd exited:\n${output}`);
        if (Date.now() > deadline) throw new Error(`hsmintd did not answer:\n${output}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }

      const minted = await inPlace('/opt/hsmint/bin/hsmint', [
        '--socket',
        token.socket,
        '--json',
        'mint',
        '--aud',
        'api',
      ]);
      expect(minted.code, minted.stderr).toBe(0);
      const answer = JSON.parse(minted.stdout) as { token: string; kid: string };
      expect(answer.kid).toBe(token.kid);
      const verified = await inPlace('/opt/hsmint/bin/hsmint', [
        '--socket',
        token.socket,
        'verify',
        answer.token,
        '--aud',
        'api',
      ]);
      expect(verified.code, verified.stderr).toBe(0);

      daemon.kill('SIGTERM');
      expect(await exited, output).toBe(0);
    } finally {
      if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a bundle with one byte changed, or one file added, naming the file and copying nothing', async () => {
    const target = join(work, 'refused-root');
    await mkdir(target);

    const changed = join(work, 'changed');
    await run('cp', ['-a', bundle, changed]);
    const victim = join(changed, 'dist', 'cli', 'main.js');
    const bytes = await readFile(victim);
    const at = Math.floor(bytes.length / 2);
    bytes[at] = bytes[at]! ^ 0x01;
    await writeFile(victim, bytes);
    const refused = await offline(join(changed, 'install.sh'), ['--root', target]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('dist/cli/main.js: FAILED');

    const planted = join(work, 'planted');
    await run('cp', ['-a', bundle, planted]);
    await writeFile(join(planted, 'node_modules', 'jose', 'extra.js'), 'export {};\n');
    const alsoRefused = await offline(join(planted, 'install.sh'), ['--root', target]);
    expect(alsoRefused.code).not.toBe(0);
    expect(alsoRefused.stderr).toContain('node_modules/jose/extra.js');

    expect(await readdir(target)).toEqual([]);
  });

  it('installs again over itself: a new tree swapped in, the admin config kept, the drop-in on request', async () => {
    const config = join(root, 'etc', 'hsmint', 'hsmint.yaml');
    const edited = `${await readFile(config, 'utf8')}# an admin's edit\n`;
    await writeFile(config, edited);
    const before = await lstat(join(root, 'opt', 'hsmint'));

    const again = await offline(join(bundle, 'install.sh'), ['--root', root, '--smartcard']);
    expect(again.code, again.stderr).toBe(0);
    expect(await readFile(config, 'utf8')).toBe(edited);
    expect((await lstat(join(root, 'opt', 'hsmint'))).ino).not.toBe(before.ino);
    expect((await readdir(join(root, 'opt'))).sort()).toEqual(['hsmint']);
    const dropIn = join(root, 'etc/systemd/system/hsmintd.service.d/smartcard.conf');
    expect(await mode(dropIn)).toBe(0o644);
    expect(await readFile(dropIn, 'utf8')).toBe(
      await readFile(join(bundle, 'systemd', 'hsmintd.service.d', 'smartcard.conf'), 'utf8'),
    );
    const check = await run(
      'sha256sum',
      ['--check', '--strict', '--quiet', 'SHA256SUMS'],
      join(root, 'opt', 'hsmint'),
    );
    expect(check.code, check.stdout).toBe(0);
  });

  it('--prefix moves the tree, and the wrappers, the link and the unit follow it', async () => {
    const other = join(work, 'prefix-root');
    await mkdir(other);
    const installed = await offline(join(bundle, 'install.sh'), [
      '--root',
      other,
      '--prefix',
      '/srv/hsmint',
    ]);
    expect(installed.code, installed.stderr).toBe(0);
    expect(await readFile(join(other, 'srv/hsmint/bin/hsmint'), 'utf8')).toContain(
      ' /srv/hsmint/dist/cli/main.js "$@"',
    );
    expect(await readlink(join(other, 'usr/local/bin/hsmint'))).toBe('/srv/hsmint/bin/hsmint');
    const unit = await readFile(join(other, 'etc/systemd/system/hsmintd.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=\/srv\/hsmint\/bin\/hsmintd /m);
    expect(unit).not.toContain('/opt/hsmint');
  });
});
