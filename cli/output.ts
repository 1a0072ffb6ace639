import { HsmintError } from '../core/errors.js';

/** Exit codes a script can rely on. */
export const EXIT = { ok: 0, invalid: 1, error: 2 } as const;

export interface GlobalOptions {
  json?: boolean;
  socket?: string;
}

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
}

export const processIo: Io = {
  stdout: process.stdout,
  stderr: process.stderr,
  stdin: process.stdin,
};

/** People get text on a terminal; pipes and `--json` get one JSON document. */
export function wantsJson(io: Io, options: GlobalOptions): boolean {
  return options.json === true || io.stdout.isTTY !== true;
}

export function printJson(io: Io, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printTable(io: Io, headers: string[], rows: string[][]): void {
  const widths = headers.map((header, i) =>
    Math.max(header.length, ...rows.map((row) => (row[i] ?? '').length)),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  io.stdout.write(`${[line(headers), ...rows.map(line)].join('\n')}\n`);
}

/** A relative time for people: "in 4m 59s", "3h ago". */
export function fromNow(epochSeconds: number, now = Date.now() / 1000): string {
  const delta = Math.round(epochSeconds - now);
  const size = Math.abs(delta);
  const text =
    size < 120
      ? `${size}s`
      : size < 7200
        ? `${Math.round(size / 60)}m`
        : size < 172800
          ? `${Math.round(size / 3600)}h`
          : `${Math.round(size / 86400)}d`;
  return delta >= 0 ? `in ${text}` : `${text} ago`;
}

/** Reports a failure on stderr (JSON when stdout is not for people) and returns exit code 2. */
export function reportError(io: Io, options: GlobalOptions, error: unknown): number {
  const failure =
    error instanceof HsmintError
      ? error
      : new HsmintError('ERR_INTERNAL', error instanceof Error ? error.message : String(error));
  if (wantsJson(io, options)) io.stderr.write(`${JSON.stringify({ error: failure.toJSON() })}\n`);
  else io.stderr.write(`hsmint: ${failure.message} (${failure.code})\n`);
  return EXIT.error;
}
