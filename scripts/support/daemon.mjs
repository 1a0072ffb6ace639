// What the bench, the soak and the crash script all do to a daemon of their own: make its
// token, read its memory, stop it.
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const cli = join(import.meta.dirname, '../../dist/cli/main.js');

/**
 * `hsmint softhsm init --dir DIR ARGS... --json`: a fresh SoftHSM token and its config in
 * `dir`. Returns the summary init prints (config, socket, pin_file, token, kid).
 */
export function softhsmInit(dir, args = []) {
  return JSON.parse(
    execFileSync(process.execPath, [cli, 'softhsm', 'init', '--dir', dir, ...args, '--json'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
}

/** Resident memory of a process in KiB (VmRSS in /proc/PID/status); throws once it is gone. */
export function rssKb(pid) {
  const match = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) : undefined;
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`; resolves once it has exited. */
export async function stopProcess(child, graceMs = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const stopped = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (stopped) return;
  child.kill('SIGKILL');
  await exited;
}
