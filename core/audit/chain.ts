/**
 * Walks the chain through the segments, record by record, and names the first thing wrong.
 * Shared by verifyAuditLog (the whole log, signatures checked) and AuditLog.open (the tail,
 * torn last line tolerated). Internal to core/audit.
 */
import { join } from 'node:path';
import { HsmintError } from '../errors.js';
import { CHECKPOINT_FIELDS, type CheckpointKeys } from './checkpoint.js';
import type { AuditIo } from './io.js';
import {
  GENESIS_PREV,
  RecordSyntaxError,
  hashLine,
  parseRecord,
  type AuditRecord,
} from './record.js';
import { errnoOf, segmentName, splitLines, type SegmentFile } from './segments.js';

/** What can be wrong, as `details.problem` of ERR_AUDIT_CORRUPT. */
export const AUDIT_PROBLEMS = [
  'malformed',
  'torn',
  'seq-gap',
  'seq-order',
  'prev-mismatch',
  'missing-segment',
  'unexpected-segment',
  'empty-segment',
  'misplaced-rotate',
  'checkpoint-malformed',
  'checkpoint-hash-mismatch',
  'checkpoint-unknown-kid',
  'checkpoint-signature-invalid',
  'uncheckpointed-tail',
  'anchor-mismatch',
] as const;
export type AuditProblem = (typeof AUDIT_PROBLEMS)[number];

export interface ProblemAt {
  problem: AuditProblem;
  message: string;
  /** The seq of the bad record, or the seq expected where a record is missing or unreadable. */
  seq: number;
  file: string;
  /** 1-based line in `file`. */
  line: number;
}

export function corrupt(at: ProblemAt): HsmintError {
  return new HsmintError(
    'ERR_AUDIT_CORRUPT',
    `${at.file}:${at.line} (seq ${at.seq}): ${at.message}`,
    { details: { seq: at.seq, file: at.file, line: at.line, problem: at.problem } },
  );
}

export interface Head {
  seq: number;
  hash: string;
}

export interface WalkOptions {
  /** Check checkpoint signatures with these keys; without, only their structure and hash. */
  keys?: CheckpointKeys;
  /**
   * 'full': the segments are the whole log, from audit-000001 and seq 1. 'tail': they are its
   * last ones, and the first record read is trusted as the start.
   */
  scope: 'full' | 'tail';
  /** Tail only: a torn or unparsable last line of the last segment is returned, not an error. */
  tolerateTornTail?: boolean;
  /** Tail only: note the first problem and carry on from the record that follows it. */
  collect?: boolean;
  /** Called for each record once it has been checked (it may throw to stop the walk). */
  onRecord?: (seq: number, hash: string, at: { file: string; line: number }) => void;
}

export interface WalkResult {
  records: number;
  checkpoints: number;
  lastCheckpointSeq: number;
  /** The ts of the last checkpoint read, if any. */
  lastCheckpointTs: string | undefined;
  /** Records after the last checkpoint read (all read records when there is none). */
  sinceCheckpoint: number;
  /** The seq and line hash of the last record (seq 0 and GENESIS_PREV when none). */
  head: Head;
  last: AuditRecord | undefined;
  /** Where the first record after the last checkpoint is (for the uncheckpointed-tail check). */
  firstUncheckpointed: { file: string; line: number } | undefined;
  /** The last segment read, with its size once a torn tail is cut. */
  lastSegment: { number: number; name: string; size: number } | undefined;
  /** The last segment that holds records, with its size once a torn tail is cut. */
  lastWritten: { number: number; name: string; size: number } | undefined;
  /** The line number of the last record in its segment (0 when none). */
  lastLine: number;
  /** The last record is an audit.rotate: writing goes on in the next segment. */
  rotated: boolean;
  torn: { file: string; keep: number; cut: number; reason: string } | undefined;
  /** collect only: the first problem met. */
  problem: ProblemAt | undefined;
}

/** Reads and checks `segments` (sorted by number) in `dir`. Throws ERR_AUDIT_CORRUPT. */
export async function walkSegments(
  io: AuditIo,
  dir: string,
  segments: readonly SegmentFile[],
  options: WalkOptions,
): Promise<WalkResult> {
  const result: WalkResult = {
    records: 0,
    checkpoints: 0,
    lastCheckpointSeq: 0,
    lastCheckpointTs: undefined,
    sinceCheckpoint: 0,
    head: { seq: 0, hash: GENESIS_PREV },
    last: undefined,
    firstUncheckpointed: undefined,
    lastSegment: undefined,
    lastWritten: undefined,
    lastLine: 0,
    rotated: false,
    torn: undefined,
    problem: undefined,
  };
  /** In tail scope the first record read is trusted as the start, unless it is seq 1. */
  let trusted = options.scope === 'full' || segments[0]?.number === 1;
  const fail = (at: ProblemAt): void => {
    if (!options.collect) throw corrupt(at);
    result.problem ??= at;
  };

  let expectedNumber = options.scope === 'full' ? 1 : (segments[0]?.number ?? 1);
  for (const [index, segment] of segments.entries()) {
    const isLast = index === segments.length - 1;
    if (segment.number !== expectedNumber) {
      fail({
        problem: 'missing-segment',
        message: `segment ${segmentName(expectedNumber)} is missing`,
        seq: result.head.seq + 1,
        file: segmentName(expectedNumber),
        line: 1,
      });
    }
    expectedNumber = segment.number + 1;

    let data: Buffer;
    try {
      data = await io.readFile(join(dir, segment.name));
    } catch (cause) {
      throw new HsmintError('ERR_AUDIT_UNAVAILABLE', `cannot read ${segment.name}`, {
        cause,
        details: { file: segment.name, errno: errnoOf(cause) },
      });
    }
    if (data.length === 0) {
      if (!isLast)
        fail({
          problem: 'empty-segment',
          message: `${segment.name} is empty but segments follow it`,
          seq: result.head.seq + 1,
          file: segment.name,
          line: 1,
        });
      result.lastSegment = { number: segment.number, name: segment.name, size: 0 };
      continue;
    }
    if (index > 0 && !result.rotated && result.records > 0)
      fail({
        problem: 'unexpected-segment',
        message: `${segment.name} follows a segment that did not end with audit.rotate`,
        seq: result.head.seq + 1,
        file: segment.name,
        line: 1,
      });

    const { lines, rest } = splitLines(data);
    let size = data.length;
    if (rest.length > 0 && isLast && options.tolerateTornTail) {
      size = data.length - rest.length;
      result.torn = {
        file: segment.name,
        keep: size,
        cut: rest.length,
        reason: 'the last line has no newline',
      };
    }

    /** Records read in this segment, and whether one of them was its audit.rotate. */
    let recordsHere = 0;
    let closedHere = false;
    let offset = 0;
    for (const [lineIndex, line] of lines.entries()) {
      const at = { file: segment.name, line: lineIndex + 1 };
      const lineStart = offset;
      offset += line.length + 1;
      let record: AuditRecord;
      try {
        record = parseRecord(line);
      } catch (error) {
        if (!(error instanceof RecordSyntaxError)) throw error;
        if (isLast && lineIndex === lines.length - 1 && options.tolerateTornTail) {
          result.torn = {
            file: segment.name,
            keep: lineStart,
            cut: data.length - lineStart,
            reason: `the last line is unreadable: ${error.message}`,
          };
          size = lineStart;
          break;
        }
        fail({ problem: 'malformed', message: error.message, seq: result.head.seq + 1, ...at });
        continue;
      }

      if (!trusted) {
        trusted = true;
      } else {
        if (record.seq !== result.head.seq + 1) {
          fail({
            problem: record.seq > result.head.seq + 1 ? 'seq-gap' : 'seq-order',
            message:
              record.seq > result.head.seq + 1
                ? `seq ${record.seq} follows ${result.head.seq}: records are missing`
                : `seq ${record.seq} follows ${result.head.seq}: a record is repeated or out of order`,
            seq: record.seq,
            ...at,
          });
        } else if (record.prev !== result.head.hash) {
          fail({
            problem: 'prev-mismatch',
            message: `prev is not the hash of record ${result.head.seq}: that record was altered or replaced`,
            seq: record.seq,
            ...at,
          });
        }
      }
      if (closedHere)
        fail({
          problem: 'misplaced-rotate',
          message: 'a record follows audit.rotate in the same segment',
          seq: record.seq,
          ...at,
        });

      if (record.event === 'checkpoint') {
        const problem = checkCheckpoint(record, options.keys);
        if (problem) fail({ ...problem, seq: record.seq, ...at });
        result.checkpoints += 1;
        result.lastCheckpointSeq = record.seq;
        result.lastCheckpointTs = record.ts;
        result.sinceCheckpoint = 0;
        result.firstUncheckpointed = undefined;
      } else {
        result.sinceCheckpoint += 1;
        result.firstUncheckpointed ??= at;
      }
      result.rotated = false;
      if (record.event === 'audit.rotate') {
        if (record['next'] !== segmentName(segment.number + 1))
          fail({
            problem: 'misplaced-rotate',
            message: `audit.rotate names ${String(record['next'])}, not ${segmentName(segment.number + 1)}`,
            seq: record.seq,
            ...at,
          });
        result.rotated = true;
        closedHere = true;
      }
      recordsHere += 1;
      result.records += 1;
      result.head = { seq: record.seq, hash: hashLine(line) };
      result.last = record;
      result.lastLine = at.line;
      options.onRecord?.(record.seq, result.head.hash, at);
    }
    if (rest.length > 0 && !(isLast && options.tolerateTornTail))
      fail({
        problem: 'torn',
        message: 'the file ends inside a line (no final newline): a torn write or a cut',
        seq: result.head.seq + 1,
        file: segment.name,
        line: lines.length + 1,
      });
    result.lastSegment = { number: segment.number, name: segment.name, size };
    if (recordsHere > 0) result.lastWritten = result.lastSegment;
  }
  return result;
}

function checkCheckpoint(
  record: AuditRecord,
  keys: CheckpointKeys | undefined,
): Omit<ProblemAt, 'seq' | 'file' | 'line'> | undefined {
  const names = Object.keys(record);
  if (
    names.length !== CHECKPOINT_FIELDS.length ||
    !CHECKPOINT_FIELDS.every((name, index) => names[index] === name)
  )
    return {
      problem: 'checkpoint-malformed',
      message: `a checkpoint holds exactly ${CHECKPOINT_FIELDS.join(', ')}`,
    };
  const { head_seq: headSeq, head_hash: headHash, kid, alg, sig } = record;
  if (
    typeof headSeq !== 'number' ||
    typeof headHash !== 'string' ||
    typeof kid !== 'string' ||
    typeof alg !== 'string' ||
    typeof sig !== 'string'
  )
    return { problem: 'checkpoint-malformed', message: 'a checkpoint field has the wrong type' };
  if (headSeq !== record.seq - 1 || headHash !== record.prev)
    return {
      problem: 'checkpoint-hash-mismatch',
      message: `the checkpoint seals seq ${headSeq} ${headHash}, not the record before it`,
    };
  if (!keys) return undefined;
  return keys.check({ ts: record.ts, head_seq: headSeq, head_hash: headHash, kid, alg, sig });
}
