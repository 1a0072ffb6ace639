import type { Command } from 'commander';
import { HsmintClient } from '../core/client/index.js';
import { reportError, type GlobalOptions, type Io } from './output.js';

/** What every command gets: the streams, and where its exit code goes. */
export interface CliContext {
  io: Io;
  exitCode: number;
}

/**
 * Wraps a command's work: it returns its exit code, and any failure is reported with its
 * stable code on stderr and exit 2.
 */
export function run<T extends unknown[]>(
  context: CliContext,
  work: (
    options: GlobalOptions & Record<string, unknown>,
    command: Command,
    ...args: T
  ) => Promise<number>,
) {
  return async (...received: unknown[]) => {
    const command = received.at(-1) as Command;
    const args = received.slice(0, -2) as T;
    const options = command.optsWithGlobals<GlobalOptions & Record<string, unknown>>();
    try {
      context.exitCode = await work(options, command, ...args);
    } catch (error) {
      context.exitCode = reportError(context.io, options, error);
    }
  };
}

/** A client on `--socket`, $HSMINT_SOCKET or the system path; closed after `work`. */
export async function withClient<T>(
  options: GlobalOptions,
  work: (client: HsmintClient) => Promise<T>,
): Promise<T> {
  const client = new HsmintClient(
    options.socket === undefined ? {} : { socketPath: options.socket },
  );
  try {
    return await work(client);
  } finally {
    client.close();
  }
}
