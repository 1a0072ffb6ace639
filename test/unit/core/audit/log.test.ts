import { appendFile, readFile, readdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog, type AuditLogOptions } from '../../../../core/audit/log.js';
import { readAuditRecords } from '../../../../core/audit/read.js';
import { hashLine, type AuditRecord } from '../../../../core/audit/record.js';
import { verifyAuditLog } from '../../../../core/audit/verify.js';
import { HsmintError } from '../../../../core/errors.js';
import { ALGORITHMS } from '../../../../core/keys/algorithms.js';
import {
  FaultyIo,
  auditSigner,
  corruptDetails,
  fakeClock,
  removeTempDirs,
  tempDir,
} from './support.js';

afterAll(removeTempDirs);

const LARGE = { records: 1_000_000, seconds: 1_000_000 };

async function openLog(dir: string, options: Partial<AuditLogOptions> = {}): Promise<AuditLog> {
  return AuditLog.open({ dir, checkpointEvery: LARGE, segmentBytes: 1 << 20, ...options });
}

/** Every record in the folder, segment by segment, with nothing skipped. */
async function records(dir: string): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  for await (const record of readAuditRecords(dir)) out.push(record);
  return out;
}

async function segmentFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.endsWith('.jsonl')).sort();
}

function mint(n: number) {
  return {
    event: 'mint',
    caller: { uid: 1000, gid: 1000, pid: 4000 + n, unit: 'app.service', exe: '/usr/bin/app' },
    jti: `jti-${n}`,
    kid: 'kid-1',
    sub: `svc-${n % 3}`,
    aud: ['api'],
    scope: ['read'],
    exp: 1_800_000_000 + n,
    rule: 'apps',
  };
}

const codeOf = async (promise: Promise<unknown>): Promise<string | undefined> =>
  promise.then(
    () => undefined,
    (error: unknown) => (error instanceof HsmintError ? error.code : String(error)),
  );

describe('AuditLog', () => {
  it('writes records that read back and verify, and seals them on close', async () => {
    const dir = await tempDir();
    const { signer } = await auditSigner();
    const clock = fakeClock();
    const log = await openLog(dir, { signer, now: clock.now });
    expect(log.lastTimestamp()).toBeUndefined();
    expect(await log.append(mint(1))).toEqual({ seq: 1 });
    clock.advance(1);
    expect(await log.append({ event: 'key.generate', kid: 'k2', alg: 'ES256' })).toEqual({
      seq: 2,
    });
    expect(log.lastTimestamp()).toEqual(clock.now());
    expect(log.health()).toEqual({ ok: true });
    await log.close();

    const all = await records(dir);
    expect(all.map((record) => [record.seq, record.event])).toEqual([
      [1, 'mint'],
      [2, 'key.generate'],
      [3, 'checkpoint'],
    ]);
    expect(all[0]).toMatchObject({ ...mint(1), ts: '2026-11-28T12:00:00.000Z' });
    const lines = (await readFile(join(dir, 'audit-000001.jsonl'), 'utf8')).split('\n');
    expect(lines.at(-1)).toBe('');
    expect(all[1]!.prev).toBe(hashLine(lines[0]!));
    expect(all[2]).toMatchObject({
      head_seq: 2,
      head_hash: hashLine(lines[1]!),
      kid: signer.publicJwk.kid,
    });

    const result = await verifyAuditLog(dir, {
      keys: [signer.publicJwk],
      requireCheckpointAtEnd: true,
    });
    expect(result).toMatchObject({
      records: 3,
      checkpoints: 1,
      lastCheckpointSeq: 3,
      uncheckpointed: 0,
    });
    expect(await codeOf(log.append(mint(3)))).toBe('ERR_AUDIT_UNAVAILABLE');
  });

  it('reopens where it stopped, and the chain runs on', async () => {
    const dir = await tempDir();
    const { signer } = await auditSigner();
    let log = await openLog(dir, { signer });
    await log.append(mint(1));
    await log.close();
    log = await openLog(dir, { signer });
    expect(log.lastTimestamp()).toBeInstanceOf(Date);
    expect(await log.append(mint(2))).toEqual({ seq: 3 });
    await log.close();
    await expect(
      verifyAuditLog(dir, { keys: [signer.publicJwk], requireCheckpointAtEnd: true }),
    ).resolves.toMatchObject({ records: 4, checkpoints: 2 });
  });

  it('shares one datasync among concurrent appends (group commit), in seq order', async () => {
    const dir = await tempDir();
    const io = new FaultyIo();
    const log = await openLog(dir, { io });
    const results = await Promise.all(Array.from({ length: 100 }, (_, n) => log.append(mint(n))));
    expect(results.map((result) => result.seq)).toEqual(
      Array.from({ length: 100 }, (_, n) => n + 1),
    );
    // The first append starts a batch of one; the 99 that arrive during its sync share the next.
    expect(io.counts.datasyncs).toBeLessThanOrEqual(3);
    await log.close();
    const all = await records(dir);
    expect(all.map((record) => record['jti'])).toEqual(results.map((_, n) => `jti-${n}`));
    await verifyAuditLog(dir, { keys: [] });
  });

  it('acknowledges nothing before it is synced', async () => {
    const dir = await tempDir();
    const io = new FaultyIo();
    const log = await openLog(dir, { io });
    const seen: number[] = [];
    const appends = Array.from({ length: 20 }, (_, n) =>
      log.append(mint(n)).then(({ seq }) => {
        seen.push(io.counts.datasyncs);
        return seq;
      }),
    );
    await Promise.all(appends);
    expect(seen.every((syncs) => syncs >= 1)).toBe(true);
    await log.close();
  });

  it('rotates segments by size; the chain and the seqs run across them', async () => {
    const dir = await tempDir();
    const { signer } = await auditSigner();
    const log = await openLog(dir, {
      signer,
      segmentBytes: 2048,
      checkpointEvery: { records: 7, seconds: 3600 },
    });
    for (let n = 0; n < 60; n += 6)
      await Promise.all(Array.from({ length: 6 }, (_, k) => log.append(mint(n + k))));
    await log.close();
    const files = await segmentFiles(dir);
    expect(files.length).toBeGreaterThan(3);
    expect(files[0]).toBe('audit-000001.jsonl');
    for (const [index, name] of files.entries()) {
      const text = await readFile(join(dir, name), 'utf8');
      const last = JSON.parse(text.trimEnd().split('\n').at(-1)!) as AuditRecord;
      if (index < files.length - 1) {
        expect(last).toMatchObject({ event: 'audit.rotate', next: files[index + 1] });
        // A segment grows past the limit by at most one record and its audit.rotate.
        expect((await stat(join(dir, name))).size).toBeLessThan(2048 + 1024);
      }
    }
    const all = await records(dir);
    expect(all.map((record) => record.seq)).toEqual(all.map((_, index) => index + 1));
    const result = await verifyAuditLog(dir, {
      keys: [signer.publicJwk],
      requireCheckpointAtEnd: true,
    });
    expect(result.records).toBe(all.length);
    expect(result.checkpoints).toBeGreaterThanOrEqual(60 / 7);
  });

  it.each(ALGORITHMS)('writes checkpoints that verify with the %s audit key', async (alg) => {
    const dir = await tempDir();
    const { signer, store } = await auditSigner(alg);
    const reports: unknown[] = [];
    const log = await openLog(dir, {
      signer,
      checkpointEvery: { records: 5, seconds: 3600 },
      report: (event) => reports.push(event),
    });
    for (let n = 0; n < 12; n += 1) await log.append(mint(n));
    await log.close();
    const all = await records(dir);
    const checkpoints = all.filter((record) => record.event === 'checkpoint');
    expect(checkpoints.map((record) => record.seq)).toEqual([6, 12, 15]);
    expect(checkpoints[0]).toMatchObject({ head_seq: 5, alg, kid: signer.publicJwk.kid });
    expect(store.signCalls).toBe(3);
    expect(reports).toContainEqual(
      expect.objectContaining({ event: 'audit.checkpoint', head_seq: 5 }),
    );
    await expect(
      verifyAuditLog(dir, { keys: [signer.publicJwk], requireCheckpointAtEnd: true }),
    ).resolves.toMatchObject({ records: 15, checkpoints: 3, lastCheckpointSeq: 15 });
  });

  it('checkpoints when the seconds have passed, by the injected clock', async () => {
    const dir = await tempDir();
    const { signer } = await auditSigner();
    const clock = fakeClock();
    const log = await openLog(dir, {
      signer,
      now: clock.now,
      checkpointEvery: { records: 1000, seconds: 60 },
    });
    await log.append(mint(1));
    clock.advance(30);
    await log.append(mint(2));
    clock.advance(31);
    await log.append(mint(3));
    await log.close();
    expect((await records(dir)).map((record) => record.event)).toEqual([
      'mint',
      'mint',
      'mint',
      'checkpoint',
    ]);
  });

  it('seals an idle log on its timer', async () => {
    const dir = await tempDir();
    const { signer } = await auditSigner();
    const log = await openLog(dir, { signer, checkpointEvery: { records: 1000, seconds: 0.05 } });
    await log.append(mint(1));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect((await records(dir)).map((record) => record.event)).toEqual(['mint', 'checkpoint']);
    await log.close();
    // Nothing new since: close adds no second checkpoint.
    expect(await records(dir)).toHaveLength(2);
  });

  it('goes on appending when the audit key cannot sign, and seals once it can', async () => {
    const dir = await tempDir();
    const { signer, store } = await auditSigner();
    const reports: Array<{ event: string }> = [];
    const clock = fakeClock();
    const log = await openLog(dir, {
      signer,
      now: clock.now,
      retryMs: 1000,
      checkpointEvery: { records: 2, seconds: 3600 },
      report: (event) => reports.push(event),
    });
    store.signError = new Error('CKR_DEVICE_ERROR');
    for (let n = 0; n < 4; n += 1) await log.append(mint(n));
    expect(reports.filter((event) => event.event === 'audit.checkpoint_failed')).toHaveLength(1);
    store.signError = undefined;
    clock.advance(2);
    await log.append(mint(5));
    await log.close();
    expect((await records(dir)).map((record) => record.event)).toEqual([
      'mint',
      'mint',
      'mint',
      'mint',
      'mint',
      'checkpoint',
    ]);
    await verifyAuditLog(dir, { keys: [signer.publicJwk], requireCheckpointAtEnd: true });
  });

  it('keeps line breaks in caller strings inside one record, and refuses secret fields', async () => {
    const dir = await tempDir();
    const log = await openLog(dir);
    const nasty = `a\nb\r\u2028c\u2029"},\n{"seq":99,"event":"forged"}`;
    await log.append({ event: 'mint', sub: nasty, aud: [nasty] });
    expect(await codeOf(log.append({ event: 'mint', token: 'eyJhbGciOi.x.y' }))).toBe(
      'ERR_INTERNAL',
    );
    expect(await codeOf(log.append({ event: 'start', pin: '1234' }))).toBe('ERR_INTERNAL');
    expect(await codeOf(log.append({ event: 'mint', signature: 'x' }))).toBe('ERR_INTERNAL');
    expect(await codeOf(log.append({ event: 'checkpoint' }))).toBe('ERR_INTERNAL');
    await log.append({ event: 'stop' });
    await log.close();
    const text = await readFile(join(dir, 'audit-000001.jsonl'));
    expect(text.toString('utf8').split('\n')).toHaveLength(3);
    expect(text.toString('utf8')).not.toMatch(/[\u2028\u2029]/);
    const all = await records(dir);
    expect(all.map((record) => [record.seq, record.event])).toEqual([
      [1, 'mint'],
      [2, 'stop'],
    ]);
    expect(all[0]!['sub']).toBe(nasty);
    await verifyAuditLog(dir, { keys: [] });
  });

  it('refuses an event that is not JSON, and goes on', async () => {
    const dir = await tempDir();
    const log = await openLog(dir);
    expect(await codeOf(log.append({ event: 'mint', n: 1n }))).toBe('ERR_INTERNAL');
    expect(await log.append({ event: 'mint' })).toEqual({ seq: 1 });
    await log.close();
  });
});

describe('AuditLog crash recovery', () => {
  async function logWith(
    n: number,
  ): Promise<{ dir: string; keys: Awaited<ReturnType<typeof auditSigner>> }> {
    const dir = await tempDir();
    const keys = await auditSigner();
    const log = await openLog(dir, {
      signer: keys.signer,
      checkpointEvery: { records: 4, seconds: 3600 },
    });
    for (let k = 0; k < n; k += 1) await log.append(mint(k));
    await log.close();
    return { dir, keys };
  }

  it.each([
    ['half a line', (line: string) => line.slice(0, line.length >> 1)],
    ['a whole line but its newline', (line: string) => line],
    ['zeros with a newline (a crash that extended the file)', () => '\0'.repeat(40) + '\n'],
  ])(
    'cuts a torn last line (%s), records audit.recover, and the chain verifies',
    async (_name, torn) => {
      const { dir, keys } = await logWith(6);
      const path = join(dir, 'audit-000001.jsonl');
      const before = (await stat(path)).size;
      const fake = JSON.stringify({
        seq: 8,
        ts: '2026-11-28T12:00:00.000Z',
        prev: 'x',
        event: 'mint',
      });
      await appendFile(path, torn(fake));
      const cut = (await stat(path)).size - before;
      const reports: Array<{ event: string }> = [];
      const log = await openLog(dir, {
        signer: keys.signer,
        report: (event) => reports.push(event),
      });
      expect(reports).toContainEqual({
        event: 'audit.recovered',
        file: 'audit-000001.jsonl',
        cut_bytes: cut,
      });
      await log.append(mint(99));
      await log.close();
      const all = await records(dir);
      expect(all.find((record) => record.event === 'audit.recover')).toMatchObject({
        seq: 9,
        file: 'audit-000001.jsonl',
        cut_bytes: cut,
      });
      await expect(
        verifyAuditLog(dir, { keys: [keys.signer.publicJwk], requireCheckpointAtEnd: true }),
      ).resolves.toMatchObject({ records: all.length });
    },
  );

  it('refuses to open a log whose chain is broken in the middle', async () => {
    const { dir } = await logWith(6);
    const path = join(dir, 'audit-000001.jsonl');
    const lines = (await readFile(path, 'utf8')).split('\n');
    lines[2] = lines[2]!.replace('svc-', 'SVC-');
    await writeFile(path, lines.join('\n'));
    const size = (await stat(path)).size;
    expect(await corruptDetails(() => openLog(dir))).toEqual({
      seq: 4,
      file: 'audit-000001.jsonl',
      line: 4,
      problem: 'prev-mismatch',
    });
    // Nothing is changed on a refused open: the evidence stays as it was.
    expect((await stat(path)).size).toBe(size);
  });

  it('opens a broken log with allowBrokenChain, recording audit.override', async () => {
    const { dir, keys } = await logWith(6);
    const path = join(dir, 'audit-000001.jsonl');
    const lines = (await readFile(path, 'utf8')).split('\n');
    lines.splice(2, 1);
    await writeFile(path, lines.join('\n'));
    const log = await openLog(dir, { signer: keys.signer, allowBrokenChain: true });
    const { seq } = await log.append(mint(7));
    await log.close();
    const all = await records(dir);
    const override = all.find((record) => record.event === 'audit.override');
    expect(override).toMatchObject({
      problem: 'seq-gap',
      broken_seq: 4,
      file: 'audit-000001.jsonl',
      line: 3,
    });
    expect(override!.seq).toBe(seq - 1);
    // The log still shows the break: an override is a record, not a repair.
    expect(
      (await corruptDetails(() => verifyAuditLog(dir, { keys: [keys.signer.publicJwk] }))).problem,
    ).toBe('seq-gap');
  });

  it('refuses a missing segment before the tail', async () => {
    const dir = await tempDir();
    const log = await openLog(dir, { segmentBytes: 512 });
    for (let n = 0; n < 20; n += 1) await log.append(mint(n));
    await log.close();
    const files = await segmentFiles(dir);
    expect(files.length).toBeGreaterThan(4);
    await unlink(join(dir, files[1]!));
    expect((await corruptDetails(() => openLog(dir))).problem).toBe('missing-segment');
  });

  it('carries on in the next segment after a crash right after audit.rotate', async () => {
    const dir = await tempDir();
    let log = await openLog(dir, { segmentBytes: 600 });
    for (let n = 0; n < 12; n += 1) await log.append(mint(n));
    await log.close();
    const files = await segmentFiles(dir);
    const last = files.at(-1)!;
    // Remove the last segment whole: the one before it ends with audit.rotate naming it.
    await unlink(join(dir, last));
    log = await openLog(dir, { segmentBytes: 600 });
    await log.append(mint(100));
    await log.close();
    expect(await segmentFiles(dir)).toEqual(files);
    await verifyAuditLog(dir, { keys: [] });
  });
});

describe('AuditLog when the disk fails', () => {
  it.each(['ENOSPC', 'EROFS', 'EACCES', 'EIO'])(
    'refuses with ERR_AUDIT_UNAVAILABLE on %s, reports it, and resumes by itself',
    async (errno) => {
      const dir = await tempDir();
      const io = new FaultyIo();
      const { signer } = await auditSigner();
      const reports: Array<{ event: string }> = [];
      const log = await openLog(dir, { io, signer, report: (event) => reports.push(event) });
      await log.append(mint(1));
      await log.append(mint(2));
      io.fault = errno;
      const failed = await Promise.allSettled([log.append(mint(3)), log.append(mint(4))]);
      expect(failed.map((result) => result.status)).toEqual(['rejected', 'rejected']);
      expect(
        failed.map((result) => result.status === 'rejected' && (result.reason as HsmintError).code),
      ).toEqual(['ERR_AUDIT_UNAVAILABLE', 'ERR_AUDIT_UNAVAILABLE']);
      expect(log.health()).toEqual({ ok: false, reason: expect.stringContaining(errno) });
      expect(reports).toContainEqual(
        expect.objectContaining({ event: 'audit.unavailable', errno }),
      );
      expect(await codeOf(log.append(mint(5)))).toBe('ERR_AUDIT_UNAVAILABLE');

      io.fault = undefined;
      expect(await log.append(mint(6))).toEqual({ seq: 4 });
      expect(log.health()).toEqual({ ok: true });
      expect(reports).toContainEqual(
        expect.objectContaining({ event: 'audit.available', rejected: 3 }),
      );
      await log.close();

      const all = await records(dir);
      expect(all.map((record) => [record.seq, record.event, record['jti']])).toEqual([
        [1, 'mint', 'jti-1'],
        [2, 'mint', 'jti-2'],
        [3, 'audit.resume', undefined],
        [4, 'mint', 'jti-6'],
        [5, 'checkpoint', undefined],
      ]);
      expect(all[2]).toMatchObject({ rejected: 3, reason: expect.stringContaining(errno) });
      await verifyAuditLog(dir, { keys: [signer.publicJwk], requireCheckpointAtEnd: true });
    },
  );

  it('cuts a half-written batch back before it writes again: no torn line, no gap', async () => {
    const dir = await tempDir();
    const io = new FaultyIo();
    const log = await openLog(dir, { io });
    await log.append(mint(1));
    const size = (await stat(join(dir, 'audit-000001.jsonl'))).size;
    io.partialWrite = 'ENOSPC';
    expect(await codeOf(log.append(mint(2)))).toBe('ERR_AUDIT_UNAVAILABLE');
    expect((await stat(join(dir, 'audit-000001.jsonl'))).size).toBeGreaterThan(size);
    expect(await log.append(mint(3))).toEqual({ seq: 3 });
    await log.close();
    const text = await readFile(join(dir, 'audit-000001.jsonl'), 'utf8');
    expect(text.endsWith('\n')).toBe(true);
    expect((await records(dir)).map((record) => record.event)).toEqual([
      'mint',
      'audit.resume',
      'mint',
    ]);
    await verifyAuditLog(dir, { keys: [] });
  });

  it('recovers without any append, on its retry timer', async () => {
    const dir = await tempDir();
    const io = new FaultyIo();
    const log = await openLog(dir, { io, retryMs: 20 });
    await log.append(mint(1));
    io.fault = 'EIO';
    expect(await codeOf(log.append(mint(2)))).toBe('ERR_AUDIT_UNAVAILABLE');
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(log.health().ok).toBe(false);
    io.fault = undefined;
    for (let tries = 0; tries < 50 && !log.health().ok; tries += 1)
      await new Promise((resolve) => setTimeout(resolve, 10));
    expect(log.health()).toEqual({ ok: true });
    await log.close();
    expect((await records(dir)).map((record) => record.event)).toEqual(['mint', 'audit.resume']);
  });

  it('rolls back a batch that failed in its new segment, and rotates again later', async () => {
    const dir = await tempDir();
    const io = new FaultyIo();
    const log = await openLog(dir, { io, segmentBytes: 700 });
    let n = 0;
    while ((await segmentFiles(dir)).length < 2) await log.append(mint(n++));
    io.failOpenOf = { name: 'audit-000003.jsonl', errno: 'ENOSPC' };
    let refused = 0;
    for (let k = 0; k < 20; k += 1) if (await codeOf(log.append(mint(n++)))) refused += 1;
    expect(refused).toBeGreaterThan(0);
    expect(log.health().ok).toBe(false);
    io.failOpenOf = undefined;
    await log.append(mint(n++));
    expect(log.health().ok).toBe(true);
    for (let k = 0; k < 10; k += 1) await log.append(mint(n++));
    await log.close();
    expect((await segmentFiles(dir)).length).toBeGreaterThanOrEqual(3);
    const result = await verifyAuditLog(dir, { keys: [] });
    expect(result.records).toBe((await records(dir)).length);
  });

  it('reports the flush failure from close', async () => {
    const dir = await tempDir();
    const io = new FaultyIo();
    const log = await openLog(dir, { io });
    await log.append(mint(1));
    io.fault = 'EROFS';
    expect(await codeOf(log.append(mint(2)))).toBe('ERR_AUDIT_UNAVAILABLE');
    expect(await codeOf(log.close())).toBe('ERR_AUDIT_UNAVAILABLE');
  });

  it('fails open() with ERR_AUDIT_UNAVAILABLE when it cannot write the recovery', async () => {
    const dir = await tempDir();
    const log = await openLog(dir);
    await log.append(mint(1));
    await log.close();
    await appendFile(join(dir, 'audit-000001.jsonl'), '{"seq":2');
    const io = new FaultyIo();
    io.fault = 'EROFS';
    expect(await codeOf(openLog(dir, { io }))).toBe('ERR_AUDIT_UNAVAILABLE');
  });
});
