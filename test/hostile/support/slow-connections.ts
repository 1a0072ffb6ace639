/**
 * Slow and idle connections against a daemon, from a process of their own (slow-attacker.mjs
 * says what they do), and the probes the slow-client tests read the daemon with.
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const ATTACKER = join(import.meta.dirname, 'slow-attacker.mjs');

export interface AttackSpec {
  socketPath: string;
  /** Connections that send a request's headers a byte at a time and never finish them. */
  slow: number;
  /** Connections that send nothing. */
  idle: number;
  /** All of them are opened, in batches, over this long. */
  openOverMs: number;
  /** A slow connection sends its next byte after this many ms, picked at random per byte. */
  dripMs?: [number, number];
  /** The attacker lets everything go and exits after this long, whatever happens. */
  maxLifeMs?: number;
}

/** What one connection saw, by the attacker's clock. */
export interface HostileOutcome {
  kind: 'slow' | 'idle';
  /** From connect() to the daemon's FIN; null if the daemon never ended it. */
  lifetimeMs: number | null;
  /** The status of the answer the daemon sent before its FIN, if any. */
  status: number | null;
  code: string | null;
  /** Header bytes sent (slow connections only). */
  sent: number;
  /** A socket error before the daemon's FIN (a refused connect, a reset). */
  error: string | null;
}

export interface Connected {
  connected: number;
  failed: number;
  /** Connects refused with EAGAIN (a full listen backlog) and tried again. */
  retries: number;
}

export interface Attack {
  /** Every connect has settled. */
  connected: Promise<Connected>;
  /** The daemon has ended every connection; the attacker still holds them half-open. */
  ended: Promise<HostileOutcome[]>;
  /** Closes every connection and waits for the attacker to exit. */
  stop(): Promise<void>;
}

export function startAttack(spec: AttackSpec): Attack {
  const child = spawn(
    process.execPath,
    [ATTACKER, JSON.stringify({ dripMs: [200, 500], maxLifeMs: 30_000, ...spec })],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const early = exited.then(() => {
    throw new Error(`the attacker exited early (${child.exitCode}): ${stderr}`);
  });
  const messages = new Map<string, (message: Record<string, unknown>) => void>();
  const awaitEvent = <T>(event: string): Promise<T> => {
    const promise = Promise.race([
      new Promise<T>((resolve) => messages.set(event, resolve as (message: unknown) => void)),
      early,
    ]);
    // The caller may never wait for this one (a test that failed earlier): not an unhandled rejection.
    promise.catch(() => undefined);
    return promise;
  };
  const connected = awaitEvent<Connected & { event: string }>('connected').then(
    ({ connected, failed, retries }) => ({ connected, failed, retries }),
  );
  connected.catch(() => undefined);
  const ended = awaitEvent<{ connections: HostileOutcome[] }>('ended').then(
    (message) => message.connections,
  );
  ended.catch(() => undefined);
  createInterface({ input: child.stdout }).on('line', (line) => {
    const message = JSON.parse(line) as Record<string, unknown>;
    messages.get(String(message['event']))?.(message);
  });
  return {
    connected,
    ended,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin.end();
      const killer = setTimeout(() => child.kill('SIGKILL'), 2_000);
      await exited;
      clearTimeout(killer);
    },
  };
}

/** Resolves with `promise`'s value, or undefined once `ms` pass. */
export function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms))),
  ]).finally(() => clearTimeout(timer));
}

/** File descriptors the process holds now, from /proc. */
export function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** Polls `probe` every `stepMs` until it returns true or `timeoutMs` passes; returns its last answer. */
export async function pollUntil(
  probe: () => boolean,
  timeoutMs: number,
  stepMs = 100,
): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (probe()) return true;
    if (performance.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, stepMs));
  }
}

/** The q-quantile of a list of numbers (nearest rank), 0 for an empty list. */
export function quantile(values: number[], q: number): number {
  const sorted = Float64Array.from(values).sort();
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}
