import { Command } from 'commander';
import { configPath } from '../../core/config.js';
import { HsmintError } from '../../core/errors.js';
import { runDoctor, type DoctorInput, type DoctorReport } from '../../core/pkcs11/doctor.js';
import { run, type CliContext } from '../context.js';
import { EXIT, printJson, printTable, wantsJson, type Io } from '../output.js';

const PROFILE_FLAGS = ['module', 'token'] as const;
const FLAG_NAMES: Record<(typeof PROFILE_FLAGS)[number], string> = {
  module: '--module',
  token: '--token',
};

/** 0 when no check failed (warnings allowed), 1 when one did. */
export function doctorExitCode(report: DoctorReport): number {
  return report.checks.some((check) => check.status === 'fail') ? EXIT.invalid : EXIT.ok;
}

/** The report for people: the tokens seen, then one row per check with its fix under it. */
export function renderDoctorReport(io: Io, report: DoctorReport): void {
  if (report.tokens.length > 0) {
    printTable(
      io,
      ['', 'TOKEN', 'SERIAL', 'MODEL', 'MANUFACTURER', 'FIRMWARE'],
      report.tokens.map((token) => [
        token.selected ? '*' : '',
        token.label,
        token.serial,
        token.model,
        token.manufacturer,
        token.firmware,
      ]),
    );
    io.stdout.write('\n');
  }
  const rows: string[][] = [];
  for (const check of report.checks) {
    rows.push([check.status.toUpperCase(), check.title, check.detail]);
    if (check.fix !== undefined && (check.status === 'fail' || check.status === 'warn'))
      rows.push(['', '', `fix: ${check.fix}`]);
  }
  printTable(io, ['STATUS', 'CHECK', 'DETAIL'], rows);
  const count = (status: string) => report.checks.filter((c) => c.status === status).length;
  const failed = count('fail');
  const warnings = count('warn');
  io.stdout.write(
    `\n${failed === 0 ? 'ok' : 'FAILED'}: ${count('pass')} passed, ${warnings} warning${warnings === 1 ? '' : 's'}, ${failed} failed, ${count('skip')} skipped\n`,
  );
}

function samplesOption(value: unknown): number {
  const samples = Number(value);
  if (!Number.isInteger(samples) || samples < 1 || samples > 10_000)
    throw new HsmintError('ERR_USAGE', '--samples takes a whole number from 1 to 10000');
  return samples;
}

function doctorInput(options: Record<string, unknown>): DoctorInput {
  const text = (name: string) =>
    typeof options[name] === 'string' ? (options[name] as string) : undefined;
  const profile = text('profile');
  const pinFile = text('pinFile');
  const given = PROFILE_FLAGS.filter((name) => text(name) !== undefined);
  if (profile === undefined) {
    if (given.length > 0)
      throw new HsmintError(
        'ERR_USAGE',
        `${given.map((name) => FLAG_NAMES[name]).join(' and ')} go with --profile`,
      );
    return {
      configFile: configPath(text('config')),
      ...(pinFile === undefined ? {} : { pinFile }),
    };
  }
  if (text('config') !== undefined)
    throw new HsmintError('ERR_USAGE', 'give --config or --profile, not both');
  const token = text('token');
  if (token === undefined)
    throw new HsmintError('ERR_USAGE', '--profile needs --token (a label or a pkcs11: URI)');
  const module = text('module');
  return {
    profile,
    token,
    ...(module === undefined ? {} : { modulePath: module }),
    ...(pinFile === undefined ? {} : { pinFile }),
  };
}

/** `hsmint doctor`: offline checks of the token the daemon will use; exit 0 only if all pass. */
export function doctorCommand(context: CliContext): Command {
  return new Command('doctor')
    .description(
      'check the token offline: module, PIN state, login, mechanisms, signing, key protection, latency (exit 0 all passed, 1 a check failed, 2 usage)',
    )
    .option('--config <file>', 'hsmint.yaml (default: $HSMINT_CONFIG or /etc/hsmint/hsmint.yaml)')
    .option('--profile <name>', 'check against a profile in hsm-profiles/ instead of a config')
    .option('--module <path>', 'with --profile: the PKCS#11 module (default: from the profile)')
    .option('--token <uri>', 'with --profile: the token label or pkcs11: URI')
    .option(
      '--pin-file <file>',
      'the user PIN file: with --profile (or pin-source in the URI), or instead of hsm.pin_file',
    )
    .option('--samples <n>', 'signatures timed per algorithm', '50')
    .option(
      '--allow-final-try',
      'log in even when one more wrong PIN would lock the token (check the PIN file first)',
    )
    .action(
      run(context, async (options) => {
        const samples = samplesOption(options['samples']);
        const report = await runDoctor(doctorInput(options), {
          samples,
          allowFinalTry: options['allowFinalTry'] === true,
        });
        if (wantsJson(context.io, options)) printJson(context.io, report);
        else renderDoctorReport(context.io, report);
        return doctorExitCode(report);
      }),
    );
}
