/**
 * Token faults on real PKCS#11 modules, never a mock. p11-kit exports the SoftHSM token on a
 * Unix socket (`p11-kit server`) and the daemon reaches it through p11-kit's client module, so
 * the token can be taken away (the server killed: calls fail with CKR_DEVICE_ERROR), frozen
 * (SIGSTOP: calls hang) and given back. OpenSC's pkcs11-spy sits in front where the tests
 * count C_Login calls: it logs every call into the module.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAuditRecords } from '../../core/audit/read.js';
import { HsmintError } from '../../core/errors.js';
import { makeToken, startDaemon, type RunningDaemon, type TestToken } from './support/harness.js';

/** A module in the system's PKCS#11 folder (/usr/lib/<multiarch>/pkcs11 on Debian). */
function systemModule(name: string): string | undefined {
  const folders = ['/usr/lib/pkcs11', '/usr/lib64/pkcs11'];
  for (const entry of existsSync('/usr/lib') ? readdirSync('/usr/lib') : [])
    if (entry.endsWith('-linux-gnu')) folders.push(join('/usr/lib', entry, 'pkcs11'));
  return folders.map((folder) => join(folder, name)).find((path) => existsSync(path));
}

const P11_KIT_CLIENT = systemModule('p11-kit-client.so');
const SPY = systemModule('pkcs11-spy.so');
const SOFTHSM = '/usr/lib/softhsm/libsofthsm2.so';
const hasP11Kit =
  P11_KIT_CLIENT !== undefined &&
  ['/usr/bin/p11-kit', '/bin/p11-kit'].some((path) => existsSync(path));

/** The SoftHSM token of `token`, served on a socket in its folder by `p11-kit server`. */
class TokenServer {
  private child: ChildProcess | undefined;
  readonly socket: string;

  constructor(private readonly token: TestToken) {
    this.socket = join(token.dir, 'p11.sock');
  }

  /** Starts serving; resolves once the server says where it listens. */
  async start(): Promise<void> {
    // Its own process group: the server forks a p11-kit-remote per connection, and a removed
    // token takes all of them down at once.
    const child = spawn(
      'p11-kit',
      [
        'server',
        '--foreground',
        '--name',
        this.socket,
        '--provider',
        SOFTHSM,
        `pkcs11:token=${this.token.label}`,
      ],
      {
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, SOFTHSM2_CONF: join(this.token.dir, 'softhsm2.conf') },
      },
    );
    this.child = child;
    let said = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        said += chunk.toString();
        if (said.includes('P11_KIT_SERVER_PID')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`p11-kit server exited with ${code}`)));
    });
  }

  /** The token is gone: the server and every connection to it, killed. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    process.kill(-child.pid!, 'SIGKILL');
    await exited;
  }

  /** SIGSTOP freezes the server and its connections (calls hang); SIGCONT thaws them. */
  signal(signal: 'SIGSTOP' | 'SIGCONT'): void {
    process.kill(-this.child!.pid!, signal);
  }
}

/** The daemon reaches the token through p11-kit's client (and pkcs11-spy, with `spyLog`). */
function throughP11Kit(config: Record<string, any>, spyLog?: string): void {
  const dir = dirname(config['hsm']['environment']['SOFTHSM2_CONF'] as string);
  const environment: Record<string, string> = {
    P11_KIT_SERVER_ADDRESS: `unix:path=${join(dir, 'p11.sock')}`,
  };
  if (spyLog === undefined) config['hsm']['module'] = P11_KIT_CLIENT;
  else {
    config['hsm']['module'] = SPY;
    environment['PKCS11SPY'] = P11_KIT_CLIENT!;
    environment['PKCS11SPY_OUTPUT'] = join(dir, spyLog);
  }
  config['hsm']['environment'] = environment;
}

/** Polls `check` until it returns a value, for at most `ms`. */
async function until<T>(what: string, ms: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const healthIs = (daemon: RunningDaemon, status: string) => async () => {
  const health = await daemon.client.health();
  return health.status === status ? health : undefined;
};

/** A mint that must fail: its error and how long the answer took. */
async function failedMint(daemon: RunningDaemon): Promise<{ error: HsmintError; ms: number }> {
  const started = performance.now();
  try {
    await daemon.client.mint({ aud: 'api' });
  } catch (error) {
    return { error: error as HsmintError, ms: performance.now() - started };
  }
  throw new Error('the mint succeeded');
}

/** C_Login calls pkcs11-spy saw. */
async function logins(spyLog: string): Promise<number> {
  const text = existsSync(spyLog) ? await readFile(spyLog, 'utf8') : '';
  return text.match(/^\d+: C_Login$/gm)?.length ?? 0;
}

async function auditEvents(token: TestToken): Promise<string[]> {
  const events: string[] = [];
  for await (const record of readAuditRecords(join(token.dir, 'state', 'audit')))
    events.push(String((record as { event: unknown }).event));
  return events;
}

// Skipped only where p11-kit's server or client module is not installed (.ci/run installs them).
describe.runIf(hasP11Kit)('a token that goes away and comes back (p11-kit)', () => {
  let token: TestToken;
  let server: TokenServer;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    token = await makeToken('ES256', (config) => throughP11Kit(config));
    server = new TokenServer(token);
    await server.start();
    daemon = await startDaemon(token);
  });
  afterAll(async () => {
    await daemon?.stop();
    await server?.kill();
    await token?.cleanup();
  });

  it('seals when the token goes away: health says why, mints fail fast, verify still works', async () => {
    const before = await daemon.client.mint({ aud: 'api' });
    await server.kill();
    // Nobody mints: the daemon's own probe finds the token gone.
    const sealed = await until('health sealed', 10_000, healthIs(daemon, 'sealed'));
    expect(sealed.reason).toContain('CKR_DEVICE_ERROR');
    for (let i = 0; i < 3; i++) {
      const { error, ms } = await failedMint(daemon);
      expect(error.code).toBe('ERR_HSM_UNAVAILABLE');
      expect(error.details?.['status']).toBe(503);
      expect(ms).toBeLessThan(2_000);
    }
    expect((await daemon.client.verify(before.token)).valid).toBe(true);
    expect((await daemon.client.jwks()).keys.map((key) => key.kid)).toContain(before.kid);
    // The back-off loop keeps trying while the token is away.
    await until('a failed re-open', 5_000, async () =>
      daemon.logs().some((line) => line['event'] === 'token.reopen_failed') ? true : undefined,
    );
    expect(daemon.process.exitCode).toBeNull();
  });

  it('re-opens by itself once the token is back, and logs and audits both', async () => {
    await server.start();
    // The back-off reaches 8 s after five failed attempts: well inside this bound.
    await until('health ok', 35_000, healthIs(daemon, 'ok'));
    const after = await daemon.client.mint({ aud: 'api' });
    expect((await daemon.client.verify(after.token)).valid).toBe(true);
    const events = daemon.logs().map((line) => line['event']);
    expect(events).toContain('token.sealed');
    expect(events).toContain('token.unsealed');
    // p11-kit's client is a new connection per load: signatures run on the main thread.
    expect(events).toContain('token.sign_inline');
    const recorded = await auditEvents(token);
    expect(recorded.indexOf('token.sealed')).toBeGreaterThan(-1);
    expect(recorded.indexOf('token.unsealed')).toBeGreaterThan(recorded.indexOf('token.sealed'));
  });
});

// Needs pkcs11-spy (opensc-pkcs11) as well, to count logins and to sign on worker threads.
describe.runIf(hasP11Kit && SPY !== undefined)(
  'a token that hangs, or comes back with a PIN it refuses (p11-kit, pkcs11-spy)',
  () => {
    let token: TestToken;
    let server: TokenServer;
    let daemon: RunningDaemon;
    let spyLog: string;

    beforeAll(async () => {
      token = await makeToken('ES256', (config) => throughP11Kit(config, 'spy.log'));
      spyLog = join(token.dir, 'spy.log');
      server = new TokenServer(token);
      await server.start();
      daemon = await startDaemon(token);
    });
    afterAll(async () => {
      server?.signal('SIGCONT');
      await daemon?.stop();
      await server?.kill();
      await token?.cleanup();
    });

    it('gives up a call that hangs at its deadline, seals, and re-opens once it returns', async () => {
      await daemon.client.mint({ aud: 'api' });
      server.signal('SIGSTOP');
      try {
        // The first mint waits out the call deadline (hsm.call_timeout, 2 s), unless the
        // daemon's probe met the hang first; later ones are refused at once.
        const first = await failedMint(daemon);
        expect(first.error.code).toBe('ERR_HSM_UNAVAILABLE');
        expect(first.ms).toBeLessThan(3_000);
        const later = await failedMint(daemon);
        expect(later.error.code).toBe('ERR_HSM_UNAVAILABLE');
        expect(later.ms).toBeLessThan(1_000);
        const health = await daemon.client.health();
        expect(health.status).toBe('sealed');
        expect(health.reason).toContain('did not return');
      } finally {
        server.signal('SIGCONT');
      }
      await until('health ok', 35_000, healthIs(daemon, 'ok'));
      await daemon.client.mint({ aud: 'api' });
      expect(daemon.logs().some((line) => line['event'] === 'token.sign_inline')).toBe(false);
    });

    it('logs in once with a PIN changed meanwhile, stays sealed saying why, and a reload with the right PIN re-opens', async () => {
      const right = await readFile(token.pinFile, 'utf8');
      const before = await logins(spyLog);
      await writeFile(token.pinFile, '000000000000\n', { mode: 0o600 });
      await server.kill();
      await failedMint(daemon);
      await server.start();
      const refused = await until('health says wrong PIN', 35_000, async () => {
        const health = await daemon.client.health();
        return health.reason?.includes('wrong PIN') ? health : undefined;
      });
      expect(refused.status).toBe('sealed');
      expect(await logins(spyLog)).toBe(before + 1);
      // Several back-off periods later: still one attempt, no loop against the PIN counter.
      await new Promise((resolve) => setTimeout(resolve, 4_000));
      expect(await logins(spyLog)).toBe(before + 1);
      expect((await failedMint(daemon)).error.code).toBe('ERR_HSM_UNAVAILABLE');

      await writeFile(token.pinFile, right, { mode: 0o600 });
      daemon.process.kill('SIGHUP');
      await until('health ok', 10_000, healthIs(daemon, 'ok'));
      expect(await logins(spyLog)).toBe(before + 2);
      await daemon.client.mint({ aud: 'api' });
      const output = daemon.output();
      expect(output).not.toContain('000000000000');
      expect(output).not.toContain(right.trim());
      expect(await auditEvents(token)).toContain('token.reopen_failed');
    });
  },
);

// Needs pkcs11-spy (opensc-pkcs11) to count the logins the daemon makes.
describe.runIf(SPY !== undefined)('a PIN refused at start', () => {
  let token: TestToken;
  let daemon: RunningDaemon | undefined;

  beforeAll(async () => {
    token = await makeToken('ES256', (config) => {
      config['hsm']['module'] = SPY;
      config['hsm']['environment']['PKCS11SPY'] = SOFTHSM;
      config['hsm']['environment']['PKCS11SPY_OUTPUT'] = join(
        dirname(config['hsm']['environment']['SOFTHSM2_CONF'] as string),
        'spy.log',
      );
    });
  });
  afterAll(async () => {
    await daemon?.stop();
    await token?.cleanup();
  });

  it('costs one login: the daemon stays up sealed, and each reload tries once', async () => {
    const spyLog = join(token.dir, 'spy.log');
    const right = await readFile(token.pinFile, 'utf8');
    await writeFile(token.pinFile, '000000000000\n', { mode: 0o600 });
    daemon = await startDaemon(token);
    const health = await daemon.client.health();
    expect(health.status).toBe('sealed');
    expect(health.reason).toContain('wrong PIN');
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(await logins(spyLog)).toBe(1);

    // A reload with the PIN still wrong: one more try, and still up.
    daemon.process.kill('SIGHUP');
    await until('a second login', 10_000, async () =>
      (await logins(spyLog)) === 2 ? true : undefined,
    );
    expect((await daemon.client.health()).status).toBe('sealed');

    await writeFile(token.pinFile, right, { mode: 0o600 });
    daemon.process.kill('SIGHUP');
    await until('health ok', 10_000, healthIs(daemon, 'ok'));
    expect(await logins(spyLog)).toBe(3);
    const minted = await daemon.client.mint({ aud: 'api' });
    expect((await daemon.client.verify(minted.token)).valid).toBe(true);
  });
});
