import { flattenedVerify, importJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHECKPOINT_TYP } from '../../../../core/audit/checkpoint.js';
import { AuditLog } from '../../../../core/audit/log.js';
import type { AuditRecord } from '../../../../core/audit/record.js';
import { readAuditRecords, verifyAuditLog } from '../../../../core/audit/verify.js';
import type { PublicJwk } from '../../../../core/keys/keystore.js';
import { RECORDS, buildFixture, type Fixture } from './fixture.js';
import { auditSigner, corruptDetails, removeTempDirs, tempDir } from './support.js';

let fixture: Fixture;

beforeAll(async () => {
  fixture = await buildFixture();
}, 60_000);

afterAll(removeTempDirs);

async function collect(iterator: AsyncIterable<AuditRecord>): Promise<AuditRecord[]> {
  const out: AuditRecord[] = [];
  for await (const record of iterator) out.push(record);
  return out;
}

describe('verifyAuditLog', () => {
  it('counts the records and checkpoints of an untouched log', async () => {
    expect(fixture.names.length).toBeGreaterThanOrEqual(8);
    const result = await verifyAuditLog(fixture.dir, {
      keys: fixture.keys,
      requireCheckpointAtEnd: true,
    });
    expect(result.records).toBeGreaterThan(RECORDS);
    expect(result.checkpoints).toBeGreaterThanOrEqual(RECORDS / 100);
    expect(result.lastCheckpointSeq).toBe(result.records);
    expect(result.uncheckpointed).toBe(0);
    expect(result.head).toEqual(fixture.head);
    await expect(
      verifyAuditLog(fixture.dir, { keys: fixture.keys, anchor: fixture.head }),
    ).resolves.toMatchObject({ records: result.records });
  });

  it('refuses checkpoints by a key it was not given', async () => {
    const { signer: other } = await auditSigner('ES256');
    expect(
      await corruptDetails(() => verifyAuditLog(fixture.dir, { keys: [other.publicJwk] })),
    ).toEqual({
      seq: 101,
      file: 'audit-000001.jsonl',
      line: 101,
      problem: 'checkpoint-unknown-kid',
    });
  });

  it.each([
    ['an algorithm off the list', { alg: 'HS256' }],
    ['a private key', { d: 'AAAA' }],
    ['a key that does not fit its alg', { alg: 'ES384' }],
  ])('refuses %s', async (_name, change) => {
    const key = { ...fixture.keys[0]!, ...change } as unknown as PublicJwk;
    await expect(verifyAuditLog(fixture.dir, { keys: [key] })).rejects.toThrow(TypeError);
  });

  it('bounds the unsealed tail of a live log with maxUncheckpointed', async () => {
    const dir = await tempDir();
    const { signer } = await auditSigner();
    const log = await AuditLog.open({
      dir,
      signer,
      checkpointEvery: { records: 5, seconds: 3600 },
      segmentBytes: 1 << 20,
    });
    for (let n = 0; n < 8; n += 1) await log.append({ event: 'mint', jti: `j${n}` });
    // Live: 3 records after the checkpoint at seq 6.
    const keys = [signer.publicJwk];
    await expect(verifyAuditLog(dir, { keys })).resolves.toMatchObject({
      uncheckpointed: 3,
      lastCheckpointSeq: 6,
    });
    await expect(
      verifyAuditLog(dir, { keys, requireCheckpointAtEnd: true, maxUncheckpointed: 5 }),
    ).resolves.toBeDefined();
    expect(
      await corruptDetails(() => verifyAuditLog(dir, { keys, requireCheckpointAtEnd: true })),
    ).toEqual({
      seq: 7,
      file: 'audit-000001.jsonl',
      line: 7,
      problem: 'uncheckpointed-tail',
    });
    await log.close();
    await expect(
      verifyAuditLog(dir, { keys, requireCheckpointAtEnd: true }),
    ).resolves.toMatchObject({ uncheckpointed: 0 });
  });

  it('names an empty folder as the missing first segment', async () => {
    const empty = await tempDir();
    expect(await corruptDetails(() => verifyAuditLog(empty, { keys: [] }))).toMatchObject({
      problem: 'missing-segment',
      file: 'audit-000001.jsonl',
    });
  });
});

describe('checkpoints are JWS', () => {
  it('verify with jose as a detached JWS over head_seq, head_hash and ts', async () => {
    const checkpoints = (
      await collect(readAuditRecords(fixture.dir, { event: 'checkpoint' }))
    ).slice(0, 3);
    expect(checkpoints).toHaveLength(3);
    const key = await importJWK(fixture.keys[0]!, 'ES256');
    for (const checkpoint of checkpoints) {
      const header = { alg: 'ES256', kid: checkpoint['kid'], typ: CHECKPOINT_TYP };
      const payload = {
        head_seq: checkpoint['head_seq'],
        head_hash: checkpoint['head_hash'],
        ts: checkpoint.ts,
      };
      const { payload: signed } = await flattenedVerify(
        {
          protected: Buffer.from(JSON.stringify(header)).toString('base64url'),
          payload: Buffer.from(JSON.stringify(payload)).toString('base64url'),
          signature: checkpoint['sig'] as string,
        },
        key,
        { algorithms: ['ES256'] },
      );
      expect(JSON.parse(Buffer.from(signed).toString())).toEqual(payload);
    }
  });
});

describe('readAuditRecords', () => {
  it('reads every record in order, and filters by event, sub and time', async () => {
    const all = await collect(readAuditRecords(fixture.dir));
    expect(all.map((record) => record.seq)).toEqual(all.map((_, index) => index + 1));
    expect(all).toHaveLength(fixture.head.seq);
    const denied = await collect(readAuditRecords(fixture.dir, { event: 'mint.*', sub: 'svc-3' }));
    expect(denied.length).toBeGreaterThan(0);
    expect(
      denied.every((record) => record.event === 'mint.denied' && record['sub'] === 'svc-3'),
    ).toBe(true);
    const either = await collect(
      readAuditRecords(fixture.dir, { event: ['checkpoint', 'audit.rotate'] }),
    );
    expect(new Set(either.map((record) => record.event))).toEqual(
      new Set(['checkpoint', 'audit.rotate']),
    );
    const since = new Date(all[2000]!.ts);
    const late = await collect(readAuditRecords(fixture.dir, { since }));
    expect(late.every((record) => Date.parse(record.ts) >= since.getTime())).toBe(true);
    expect(late.length).toBeGreaterThan(0);
  });

  it('follows the log as it grows, until aborted', async () => {
    const dir = await tempDir();
    const log = await AuditLog.open({
      dir,
      checkpointEvery: { records: 100, seconds: 3600 },
      segmentBytes: 300,
    });
    await log.append({ event: 'start' });
    const controller = new AbortController();
    const seen: string[] = [];
    const reading = (async () => {
      for await (const record of readAuditRecords(dir, {
        event: 'mint',
        follow: { signal: controller.signal, intervalMs: 10 },
      })) {
        seen.push(record['jti'] as string);
        if (seen.length === 5) controller.abort();
      }
    })();
    for (let n = 0; n < 5; n += 1) {
      await log.append({ event: 'mint', jti: `j${n}` });
      await new Promise((resolve) => setTimeout(resolve, 15));
    }
    await reading;
    await log.close();
    expect(seen).toEqual(['j0', 'j1', 'j2', 'j3', 'j4']);
  });
});
