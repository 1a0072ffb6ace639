/**
 * Reads records for people (`hsmint audit tail`): in order, filtered, optionally following
 * the log as it grows. It checks nothing; `verifyAuditLog` is the integrity check.
 */
import { open } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { nodeAuditIo } from './io.js';
import { RecordSyntaxError, parseRecord, type AuditRecord } from './record.js';
import { listSegments } from './segments.js';

export interface AuditRecordFilter {
  /** Exact event names, or a prefix ending in `*` (`key.*`). */
  event?: string | readonly string[];
  /** Records whose `sub` is this. */
  sub?: string;
  /** Records at or after this time. */
  since?: Date;
  /** Keep reading as records are appended, every `intervalMs` (default 500), until aborted. */
  follow?: { signal: AbortSignal; intervalMs?: number };
}

function matcher(filter: AuditRecordFilter): (record: AuditRecord) => boolean {
  const events =
    filter.event === undefined
      ? undefined
      : (typeof filter.event === 'string' ? [filter.event] : filter.event).map((name) =>
          name.endsWith('*')
            ? (event: string) => event.startsWith(name.slice(0, -1))
            : (event: string) => event === name,
        );
  const since = filter.since?.getTime();
  return (record) =>
    (events === undefined || events.some((test) => test(record.event))) &&
    (filter.sub === undefined || record['sub'] === filter.sub) &&
    (since === undefined || Date.parse(record.ts) >= since);
}

/**
 * The records in `dir`, oldest first. Lines that do not parse (a torn tail being written) are
 * skipped. ERR_AUDIT_UNAVAILABLE when the folder cannot be listed.
 */
export async function* readAuditRecords(
  dir: string,
  filter: AuditRecordFilter = {},
): AsyncGenerator<AuditRecord> {
  const accept = matcher(filter);
  /** Where reading resumes: a segment number and the offset of its first unread line. */
  let at = { number: 0, offset: 0 };
  for (;;) {
    const segments = await listSegments(nodeAuditIo, dir);
    for (const segment of segments) {
      if (segment.number < at.number) continue;
      const from = segment.number === at.number ? at.offset : 0;
      const { records, consumed } = await readFrom(join(dir, segment.name), from);
      at = { number: segment.number, offset: from + consumed };
      for (const record of records) if (accept(record)) yield record;
    }
    const follow = filter.follow;
    if (!follow || follow.signal.aborted) return;
    try {
      await sleep(follow.intervalMs ?? 500, undefined, { signal: follow.signal });
    } catch {
      return;
    }
  }
}

/** Whole lines from `offset` on; `consumed` stops before a line still being written. */
async function readFrom(
  path: string,
  offset: number,
): Promise<{ records: AuditRecord[]; consumed: number }> {
  const handle = await open(path, 'r').catch(() => undefined);
  if (!handle) return { records: [], consumed: 0 };
  try {
    const { size } = await handle.stat();
    if (size <= offset) return { records: [], consumed: 0 };
    const data = Buffer.alloc(size - offset);
    const { bytesRead } = await handle.read(data, 0, data.length, offset);
    const records: AuditRecord[] = [];
    let start = 0;
    for (;;) {
      const end = data.indexOf(0x0a, start);
      if (end === -1 || end >= bytesRead) break;
      try {
        records.push(parseRecord(data.subarray(start, end)));
      } catch (error) {
        if (!(error instanceof RecordSyntaxError)) throw error;
      }
      start = end + 1;
    }
    return { records, consumed: start };
  } finally {
    await handle.close();
  }
}
