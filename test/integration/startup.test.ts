import { spawn } from 'node:child_process';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  failedStart,
  hsmint,
  makeToken,
  startDaemon,
  startFailure,
  type TestToken,
} from './support/harness.js';

describe('hsmintd start-up', () => {
  let token: TestToken;

  beforeAll(async () => {
    token = await makeToken('ES256');
  });
  afterAll(async () => {
    await token?.cleanup();
  });

  it('creates the socket with its configured mode, and refuses to start beside a live daemon', async () => {
    const first = await startDaemon(token);
    try {
      const info = await stat(token.socket);
      expect(info.isSocket()).toBe(true);
      expect(info.mode & 0o777).toBe(0o600);
      const second = await failedStart(token.config);
      expect(second.code).toBe(1);
      expect(startFailure(second.lines)?.['code']).toBe('ERR_SOCKET_IN_USE');
      // The first daemon is untouched.
      expect((await first.client.health()).status).toBe('ok');
    } finally {
      await first.stop();
    }
  });

  it('refuses a second daemon on the same audit log, even on another socket', async () => {
    const keys = join(token.dir, 'audit-keys.json');
    const first = await startDaemon(token);
    try {
      // Same token, state and audit log; only the socket differs, so the socket check passes.
      const document = parse(await readFile(token.config, 'utf8')) as Record<string, any>;
      document['socket']['path'] = join(token.dir, 'second.sock');
      const other = join(token.dir, 'second.yaml');
      await writeFile(other, stringify(document), { mode: 0o600 });
      const second = await failedStart(other);
      expect(second.code).toBe(1);
      expect(startFailure(second.lines)?.['code']).toBe('ERR_DAEMON_RUNNING');
      // It wrote nothing: the log still verifies once the first has stopped.
      expect((await first.client.mint({ aud: 'api' })).token).toBeTruthy();
      await writeFile(keys, JSON.stringify(await first.client.auditKeys()));
    } finally {
      await first.stop();
    }
    const verified = await hsmint(['audit', 'verify', '--config', token.config, '--keys', keys]);
    expect(verified.code, verified.stdout + verified.stderr).toBe(0);
  });

  it('replaces a stale socket that nothing listens on', async () => {
    // A socket file left by a process that was killed with -9 and could not clean up.
    const holder = spawn(
      process.execPath,
      [
        '-e',
        `require('node:net').createServer().listen(${JSON.stringify(token.socket)}, () => console.log('up'))`,
      ],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    await new Promise((resolve) => holder.stdout.once('data', resolve));
    holder.kill('SIGKILL');
    await new Promise((resolve) => holder.once('exit', resolve));
    expect((await stat(token.socket)).isSocket()).toBe(true);
    const daemon = await startDaemon(token);
    try {
      expect((await daemon.client.health()).status).toBe('ok');
    } finally {
      await daemon.stop();
    }
  });

  it('refuses to remove a path that is not a socket', async () => {
    await writeFile(token.socket, 'not a socket');
    try {
      const result = await failedStart(token.config);
      expect(result.code).toBe(1);
      expect(startFailure(result.lines)?.['code']).toBe('ERR_SOCKET_PATH_INVALID');
    } finally {
      const { rm } = await import('node:fs/promises');
      await rm(token.socket, { force: true });
    }
  });

  it('refuses a PIN file that others can read', async () => {
    await chmod(token.pinFile, 0o644);
    try {
      const result = await failedStart(token.config);
      expect(result.code).toBe(1);
      expect(startFailure(result.lines)?.['code']).toBe('ERR_PIN_FILE_INSECURE');
    } finally {
      await chmod(token.pinFile, 0o600);
    }
  });

  it('stays up sealed on a wrong PIN, says why without logging either PIN, and opens on a reload', async () => {
    const { readFile } = await import('node:fs/promises');
    const real = await readFile(token.pinFile, 'utf8');
    await writeFile(token.pinFile, '000000000000\n', { mode: 0o600 });
    let daemon: Awaited<ReturnType<typeof startDaemon>> | undefined;
    try {
      // Exiting would let systemd restart it into the same PIN, each try nearer the lock-out.
      daemon = await startDaemon(token);
      const health = await daemon.client.health();
      expect(health.status).toBe('sealed');
      expect(health.reason).toContain('wrong PIN');
      await expect(daemon.client.mint({ aud: 'api' })).rejects.toMatchObject({
        code: 'ERR_HSM_UNAVAILABLE',
      });
      const sealed = daemon.logs().find((line) => line['event'] === 'token.sealed');
      expect(sealed?.['code']).toBe('ERR_PIN_INCORRECT');

      await writeFile(token.pinFile, real, { mode: 0o600 });
      daemon.process.kill('SIGHUP');
      const deadline = Date.now() + 10_000;
      while ((await daemon.client.health()).status !== 'ok' && Date.now() < deadline)
        await new Promise((resolve) => setTimeout(resolve, 100));
      expect((await daemon.client.health()).status).toBe('ok');
      await daemon.client.mint({ aud: 'api' });
      const text = daemon.output();
      expect(text).not.toContain('000000000000');
      expect(text).not.toContain(real.trim());
    } finally {
      await daemon?.stop();
      await writeFile(token.pinFile, real, { mode: 0o600 });
    }
  });

  it('refuses a config with an unknown key, naming the path and line', async () => {
    const { readFile } = await import('node:fs/promises');
    const original = await readFile(token.config, 'utf8');
    await writeFile(token.config, `${original}tokens_ttl: 5m\n`, { mode: 0o600 });
    try {
      const result = await failedStart(token.config);
      expect(result.code).toBe(1);
      const failure = startFailure(result.lines);
      expect(failure?.['code']).toBe('ERR_CONFIG_INVALID');
      const line = original.split('\n').length;
      expect(String(failure?.['msg'])).toContain(`tokens_ttl: unknown key`);
      expect(String(failure?.['msg'])).toContain(`hsmint.yaml:${line}`);
    } finally {
      await writeFile(token.config, original, { mode: 0o600 });
    }
  });
});
