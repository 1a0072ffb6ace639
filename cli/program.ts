import { Command, CommanderError } from 'commander';
import { jwksCommand } from './commands/jwks.js';
import { keysCommand } from './commands/keys.js';
import { metricsCommand } from './commands/metrics.js';
import { mintCommand } from './commands/mint.js';
import { softhsmCommand } from './commands/softhsm.js';
import { statusCommand } from './commands/status.js';
import { auditCommand } from './commands/audit.js';
import { bundleCommand } from './commands/bundle.js';
import { caCommand } from './commands/ca.js';
import { doctorCommand } from './commands/doctor.js';
import { revokeCommand } from './commands/revoke.js';
import { verifyCommand } from './commands/verify.js';
import { reloadCommand, whoamiCommand } from './commands/whoami.js';
import type { CliContext } from './context.js';
import { EXIT, processIo, reportError, type Io } from './output.js';
import { HsmintError } from '../core/errors.js';

export function createProgram(context: CliContext): Command {
  const program = new Command('hsmint')
    .description('mint and verify tokens signed on a PKCS#11 token by hsmintd')
    .version('0.1.0')
    .option(
      '--socket <path>',
      'the daemon socket (default: $HSMINT_SOCKET or /run/hsmint/hsmint.sock)',
    )
    .option('--json', 'JSON output even on a terminal')
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({
      writeOut: (text) => context.io.stdout.write(text),
      writeErr: (text) => context.io.stderr.write(text),
    });
  for (const factory of [
    mintCommand,
    verifyCommand,
    jwksCommand,
    statusCommand,
    metricsCommand,
    whoamiCommand,
    reloadCommand,
    keysCommand,
    revokeCommand,
    caCommand,
    bundleCommand,
    auditCommand,
    doctorCommand,
    softhsmCommand,
  ]) {
    const command = factory(context);
    program.addCommand(command);
  }
  // Usage errors in subcommands exit 2 like the root's.
  for (const command of program.commands) {
    command.exitOverride().configureOutput({
      writeOut: (text) => context.io.stdout.write(text),
      writeErr: (text) => context.io.stderr.write(text),
    });
    for (const sub of command.commands)
      sub.exitOverride().configureOutput({
        writeOut: (text) => context.io.stdout.write(text),
        writeErr: (text) => context.io.stderr.write(text),
      });
  }
  return program;
}

export async function runCli(argv: string[], io: Io = processIo): Promise<number> {
  const context: CliContext = { io, exitCode: EXIT.ok };
  const program = createProgram(context);
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.exitCode === 0 ? EXIT.ok : EXIT.error;
    }
    return reportError(
      io,
      {},
      error instanceof HsmintError ? error : new HsmintError('ERR_INTERNAL', String(error)),
    );
  }
  return context.exitCode;
}
