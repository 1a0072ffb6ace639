/**
 * Offline verification of a whole audit log from the audit public keys alone: every segment,
 * every record's place in the chain, every checkpoint signature. The first bad record is
 * named by seq, file and line in ERR_AUDIT_CORRUPT's details.
 */
import type { PublicJwk } from '../keys/keystore.js';
import { corrupt, walkSegments } from './chain.js';
import { CheckpointKeys } from './checkpoint.js';
import { nodeAuditIo, type AuditIo } from './io.js';
import { listSegments, segmentName } from './segments.js';

export { AUDIT_PROBLEMS, type AuditProblem } from './chain.js';
export { readAuditRecords, type AuditRecordFilter } from './read.js';

export interface VerifyAuditOptions {
  /** The audit public keys (current and past): checkpoints by any other key are refused. */
  keys: readonly PublicJwk[];
  /**
   * The log must end sealed: at most `maxUncheckpointed` records after the last checkpoint.
   * Right for a log closed cleanly (its last record is the final checkpoint); for a live log,
   * pass the writer's `checkpointEvery.records` as the bound.
   */
  requireCheckpointAtEnd?: boolean;
  /** With requireCheckpointAtEnd: records allowed after the last checkpoint (default 0). */
  maxUncheckpointed?: number;
  /**
   * A head seen before (a checkpoint's head_seq and head_hash from the daemon log, or `head`
   * of an earlier verification): the log must still hold that record, unchanged. This is what
   * catches a log cut back to an earlier checkpoint, which no log can show by itself.
   */
  anchor?: { seq: number; hash: string };
  io?: AuditIo;
}

export interface VerifyAuditResult {
  records: number;
  checkpoints: number;
  /** The seq of the last checkpoint record, 0 when there is none. */
  lastCheckpointSeq: number;
  /** Records after the last checkpoint: not yet sealed. */
  uncheckpointed: number;
  /** The last record's seq and line hash, to anchor the next verification. */
  head: { seq: number; hash: string };
}

/**
 * Checks the log in `dir`. Throws ERR_AUDIT_CORRUPT (details: seq, file, line, problem) at
 * the first bad record, ERR_AUDIT_UNAVAILABLE when a file cannot be read, and TypeError for a
 * key that is not an allowed public key.
 */
export async function verifyAuditLog(
  dir: string,
  options: VerifyAuditOptions,
): Promise<VerifyAuditResult> {
  const io = options.io ?? nodeAuditIo;
  const keys = CheckpointKeys.import(options.keys);
  const segments = await listSegments(io, dir);
  if (segments.length === 0)
    throw corrupt({
      problem: 'missing-segment',
      message: `${dir} holds no audit segment`,
      seq: 1,
      file: segmentName(1),
      line: 1,
    });

  // A hash seen before must be met at its seq; noted as the walk passes it.
  let anchorSeen = false;
  const result = await walkSegments(io, dir, segments, {
    scope: 'full',
    keys,
    ...(options.anchor === undefined
      ? {}
      : {
          onRecord: (seq: number, hash: string, at: { file: string; line: number }) => {
            if (seq !== options.anchor?.seq) return;
            if (hash !== options.anchor.hash)
              throw corrupt({
                problem: 'anchor-mismatch',
                message: `record ${seq} is not the one seen before (its hash differs)`,
                seq,
                ...at,
              });
            anchorSeen = true;
          },
        }),
  });

  const last = result.lastWritten;
  if (result.rotated && last !== undefined && result.lastSegment?.number === last.number) {
    // The last record hands over to a segment that is not there: the tail was dropped. (An
    // empty next segment is a crash between its creation and its first write.)
    throw corrupt({
      problem: 'missing-segment',
      message: `the log continues in ${segmentName(last.number + 1)}, which is missing`,
      seq: result.head.seq + 1,
      file: segmentName(last.number + 1),
      line: 1,
    });
  }
  if (options.anchor !== undefined && !anchorSeen) {
    throw corrupt({
      problem: 'anchor-mismatch',
      message: `the log ends at seq ${result.head.seq}, before record ${options.anchor.seq} seen earlier: its tail was cut`,
      seq: result.head.seq + 1,
      file: last?.name ?? segmentName(1),
      line: result.lastLine + 1,
    });
  }
  const bound = options.maxUncheckpointed ?? 0;
  if (options.requireCheckpointAtEnd && result.sinceCheckpoint > bound) {
    const at = result.firstUncheckpointed ?? { file: segmentName(1), line: 1 };
    throw corrupt({
      problem: 'uncheckpointed-tail',
      message:
        result.checkpoints === 0
          ? `no checkpoint seals the log (${result.sinceCheckpoint} records, at most ${bound} allowed)`
          : `${result.sinceCheckpoint} records follow the last checkpoint (seq ${result.lastCheckpointSeq}), at most ${bound} allowed: the sealed tail was cut`,
      seq: result.lastCheckpointSeq + 1,
      ...at,
    });
  }
  return {
    records: result.records,
    checkpoints: result.checkpoints,
    lastCheckpointSeq: result.lastCheckpointSeq,
    uncheckpointed: result.sinceCheckpoint,
    head: result.head,
  };
}
