/**
 * Mutation test: one byte changed anywhere in a log of thousands of records is detected,
 * every time, and the first bad record named is the changed one or the one after it.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../../../../core/audit/log.js';
import { verifyAuditLog } from '../../../../core/audit/verify.js';
import { Tally, Variant, buildFixture, type Fixture } from './fixture.js';
import { SEED } from './fixture.js';
import { auditSigner, prng, removeTempDirs, tempDir } from './support.js';

let fixture: Fixture;
const tally = new Tally();

beforeAll(async () => {
  fixture = await buildFixture();
}, 60_000);

afterAll(async () => {
  tally.print('audit mutation tests, one byte');
  await removeTempDirs();
});

/** Another byte: half the time any, half the time a plausible one. */
function otherByte(byte: number, random: () => number): number {
  const other = random() < 0.5 ? byte ^ (1 + Math.floor(random() * 255)) : plausible(byte, random);
  return other === byte ? byte ^ 1 : other;
}

/** A byte of the same kind: a digit for a digit, a base64url character for a letter. */
function plausible(byte: number, random: () => number): number {
  const pick = (alphabet: string) => alphabet.charCodeAt(Math.floor(random() * alphabet.length));
  if (byte >= 0x30 && byte <= 0x39) return pick('0123456789');
  if (/[A-Za-z_-]/.test(String.fromCharCode(byte)))
    return pick('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_');
  return pick(' "{}[],:\\\n');
}

/** The 1-based line a byte is on. */
function lineAt(data: Buffer, offset: number): number {
  let line = 1;
  for (let i = data.indexOf(0x0a); i !== -1 && i < offset; i = data.indexOf(0x0a, i + 1)) line += 1;
  return line;
}

describe('mutation: one byte', () => {
  it('detects a change to any byte: 300 random positions and every segment edge', async () => {
    const random = prng(SEED + 1);
    const total = fixture.names.reduce((sum, name) => sum + fixture.files.get(name)!.length, 0);
    const positions: Array<{ name: string; offset: number }> = [];
    for (let i = 0; i < 300; i += 1) {
      let at = Math.floor(random() * total);
      for (const name of fixture.names) {
        const size = fixture.files.get(name)!.length;
        if (at < size) {
          positions.push({ name, offset: at });
          break;
        }
        at -= size;
      }
    }
    // The places a careless verifier forgets: each segment's first byte, its final newline and
    // the byte before it. (Every byte of the seal is tried below, on a smaller log.)
    for (const name of fixture.names) {
      const size = fixture.files.get(name)!.length;
      positions.push({ name, offset: 0 }, { name, offset: size - 1 }, { name, offset: size - 2 });
    }

    /** Every line of the log in order, to tell how far the named line is from the change. */
    const lines = fixture.names.flatMap((name) =>
      Array.from({ length: lineAt(fixture.files.get(name)!, Infinity) - 1 }, (_, index) => ({
        name,
        line: index + 1,
      })),
    );
    for (const { name, offset } of positions) {
      const original = fixture.files.get(name)!;
      const data = Buffer.from(original);
      const flip = 1 + Math.floor(random() * 255);
      data[offset] =
        random() < 0.5 ? original[offset]! ^ flip : plausible(original[offset]!, random);
      if (data[offset] === original[offset]) data[offset] = original[offset]! ^ 1;
      const details = await new Variant(fixture)
        .set(name, data)
        .expectDetected(tally, 'change one byte');
      // Named: the changed line, or the next record (whose prev no longer fits), or for the
      // seal, the first record it no longer seals.
      const changed = lines.findIndex(
        (at) => at.name === name && at.line === lineAt(original, offset),
      );
      const named = lines.findIndex((at) => at.name === details.file && at.line === details.line);
      if (details.problem === 'uncheckpointed-tail') expect(named).toBeLessThanOrEqual(changed);
      else expect([changed, changed + 1]).toContain(named);
    }
    expect(positions.length).toBeGreaterThanOrEqual(300);
    expect(tally.get('change one byte')).toEqual({
      tried: positions.length,
      detected: positions.length,
    });
  });

  it('detects a change to every byte of the last records: the seal, the record before it, a rotation', async () => {
    const dir = await tempDir();
    const { signer } = await auditSigner('EdDSA');
    const log = await AuditLog.open({
      dir,
      signer,
      checkpointEvery: { records: 10, seconds: 3600 },
      segmentBytes: 4096,
    });
    for (let n = 0; n < 40; n += 1)
      await log.append({
        event: 'mint',
        jti: `jti-${n}`,
        sub: 'svc',
        aud: ['api'],
        exp: 1_800_000_000,
      });
    await log.close();
    const names = (await readdir(dir)).sort();
    expect(names.length).toBeGreaterThanOrEqual(2);
    const files = new Map<string, Buffer>();
    for (const name of names) files.set(name, await readFile(join(dir, name)));
    const small: Fixture = {
      dir,
      signer,
      keys: [signer.publicJwk],
      files,
      names,
      head: log.head(),
    };
    await verifyAuditLog(dir, { keys: small.keys, requireCheckpointAtEnd: true });

    const random = prng(SEED + 5);
    const ranges: Array<{ name: string; from: number; to: number }> = [];
    const last = files.get(names.at(-1)!)!;
    // The final checkpoint and the record before it.
    ranges.push({
      name: names.at(-1)!,
      from: last.lastIndexOf(0x0a, last.lastIndexOf(0x0a, last.length - 2) - 1) + 1,
      to: last.length,
    });
    // The audit.rotate closing the first segment.
    const first = files.get(names[0]!)!;
    ranges.push({
      name: names[0]!,
      from: first.lastIndexOf(0x0a, first.length - 2) + 1,
      to: first.length,
    });
    for (const { name, from, to } of ranges) {
      for (let offset = from; offset < to; offset += 1) {
        const data = Buffer.from(files.get(name)!);
        data[offset] = otherByte(data[offset]!, random);
        await new Variant(small)
          .set(name, data)
          .expectDetected(tally, 'change one byte of the seal');
      }
    }
    const tried = ranges.reduce((sum, { from, to }) => sum + to - from, 0);
    expect(tally.get('change one byte of the seal')).toEqual({ tried, detected: tried });
  });
});
