import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PassThrough, Readable } from 'node:stream';
import { runCli } from '../../cli/program.js';
import type { Io } from '../../cli/output.js';
import {
  hsmint,
  makeToken,
  startDaemon,
  useDaemon,
  type RunningDaemon,
  type TestToken,
} from './support/harness.js';

/** Streams that claim to be a terminal, to see what people see. */
function fakeTerminal(): { io: Io; stdout(): string; stderr(): string } {
  let out = '';
  let err = '';
  const stdout = Object.assign(new PassThrough(), { isTTY: true });
  const stderr = new PassThrough();
  stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const stdin = Object.assign(Readable.from([]), { isTTY: true });
  return { io: { stdout, stderr, stdin }, stdout: () => out, stderr: () => err };
}

describe('the hsmint CLI against a running daemon', () => {
  const env = useDaemon('ES256');
  let socket: string[];

  beforeAll(async () => {
    socket = ['--socket', env.token.socket];
  });

  it('mint prints the bare token, and --json the whole answer', async () => {
    const plain = await hsmint([
      ...socket,
      'mint',
      '--aud',
      'api',
      '--sub',
      'svc:cli',
      '--ttl',
      '90s',
      '--scope',
      'read',
      '--claim',
      'team=ops',
    ]);
    expect(plain.code).toBe(0);
    expect(plain.stdout.trim()).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    const json = await hsmint([...socket, '--json', 'mint', '--aud', 'api']);
    expect(json.code).toBe(0);
    const minted = JSON.parse(json.stdout);
    expect(minted).toMatchObject({ alg: 'ES256', kid: env.token.kid });
    expect(minted.exp - minted.iat).toBe(300);

    const verified = await hsmint([...socket, 'verify', plain.stdout.trim(), '--aud', 'api']);
    expect(verified.code).toBe(0);
    expect(JSON.parse(verified.stdout).claims).toMatchObject({
      sub: 'svc:cli',
      scope: 'read',
      team: 'ops',
    });
  });

  it('HSMINT_SOCKET stands in for --socket', async () => {
    const result = await hsmint(['mint', '--aud', 'api'], {
      env: { HSMINT_SOCKET: env.token.socket },
    });
    expect(result.code).toBe(0);
  });

  it('verify exits 0 valid, 1 invalid, 2 on errors, and reads stdin with -', async () => {
    const minted = (await hsmint([...socket, 'mint', '--aud', 'api'])).stdout.trim();
    expect((await hsmint([...socket, 'verify', '-'], { input: `${minted}\n` })).code).toBe(0);

    const wrongAudience = await hsmint([...socket, 'verify', minted, '--aud', 'billing']);
    expect(wrongAudience.code).toBe(1);
    expect(JSON.parse(wrongAudience.stdout).error.code).toBe('ERR_TOKEN_AUDIENCE_MISMATCH');
    expect((await hsmint([...socket, 'verify', 'not.a.token'])).code).toBe(1);

    const unreachable = await hsmint([
      '--socket',
      join(env.token.dir, 'nothing.sock'),
      'verify',
      minted,
    ]);
    expect(unreachable.code).toBe(2);
    expect(JSON.parse(unreachable.stderr).error.code).toBe('ERR_DAEMON_UNREACHABLE');
  });

  it('reports daemon refusals with their code and exit 2', async () => {
    const result = await hsmint([...socket, 'mint', '--aud', 'api', '--ttl', '3h']);
    expect(result.code).toBe(2);
    expect(JSON.parse(result.stderr).error.code).toBe('ERR_TTL_TOO_LONG');
  });

  it('exits 2 on usage errors', async () => {
    expect((await hsmint(['mint'])).code).toBe(2);
    expect((await hsmint(['no-such-command'])).code).toBe(2);
    expect((await hsmint([...socket, 'mint', '--aud', 'api', '--claim', 'novalue'])).code).toBe(2);
    expect((await hsmint(['--help'])).code).toBe(0);
  });

  it('jwks prints the keys, or writes them atomically with --out', async () => {
    const printed = await hsmint([...socket, 'jwks']);
    expect(printed.code).toBe(0);
    expect(JSON.parse(printed.stdout).keys[0]).toMatchObject({
      kid: env.token.kid,
      alg: 'ES256',
      use: 'sig',
      kty: 'EC',
      crv: 'P-256',
    });
    const out = join(env.token.dir, 'jwks.json');
    expect((await hsmint([...socket, 'jwks', '--out', out])).code).toBe(0);
    expect(JSON.parse(await readFile(out, 'utf8'))).toEqual(JSON.parse(printed.stdout));
    expect((await stat(out)).mode & 0o777).toBe(0o644);
  });

  it('prints for people on a terminal', async () => {
    const terminal = fakeTerminal();
    expect(await runCli([...socket, 'status'], terminal.io)).toBe(0);
    expect(terminal.stdout()).toMatch(/^status +ok$/m);
    expect(terminal.stdout()).toContain(`active key  ${env.token.kid} (ES256)`);

    const minted = (await env.daemon.client.mint({ aud: 'api', sub: 'svc:people' })).token;
    const valid = fakeTerminal();
    expect(await runCli([...socket, 'verify', minted], valid.io)).toBe(0);
    expect(valid.stdout()).toMatch(
      /^valid {2}kid=\S+ aud="api" sub=svc:people jti=\S+ {2}expires in \d+[sm]\n$/,
    );

    const invalid = fakeTerminal();
    expect(await runCli([...socket, 'verify', 'a.b.c'], invalid.io)).toBe(1);
    expect(invalid.stdout()).toMatch(/^invalid {2}ERR_TOKEN_/);

    const failing = fakeTerminal();
    expect(await runCli(['--socket', join(env.token.dir, 'none.sock'), 'status'], failing.io)).toBe(
      2,
    );
    expect(failing.stderr()).toMatch(/^hsmint: .*\(ERR_DAEMON_UNREACHABLE\)\n$/);

    const keys = fakeTerminal();
    expect(await runCli(['keys', 'list', '--config', env.token.config], keys.io)).toBe(0);
    expect(keys.stdout().split('\n')[0]).toMatch(/^KID +ALG +STATE +SINCE +UNTIL +LABEL$/);
    expect(keys.stdout()).toContain(env.token.kid);
  });

  it('status shows health', async () => {
    const result = await hsmint([...socket, 'status']);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({
      status: 'ok',
      active_kid: env.token.kid,
      algorithm: 'ES256',
      token: { label: env.token.label },
    });
  });

  it('keys list and keys create work offline on the token from the config', async () => {
    const created = await hsmint([
      'keys',
      'create',
      '--alg',
      'EdDSA',
      '--config',
      env.token.config,
    ]);
    expect(created.code).toBe(0);
    const kid = JSON.parse(created.stdout).kid as string;
    const listed = JSON.parse((await hsmint(['keys', 'list', '--config', env.token.config])).stdout)
      .keys as Array<{ kid: string; alg: string; state: string }>;
    expect(listed).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ kid: env.token.kid, alg: 'ES256', state: 'active' }),
        expect.objectContaining({ kid, alg: 'EdDSA', state: 'unrecorded' }),
      ]),
    );
    // The running daemon adopts it on SIGHUP: not of keys.algorithm, so verify-only (retiring).
    env.daemon.process.kill('SIGHUP');
    await expect
      .poll(async () => (await env.daemon.client.jwks()).keys.map((key) => key.kid), {
        timeout: 5000,
      })
      .toContain(kid);
    const states = JSON.parse(
      (await hsmint(['--socket', env.token.socket, 'keys', 'list'])).stdout,
    ).keys;
    expect(states).toEqual(
      expect.arrayContaining([expect.objectContaining({ kid, state: 'retiring' })]),
    );
    expect(
      (await hsmint(['keys', 'create', '--alg', 'HS256', '--config', env.token.config])).code,
    ).toBe(2);
  });
});

describe('hsmint softhsm init', () => {
  let token: TestToken;

  beforeAll(async () => {
    token = await makeToken('ES384');
  });
  afterAll(async () => {
    await token?.cleanup();
  });

  it('writes PINs and config readable by the owner only, and a socket inside DIR', async () => {
    for (const file of ['pin', 'so-pin', 'hsmint.yaml', 'softhsm2.conf']) {
      expect((await stat(join(token.dir, file))).mode & 0o777).toBe(0o600);
    }
    const pin = (await readFile(token.pinFile, 'utf8')).trim();
    expect(pin).toMatch(/^\d{12}$/);
    const config = await readFile(token.config, 'utf8');
    expect(config).toContain(join(token.dir, 'hsmint.sock'));
    expect(config).toContain(join(token.dir, 'softhsm2.conf'));
    expect(config).not.toContain(pin);
  });

  it('refuses a DIR that already holds a token', async () => {
    const again = await hsmint(['softhsm', 'init', '--dir', token.dir]);
    expect(again.code).toBe(2);
    expect(JSON.parse(again.stderr).error.code).toBe('ERR_ALREADY_INITIALIZED');
  });

  it('gives a config the daemon starts from as it is', async () => {
    const daemon = await startDaemon(token);
    try {
      const minted = await daemon.client.mint({ aud: 'api' });
      expect(minted.alg).toBe('ES384');
    } finally {
      await daemon.stop();
    }
  });
});
