/**
 * One HTTP/1.1 exchange over a plain Unix socket, byte for byte: the corpus sends what no HTTP
 * client library would (broken request lines, conflicting lengths, bad UTF-8), so it writes
 * raw bytes and parses the answers itself.
 */
import { connect } from 'node:net';

export interface Answer {
  status: number;
  /** Header names in lower case; a repeated header keeps its last value. */
  headers: Record<string, string>;
  body: Buffer;
}

export interface Exchange {
  answers: Answer[];
  /** The daemon closed the connection (its FIN, or a reset). */
  closed: boolean;
  /** Milliseconds from the first byte written to the last answer read, or to the close. */
  ms: number;
  /** The hard limit passed before the answers came: the daemon hung on this input. */
  timedOut: boolean;
  /**
   * A write failed (EPIPE, ECONNRESET) because the daemon had answered and closed while we
   * were still sending. Node then destroys the socket, and an answer that arrived in that
   * moment is dropped unread: missing answers prove nothing about the daemon.
   */
  writeFailed: boolean;
}

export interface ExchangeOptions {
  /** How many answers complete the exchange (more than one for pipelined requests). */
  answers: number;
  /** Also wait for the daemon to close the connection after the last answer. */
  untilClosed?: boolean;
  /** Shut down our side once everything is written: a body that will never arrive whole. */
  endAfterWrite?: boolean;
  /** Which answers belong to HEAD requests, whose answers carry no body. */
  headAnswers?: ReadonlySet<number>;
  /** Gives up after this long; a hang is reported, never waited out. */
  limitMs: number;
}

/**
 * Written in slices, and the writing stops as soon as an answer starts to arrive: the daemon
 * answers a body over the cap before reading all of it and then closes, and a Node socket that
 * keeps writing into a closed peer is destroyed by the EPIPE before it reads the answer.
 */
const SLICE_BYTES = 16 * 1024;

export function exchange(
  socketPath: string,
  bytes: Buffer,
  options: ExchangeOptions,
): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = connect(socketPath);
    let received = Buffer.alloc(0);
    const answers: Answer[] = [];
    let closed = false;
    let writeFailed = false;
    let started = 0;
    let settled = false;

    const finish = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(limit);
      const ms = started === 0 ? 0 : performance.now() - started;
      socket.destroy();
      resolve({ answers, closed, ms, timedOut, writeFailed });
    };
    const limit = setTimeout(() => finish(true), options.limitMs);

    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      for (;;) {
        const parsed = parseAnswer(received, options.headAnswers?.has(answers.length) ?? false);
        if (!parsed) break;
        received = received.subarray(parsed.used);
        // 100 Continue and other interim answers precede the real one.
        if (parsed.answer.status >= 100 && parsed.answer.status < 200) continue;
        answers.push(parsed.answer);
      }
      if (answers.length >= options.answers && !options.untilClosed) finish(false);
    });
    const onClose = () => {
      closed = true;
      finish(false);
    };
    socket.on('end', onClose);
    socket.on('close', onClose);
    // EPIPE or ECONNRESET: the daemon closed while we wrote; 'close' follows and settles.
    socket.on('error', () => {
      writeFailed = true;
    });

    socket.once('connect', async () => {
      started = performance.now();
      for (let offset = 0; offset < bytes.length; offset += SLICE_BYTES) {
        if (settled || closed || received.length > 0 || answers.length > 0) return;
        const slice = bytes.subarray(offset, offset + SLICE_BYTES);
        await new Promise<void>((written) => socket.write(slice, () => written()));
        // Lets the event loop read whatever the daemon has answered before the next slice.
        await new Promise((next) => setImmediate(next));
      }
      if (options.endAfterWrite && !settled) socket.end();
    });
  });
}

/** One answer at the front of `data`, or undefined while it is incomplete. */
function parseAnswer(data: Buffer, head: boolean): { answer: Answer; used: number } | undefined {
  const end = data.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const [statusLine, ...lines] = data.subarray(0, end).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '');
  // Not HTTP at all: status 0 fails any expectation, and the rest of the bytes are dropped.
  if (!status) return { answer: { status: 0, headers: {}, body: data }, used: data.length };
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const code = Number(status[1]);
  const start = end + 4;
  if (head || code < 200 || code === 204 || code === 304)
    return { answer: { status: code, headers, body: Buffer.alloc(0) }, used: start };
  if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
    const chunks: Buffer[] = [];
    let at = start;
    for (;;) {
      const lineEnd = data.indexOf('\r\n', at);
      if (lineEnd === -1) return undefined;
      const size = parseInt(data.subarray(at, lineEnd).toString('latin1'), 16);
      if (data.length < lineEnd + 2 + size + 2) return undefined;
      if (size === 0) {
        // No trailers are expected from the daemon: the last chunk is followed by CRLF.
        return {
          answer: { status: code, headers, body: Buffer.concat(chunks) },
          used: lineEnd + 4,
        };
      }
      chunks.push(data.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
  }
  const length = Number(headers['content-length'] ?? 0);
  if (data.length < start + length) return undefined;
  return {
    answer: { status: code, headers, body: Buffer.from(data.subarray(start, start + length)) },
    used: start + length,
  };
}

/** The body as JSON, or undefined when it is not JSON. */
export function jsonOf(answer: Answer): unknown {
  try {
    return JSON.parse(answer.body.toString('utf8'));
  } catch {
    return undefined;
  }
}
