import { pino, type Logger } from 'pino';
import type { LogLevel } from '../core/config.js';

/**
 * JSON lines on stdout for journald. Field names that could carry a secret are censored as a
 * second line of defence; the first is that no code path logs a token or a PIN at all.
 */
export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
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
