/**
 * The tamper-evident audit log: JSON lines chained by hash, sealed by signed checkpoints,
 * durable before append() resolves, with one fdatasync per batch of concurrent appends.
 *
 * One writer loop owns the files. Records appended while a batch is being written wait in
 * `pending` and form the next batch; a batch gets its seqs, chain hashes and checkpoints when
 * it is formed, is written at the end of the segment, synced once, and only then acknowledged.
 * When a write or sync fails, the whole batch is refused, the in-memory head stays at the last
 * synced record, and the next attempt first cuts the file back to that size: a failure never
 * leaves a gap, a torn line or an acknowledged record that is not on disk.
 */
import { join } from 'node:path';
import type { Signer } from '../ca/signer.js';
import { HsmintError } from '../errors.js';
import { corrupt, walkSegments, type ProblemAt } from './chain.js';
import { signCheckpoint } from './checkpoint.js';
import { nodeAuditIo, type AuditFile, type AuditIo } from './io.js';
import {
  MAX_RECORD_BYTES,
  assertAuditEvent,
  hashLine,
  serializeChained,
  type AuditEvent,
} from './record.js';
import { errnoOf, listSegments, segmentName } from './segments.js';

export interface AuditLogOptions {
  /** The audit folder (created 0700 when missing). */
  dir: string;
  /** The dedicated audit key, on the token. Without it the chain is kept but never sealed. */
  signer?: Signer;
  /** A checkpoint after this many records, or this many seconds after a record, which first. */
  checkpointEvery: { records: number; seconds: number };
  /** A segment that has reached this size is closed with audit.rotate and a new one begun. */
  segmentBytes: number;
  now?: () => Date;
  /** Open a log whose chain is broken, recording audit.override; torn tails need no flag. */
  allowBrokenChain?: boolean;
  /** Operational events for the daemon log (audit.unavailable, audit.available, ...). */
  report?: (event: AuditEvent) => void;
  /** While failed, write is re-attempted this often without waiting for an append (ms). */
  retryMs?: number;
  /** A checkpoint signature that takes longer is abandoned, and retried later (ms). */
  signTimeoutMs?: number;
  /** The file system; tests inject faults and count syncs here. */
  io?: AuditIo;
  /** Told of each batch made durable: how long its write and sync took, and its records. */
  observeWrite?(seconds: number, records: number): void;
}

export interface AuditHealth {
  ok: boolean;
  reason?: string;
}

interface Pending {
  event: AuditEvent;
  ts: string;
  resolve: (value: { seq: number }) => void;
  reject: (error: unknown) => void;
}

interface Segment {
  number: number;
  /** Bytes in the file that are synced and part of the chain. */
  size: number;
}

/** One segment's part of a batch. */
interface Chunk {
  number: number;
  start: number;
  lines: Buffer[];
}

const unavailable = (message: string, cause?: unknown): HsmintError =>
  new HsmintError('ERR_AUDIT_UNAVAILABLE', message, {
    ...(cause === undefined ? {} : { cause }),
    ...(errnoOf(cause) === undefined ? {} : { details: { errno: errnoOf(cause) } }),
  });

export class AuditLog {
  private readonly io: AuditIo;
  private readonly dir: string;
  private readonly now: () => Date;
  private readonly retryMs: number;
  private readonly signTimeoutMs: number;

  /** The synced head of the chain. */
  private seq: number;
  private hash: string;
  private lastTs: string | undefined;
  private segment: Segment;
  private file: { number: number; handle: AuditFile } | undefined;
  /** After a failed batch that began new segments: those numbers, to remove before writing. */
  private staleUpTo: number | undefined;
  /** Non-checkpoint records since the last checkpoint, and when that checkpoint was made. */
  private sinceCheckpoint: number;
  private lastCheckpointMs: number;
  /** No new checkpoint signature is tried before this time (after a failed one). */
  private signNotBefore = 0;
  private checkpointWanted = false;

  private pending: Pending[] = [];
  private running = false;
  private loop: Promise<void> = Promise.resolve();
  private failure: { since: string; reason: string; rejected: number } | undefined;
  private retryWanted = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private checkpointTimer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(
    private readonly options: AuditLogOptions,
    state: {
      head: { seq: number; hash: string };
      lastTs: string | undefined;
      segment: Segment;
      sinceCheckpoint: number;
      lastCheckpointMs: number;
    },
  ) {
    this.io = options.io ?? nodeAuditIo;
    this.dir = options.dir;
    this.now = options.now ?? (() => new Date());
    this.retryMs = options.retryMs ?? 1000;
    this.signTimeoutMs = options.signTimeoutMs ?? 10_000;
    this.seq = state.head.seq;
    this.hash = state.head.hash;
    this.lastTs = state.lastTs;
    this.segment = state.segment;
    this.sinceCheckpoint = state.sinceCheckpoint;
    this.lastCheckpointMs = state.lastCheckpointMs;
  }

  /**
   * Opens the log in `dir`, creating it when empty. Checks the chain through the last two
   * segments: a torn last line (crash mid-write) is cut off and an audit.recover record says
   * so; anything else broken throws ERR_AUDIT_CORRUPT, unless allowBrokenChain, when an
   * audit.override record names it. ERR_AUDIT_UNAVAILABLE when the folder cannot be read or
   * the recovery written.
   */
  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const { records, seconds } = options.checkpointEvery;
    if (!Number.isSafeInteger(records) || records < 1)
      throw new RangeError('checkpointEvery.records must be a positive integer');
    if (!(seconds > 0)) throw new RangeError('checkpointEvery.seconds must be positive');
    if (!Number.isSafeInteger(options.segmentBytes) || options.segmentBytes < 1)
      throw new RangeError('segmentBytes must be a positive integer');
    const io = options.io ?? nodeAuditIo;
    const now = options.now ?? (() => new Date());
    try {
      await io.mkdir(options.dir);
    } catch (cause) {
      throw unavailable(`cannot create the audit folder ${options.dir}`, cause);
    }
    const segments = await listSegments(io, options.dir);

    // Segment numbers are checked all the way back; records only in the last two segments
    // (`hsmint audit verify` reads the rest).
    let problem: ProblemAt | undefined;
    const gap = segments.findIndex((segment, index) => segment.number !== index + 1);
    if (gap !== -1)
      problem = {
        problem: 'missing-segment',
        message: `segment ${segmentName(gap + 1)} is missing`,
        seq: 0,
        file: segmentName(gap + 1),
        line: 1,
      };
    const tail = await walkSegments(io, options.dir, segments.slice(-2), {
      scope: 'tail',
      tolerateTornTail: true,
      collect: true,
    });
    problem ??= tail.problem;
    if (problem && !options.allowBrokenChain) throw corrupt(problem);

    if (tail.torn) {
      const path = join(options.dir, tail.torn.file);
      try {
        const file = await io.openFile(path);
        try {
          await file.truncate(tail.torn.keep);
          await file.datasync();
        } finally {
          await file.close();
        }
      } catch (cause) {
        throw unavailable(`cannot cut the torn tail of ${tail.torn.file}`, cause);
      }
    }

    const written = tail.lastWritten;
    const segment: Segment =
      written === undefined
        ? { number: 1, size: 0 }
        : tail.rotated
          ? { number: written.number + 1, size: 0 }
          : { number: written.number, size: written.size };
    const lastCheckpointMs =
      tail.lastCheckpointTs === undefined ? now().getTime() : Date.parse(tail.lastCheckpointTs);
    const log = new AuditLog(options, {
      head: tail.head,
      lastTs: tail.last?.ts,
      segment,
      sinceCheckpoint: tail.sinceCheckpoint,
      lastCheckpointMs,
    });
    // An unsealed tail (a crash since the last checkpoint) is sealed by the first batch.
    if (tail.sinceCheckpoint > 0) log.checkpointWanted = true;
    log.startTimers();
    try {
      if (tail.torn) {
        log.reportSafely({
          event: 'audit.recovered',
          file: tail.torn.file,
          cut_bytes: tail.torn.cut,
        });
        await log.enqueue({
          event: 'audit.recover',
          file: tail.torn.file,
          cut_bytes: tail.torn.cut,
          reason: tail.torn.reason,
        });
      }
      if (problem) {
        await log.enqueue({
          event: 'audit.override',
          problem: problem.problem,
          broken_seq: problem.seq,
          file: problem.file,
          line: problem.line,
          message: problem.message,
        });
      }
      if (log.checkpointWanted) log.kick();
    } catch (error) {
      await log.close().catch(() => undefined);
      throw error;
    }
    return log;
  }

  /**
   * Appends a record and resolves once it is on disk (fdatasync), with its seq. Rejects with
   * ERR_AUDIT_UNAVAILABLE when the log cannot be written (the record is then not in the log),
   * and with ERR_INTERNAL for an event that must not be recorded (see assertAuditEvent).
   */
  append(event: AuditEvent): Promise<{ seq: number }> {
    try {
      assertAuditEvent(event);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.closed) return Promise.reject(unavailable('the audit log is closed'));
    return this.enqueue(event);
  }

  /** Whether records are being written; `reason` says why not. */
  health(): AuditHealth {
    return this.failure === undefined ? { ok: true } : { ok: false, reason: this.failure.reason };
  }

  /** The time of the last record on disk, to refuse minting when the clock went back. */
  lastTimestamp(): Date | undefined {
    return this.lastTs === undefined ? undefined : new Date(this.lastTs);
  }

  /** The seq and line hash of the last record on disk: an anchor for verifyAuditLog. */
  head(): { seq: number; hash: string } {
    return { seq: this.seq, hash: this.hash };
  }

  /**
   * Writes what is pending and a final checkpoint, then closes the file. Rejects with
   * ERR_AUDIT_UNAVAILABLE when they could not be written; the log is closed either way.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.checkpointTimer);
    let error: unknown;
    try {
      await this.drain();
      if (this.failure !== undefined) {
        // One last try, so a log that just came back is left sealed.
        this.retryWanted = true;
        this.kick();
        await this.drain();
      }
      if (this.options.signer && this.sinceCheckpoint > 0 && this.failure === undefined) {
        this.checkpointWanted = true;
        this.signNotBefore = 0;
        this.kick();
        await this.drain();
        if (this.sinceCheckpoint > 0)
          error = unavailable('the final audit checkpoint could not be made');
      }
      if (this.failure !== undefined)
        error ??= unavailable(`the audit log could not be flushed: ${this.failure.reason}`);
    } finally {
      clearTimeout(this.retryTimer);
      await this.file?.handle.close().catch(() => undefined);
      this.file = undefined;
    }
    if (error) throw error;
  }

  private enqueue(event: AuditEvent): Promise<{ seq: number }> {
    let ts: string;
    try {
      ts = this.now().toISOString();
    } catch (cause) {
      return Promise.reject(new HsmintError('ERR_INTERNAL', 'the clock gave no time', { cause }));
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ event, ts, resolve, reject });
      this.kick();
    });
  }

  private startTimers(): void {
    const period = this.options.checkpointEvery.seconds * 1000;
    if (this.options.signer && Number.isFinite(period)) {
      this.checkpointTimer = setInterval(() => {
        if (this.sinceCheckpoint > 0 && this.failure === undefined) {
          this.checkpointWanted = true;
          this.kick();
        }
      }, period);
      this.checkpointTimer.unref();
    }
  }

  private scheduleRetry(): void {
    if (this.closed || this.retryTimer !== undefined) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.failure === undefined) return;
      this.retryWanted = true;
      this.kick();
    }, this.retryMs);
    this.retryTimer.unref();
  }

  private kick(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  private async drain(): Promise<void> {
    while (this.running) await this.loop;
  }

  /** The writer loop: one batch at a time, each taking everything appended meanwhile. */
  private async run(): Promise<void> {
    let batch: Pending[] = [];
    try {
      for (;;) {
        batch = this.pending.splice(0);
        const retry = this.retryWanted && this.failure !== undefined;
        this.retryWanted = false;
        if (batch.length === 0 && !retry && !this.checkpointDue(this.now().getTime())) break;
        const outcome = await this.commit(batch);
        if (outcome !== 'written' && this.pending.length === 0) break;
      }
    } catch (error) {
      // commit() settles its own batch; anything here is a bug (a clock that throws...): fail
      // what waits, loudly. Settling a promise twice is a no-op, so the whole batch is safe.
      for (const entry of [...batch, ...this.pending.splice(0)]) entry.reject(error);
      this.reportSafely({ event: 'audit.internal_error', reason: String(error) });
    } finally {
      this.running = false;
    }
  }

  private checkpointDue(nowMs: number): boolean {
    if (!this.options.signer || this.sinceCheckpoint === 0 || nowMs < this.signNotBefore)
      return false;
    return (
      this.checkpointWanted ||
      this.sinceCheckpoint >= this.options.checkpointEvery.records ||
      nowMs - this.lastCheckpointMs >= this.options.checkpointEvery.seconds * 1000
    );
  }

  /** Forms, writes and syncs one batch, and settles its waiters. */
  private async commit(batch: Pending[]): Promise<'written' | 'failed' | 'nothing'> {
    const { segmentBytes } = this.options;
    let seq = this.seq;
    let hash = this.hash;
    let lastTs = this.lastTs;
    let since = this.sinceCheckpoint;
    let lastCheckpointMs = this.lastCheckpointMs;
    let sealed: AuditEvent | undefined;
    const chunks: Chunk[] = [{ number: this.segment.number, start: this.segment.size, lines: [] }];
    let chunk = chunks[0]!;
    let chunkSize = this.segment.size;
    const acks: Array<{ entry: Pending; seq: number }> = [];

    const add = (event: AuditEvent, ts: string): number | undefined => {
      const line = Buffer.from(serializeChained(event, seq + 1, ts, hash));
      if (line.length > MAX_RECORD_BYTES) return undefined;
      chunk.lines.push(line);
      chunkSize += line.length + 1;
      seq += 1;
      hash = hashLine(line);
      lastTs = ts;
      if (event.event === 'checkpoint') {
        since = 0;
        lastCheckpointMs = Date.parse(ts);
        sealed = {
          event: 'audit.checkpoint',
          seq,
          head_seq: event['head_seq'],
          head_hash: event['head_hash'],
          kid: event['kid'],
        };
      } else {
        since += 1;
      }
      return seq;
    };
    /** A full segment is closed with audit.rotate before the next record. */
    const rotateIfFull = (): void => {
      if (chunkSize < segmentBytes) return;
      add({ event: 'audit.rotate', next: segmentName(chunk.number + 1) }, this.stamp());
      chunk = { number: chunk.number + 1, start: 0, lines: [] };
      chunks.push(chunk);
      chunkSize = 0;
    };
    const checkpoint = async (): Promise<void> => {
      const signer = this.options.signer;
      if (!signer || since === 0) return;
      rotateIfFull();
      const ts = this.stamp();
      try {
        const fields = await withTimeout(
          signCheckpoint(signer, { seq, hash }, ts),
          this.signTimeoutMs,
        );
        add({ event: 'checkpoint', ...fields }, ts);
      } catch (error) {
        // Records go on; the seal follows once the key signs again (the verifier bounds the
        // unsealed tail). The token's failure is the daemon's to report and act on.
        this.signNotBefore = this.now().getTime() + this.retryMs;
        this.reportSafely({ event: 'audit.checkpoint_failed', reason: describe(error) });
      }
    };
    const canSign = (): boolean => this.now().getTime() >= this.signNotBefore;

    if (this.failure !== undefined) {
      rotateIfFull();
      add(
        {
          event: 'audit.resume',
          since: this.failure.since,
          reason: this.failure.reason,
          rejected: this.failure.rejected,
        },
        this.stamp(),
      );
    }
    for (const entry of batch) {
      rotateIfFull();
      let assigned: number | undefined;
      try {
        assigned = add(entry.event, entry.ts);
      } catch (cause) {
        entry.reject(new HsmintError('ERR_INTERNAL', 'the audit event is not JSON', { cause }));
        continue;
      }
      if (assigned === undefined) {
        entry.reject(
          new HsmintError('ERR_INTERNAL', `an audit record is over ${MAX_RECORD_BYTES} bytes`),
        );
        continue;
      }
      acks.push({ entry, seq: assigned });
      if (since >= this.options.checkpointEvery.records && canSign()) await checkpoint();
    }
    const nowMs = this.now().getTime();
    if (
      since > 0 &&
      canSign() &&
      (this.checkpointWanted ||
        since >= this.options.checkpointEvery.records ||
        nowMs - lastCheckpointMs >= this.options.checkpointEvery.seconds * 1000)
    )
      await checkpoint();
    // Only a checkpoint was wanted, and it could not be signed (or nothing was left to write).
    if (chunks.every((part) => part.lines.length === 0)) return 'nothing';

    const started = process.hrtime.bigint();
    try {
      await this.write(chunks);
    } catch (error) {
      await this.fail(error, acks.length, chunks.at(-1)!.number);
      const refused = unavailable(
        `the audit log cannot be written: ${this.failure?.reason}`,
        error,
      );
      for (const { entry } of acks) entry.reject(refused);
      return 'failed';
    }
    this.observeSafely(
      Number(process.hrtime.bigint() - started) / 1e9,
      chunks.reduce((total, part) => total + part.lines.length, 0),
    );

    this.seq = seq;
    this.hash = hash;
    this.lastTs = lastTs;
    this.sinceCheckpoint = since;
    this.lastCheckpointMs = lastCheckpointMs;
    if (since === 0) this.checkpointWanted = false;
    if (sealed) this.reportSafely(sealed);
    const last = chunks.at(-1)!;
    this.segment = {
      number: last.number,
      size: last.start + last.lines.reduce((total, line) => total + line.length + 1, 0),
    };
    if (this.failure !== undefined) {
      this.reportSafely({
        event: 'audit.available',
        since: this.failure.since,
        rejected: this.failure.rejected,
      });
      this.failure = undefined;
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    for (const { entry, seq: assigned } of acks) entry.resolve({ seq: assigned });
    return 'written';
  }

  /**
   * Writes each segment's part at its end and syncs it. Nothing here changes the in-memory
   * head: until commit() takes the batch as written, the chain ends where it ended.
   */
  private async write(chunks: Chunk[]): Promise<void> {
    if (this.staleUpTo !== undefined) {
      // Segments begun by a failed batch hold records that are not in the chain.
      for (let number = this.segment.number + 1; number <= this.staleUpTo; number += 1) {
        await this.io.unlink(join(this.dir, segmentName(number))).catch((error: unknown) => {
          if (errnoOf(error) !== 'ENOENT') throw error;
        });
      }
      await this.io.syncDir(this.dir);
      this.staleUpTo = undefined;
    }
    for (const chunk of chunks) {
      if (chunk.lines.length === 0) continue;
      if (this.file?.number !== chunk.number) {
        // The previous segment is complete (its audit.rotate synced) or being reopened.
        await this.file?.handle.close().catch(() => undefined);
        this.file = undefined;
        this.file = {
          number: chunk.number,
          handle: await this.openSegment(chunk.number, chunk.start),
        };
      }
      const data = Buffer.concat(chunk.lines.flatMap((line) => [line, NEWLINE]));
      await this.file.handle.writeDurably(data, chunk.start);
    }
  }

  /** Opens a segment for writing, cut back to `size` (what the chain holds of it). */
  private async openSegment(number: number, size: number): Promise<AuditFile> {
    const file = await this.io.openFile(join(this.dir, segmentName(number)));
    try {
      await file.truncate(size);
      await this.io.syncDir(this.dir);
    } catch (error) {
      await file.close().catch(() => undefined);
      throw error;
    }
    return file;
  }

  /**
   * After a failed write: forget the open file (its page cache may not reflect the disk after
   * a failed sync), so the next attempt reopens and cuts back to the synced size.
   */
  private async fail(error: unknown, refused: number, lastNumber: number): Promise<void> {
    const file = this.file;
    this.file = undefined;
    await file?.handle.close().catch(() => undefined);
    if (lastNumber > this.segment.number)
      this.staleUpTo = Math.max(this.staleUpTo ?? 0, lastNumber);
    const reason = describe(error);
    if (this.failure === undefined) {
      this.failure = { since: this.stamp(), reason, rejected: refused };
      this.reportSafely({ event: 'audit.unavailable', reason, errno: errnoOf(error) });
    } else {
      this.failure.reason = reason;
      this.failure.rejected += refused;
    }
    this.scheduleRetry();
  }

  private stamp(): string {
    return this.now().toISOString();
  }

  private observeSafely(seconds: number, records: number): void {
    try {
      this.options.observeWrite?.(seconds, records);
    } catch {
      // Metrics must not take the log down either.
    }
  }

  private reportSafely(event: AuditEvent): void {
    try {
      this.options.report?.(event);
    } catch {
      // A reporting failure must not take the log down.
    }
  }
}

const NEWLINE = Buffer.from('\n');

function describe(error: unknown): string {
  const errno = errnoOf(error);
  const message = error instanceof Error ? error.message : String(error);
  return errno === undefined || message.includes(errno) ? message : `${errno}: ${message}`;
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no signature within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
