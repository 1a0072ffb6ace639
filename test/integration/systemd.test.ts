/**
 * hsmintd under systemd's two environment contracts, without a booted systemd: socket
 * activation through systemd-socket-activate (which passes the socket exactly as
 * hsmintd.socket would), and the notify protocol through a datagram socket of our own that
 * stands in for systemd's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeToken, startDaemon, type RunningDaemon, type TestToken } from './support/harness.js';

/** A stand-in for systemd's notify socket: every datagram, in order. */
interface NotifyListener {
  path: string;
  messages: string[];
  /** Resolves with the first message (after `from`) that `match` accepts. */
  next(match: (message: string) => boolean, from?: number, timeoutMs?: number): Promise<string>;
  close(): void;
}

// Node cannot bind a Unix datagram socket; python3 (installed with build-essential) can.
const RECEIVER = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print(json.dumps("bound"), flush=True)
while True:
    print(json.dumps(s.recv(8192).decode()), flush=True)
`;

async function listenForNotify(dir: string): Promise<NotifyListener> {
  const path = join(dir, 'notify.sock');
  const child: ChildProcess = spawn('python3', ['-c', RECEIVER, path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const messages: string[] = [];
  const waiters = new Set<() => void>();
  let buffered = '';
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) {
        const message = JSON.parse(line) as string;
        if (message === 'bound') resolve();
        else messages.push(message);
      }
      for (const wake of waiters) wake();
    });
  });
  return {
    path,
    messages,
    next(match, from = 0, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = messages.slice(from).find(match);
          if (found === undefined) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve(found);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(`no matching notification; got ${JSON.stringify(messages.slice(from))}`),
          );
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    close: () => child.kill(),
  };
}

describe('socket activation (systemd-socket-activate passes the listening socket)', () => {
  let token: TestToken;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    token = await makeToken();
    // The daemon starts on the first connection, which the harness's health check makes.
    daemon = await startDaemon(token, {
      wrapper: ['systemd-socket-activate', '--listen', token.socket, '--fdname=hsmint'],
    });
  });
  afterAll(async () => {
    await daemon?.stop();
    await token?.cleanup();
  });

  it('mints and verifies over the socket it was passed, and says so in its log', async () => {
    const minted = await daemon.client.mint({ aud: 'api' });
    const verified = await daemon.client.verify(minted.token, { aud: 'api' });
    expect(verified.valid).toBe(true);
    const start = daemon.logs().find((line) => line['msg'] === 'hsmintd is serving');
    expect(start?.['socket']).toBe('fd 3 from systemd');
  });

  it('leaves the socket to systemd when it stops (it neither made nor removes it)', async () => {
    expect(await daemon.stop()).toBe(0);
    expect(existsSync(token.socket)).toBe(true);
  });
});

describe('the notify protocol (READY, STATUS, WATCHDOG, RELOADING, STOPPING)', () => {
  let token: TestToken;
  let daemon: RunningDaemon;
  let notify: NotifyListener;

  beforeAll(async () => {
    token = await makeToken();
    notify = await listenForNotify(token.dir);
    daemon = await startDaemon(token, {
      env: { ...process.env, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '1000000' },
    });
  });
  afterAll(async () => {
    await daemon?.stop();
    notify?.close();
    await token?.cleanup();
  });

  it('says READY=1 once serving, with a STATUS line naming health and the active key', async () => {
    const ready = await notify.next((message) => message.includes('READY=1'));
    const health = await daemon.client.health();
    expect(ready).toMatch(/^READY=1\nSTATUS=ok; active key /);
    expect(ready).toContain(health.active_kid);
  });

  it('pings WATCHDOG=1 at half of WATCHDOG_USEC while the token answers', async () => {
    const from = notify.messages.length;
    await new Promise((resolve) => setTimeout(resolve, 2600));
    const pings = notify.messages.slice(from).filter((message) => message === 'WATCHDOG=1');
    // Every 500 ms for 2.6 s: 5 expected; a loaded machine may lose one or two ticks.
    expect(pings.length).toBeGreaterThanOrEqual(3);
    expect(pings.length).toBeLessThanOrEqual(6);
  });

  it('wraps a SIGHUP reload in RELOADING=1 ... READY=1', async () => {
    const from = notify.messages.length;
    daemon.process.kill('SIGHUP');
    const reloading = await notify.next((message) => message.startsWith('RELOADING=1'), from);
    expect(reloading).toMatch(/^RELOADING=1\nMONOTONIC_USEC=\d+$/);
    const at = notify.messages.indexOf(reloading, from);
    await notify.next((message) => message.startsWith('READY=1'), at + 1);
  });

  it('says STOPPING=1 on SIGTERM, then exits 0', async () => {
    const from = notify.messages.length;
    const exited = daemon.stop();
    await notify.next((message) => message.startsWith('STOPPING=1'), from);
    expect(await exited).toBe(0);
  });
});
