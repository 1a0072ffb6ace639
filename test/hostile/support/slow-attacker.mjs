// Hostile connections for the slow-client tests, in a process of their own, as an attacker
// would be: the test's event loop then times its normal client's mints without also serving
// a thousand sockets. Plain Node, no build step: `node slow-attacker.mjs SPEC`, SPEC a JSON
//   { socketPath, slow, idle, openOverMs, dripMs: [min, max], maxLifeMs }.
// It opens `slow` connections that send a request's headers one byte at a time (a byte every
// dripMs[0] to dripMs[1] ms, never the blank line that ends them) and `idle` ones that send
// nothing, alternating, in batches spread over `openOverMs`. None ever closes its own side
// (allowHalfOpen): only the daemon can end them. It prints JSON lines on stdout:
//   {"event":"connected","connected":N,"failed":N,"retries":N}   once every connect has settled
//   {"event":"ended","connections":[...]}            once the daemon has ended every connection
// and keeps its sockets, half-open, until its stdin closes or `maxLifeMs` passes.
import { connect } from 'node:net';

const spec = JSON.parse(process.argv[2]);
const BATCH_GAP_MS = 50;
const RETRY_MS = 20;
/** Connects retried after EAGAIN, over all connections; past this, a refusal counts as failed. */
const MAX_RETRIES = 5_000;
/** A header block that never ends: no blank line ever follows the last header. */
const ENDLESS_HEADERS = `POST /v1/tokens HTTP/1.1\r\nhost: hsmint\r\nx-slow: ${'a'.repeat(4_000)}`;

const connections = [];
let pendingConnect = spec.slow + spec.idle;
let pendingEnd = spec.slow + spec.idle;
let failedConnects = 0;
let retries = 0;

function report(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function settledConnect(failed) {
  if (failed) failedConnects++;
  if (--pendingConnect === 0)
    report({
      event: 'connected',
      connected: connections.length - failedConnects,
      failed: failedConnects,
      retries,
    });
}

function settledEnd() {
  if (--pendingEnd > 0) return;
  report({
    event: 'ended',
    retries,
    connections: connections.map(({ kind, openedAt, endedAt, reply, sent, error }) => ({
      kind,
      lifetimeMs: endedAt === undefined ? null : endedAt - openedAt,
      status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(reply)?.[1] ?? 0) || null,
      code: /"code":"(ERR_[A-Z_]+)"/.exec(reply)?.[1] ?? null,
      sent,
      error,
    })),
  });
}

function open(kind) {
  const connection = {
    kind,
    socket: undefined,
    openedAt: undefined,
    endedAt: undefined,
    reply: '',
    sent: 0,
    error: null,
  };
  connections.push(connection);
  attempt(connection);
}

/**
 * One connect. A listen backlog that is full (the daemon did not accept in time, on a busy
 * machine) refuses it with EAGAIN at once: an attacker tries again, and so does this one.
 */
function attempt(connection) {
  const { kind } = connection;
  const socket = connect({ path: spec.socketPath, allowHalfOpen: true });
  connection.socket = socket;
  connection.openedAt = performance.now();
  let timer;
  let over = false;
  const finish = () => {
    if (over) return;
    over = true;
    clearTimeout(timer);
    settledEnd();
  };
  const drip = () => {
    if (over) return;
    socket.write(ENDLESS_HEADERS[connection.sent % ENDLESS_HEADERS.length]);
    connection.sent++;
    const [min, max] = spec.dripMs;
    timer = setTimeout(drip, min + Math.random() * (max - min));
  };
  let connected = false;
  socket.once('connect', () => {
    connected = true;
    settledConnect(false);
    if (kind === 'slow') drip();
  });
  socket.on('data', (chunk) => (connection.reply += chunk.toString('latin1')));
  socket.once('end', () => {
    connection.endedAt = performance.now();
    finish();
  });
  socket.on('error', (error) => {
    if (!connected && error.code === 'EAGAIN' && retries < MAX_RETRIES) {
      retries++;
      over = true;
      setTimeout(() => attempt(connection), RETRY_MS);
      return;
    }
    // A drip racing the daemon's close fails with EPIPE after the end: that is no failure.
    if (connection.endedAt === undefined) connection.error ??= error.code ?? String(error);
    if (!connected) {
      connected = true;
      settledConnect(true);
    }
    finish();
  });
  socket.once('close', finish);
}

const kinds = [];
for (let i = 0; i < Math.max(spec.slow, spec.idle); i++) {
  if (i < spec.slow) kinds.push('slow');
  if (i < spec.idle) kinds.push('idle');
}
const batches = Math.max(1, Math.round(spec.openOverMs / BATCH_GAP_MS));
const perBatch = Math.ceil(kinds.length / batches);
for (let start = 0; start < kinds.length; start += perBatch) {
  for (const kind of kinds.slice(start, start + perBatch)) open(kind);
  await new Promise((resolve) => setTimeout(resolve, BATCH_GAP_MS));
}

const quit = () => {
  for (const { socket } of connections) socket.destroy();
  process.exit(0);
};
setTimeout(quit, spec.maxLifeMs).unref();
process.stdin.on('end', quit);
process.stdin.resume();
