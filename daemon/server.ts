import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { HsmintError, type ErrorCode } from '../core/errors.js';
import { MAX_BODY_BYTES, type ErrorBody } from '../core/protocol.js';

export interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

export interface RequestContext {
  /** Safe fields the handler wants in the request's log line (a jti, never a token). */
  log: Record<string, unknown>;
}

export interface Route {
  method: 'GET' | 'POST';
  path: string;
  /** Whether the route takes a JSON body. */
  body: boolean;
  handle(body: unknown, context: RequestContext): Promise<Reply>;
}

export interface ServerLimits {
  /** Time allowed to send the request headers. */
  headersTimeoutMs: number;
  /** Time allowed for the whole request. */
  requestTimeoutMs: number;
  /** How long an idle keep-alive connection stays open. */
  keepAliveTimeoutMs: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
};

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Failures Node's HTTP parser reports before a request exists, as status and error body. */
const CLIENT_ERRORS: Record<string, [number, string, ErrorCode, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [
    408,
    'Request Timeout',
    'ERR_REQUEST_TIMEOUT',
    'the request took too long to arrive',
  ],
  HPE_HEADER_OVERFLOW: [
    431,
    'Request Header Fields Too Large',
    'ERR_HEADERS_TOO_LARGE',
    'request headers are over 8 KiB',
  ],
  default: [400, 'Bad Request', 'ERR_INVALID_REQUEST', 'malformed HTTP request'],
};

/**
 * A thin HTTP/1.1 transport: it finds the route, reads and parses a capped JSON body, calls
 * the handler and writes the reply. Every failure becomes `{error: {code, message}}`.
 */
export class ApiServer {
  readonly http: Server;
  private readonly routes = new Map<string, Route[]>();
  private inFlight = 0;
  private draining = false;
  private drained: (() => void) | undefined;

  constructor(
    routes: Route[],
    private readonly logger: Logger,
    limits: ServerLimits = DEFAULT_LIMITS,
  ) {
    for (const route of routes)
      this.routes.set(route.path, [...(this.routes.get(route.path) ?? []), route]);
    this.http = createServer(
      {
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.requestTimeoutMs,
        keepAliveTimeout: limits.keepAliveTimeoutMs,
        // Node checks the timeouts above only this often; its 30 s default lets slow clients linger.
        connectionsCheckingInterval: 500,
        maxHeaderSize: 8 * 1024,
        requireHostHeader: false,
      },
      (request, response) => void this.dispatch(request, response),
    );
    this.http.maxRequestsPerSocket = 10_000;
    this.http.on('clientError', (error: NodeJS.ErrnoException, socket) => {
      this.logger.debug({ event: 'http.client_error', code: error.code }, 'bad HTTP from a client');
      if (!socket.writable || error.code === 'ECONNRESET') {
        socket.destroy();
        return;
      }
      const [status, reason, code, message] =
        CLIENT_ERRORS[error.code ?? ''] ?? CLIENT_ERRORS['default']!;
      const body = JSON.stringify({ error: { code, message } } satisfies ErrorBody);
      socket.end(
        `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
    });
  }

  /**
   * Stops taking connections and resolves once every request in flight has been answered,
   * or when `timeoutMs` passes, whichever is first.
   */
  async drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    this.http.close();
    this.http.closeIdleConnections();
    if (this.inFlight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.http.closeAllConnections();
  }

  private async dispatch(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const started = process.hrtime.bigint();
    this.inFlight++;
    // Counted until the answer has left for the socket, so a drain never cuts one half-written.
    response.once('close', () => {
      this.inFlight--;
      if (this.inFlight === 0) this.drained?.();
    });
    const context: RequestContext = { log: {} };
    const path = (request.url ?? '/').split('?')[0]!;
    let status = 500;
    let code: ErrorCode | undefined;
    try {
      const reply = await this.route(request, path, context);
      status = reply.status;
      send(response, reply, this.draining);
    } catch (error) {
      const failure = this.toHsmintError(error, path);
      status = failure.status;
      code = failure.code;
      const allow = failure.details?.['allow'];
      send(
        response,
        {
          status,
          body: { error: failure.toJSON() } satisfies ErrorBody,
          headers: typeof allow === 'string' ? { allow } : {},
        },
        this.draining || status === 413 || status >= 500,
      );
    } finally {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      this.logger.info(
        {
          event: 'http.request',
          method: request.method,
          path: path.slice(0, 128),
          status,
          ms: Math.round(ms * 100) / 100,
          code,
          ...context.log,
        },
        'request',
      );
    }
  }

  private async route(
    request: IncomingMessage,
    path: string,
    context: RequestContext,
  ): Promise<Reply> {
    if (this.draining) throw new HsmintError('ERR_SHUTTING_DOWN', 'the daemon is shutting down');
    const candidates = this.routes.get(path);
    if (!candidates) throw new HsmintError('ERR_NOT_FOUND', 'no such route');
    const route = candidates.find((candidate) => candidate.method === request.method);
    if (!route) {
      throw new HsmintError(
        'ERR_METHOD_NOT_ALLOWED',
        `use ${candidates.map((c) => c.method).join(' or ')}`,
        {
          details: { allow: candidates.map((c) => c.method).join(', ') },
        },
      );
    }
    const body = route.body ? await readJson(request) : undefined;
    return route.handle(body, context);
  }

  private toHsmintError(error: unknown, path: string): HsmintError {
    if (error instanceof HsmintError) {
      // Only codes meant for the wire travel; anything else is an internal fault.
      if (error.status !== 500 || error.code === 'ERR_INTERNAL') return error;
    }
    this.logger.error(
      { event: 'http.internal_error', path: path.slice(0, 128), err: error },
      'request failed',
    );
    return new HsmintError('ERR_INTERNAL', 'internal error; see the daemon log');
  }
}

async function readJson(request: IncomingMessage): Promise<unknown> {
  const type = (request.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    request.resume();
    throw new HsmintError('ERR_UNSUPPORTED_MEDIA_TYPE', 'send Content-Type: application/json');
  }
  const declared = Number(request.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES)
    throw new HsmintError('ERR_BODY_TOO_LARGE', `the body is over ${MAX_BODY_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES)
      throw new HsmintError('ERR_BODY_TOO_LARGE', `the body is over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  let text: string;
  try {
    text = strictUtf8.decode(Buffer.concat(chunks, size));
  } catch {
    throw new HsmintError('ERR_MALFORMED_JSON', 'the body is not valid UTF-8');
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new HsmintError('ERR_MALFORMED_JSON', 'the body is not valid JSON');
  }
}

function send(response: ServerResponse, reply: Reply, close = false): void {
  if (response.headersSent) return;
  const payload = JSON.stringify(reply.body);
  response.statusCode = reply.status;
  response.setHeader('content-type', 'application/json');
  response.setHeader('x-content-type-options', 'nosniff');
  for (const [name, value] of Object.entries(reply.headers ?? {})) response.setHeader(name, value);
  response.setHeader('content-length', Buffer.byteLength(payload));
  // After a refused oversized body the rest of it is still on the wire, and a draining daemon
  // takes no further requests: close rather than keep the connection.
  if (close) response.setHeader('connection', 'close');
  response.end(payload);
}
