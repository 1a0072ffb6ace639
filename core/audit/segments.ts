/** Segment files: `audit-000001.jsonl`, `audit-000002.jsonl`, ... Internal to core/audit. */
import { HsmintError } from '../errors.js';
import type { AuditIo } from './io.js';

const SEGMENT = /^audit-(\d{6,})\.jsonl$/;

export function segmentName(number: number): string {
  return `audit-${String(number).padStart(6, '0')}.jsonl`;
}

export interface SegmentFile {
  number: number;
  name: string;
}

/** The segment files in `dir`, by number; other files are left alone. */
export async function listSegments(io: AuditIo, dir: string): Promise<SegmentFile[]> {
  let names: string[];
  try {
    names = await io.list(dir);
  } catch (cause) {
    throw new HsmintError('ERR_AUDIT_UNAVAILABLE', `cannot list the audit folder ${dir}`, {
      cause,
      details: { dir, errno: errnoOf(cause) },
    });
  }
  const segments: SegmentFile[] = [];
  for (const name of names) {
    const match = SEGMENT.exec(name);
    if (!match) continue;
    const number = Number(match[1]);
    // Only the one spelling segmentName gives (`audit-1.jsonl` or a 7-digit alias is foreign).
    if (Number.isSafeInteger(number) && number >= 1 && segmentName(number) === name)
      segments.push({ number, name });
  }
  return segments.sort((a, b) => a.number - b.number);
}

/**
 * The lines of a segment, without their newlines, and what follows the last newline: empty
 * for a whole file, otherwise the torn remains of an interrupted write.
 */
export function splitLines(data: Buffer): { lines: Buffer[]; rest: Buffer } {
  const lines: Buffer[] = [];
  let start = 0;
  for (;;) {
    const end = data.indexOf(0x0a, start);
    if (end === -1) break;
    lines.push(data.subarray(start, end));
    start = end + 1;
  }
  return { lines, rest: data.subarray(start) };
}

export function errnoOf(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
