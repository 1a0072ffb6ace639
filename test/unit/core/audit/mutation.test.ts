/**
 * Mutation tests: records deleted, swapped, replayed or forged, the tail cut, segments dropped,
 * checkpoints forged, history rewritten and rechained. Every case must fail verification with
 * ERR_AUDIT_CORRUPT naming a seq, a segment and a line.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointSigningInput } from '../../../../core/audit/checkpoint.js';
import { hashLine, serializeRecord, type AuditRecord } from '../../../../core/audit/record.js';
import { verifyAuditLog } from '../../../../core/audit/verify.js';
import type { Signer } from '../../../../core/ca/signer.js';
import { SEED, Tally, Variant, buildFixture, seqOf, type Fixture } from './fixture.js';
import { auditSigner, memoryFiles, prng, removeTempDirs } from './support.js';

let fixture: Fixture;
const tally = new Tally();

beforeAll(async () => {
  fixture = await buildFixture();
}, 60_000);

afterAll(async () => {
  tally.print('audit mutation tests, structure');
  await removeTempDirs();
});

const variant = () => new Variant(fixture);

describe('mutation: records', () => {
  it('deletes a record: the first and last of each segment, and one at random in each', async () => {
    const random = prng(SEED + 2);
    for (const name of fixture.names) {
      const count = variant().lines(name).length;
      for (const index of [0, count - 1, Math.floor(random() * count)]) {
        const tampered = variant();
        const lines = tampered.lines(name);
        const removed = seqOf(lines[index]!);
        lines.splice(index, 1);
        const details = await tampered
          .setLines(name, lines)
          .expectDetected(tally, 'delete a record');
        if (details.problem !== 'uncheckpointed-tail')
          expect(details.seq).toBeGreaterThanOrEqual(removed);
      }
    }
  });

  it('swaps two records, near and far, within a segment and across segments', async () => {
    const random = prng(SEED + 3);
    for (let i = 0; i < 40; i += 1) {
      const tampered = variant();
      const a = fixture.names[Math.floor(random() * fixture.names.length)]!;
      const b = i % 4 === 0 ? fixture.names[Math.floor(random() * fixture.names.length)]! : a;
      const linesA = tampered.lines(a);
      const linesB = a === b ? linesA : tampered.lines(b);
      const x = Math.floor(random() * linesA.length);
      let y = i % 2 === 0 ? x + 1 : Math.floor(random() * linesB.length);
      if (a === b && (y === x || y >= linesB.length)) y = x === 0 ? 1 : x - 1;
      [linesA[x], linesB[y]] = [linesB[y]!, linesA[x]!];
      tampered.setLines(a, linesA);
      if (b !== a) tampered.setLines(b, linesB);
      await tampered.expectDetected(tally, 'swap two records');
    }
  });

  it('replays a record', async () => {
    for (const name of [fixture.names[0]!, fixture.names[5]!, fixture.names.at(-1)!]) {
      const tampered = variant();
      const lines = tampered.lines(name);
      lines.splice(5, 0, lines[4]!);
      const details = await tampered.setLines(name, lines).expectDetected(tally, 'replay a record');
      expect(details).toMatchObject({ file: name, line: 6, problem: 'seq-order' });
    }
    // The final checkpoint again, at the very end.
    const tampered = variant();
    const last = fixture.names.at(-1)!;
    const lines = tampered.lines(last);
    const details = await tampered
      .setLines(last, [...lines, lines.at(-1)!])
      .expectDetected(tally, 'replay a record');
    expect(details).toMatchObject({ line: lines.length + 1, problem: 'seq-order' });
  });

  it('inserts a forged record that links to the one before it', async () => {
    const name = fixture.names[2]!;
    const tampered = variant();
    const lines = tampered.lines(name);
    const before = JSON.parse(lines[20]!) as AuditRecord;
    lines.splice(
      21,
      0,
      serializeRecord({
        ...before,
        seq: before.seq + 1,
        prev: hashLine(lines[20]!),
        jti: 'forged',
      }),
    );
    const details = await tampered.setLines(name, lines).expectDetected(tally, 'insert a record');
    // The forged record fits; the genuine one after it does not.
    expect(details).toMatchObject({
      seq: before.seq + 1,
      file: name,
      line: 23,
      problem: 'seq-order',
    });
  });
});

describe('mutation: the tail', () => {
  it('truncates the last segment anywhere after the last checkpoint', async () => {
    const random = prng(SEED + 4);
    const last = fixture.names.at(-1)!;
    const data = fixture.files.get(last)!;
    const sealedAt = data.lastIndexOf(0x0a, data.length - 2) + 1;
    for (let i = 0; i < 30; i += 1) {
      // Inside a line (a torn write), or at the end of a line; never at a checkpoint's end.
      let cut = Math.floor(random() * (data.length - 1));
      if (i % 2 === 1) cut = data.indexOf(0x0a, cut) + 1;
      if (cut === data.length || endsAtCheckpoint(data, cut)) cut = sealedAt;
      const details = await variant()
        .set(last, data.subarray(0, cut))
        .expectDetected(tally, 'truncate the tail');
      expect(['torn', 'uncheckpointed-tail']).toContain(details.problem);
    }
    // Exactly the final checkpoint gone, as a crash just before close() would leave it.
    const details = await variant()
      .set(last, data.subarray(0, sealedAt))
      .expectDetected(tally, 'truncate the tail');
    expect(details.problem).toBe('uncheckpointed-tail');
  });

  it('truncates back to an earlier checkpoint: shown by an anchor, and by nothing else', async () => {
    const last = fixture.names.at(-1)!;
    const tampered = variant();
    const lines = tampered.lines(last);
    const at = lines.findLastIndex(
      (line, index) => index < lines.length - 1 && line.includes('"event":"checkpoint"'),
    );
    expect(at).toBeGreaterThan(-1);
    tampered.setLines(last, lines.slice(0, at + 1));
    // A log cut at a checkpoint is sealed to its end: no log can show this cut by itself.
    await expect(
      verifyAuditLog(fixture.dir, {
        keys: fixture.keys,
        requireCheckpointAtEnd: true,
        io: memoryFiles(tampered.files),
      }),
    ).resolves.toMatchObject({ uncheckpointed: 0 });
    // A head seen earlier (a checkpoint in the daemon log, the last verify's head) does.
    const details = await tampered.expectDetected(
      tally,
      'truncate to a checkpoint, with an anchor',
      {
        anchor: fixture.head,
      },
    );
    expect(details.problem).toBe('anchor-mismatch');
    // And an anchor that does not match the record at its seq.
    const forged = await variant().expectDetected(tally, 'a head that differs from the anchor', {
      anchor: { seq: 1000, hash: hashLine('something else') },
    });
    expect(forged).toMatchObject({ seq: 1000, problem: 'anchor-mismatch' });
  });
});

describe('mutation: segments', () => {
  it('drops each segment in turn: the first, every middle one, the last', async () => {
    for (const name of fixture.names) {
      const kind = name === fixture.names.at(-1) ? 'drop the last segment' : 'drop a segment';
      const details = await variant().remove(name).expectDetected(tally, kind);
      expect(details).toMatchObject({ problem: 'missing-segment', file: name, line: 1 });
    }
  });

  it('drops a segment and renumbers the rest to hide the hole', async () => {
    for (const dropped of [0, 3, fixture.names.length - 2]) {
      const tampered = variant();
      const kept = fixture.names.filter((_, index) => index !== dropped);
      for (const name of fixture.names) tampered.remove(name);
      for (const [index, name] of kept.entries())
        tampered.set(fixture.names[index]!, fixture.files.get(name)!);
      await tampered.expectDetected(tally, 'drop a segment and renumber');
    }
  });

  it('empties a segment, or adds one', async () => {
    const emptied = await variant()
      .set(fixture.names[2]!, Buffer.alloc(0))
      .expectDetected(tally, 'empty a segment');
    expect(emptied.problem).toBe('empty-segment');
    // A whole segment of genuine records, appended again under the next number.
    const next = `audit-${String(fixture.names.length + 1).padStart(6, '0')}.jsonl`;
    const extra = await variant()
      .set(next, fixture.files.get(fixture.names[1]!)!)
      .expectDetected(tally, 'add a segment');
    expect(extra).toMatchObject({ file: next, line: 1, problem: 'unexpected-segment' });
  });
});

describe('mutation: checkpoints', () => {
  let attacker: Signer;
  beforeAll(async () => {
    ({ signer: attacker } = await auditSigner('ES256'));
  });

  const resign = async (record: AuditRecord, signer: Signer, kid: string): Promise<AuditRecord> => {
    const input = checkpointSigningInput(
      signer.alg,
      kid,
      record['head_seq'] as number,
      record['head_hash'] as string,
      record.ts,
    );
    return {
      ...record,
      kid,
      alg: signer.alg,
      sig: (await signer.sign(input)).toString('base64url'),
    };
  };

  /** Replaces the first checkpoint of segment 4 with `forge(checkpoint)`. */
  async function forged(
    kind: string,
    forge: (checkpoint: AuditRecord) => Promise<AuditRecord> | AuditRecord,
  ) {
    const name = fixture.names[3]!;
    const tampered = variant();
    const lines = tampered.lines(name);
    const at = lines.findIndex((line) => line.includes('"event":"checkpoint"'));
    const checkpoint = JSON.parse(lines[at]!) as AuditRecord;
    lines[at] = serializeRecord(await forge(checkpoint));
    const details = await tampered.setLines(name, lines).expectDetected(tally, kind);
    expect(details).toMatchObject({ file: name, line: at + 1, seq: checkpoint.seq });
    return details.problem;
  }

  it('re-signed with another key, under its own kid or the real one', async () => {
    expect(
      await forged('forge a checkpoint', (c) => resign(c, attacker, attacker.publicJwk.kid)),
    ).toBe('checkpoint-unknown-kid');
    expect(await forged('forge a checkpoint', (c) => resign(c, attacker, c['kid'] as string))).toBe(
      'checkpoint-signature-invalid',
    );
  });

  it('with the head moved, the alg changed, a field added or a signature respelled', async () => {
    const elsewhere = hashLine('elsewhere');
    expect(await forged('forge a checkpoint', (c) => ({ ...c, head_hash: elsewhere }))).toBe(
      'checkpoint-hash-mismatch',
    );
    expect(
      await forged('forge a checkpoint', (c) => ({
        ...c,
        head_seq: (c['head_seq'] as number) - 1,
      })),
    ).toBe('checkpoint-hash-mismatch');
    expect(
      await forged('forge a checkpoint', (c) => ({ ...c, head_hash: elsewhere, prev: elsewhere })),
    ).toBe('prev-mismatch');
    expect(await forged('forge a checkpoint', (c) => ({ ...c, alg: 'ES384' }))).toBe(
      'checkpoint-signature-invalid',
    );
    expect(await forged('forge a checkpoint', (c) => ({ ...c, note: 'x' }))).toBe(
      'checkpoint-malformed',
    );
    // The spare bits of base64url's last character: the same bytes, another spelling.
    expect(
      await forged('forge a checkpoint', (c) => {
        const sig = c['sig'] as string;
        const last = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
        const index = last.indexOf(sig.at(-1)!);
        return { ...c, sig: sig.slice(0, -1) + last[index ^ 1] };
      }),
    ).toBe('checkpoint-signature-invalid');
  });

  it('history rewritten and the whole chain recomputed after it', async () => {
    for (const mode of ['old signatures kept', 're-signed with another key'] as const) {
      const tampered = variant();
      const all = fixture.names.map((name) => tampered.lines(name));
      const changed = JSON.parse(all[1]![10]!) as AuditRecord;
      changed['sub'] = 'someone-else';
      all[1]![10] = serializeRecord(changed);
      let prev = hashLine(all[1]![10]!);
      let firstCheckpoint: number | undefined;
      for (let s = 1; s < all.length; s += 1) {
        for (let l = s === 1 ? 11 : 0; l < all[s]!.length; l += 1) {
          let record = JSON.parse(all[s]![l]!) as AuditRecord;
          record.prev = prev;
          if (record.event === 'checkpoint') {
            record['head_hash'] = prev;
            firstCheckpoint ??= record.seq;
            if (mode === 're-signed with another key')
              record = await resign(record, attacker, attacker.publicJwk.kid);
          }
          all[s]![l] = serializeRecord(record);
          prev = hashLine(all[s]![l]!);
        }
      }
      for (const [s, name] of fixture.names.entries()) tampered.setLines(name, all[s]!);
      const details = await tampered.expectDetected(tally, 'rewrite history and rechain');
      expect(details.seq).toBe(firstCheckpoint);
      expect(details.problem).toBe(
        mode === 'old signatures kept' ? 'checkpoint-signature-invalid' : 'checkpoint-unknown-kid',
      );
    }
  });
});

/** Whether `cut` falls right after a checkpoint line: the one cut no log shows by itself. */
function endsAtCheckpoint(data: Buffer, cut: number): boolean {
  if (cut === 0 || data[cut - 1] !== 0x0a) return false;
  const start = data.lastIndexOf(0x0a, cut - 2) + 1;
  return data.subarray(start, cut).includes('"event":"checkpoint"');
}
