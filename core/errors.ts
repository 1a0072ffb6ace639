/**
 * Every failure hsmint reports has a stable code. This table is the single source of truth:
 * the daemon maps codes to HTTP statuses from it, ERRORS.md mirrors it (a test fails when the
 * two drift apart), and clients rebuild typed errors from the code on the wire.
 *
 * `status` is the HTTP status a code travels with; `null` marks codes that never cross the
 * socket (start-up, CLI and offline failures). Verification outcomes are reported inside a
 * 200 `{valid: false, error}` body, so their status is `null` too.
 */
export const ERROR_CODES = {
  // Requests
  ERR_NOT_FOUND: { status: 404, meaning: 'No such route.' },
  ERR_METHOD_NOT_ALLOWED: { status: 405, meaning: 'The route exists but not for this method.' },
  ERR_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    meaning: 'A request body was sent without `Content-Type: application/json`.',
  },
  ERR_BODY_TOO_LARGE: { status: 413, meaning: 'The request body is over the 64 KiB cap.' },
  ERR_HEADERS_TOO_LARGE: { status: 431, meaning: 'The request headers are over 8 KiB.' },
  ERR_REQUEST_TIMEOUT: {
    status: 408,
    meaning: 'The request headers or body did not arrive in time (5 s for headers, 10 s in all).',
  },
  ERR_MALFORMED_JSON: { status: 400, meaning: 'The request body is not valid UTF-8 JSON.' },
  ERR_INVALID_REQUEST: {
    status: 400,
    meaning: 'A field has the wrong type or a value out of range.',
  },
  ERR_UNKNOWN_FIELD: { status: 400, meaning: 'The request names a field the route does not know.' },
  ERR_MISSING_FIELD: { status: 400, meaning: 'A required field is missing.' },
  ERR_RESERVED_CLAIM: {
    status: 400,
    meaning: 'The request tries to set a claim only the daemon sets (iss, iat, nbf, exp, jti...).',
  },
  ERR_TTL_TOO_LONG: {
    status: 400,
    meaning: "The requested ttl is over the caller's max_ttl; it is refused, never cut.",
  },
  ERR_FORBIDDEN: {
    status: 403,
    meaning: 'No policy rule matches the caller, or the route needs an admin rule.',
  },
  ERR_SUBJECT_NOT_ALLOWED: {
    status: 403,
    meaning: 'The requested sub is not granted to the caller, or the rule gives it no default.',
  },
  ERR_AUDIENCE_NOT_ALLOWED: {
    status: 403,
    meaning: 'The requested audience is not granted to the caller.',
  },
  ERR_SCOPE_NOT_ALLOWED: {
    status: 403,
    meaning: 'A requested scope is not granted to the caller.',
  },
  ERR_CLAIM_NOT_ALLOWED: {
    status: 403,
    meaning: 'An extra claim, or its value, is not granted to the caller.',
  },
  ERR_TOO_MANY_CONNECTIONS: {
    status: 429,
    meaning: 'The caller uid has too many connections open (`socket.max_connections_per_uid`).',
  },
  ERR_TOO_MANY_REQUESTS: {
    status: 429,
    meaning: 'The caller uid has too many requests in flight (`socket.max_requests_per_uid`).',
  },
  ERR_REVOCATION_LIST_FULL: {
    status: 507,
    meaning: 'The revocation list is full (`tokens.max_revocations` entries not yet expired).',
  },
  ERR_STATE_UNAVAILABLE: {
    status: 503,
    meaning: 'The key state or revocation file in `keys.state_dir` cannot be read or written.',
  },
  ERR_CA_NOT_READY: {
    status: 409,
    meaning: 'No internal CA is configured, or the active key has no certificate from it yet.',
  },
  ERR_HSM_UNAVAILABLE: {
    status: 503,
    meaning: 'The token failed or is unreachable; details are in the daemon log.',
  },
  ERR_HSM_TOUCH_TIMEOUT: {
    status: 504,
    meaning:
      "A signature waited for a touch on the key (its touch policy) past the profile's sign_timeout_ms; nothing was signed.",
  },
  ERR_HSM_BUSY: {
    status: 503,
    meaning: 'Every token session stayed busy for `hsm.queue_timeout`; the request was not signed.',
  },
  ERR_SHUTTING_DOWN: { status: 503, meaning: 'The daemon is draining and takes no new work.' },
  ERR_INTERNAL: { status: 500, meaning: 'An unexpected fault; details are in the daemon log.' },
  ERR_CLOCK_ROLLBACK: {
    status: 503,
    meaning: 'The clock is earlier than the last audit record by more than the clock skew.',
  },
  ERR_AUDIT_UNAVAILABLE: {
    status: 503,
    meaning: 'The audit log cannot be written (disk full, read-only, permissions, I/O error).',
  },

  // Verification outcomes (`valid: false`)
  ERR_TOKEN_MALFORMED: {
    status: null,
    meaning:
      'Not a compact JWS of three base64url parts with JSON header and claims, or an unsigned one (`alg: none` with an empty signature), or a `crit` header (hsmint understands no extension).',
  },
  ERR_TOKEN_ALG_NOT_ALLOWED: {
    status: null,
    meaning: '`alg` is not on the allow-list (`none` and HMAC never are) or does not fit the key.',
  },
  ERR_TOKEN_KID_UNKNOWN: {
    status: null,
    meaning: '`kid` is missing or names no key of this issuer.',
  },
  ERR_TOKEN_SIGNATURE_INVALID: { status: null, meaning: 'The signature does not verify.' },
  ERR_TOKEN_REVOKED: { status: null, meaning: 'The token (its jti) was revoked before its exp.' },
  ERR_TOKEN_KEY_REVOKED: { status: null, meaning: 'The key that signed the token was revoked.' },
  ERR_TOKEN_EXPIRED: { status: null, meaning: '`exp` has passed (beyond the allowed clock skew).' },
  ERR_TOKEN_NOT_YET_VALID: {
    status: null,
    meaning: '`nbf` is in the future (beyond the allowed clock skew).',
  },
  ERR_TOKEN_ISSUER_MISMATCH: { status: null, meaning: '`iss` is missing or not this issuer.' },
  ERR_TOKEN_AUDIENCE_MISMATCH: {
    status: null,
    meaning: '`aud` does not hold the expected audience.',
  },
  ERR_TOKEN_CLAIM_INVALID: {
    status: null,
    meaning: 'A required claim or header (exp, iat, jti, typ) is missing or ill-typed.',
  },

  // Start-up, configuration and the token (never on the wire)
  ERR_CONFIG_INVALID: {
    status: 422,
    meaning: 'The configuration file is invalid (at start, or on reload: the old one stays).',
  },
  ERR_CONFIG_UNREADABLE: { status: 422, meaning: 'The configuration file cannot be read.' },
  ERR_DURATION_INVALID: {
    status: null,
    meaning: 'A duration is not like `90s`, `5m`, `12h`, `30d`.',
  },
  ERR_PKCS11_URI_INVALID: {
    status: null,
    meaning: 'A PKCS#11 URI (RFC 7512) is malformed or refused.',
  },
  ERR_PIN_UNAVAILABLE: { status: null, meaning: 'The PIN file is missing, unreadable or empty.' },
  ERR_PIN_FILE_INSECURE: {
    status: null,
    meaning: 'The PIN file can be read by group or others.',
  },
  ERR_PIN_INCORRECT: { status: null, meaning: 'The token refused the PIN.' },
  ERR_PIN_LOCKED: { status: null, meaning: 'The token has locked the user PIN.' },
  ERR_MODULE_NOT_FOUND: {
    status: null,
    meaning: 'No PKCS#11 module was found or it did not load.',
  },
  ERR_HSM_TOKEN_NOT_FOUND: {
    status: null,
    meaning: 'No token matches the configured label or URI.',
  },
  ERR_HSM_TOKEN_AMBIGUOUS: {
    status: null,
    meaning: 'More than one token matches the configured URI.',
  },
  ERR_ALG_UNSUPPORTED: {
    status: null,
    meaning: 'The algorithm is not one hsmint signs with, or the token lacks its mechanism.',
  },
  ERR_KEY_NOT_FOUND: { status: 404, meaning: 'No such hsmint key, or no usable key on the token.' },
  ERR_SOCKET_ACTIVATION: {
    status: null,
    meaning: 'systemd passed listening sockets the daemon cannot use.',
  },
  ERR_SOCKET_IN_USE: { status: null, meaning: 'Another process is listening on the socket path.' },
  ERR_SOCKET_PATH_INVALID: {
    status: null,
    meaning: 'The socket path is too long, not a socket, or in an unsafe directory.',
  },
  ERR_ALREADY_INITIALIZED: {
    status: null,
    meaning: '`softhsm init` found a token already in DIR.',
  },
  ERR_DAEMON_RUNNING: {
    status: null,
    meaning: 'Another hsmintd holds this audit log (`audit.dir`).',
  },
  ERR_DAEMON_UNREACHABLE: { status: null, meaning: 'The CLI or client cannot reach the socket.' },
  ERR_PROTOCOL: { status: null, meaning: 'The daemon answered something the client cannot read.' },
  ERR_USAGE: { status: null, meaning: 'The command line is wrong.' },
  ERR_NATIVE_UNAVAILABLE: {
    status: null,
    meaning: "hsmint's native addon (SO_PEERCRED, sd_notify) is not built or does not load.",
  },

  // The internal CA and the offline verification bundle (never on the wire)
  ERR_CA_INVALID: {
    status: null,
    meaning:
      'The CA cannot issue as asked: its certificate is not a CA certificate for its key, or the subject, serial or validity is invalid.',
  },
  ERR_CSR_INVALID: {
    status: null,
    meaning:
      "A certificate request is malformed, its self-signature does not verify, its subject is not its key's thumbprint, or it asks for a CA.",
  },
  ERR_CHAIN_INVALID: {
    status: null,
    meaning:
      'A certificate chain does not lead to the pinned root: unreadable, badly signed, expired or not yet valid, or with wrong CA flags.',
  },
  ERR_BUNDLE_INVALID: {
    status: null,
    meaning:
      'A verification bundle is malformed, or its signature or certificate chain does not verify against the pinned root.',
  },
  ERR_BUNDLE_ROLLBACK: {
    status: null,
    meaning: 'A verification bundle is not newer than the last one accepted.',
  },
  ERR_BUNDLE_STATE_INVALID: {
    status: null,
    meaning: 'The bundle state file cannot be read, parsed or written.',
  },

  // The audit log (never on the wire)
  ERR_AUDIT_CORRUPT: {
    status: null,
    meaning:
      'The audit log fails verification: a record is malformed, out of sequence, off the hash chain, or under a bad checkpoint.',
  },
} as const satisfies Record<string, { status: number | null; meaning: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Codes that `POST /v1/tokens/verify` reports inside `{valid: false, error}`. */
export type VerifyErrorCode = Extract<ErrorCode, `ERR_TOKEN_${string}`>;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_CODES, value);
}

/**
 * The one error class. Codes are data (the table above), so a typed `code` gives what a
 * subclass per code would (exhaustive switches, no typos) without forty empty classes; callers
 * test `error.code`, never the message.
 */
export class HsmintError extends Error {
  override readonly name = 'HsmintError';
  readonly code: ErrorCode;
  /** Safe, structured context for logs and clients (never secrets). */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options.details;
  }

  /** The HTTP status this error travels with, 500 for codes that should never reach a client. */
  get status(): number {
    return ERROR_CODES[this.code].status ?? 500;
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

/**
 * Whether `error` may reach a client as it is: an HsmintError whose code is meant for the wire.
 * Any other failure (an internal code with status 500, or no HsmintError at all) is a fault
 * here, answered as ERR_INTERNAL.
 */
export function travels(error: unknown): error is HsmintError {
  return error instanceof HsmintError && (error.status !== 500 || error.code === 'ERR_INTERNAL');
}

export function hasCode(error: unknown, code: ErrorCode): error is HsmintError {
  return error instanceof HsmintError && error.code === code;
}
