import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { doctorExitCode, renderDoctorReport } from '../../../../cli/commands/doctor.js';
import type { Io } from '../../../../cli/output.js';
import { runCli } from '../../../../cli/program.js';
import type { DoctorCheck, DoctorReport } from '../../../../core/pkcs11/doctor.js';

function streams(isTTY: boolean): { io: Io; stdout(): string; stderr(): string } {
  let out = '';
  let err = '';
  const stdout = Object.assign(new PassThrough(), { isTTY });
  const stderr = new PassThrough();
  stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  const stdin = Object.assign(Readable.from([]), { isTTY });
  return { io: { stdout, stderr, stdin }, stdout: () => out, stderr: () => err };
}

function report(checks: DoctorCheck[]): DoctorReport {
  return {
    ok: checks.every((check) => check.status !== 'fail'),
    target: { config: '/etc/hsmint/hsmint.yaml', profile: 'softhsm' },
    module: null,
    slots: [],
    tokens: [
      {
        label: 'hsmint-prod',
        serial: '44c2f3fdf07bd997',
        model: 'SoftHSM v2',
        manufacturer: 'SoftHSM project',
        firmware: '2.6',
        hardware: '2.6',
        selected: true,
      },
      {
        label: 'other',
        serial: '0001',
        model: 'SoftHSM v2',
        manufacturer: 'SoftHSM project',
        firmware: '2.6',
        hardware: '2.6',
        selected: false,
      },
    ],
    mechanisms: null,
    keys: [],
    latency: [],
    checks,
  };
}

const pass: DoctorCheck = { id: 'login', title: 'Login', status: 'pass', detail: 'logged in' };
const warn: DoctorCheck = {
  id: 'pin-state',
  title: 'PIN retry state',
  status: 'warn',
  detail: 'a wrong user PIN was tried',
  fix: 'find what tried it',
};
const fail: DoctorCheck = {
  id: 'non-exportable:hsmint-ES256-20200101T000000Z',
  title: 'Key hsmint-ES256-20200101T000000Z',
  status: 'fail',
  detail: 'CKA_EXTRACTABLE is true',
  fix: 'treat it as exposed',
};
const skip: DoctorCheck = { id: 'latency', title: 'Sign latency', status: 'skip', detail: '-' };

describe('doctorExitCode', () => {
  it('is 0 when every check passed or only warned or skipped', () => {
    expect(doctorExitCode(report([pass, warn, skip]))).toBe(0);
  });

  it('is 1 when any check failed', () => {
    expect(doctorExitCode(report([pass, fail, warn]))).toBe(1);
  });
});

describe('renderDoctorReport', () => {
  it('shows the tokens, one row per check, and the fix under failures and warnings', () => {
    const terminal = streams(true);
    renderDoctorReport(terminal.io, report([pass, warn, fail, skip]));
    const lines = terminal.stdout().split('\n');
    expect(lines[0]).toMatch(/^\s+TOKEN\s+SERIAL\s+MODEL\s+MANUFACTURER\s+FIRMWARE$/);
    expect(lines[1]).toMatch(/^\*\s+hsmint-prod\s+44c2f3fdf07bd997/);
    expect(lines[2]).toMatch(/^\s+other\s+0001/);
    const failRow = lines.findIndex((line) => line.startsWith('FAIL'));
    expect(lines[failRow]).toContain('Key hsmint-ES256-20200101T000000Z');
    expect(lines[failRow + 1]?.trim()).toBe('fix: treat it as exposed');
    const warnRow = lines.findIndex((line) => line.startsWith('WARN'));
    expect(lines[warnRow + 1]?.trim()).toBe('fix: find what tried it');
    expect(lines.some((line) => line.startsWith('SKIP'))).toBe(true);
    expect(terminal.stdout()).toContain('FAILED: 1 passed, 1 warning, 1 failed, 1 skipped');
  });

  it('says ok when nothing failed', () => {
    const terminal = streams(true);
    renderDoctorReport(terminal.io, report([pass, warn]));
    expect(terminal.stdout()).toContain('ok: 1 passed, 1 warning, 0 failed, 0 skipped');
  });
});

describe('hsmint doctor usage errors exit 2 without touching a token', () => {
  it.each([
    [['doctor', '--config', 'a.yaml', '--profile', 'softhsm', '--token', 't']],
    [['doctor', '--token', 'pkcs11:token=t']],
    [['doctor', '--module', '/usr/lib/softhsm/libsofthsm2.so']],
    [['doctor', '--profile', 'softhsm']],
    [['doctor', '--samples', '0']],
    [['doctor', '--samples', 'many']],
  ])('%j', async (argv) => {
    const piped = streams(false);
    expect(await runCli(argv, piped.io)).toBe(2);
    expect(JSON.parse(piped.stderr()).error.code).toBe('ERR_USAGE');
    expect(piped.stdout()).toBe('');
  });
});
