/** A log of some thousands of records for the mutation tests, and tampering helpers. */
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { AuditLog } from '../../../../core/audit/log.js';
import type { AuditRecord } from '../../../../core/audit/record.js';
import { verifyAuditLog, type VerifyAuditOptions } from '../../../../core/audit/verify.js';
import type { Signer } from '../../../../core/ca/signer.js';
import type { PublicJwk } from '../../../../core/keys/keystore.js';
import { auditSigner, corruptDetails, memoryFiles, prng, tempDir } from './support.js';

export const RECORDS = 3000;
export const SEED = Number(process.env['HSMINT_AUDIT_SEED'] ?? 20261128);

export interface Fixture {
  dir: string;
  signer: Signer;
  keys: PublicJwk[];
  /** The pristine bytes of every segment, by name. */
  files: ReadonlyMap<string, Buffer>;
  names: string[];
  head: { seq: number; hash: string };
}

/**
 * 3000 caller records appended 50 at a time, in segments of 64 KiB with a checkpoint every
 * 100 records, closed cleanly (so the last record is the final checkpoint).
 */
export async function buildFixture(): Promise<Fixture> {
  const dir = await tempDir();
  const { signer } = await auditSigner('ES256');
  const random = prng(SEED);
  const log = await AuditLog.open({
    dir,
    signer,
    checkpointEvery: { records: 100, seconds: 3600 },
    segmentBytes: 64 * 1024,
  });
  const events = ['mint', 'mint', 'mint', 'verify.failure', 'mint.denied', 'key.generate'];
  for (let n = 0; n < RECORDS; n += 50) {
    await Promise.all(
      Array.from({ length: 50 }, (_, k) =>
        log.append({
          event: events[Math.floor(random() * events.length)]!,
          caller: {
            uid: 1000 + k,
            gid: 1000,
            pid: 4000 + n + k,
            unit: 'app.service',
            exe: '/usr/bin/app',
          },
          jti: `jti-${n + k}-${Math.floor(random() * 1e9).toString(36)}`,
          kid: 'kid-sig-1',
          sub: `svc-${k % 7}`,
          aud: ['api', 'db'],
          scope: ['read', 'write'],
          exp: 1_800_000_000 + n + k,
          rule: k % 2 ? 'apps' : 'batch',
          note: k % 11 === 0 ? 'é\u2028"quoted"\n' : undefined,
        }),
      ),
    );
  }
  await log.close();
  const names = (await readdir(dir)).filter((name) => name.endsWith('.jsonl')).sort();
  const files = new Map<string, Buffer>();
  for (const name of names) files.set(name, await readFile(join(dir, name)));
  // Verified once on disk; the mutations then work on copies in memory.
  const result = await verifyAuditLog(dir, {
    keys: [signer.publicJwk],
    requireCheckpointAtEnd: true,
  });
  return { dir, signer, keys: [signer.publicJwk], files, names, head: result.head };
}

/** Detected / tried, per kind of tampering, printed when the file's tests end. */
export class Tally {
  private readonly counts = new Map<string, { tried: number; detected: number }>();

  add(kind: string, detected: boolean): void {
    const entry = this.counts.get(kind) ?? { tried: 0, detected: 0 };
    entry.tried += 1;
    if (detected) entry.detected += 1;
    this.counts.set(kind, entry);
  }

  get(kind: string): { tried: number; detected: number } {
    return this.counts.get(kind) ?? { tried: 0, detected: 0 };
  }

  print(title: string): void {
    if (this.counts.size === 0) return;
    const rows = [...this.counts].map(
      ([kind, { tried, detected }]) =>
        `  ${kind.padEnd(44)} ${String(detected).padStart(4)} / ${tried}`,
    );
    const total = [...this.counts.values()].reduce(
      (sum, { tried, detected }) => ({
        tried: sum.tried + tried,
        detected: sum.detected + detected,
      }),
      { tried: 0, detected: 0 },
    );
    rows.push(`  ${'total'.padEnd(44)} ${String(total.detected).padStart(4)} / ${total.tried}`);
    console.log(`${title} (seed ${SEED}): detected / tried\n${rows.join('\n')}`);
  }
}

/** A tampered copy of the log: segments by name, changed in memory. */
export class Variant {
  readonly files: Map<string, Buffer>;

  constructor(private readonly fixture: Fixture) {
    this.files = new Map(fixture.files);
  }

  lines(name: string): string[] {
    return this.files.get(name)!.toString('utf8').split('\n').slice(0, -1);
  }

  setLines(name: string, lines: string[]): this {
    this.files.set(name, Buffer.from(lines.map((line) => `${line}\n`).join('')));
    return this;
  }

  set(name: string, data: Buffer): this {
    this.files.set(name, data);
    return this;
  }

  remove(name: string): this {
    this.files.delete(name);
    return this;
  }

  /**
   * Verifies the variant; counts the outcome under `kind` and returns the ERR_AUDIT_CORRUPT
   * details, which must name a seq, a segment and a line.
   */
  async expectDetected(
    tally: Tally,
    kind: string,
    options: Partial<VerifyAuditOptions> = {},
  ): Promise<{ seq: number; file: string; line: number; problem: string }> {
    let details: Awaited<ReturnType<typeof corruptDetails>> | undefined;
    try {
      details = await corruptDetails(() =>
        verifyAuditLog(this.fixture.dir, {
          keys: this.fixture.keys,
          requireCheckpointAtEnd: true,
          io: memoryFiles(this.files),
          ...options,
        }),
      );
    } finally {
      tally.add(kind, details !== undefined);
    }
    expect(details.seq).toBeGreaterThanOrEqual(1);
    expect(details.line).toBeGreaterThanOrEqual(1);
    expect(details.file).toMatch(/^audit-\d{6}\.jsonl$/);
    return details;
  }
}

export function seqOf(line: string): number {
  return (JSON.parse(line) as AuditRecord).seq;
}
