import { fstatSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import type { LogLevel } from '../core/config.js';

/**
 * JSON lines on stdout for journald. Field names that could carry a secret are censored as a
 * second line of defence; the first is that no code path logs a token or a PIN at all.
 */
export function createLogger(
  level: LogLevel,
  destination?: pino.DestinationStream,
  options: { journal?: boolean } = {},
): Logger {
  const journal = options.journal ?? (destination === undefined && stdoutIsJournal());
  return pino(
    {
      level,
      ...(journal ? { hooks: { streamWrite: withPriority } } : {}),
      base: { service: 'hsmintd', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: [
          'token',
          '*.token',
          'pin',
          '*.pin',
          'body',
          '*.body',
          'headers.authorization',
          '*.headers.authorization',
        ],
        censor: '[redacted]',
      },
      formatters: {
        // Keep the level name: journald priority mapping and people both read it.
        level: (label, number) => ({ level: label, severity: number }),
      },
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

/** syslog priorities for pino's levels (trace and debug are both "debug"). */
const PRIORITY: Readonly<Record<string, number>> = {
  trace: 7,
  debug: 7,
  info: 6,
  warn: 4,
  error: 3,
  fatal: 2,
};

const LEVEL_FIELD = /^\{"level":"([a-z]+)"/;

/**
 * Under journald each line starts with `<N>`, the syslog priority of its level: journald
 * strips it (SyslogLevelPrefix=yes, the default) and records PRIORITY=N, so `journalctl -p
 * warning` works and the stored message is still exactly one JSON object.
 */
export function withPriority(line: string): string {
  const level = LEVEL_FIELD.exec(line)?.[1];
  const priority = level === undefined ? undefined : PRIORITY[level];
  return priority === undefined ? line : `<${priority}>${line}`;
}

/** Whether stdout is journald's stream: $JOURNAL_STREAM holds its device and inode. */
export function stdoutIsJournal(env: NodeJS.ProcessEnv = process.env, fd = 1): boolean {
  const match = /^(\d+):(\d+)$/.exec(env['JOURNAL_STREAM'] ?? '');
  if (!match) return false;
  try {
    const stdout = fstatSync(fd, { bigint: true });
    return stdout.dev === BigInt(match[1]!) && stdout.ino === BigInt(match[2]!);
  } catch {
    return false;
  }
}
