/**
 * The shipped systemd files: systemd's own checker finds nothing wrong with the units, the
 * sandbox's exposure stays at or below 1.5 (with and without the smartcard drop-in), and the
 * settings that keep the PIN and the keys safe, or that the daemon needs to work at all, are
 * there. systemd-analyze must be installed (.ci/run installs it): without it this fails.
 */
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULTS } from '../../../core/config.js';
import { parseDuration } from '../../../core/duration.js';
import { LISTEN_FD_NAME } from '../../../daemon/systemd.js';

const SYSTEMD = fileURLToPath(new URL('../../../systemd/', import.meta.url));
const SERVICE = 'hsmintd.service';
const SOCKET = 'hsmintd.socket';
const SMARTCARD = 'hsmintd.service.d/smartcard.conf';
/** Where the installer puts the daemon; it exists only on an installed host. */
const DAEMON = '/opt/hsmint/bin/hsmintd';
/** SIGTERM drains in-flight requests for at most this long (daemon/main.ts). */
const DRAIN_SECONDS = 10;
/** The most exposure `systemd-analyze security` may report, in its own tenths. */
const THRESHOLD_TENTHS = 15;

interface Assignment {
  section: string;
  key: string;
  value: string;
}

/** A unit file's assignments in order: repeated keys and empty resets are kept as written. */
function parseUnit(text: string): Assignment[] {
  const assignments: Assignment[] = [];
  let section = '';
  for (const raw of text.replace(/\\\n/g, ' ').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      section = header[1] as string;
      continue;
    }
    const equals = line.indexOf('=');
    if (equals <= 0) throw new Error(`not a unit file line: ${JSON.stringify(line)}`);
    assignments.push({
      section,
      key: line.slice(0, equals).trim(),
      value: line.slice(equals + 1).trim(),
    });
  }
  return assignments;
}

class Unit {
  readonly assignments: Assignment[];

  constructor(readonly file: string) {
    this.assignments = parseUnit(readFileSync(join(SYSTEMD, file), 'utf8'));
  }

  /** Every value given to a key, in order. */
  all(section: string, key: string): string[] {
    return this.assignments
      .filter((entry) => entry.section === section && entry.key === key)
      .map((entry) => entry.value);
  }

  /** The value systemd ends up with for a single-valued key: the last one written. */
  last(section: string, key: string): string | undefined {
    return this.all(section, key).at(-1);
  }

  /** The items of a list-valued key after systemd applies it: an empty value resets the list. */
  list(section: string, key: string): string[] {
    let items: string[] = [];
    for (const value of this.all(section, key)) {
      items = value === '' ? [] : [...items, ...value.split(/\s+/)];
    }
    return items;
  }
}

/** The rows of a sysusers.d or tmpfiles.d file, split into columns (quoted ones kept whole). */
function rows(file: string): string[][] {
  return readFileSync(join(SYSTEMD, file), 'utf8')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => (line.match(/"[^"]*"|\S+/g) ?? []).map((column) => column.replace(/"/g, '')));
}

function analyze(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync('systemd-analyze', args, { encoding: 'utf8', timeout: 30_000 });
  if (result.error) {
    throw new Error(
      `cannot run systemd-analyze (${(result.error as NodeJS.ErrnoException).code}): ` +
        'install systemd (apt-get install systemd); these tests need it and do not skip',
    );
  }
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** The host's own units (the targets ours name), which a --root= tree must hold too. */
function hostUnitDirectory(): string {
  const found = ['/usr/lib/systemd/system', '/lib/systemd/system'].find((path) =>
    existsSync(join(path, 'multi-user.target')),
  );
  if (found === undefined)
    throw new Error('no systemd units on this host (multi-user.target): install systemd');
  return found;
}

function stubExecutable(path: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, '#!/bin/sh\nexit 0\n');
  chmodSync(path, 0o755);
}

/**
 * A filesystem root for `--root=`, holding the shipped units as an installed host has them
 * (byte for byte), the host's own units, and stand-ins for the two programs the service
 * runs, so that verify's check that ExecStart= and ExecReload= exist passes without an
 * installed hsmint.
 */
function makeRoot(base: string, name: string, withSmartcard: boolean): string {
  const root = join(base, name);
  const units = join(root, 'etc/systemd/system');
  mkdirSync(units, { recursive: true });
  cpSync(hostUnitDirectory(), join(root, 'usr/lib/systemd/system'), { recursive: true });
  stubExecutable(join(root, DAEMON));
  stubExecutable(join(root, 'usr/bin/kill'));
  copyFileSync(join(SYSTEMD, SERVICE), join(units, SERVICE));
  copyFileSync(join(SYSTEMD, SOCKET), join(units, SOCKET));
  if (withSmartcard) {
    mkdirSync(join(units, dirname(SMARTCARD)));
    copyFileSync(join(SYSTEMD, SMARTCARD), join(units, SMARTCARD));
  }
  return root;
}

function verify(root: string) {
  return analyze(['verify', `--root=${root}`, '--man=no', '--generators=no', SERVICE, SOCKET]);
}

function security(root: string): { status: number | null; exposure: number; output: string } {
  const result = analyze([
    'security',
    '--offline=yes',
    `--root=${root}`,
    `--threshold=${THRESHOLD_TENTHS}`,
    '--no-pager',
    SERVICE,
  ]);
  const output = result.stdout + result.stderr;
  const match = /Overall exposure level for hsmintd\.service: (\d+\.\d+)/.exec(output);
  if (!match) throw new Error(`no exposure level in systemd-analyze's output:\n${output}`);
  return { status: result.status, exposure: Number(match[1]), output };
}

describe('systemd-analyze on the shipped units', () => {
  let base: string | undefined;
  const made = new Map<string, string>();

  /**
   * A root made on first use, inside the test that needs it: with systemd-analyze missing,
   * every test here fails with the reason (a throwing beforeAll would only mark them skipped).
   */
  function root(name: 'plain' | 'smartcard' | 'broken'): string {
    analyze(['--version']);
    base ??= mkdtempSync(join(tmpdir(), 'hsmint-units-'));
    const existing = made.get(name);
    if (existing !== undefined) return existing;
    const path = makeRoot(base, name, name === 'smartcard');
    made.set(name, path);
    return path;
  }

  afterAll(() => {
    if (base !== undefined) rmSync(base, { recursive: true, force: true });
  });

  // verify exits 0 on unknown keys and bad values, which it only prints: stderr is the verdict.
  it('verify finds nothing to say about the service and the socket', () => {
    const result = verify(root('plain'));
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it('verify finds nothing to say with the smartcard drop-in applied', () => {
    const result = verify(root('smartcard'));
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
  });

  it('verify does complain about a broken unit, so its silence means something', () => {
    const broken = root('broken');
    const file = join(broken, 'etc/systemd/system', SERVICE);
    writeFileSync(file, `${readFileSync(file, 'utf8')}ProtectSytem=strict\n`);
    rmSync(join(broken, DAEMON));
    const { stderr } = verify(broken);
    expect(stderr).toContain("Unknown key 'ProtectSytem'");
    expect(stderr).toContain(`Command ${DAEMON} is not executable`);
  });

  it(`the service's exposure is at most ${THRESHOLD_TENTHS / 10}`, () => {
    const { status, exposure, output } = security(root('plain'));
    expect(exposure, output).toBeLessThanOrEqual(THRESHOLD_TENTHS / 10);
    expect(status, output).toBe(0);
  });

  it('the smartcard drop-in opens nothing: the exposure stays the same', () => {
    const withDropIn = security(root('smartcard'));
    expect(withDropIn.status, withDropIn.output).toBe(0);
    expect(withDropIn.exposure).toBe(security(root('plain')).exposure);
  });
});

describe('hsmintd.service', () => {
  const unit = new Unit(SERVICE);
  const service = (key: string) => unit.last('Service', key);

  it('runs the installed daemon as the hsmint user, never root', () => {
    expect(service('ExecStart')?.split(/\s+/)[0]).toBe(DAEMON);
    expect(service('User')).toBe('hsmint');
    expect(service('Group')).toBe('hsmint');
    expect(service('DynamicUser')).toBeUndefined();
  });

  it('takes the PIN as a credential, at the path the example config reads it from', () => {
    expect(unit.all('Service', 'LoadCredential')).toEqual(['pin:/etc/hsmint/pin']);
    const example = parseYaml(readFileSync(join(SYSTEMD, 'hsmint.example.yaml'), 'utf8')) as {
      hsm: { pin_file: string };
    };
    expect(example.hsm.pin_file).toBe('/run/credentials/hsmintd.service/pin');
  });

  it('puts no secret in the environment or in the unit file', () => {
    const environment = unit.assignments.filter((entry) =>
      ['Environment', 'EnvironmentFile', 'PassEnvironment'].includes(entry.key),
    );
    for (const entry of environment) expect(entry.value).not.toMatch(/pin|secret|password/i);
    expect(unit.all('Service', 'SetCredential')).toEqual([]);
  });

  it('keeps secrets out of core dumps and new files private', () => {
    expect(service('LimitCORE')).toBe('0');
    expect(service('UMask')).toBe('0077');
  });

  it('has no network: no namespace access, Unix sockets only, every IP address denied', () => {
    expect(service('PrivateNetwork')).toBe('yes');
    expect(unit.list('Service', 'RestrictAddressFamilies')).toEqual(['AF_UNIX']);
    expect(service('IPAddressDeny')).toBe('any');
  });

  it('has no capabilities and cannot gain any', () => {
    expect(unit.all('Service', 'CapabilityBoundingSet')).toEqual(['']);
    expect(unit.all('Service', 'AmbientCapabilities')).toEqual(['']);
    expect(service('NoNewPrivileges')).toBe('yes');
  });

  it('sees the OS read-only and writes only its state directory, mode 0700', () => {
    expect(service('ProtectSystem')).toBe('strict');
    expect(service('StateDirectory')).toBe('hsmint');
    expect(`/var/lib/${service('StateDirectory')}`).toBe(DEFAULTS.stateDir);
    expect(service('StateDirectoryMode')).toBe('0700');
    expect(unit.all('Service', 'ReadWritePaths')).toEqual([]);
  });

  // Settings that look like more hardening but would break the daemon.
  it('lets V8 compile, and lets hsmintd see who its callers are', () => {
    expect(service('MemoryDenyWriteExecute') ?? 'no').toBe('no');
    expect(service('PrivateUsers') ?? 'no').toBe('no');
    expect(service('ProtectProc') ?? 'default').toBe('default');
    // pkey_alloc(2) is outside @system-service and V8 calls it: refused, not killed.
    expect(service('SystemCallErrorNumber')).toBe('EPERM');
    expect(unit.all('Service', 'SystemCallFilter')).toEqual([
      '@system-service',
      '~@privileged @resources',
    ]);
  });

  it('speaks sd_notify from its main process, with a watchdog, reload and a stop budget', () => {
    expect(service('Type')).toBe('notify');
    expect(service('NotifyAccess')).toBe('main');
    expect(parseDuration(service('WatchdogSec') ?? '')).toBeGreaterThan(0);
    expect(service('ExecReload')).toBe('kill -HUP $MAINPID');
    expect(parseDuration(service('TimeoutStopSec') ?? '')).toBeGreaterThan(DRAIN_SECONDS);
    expect(service('Restart')).toBe('on-failure');
  });

  it('comes with its socket and starts at boot', () => {
    expect(unit.all('Unit', 'Requires')).toContain(SOCKET);
    expect(unit.all('Unit', 'After')).toContain(SOCKET);
    expect(unit.all('Install', 'WantedBy')).toEqual(['multi-user.target']);
  });
});

describe('hsmintd.socket', () => {
  const unit = new Unit(SOCKET);
  const socket = (key: string) => unit.last('Socket', key);
  const example = parseYaml(readFileSync(join(SYSTEMD, 'hsmint.example.yaml'), 'utf8')) as {
    socket: { path: string; mode: string; group: string };
  };

  it('listens where the daemon and the CLI look by default', () => {
    expect(unit.all('Socket', 'ListenStream')).toEqual([DEFAULTS.socketPath]);
    expect(example.socket.path).toBe(DEFAULTS.socketPath);
  });

  it('lets only the daemon and hsmint-clients connect, as the example config says', () => {
    expect(socket('SocketMode')).toBe('0660');
    expect(socket('SocketUser')).toBe('hsmint');
    expect(socket('SocketGroup')).toBe('hsmint-clients');
    expect(example.socket.mode).toBe(socket('SocketMode'));
    expect(example.socket.group).toBe(socket('SocketGroup'));
  });

  it('hands one listening socket, under the name the daemon takes, to one daemon', () => {
    expect(socket('FileDescriptorName')).toBe(LISTEN_FD_NAME);
    expect(socket('Accept')).toBe('no');
    expect(unit.all('Install', 'WantedBy')).toEqual(['sockets.target']);
  });
});

describe('hsmintd.service.d/smartcard.conf', () => {
  const dropIn = new Unit(SMARTCARD);

  it('orders the daemon after pcscd and changes nothing in the sandbox', () => {
    expect(dropIn.all('Unit', 'Wants')).toEqual(['pcscd.socket']);
    expect(dropIn.all('Unit', 'After')).toEqual(['pcscd.socket']);
    expect(dropIn.assignments.filter((entry) => entry.section !== 'Unit')).toEqual([]);
  });
});

describe('sysusers.d and tmpfiles.d', () => {
  it('create the daemon user, its home the state directory, and the clients group', () => {
    const entries = rows('sysusers.d/hsmint.conf');
    const user = entries.find((row) => row[0] === 'u' && row[1] === 'hsmint');
    // Its home is the state directory, so a module that caches under $HOME can write there.
    expect(user?.[4]).toBe(DEFAULTS.stateDir);
    expect(entries).toContainEqual(['g', 'hsmint-clients', '-']);
  });

  it('make the state directory 0700, owned by hsmint', () => {
    expect(rows('tmpfiles.d/hsmint.conf')).toContainEqual([
      'd',
      DEFAULTS.stateDir,
      '0700',
      'hsmint',
      'hsmint',
      '-',
    ]);
  });

  function run(command: string, args: string[]) {
    const result = spawnSync(command, args, { encoding: 'utf8', timeout: 30_000 });
    if (result.error) throw new Error(`cannot run ${command}: install systemd (${result.error})`);
    return result;
  }

  // tmpfiles gives the directory to hsmint: chown(2) needs root (CI runs as root).
  describe.runIf(process.getuid?.() === 0)('applied by systemd itself to an empty root', () => {
    it('make the user, the groups and a 0700 state directory the user owns', () => {
      const root = mkdtempSync(join(tmpdir(), 'hsmint-sysusers-'));
      try {
        mkdirSync(join(root, 'etc'));
        const sysusers = run('systemd-sysusers', [
          `--root=${root}`,
          join(SYSTEMD, 'sysusers.d/hsmint.conf'),
        ]);
        expect(sysusers.status, sysusers.stderr).toBe(0);
        const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8').split('\n');
        const user = passwd.find((line) => line.startsWith('hsmint:'))?.split(':');
        expect(user?.[5]).toBe(DEFAULTS.stateDir);
        expect(user?.[6]).toMatch(/nologin$/);
        const groups = readFileSync(join(root, 'etc/group'), 'utf8');
        expect(groups).toMatch(/^hsmint-clients:x:\d+:$/m);

        const tmpfiles = run('systemd-tmpfiles', [
          `--root=${root}`,
          '--create',
          join(SYSTEMD, 'tmpfiles.d/hsmint.conf'),
        ]);
        expect(tmpfiles.status, tmpfiles.stderr).toBe(0);
        const state = statSync(join(root, DEFAULTS.stateDir));
        expect(state.isDirectory()).toBe(true);
        expect(state.mode & 0o7777).toBe(0o700);
        expect(state.uid).toBe(Number(user?.[2]));
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
    });
  });
});
