import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Caller } from '../core/policy/caller.js';
import type { Config } from '../core/config.js';
import type { Peer } from './peer.js';
import type { Logger } from 'pino';
import { HsmintError, travels, type ErrorCode } from '../core/errors.js';
import { MAX_BODY_BYTES, type ErrorBody } from '../core/protocol.js';
import { secondsSince, type DaemonMetrics } from './metrics.js';

export interface Reply {
  status: number;
  /** Sent as JSON, unless it is PlainText. */
  body: unknown;
  headers?: Record<string, string>;
}

/** A body sent as it is rather than as JSON (the Prometheus text of GET /v1/metrics). */
export class PlainText {
  constructor(
    readonly text: string,
    readonly contentType: string,
  ) {}
}

export interface RequestContext {
  /** Safe fields the handler wants in the request's log line (a jti, never a token). */
  log: Record<string, unknown>;
  /** Who is asking, as the kernel and /proc say. */
  caller: Caller;
  /** Values of `{name}` segments in the route's path, like `kid` in /v1/keys/{kid}/revoke. */
  params: Record<string, string>;
  /**
   * The configuration (policy, issuer, TTLs) as it was when the request arrived: a reload
   * does not change the rules of a request already in flight.
   */
  config: Config;
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

export interface ServerOptions {
  limits?: ServerLimits;
  /** Identifies a new connection's peer; a failure closes the connection unanswered. */
  identify: (socket: Socket) => Peer;
  /** The caller for a request, re-checked against pid reuse. */
  currentCaller: (peer: Peer) => Caller;
  /** The configuration now, and the per-uid limits now (both change on reload). */
  config: () => Config;
  perUid: () => { connections: number; requests: number };
  /** Times every answered request by route pattern and status class. */
  metrics?: DaemonMetrics;
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
  private readonly peers = new WeakMap<Socket, Peer>();
  private readonly connectionsByUid = new Map<number, number>();
  private readonly requestsByUid = new Map<number, number>();
  private draining = false;
  private drained: (() => void) | undefined;

  constructor(
    routes: Route[],
    private readonly logger: Logger,
    private readonly options: ServerOptions,
  ) {
    const limits = options.limits ?? DEFAULT_LIMITS;
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
    // Node answers an Expect other than 100-continue with a bare 417 that has no error code:
    // refuse it as malformed HTTP instead, with the body every other refusal has.
    this.http.on('checkExpectation', (request: IncomingMessage, response: ServerResponse) => {
      this.logger.debug(
        { event: 'http.client_error', code: 'EXPECTATION' },
        'bad HTTP from a client',
      );
      request.resume();
      const error = new HsmintError(
        'ERR_INVALID_REQUEST',
        'only Expect: 100-continue is understood',
      );
      send(response, { status: error.status, body: { error: error.toJSON() } }, true);
    });
    // Runs before the HTTP parser reads a byte: every request has a known caller.
    this.http.prependListener('connection', (socket: Socket) => this.accept(socket));
    this.http.on('clientError', (error: NodeJS.ErrnoException, socket) => {
      this.logger.debug({ event: 'http.client_error', code: error.code }, 'bad HTTP from a client');
      if (!socket.writable || error.code === 'ECONNRESET') {
        socket.destroy();
        return;
      }
      const [status, reason, code, message] =
        CLIENT_ERRORS[error.code ?? ''] ?? CLIENT_ERRORS['default']!;
      writeRaw(socket, status, reason, code, message);
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

  private accept(socket: Socket): void {
    let peer: Peer;
    try {
      peer = this.options.identify(socket);
    } catch (error) {
      this.logger.error(
        { event: 'peer.unidentified', err: error },
        'cannot identify a caller; connection closed',
      );
      socket.destroy();
      return;
    }
    const uid = peer.caller.uid;
    const open = (this.connectionsByUid.get(uid) ?? 0) + 1;
    this.connectionsByUid.set(uid, open);
    socket.once('close', () => decrement(this.connectionsByUid, uid));
    if (open > this.options.perUid().connections) {
      this.logger.warn(
        { event: 'peer.too_many_connections', uid, pid: peer.caller.pid, open },
        'connection refused',
      );
      writeRaw(
        socket,
        429,
        'Too Many Requests',
        'ERR_TOO_MANY_CONNECTIONS',
        `uid ${uid} has too many connections open`,
      );
      return;
    }
    this.peers.set(socket, peer);
  }

  private async dispatch(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const started = process.hrtime.bigint();
    this.inFlight++;
    const peer = this.peers.get(request.socket);
    if (!peer) {
      // Refused at accept (over the connection limit): its answer is on its way and the
      // socket is ending; destroying it here could drop that answer.
      request.resume();
      this.inFlight--;
      return;
    }
    const caller = this.options.currentCaller(peer);
    const uid = caller.uid;
    this.requestsByUid.set(uid, (this.requestsByUid.get(uid) ?? 0) + 1);
    // Counted until the answer has left for the socket, so a drain never cuts one half-written.
    response.once('close', () => {
      decrement(this.requestsByUid, uid);
      this.inFlight--;
      if (this.inFlight === 0) this.drained?.();
    });
    const context: RequestContext = {
      log: {},
      params: {},
      caller,
      config: this.options.config(),
    };
    const path = (request.url ?? '/').split('?')[0]!;
    // The route's pattern, never the raw path, labels the metrics: their values stay bounded.
    const matched = { pattern: 'unmatched' };
    let status = 500;
    let code: ErrorCode | undefined;
    try {
      const reply = await this.route(request, path, context, matched);
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
      const seconds = secondsSince(started);
      const ms = seconds * 1000;
      this.options.metrics?.request(request.method, matched.pattern, status, seconds);
      this.logger.info(
        {
          event: 'http.request',
          method: request.method,
          path: path.slice(0, 128),
          status,
          ms: Math.round(ms * 100) / 100,
          code,
          uid: caller.uid,
          pid: caller.pid,
          ...(caller.unit === undefined ? {} : { unit: caller.unit }),
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
    matched: { pattern: string },
  ): Promise<Reply> {
    if (this.draining) throw new HsmintError('ERR_SHUTTING_DOWN', 'the daemon is shutting down');
    if ((this.requestsByUid.get(context.caller.uid) ?? 0) > this.options.perUid().requests) {
      throw new HsmintError(
        'ERR_TOO_MANY_REQUESTS',
        `uid ${context.caller.uid} has too many requests in flight`,
      );
    }
    const candidates = this.routes.get(path) ?? this.matchPattern(path, context);
    if (!candidates) throw new HsmintError('ERR_NOT_FOUND', 'no such route');
    matched.pattern = candidates[0]!.path;
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

  /** Routes with `{name}` segments; a segment value is 1 to 128 URL-safe characters. */
  private matchPattern(path: string, context: RequestContext): Route[] | undefined {
    const segments = path.split('/');
    for (const [pattern, routes] of this.routes) {
      if (!pattern.includes('{')) continue;
      const parts = pattern.split('/');
      if (parts.length !== segments.length) continue;
      const params: Record<string, string> = {};
      const fits = parts.every((part, i) => {
        const segment = segments[i]!;
        if (!part.startsWith('{')) return part === segment;
        if (!/^[A-Za-z0-9_-]{1,128}$/.test(segment)) return false;
        params[part.slice(1, -1)] = segment;
        return true;
      });
      if (fits) {
        context.params = params;
        return routes;
      }
    }
    return undefined;
  }

  private toHsmintError(error: unknown, path: string): HsmintError {
    if (travels(error)) return error;
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
  try {
    for await (const chunk of request as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY_BYTES)
        throw new HsmintError('ERR_BODY_TOO_LARGE', `the body is over ${MAX_BODY_BYTES} bytes`);
      chunks.push(chunk);
    }
  } catch (error) {
    if (error instanceof HsmintError) throw error;
    // The stream fails only when the body never arrives whole: the client went away, or its
    // HTTP broke mid-body (clientError has answered that). The client's fault, not a fault here.
    throw new HsmintError('ERR_INVALID_REQUEST', 'the request body was cut off');
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

function decrement(counts: Map<number, number>, uid: number): void {
  const left = (counts.get(uid) ?? 1) - 1;
  if (left <= 0) counts.delete(uid);
  else counts.set(uid, left);
}

/** How long a refused client has to read its answer and close before the daemon closes it. */
const REFUSAL_GRACE_MS = 1_000;

/** An answer written straight to the socket, for refusals before any request exists. */
function writeRaw(
  socket: Socket | import('node:stream').Duplex,
  status: number,
  reason: string,
  code: ErrorCode,
  message: string,
): void {
  const body = JSON.stringify({ error: { code, message } } satisfies ErrorBody);
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
  // end() closes only our side, and after a client error Node's timeouts no longer watch the
  // socket: a client that never closed its own would keep the socket, its descriptors and its
  // uid's connection count for good. The grace lets an honest client read the answer first.
  const cut = setTimeout(() => socket.destroy(), REFUSAL_GRACE_MS).unref();
  socket.once('close', () => clearTimeout(cut));
}

function send(response: ServerResponse, reply: Reply, close = false): void {
  if (response.headersSent) return;
  const plain = reply.body instanceof PlainText ? reply.body : undefined;
  const payload = plain ? plain.text : JSON.stringify(reply.body);
  response.statusCode = reply.status;
  response.setHeader('content-type', plain ? plain.contentType : 'application/json');
  response.setHeader('x-content-type-options', 'nosniff');
  for (const [name, value] of Object.entries(reply.headers ?? {})) response.setHeader(name, value);
  response.setHeader('content-length', Buffer.byteLength(payload));
  // After a refused oversized body the rest of it is still on the wire, and a draining daemon
  // takes no further requests: close rather than keep the connection.
  if (close) response.setHeader('connection', 'close');
  response.end(payload);
}
