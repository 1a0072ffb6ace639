/**
 * Real SoftHSM tokens in temp folders (each with its own SOFTHSM2_CONF) and real hsmintd
 * processes on real sockets. Nothing here mocks PKCS#11: the built CLI makes the token and
 * the built daemon serves it, exactly as a user would run them.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll } from 'vitest';
import { HsmintClient } from '../../../core/client/index.js';
import type { Algorithm } from '../../../core/keys/algorithms.js';

const run = promisify(execFile);
export const ROOT = resolve(import.meta.dirname, '../../..');
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');
export const DAEMON = join(ROOT, 'dist', 'daemon', 'main.js');

if (!existsSync(CLI) || !existsSync(DAEMON)) {
  throw new Error(
    'integration tests run the built daemon and CLI: run `npm run build` first (npm test does)',
  );
}

export interface TestToken {
  dir: string;
  config: string;
  socket: string;
  pinFile: string;
  label: string;
  kid: string;
  alg: Algorithm;
  cleanup(): Promise<void>;
}

/** `hsmint softhsm init` in a fresh temp folder, with optional config overrides. */
export async function makeToken(
  alg: Algorithm = 'ES256',
  overrides: (config: Record<string, any>) => void = () => {},
): Promise<TestToken> {
  // Short paths: a Unix socket path must stay under 108 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'hsmint-'));
  const { stdout } = await run(process.execPath, [
    CLI,
    'softhsm',
    'init',
    '--dir',
    dir,
    '--alg',
    alg,
    '--issuer',
    'urn:hsmint:test',
    '--audience',
    'api',
    '--audience',
    'other',
    '--subject',
    'user:{user}',
    '--subject',
    'svc:*',
    '--json',
  ]);
  const summary = JSON.parse(stdout) as {
    config: string;
    socket: string;
    pin_file: string;
    token: string;
    kid: string;
  };
  const document = parse(await readFile(summary.config, 'utf8')) as Record<string, any>;
  // The tests' own rule also lets the owner set two extra claims.
  document['policy']['rules'][0]['claims'] = { tenant: null, team: null };
  overrides(document);
  await writeFile(summary.config, stringify(document), { mode: 0o600 });
  return {
    dir,
    config: summary.config,
    socket: summary.socket,
    pinFile: summary.pin_file,
    label: summary.token,
    kid: summary.kid,
    alg,
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

export interface RunningDaemon {
  process: ChildProcess;
  client: HsmintClient;
  /** Everything the daemon wrote to stdout and stderr so far. */
  output(): string;
  /** Parsed JSON log lines. */
  logs(): Array<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export interface StartOptions {
  timeoutMs?: number;
  /** A command the daemon runs under, e.g. systemd-socket-activate and its flags. */
  wrapper?: string[];
  /** The daemon's environment (default: the tests' own). */
  env?: NodeJS.ProcessEnv;
}

export async function startDaemon(
  token: Pick<TestToken, 'config' | 'socket'>,
  options: StartOptions = {},
): Promise<RunningDaemon> {
  const timeoutMs = options.timeoutMs ?? 15_000;
  const command = [...(options.wrapper ?? []), process.execPath, DAEMON, '--config', token.config];
  const child = spawn(command[0]!, command.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.env ? { env: options.env } : {}),
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  const client = new HsmintClient({ socketPath: token.socket });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`hsmintd exited with ${child.exitCode}:\n${output}`);
    try {
      await client.health();
      break;
    } catch {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`hsmintd did not answer within ${timeoutMs} ms:\n${output}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    process: child,
    client,
    output: () => output,
    logs: () =>
      output
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>),
    async stop(signal = 'SIGTERM') {
      client.close();
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Runs hsmintd expecting it not to start: its exit code and its JSON log lines. */
export async function failedStart(
  config: string,
): Promise<{ code: number | null; lines: Array<Record<string, unknown>> }> {
  const child = spawn(process.execPath, [DAEMON, '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const bound = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(bound);
  const lines = output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { code, lines };
}

/** The `daemon.start_failed` line of a start that failed, with its code. */
export const startFailure = (lines: Array<Record<string, unknown>>) =>
  lines.find((line) => line['event'] === 'daemon.start_failed');

/** Runs the built CLI; never throws on a non-zero exit. */
export async function hsmint(
  args: string[],
  options: { input?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [CLI, ...args],
      { env: { ...process.env, ...options.env }, encoding: 'utf8' },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    if (options.input !== undefined) child.stdin!.end(options.input);
    else child.stdin!.end();
  });
}

/** A raw HTTP/1.1 exchange over the socket, for requests the client library would never send. */
export async function rawRequest(
  socketPath: string,
  init: { method: string; path: string; headers?: Record<string, string>; body?: string | Buffer },
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; json: any }> {
  const { request } = await import('node:http');
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method: init.method,
        path: init.path,
        headers: { host: 'hsmint', ...init.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, json });
        });
      },
    );
    req.on('error', reject);
    req.end(init.body);
  });
}

/**
 * A token and a daemon on it for the enclosing describe block: made in beforeAll, stopped and
 * removed in afterAll. Read `token` and `daemon` inside tests, not at collection time.
 */
export function useDaemon(
  alg: Algorithm = 'ES256',
  overrides?: (config: Record<string, any>) => void,
): { readonly token: TestToken; readonly daemon: RunningDaemon } {
  let token: TestToken | undefined;
  let daemon: RunningDaemon | undefined;
  beforeAll(async () => {
    token = await makeToken(alg, overrides);
    daemon = await startDaemon(token);
  });
  afterAll(async () => {
    await daemon?.stop();
    await token?.cleanup();
  });
  return {
    get token() {
      if (!token) throw new Error('useDaemon: the token exists only inside tests');
      return token;
    },
    get daemon() {
      if (!daemon) throw new Error('useDaemon: the daemon exists only inside tests');
      return daemon;
    },
  };
}
