import { closeSync, fstatSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, stdoutIsJournal, withPriority } from '../../../daemon/logger.js';

function capture(): { stream: Writable; lines: string[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
  return { stream, lines };
}

describe('withPriority', () => {
  it.each([
    ['trace', 7],
    ['debug', 7],
    ['info', 6],
    ['warn', 4],
    ['error', 3],
    ['fatal', 2],
  ])('prefixes a %s line with <%i>', (level, priority) => {
    expect(withPriority(`{"level":"${level}","msg":"x"}\n`)).toBe(
      `<${priority}>{"level":"${level}","msg":"x"}\n`,
    );
  });

  it('leaves a line it cannot read as it is', () => {
    expect(withPriority('{"msg":"no level"}\n')).toBe('{"msg":"no level"}\n');
  });
});

describe('createLogger under journald', () => {
  it('gives each line its priority prefix, and the rest stays one JSON object', async () => {
    const { stream, lines } = capture();
    const logger = createLogger('info', stream, { journal: true });
    logger.warn({ event: 'x' }, 'careful');
    logger.info('fine');
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines.map((line) => line.slice(0, 3))).toEqual(['<4>', '<6>']);
    expect(JSON.parse(lines[0]!.slice(3))).toMatchObject({ level: 'warn', msg: 'careful' });
  });

  it('writes bare JSON lines elsewhere', async () => {
    const { stream, lines } = capture();
    createLogger('info', stream).info('plain');
    await new Promise((resolve) => setImmediate(resolve));
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'info', msg: 'plain' });
  });
});

describe('stdoutIsJournal', () => {
  it('needs $JOURNAL_STREAM to name the very stream on fd 1', () => {
    expect(stdoutIsJournal({})).toBe(false);
    expect(stdoutIsJournal({ JOURNAL_STREAM: 'garbage' })).toBe(false);
    expect(stdoutIsJournal({ JOURNAL_STREAM: '1:1' })).toBe(false);
  });

  it('is true when $JOURNAL_STREAM is the device and inode of the stream', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hsmint-log-'));
    const fd = openSync(join(dir, 'stream'), 'w');
    try {
      const { dev, ino } = fstatSync(fd, { bigint: true });
      expect(stdoutIsJournal({ JOURNAL_STREAM: `${dev}:${ino}` }, fd)).toBe(true);
      expect(stdoutIsJournal({ JOURNAL_STREAM: `${dev}:${ino + 1n}` }, fd)).toBe(false);
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
