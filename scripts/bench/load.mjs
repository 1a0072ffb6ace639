// A closed-loop load generator over a Unix socket: `concurrency` callers, each sending its
// next request as soon as the last is answered, on keep-alive connections (undici).
import { Pool } from 'undici';

/**
 * Runs for `seconds` and returns ops/s, latency quantiles (ms) and errors. `perCall` is how
 * many operations one call carries (a batch of mints), and `failures(text)` counts those that
 * failed inside an answer that succeeded as a whole.
 */
export async function runLoad({
  socketPath,
  request,
  concurrency,
  seconds,
  perCall = 1,
  failures = () => 0,
}) {
  const pool = new Pool('http://localhost', {
    socketPath,
    connections: concurrency,
    pipelining: 1,
  });
  const latencies = [];
  let errors = 0;
  let firstError;
  const started = performance.now();
  const end = started + seconds * 1000;
  try {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < end) {
          const sent = performance.now();
          const { method, path, body } = request();
          try {
            const response = await pool.request({
              method,
              path,
              ...(body === undefined
                ? {}
                : { body, headers: { 'content-type': 'application/json' } }),
            });
            const text = await response.body.text();
            if (response.statusCode >= 400) {
              errors++;
              firstError ??= `${response.statusCode} ${text.slice(0, 200)}`;
            } else {
              const failed = failures(text);
              if (failed > 0) {
                errors += failed;
                firstError ??= text.slice(0, 200);
              }
              latencies.push(performance.now() - sent);
            }
          } catch (error) {
            errors++;
            firstError ??= String(error);
          }
        }
      }),
    );
  } finally {
    await pool.close();
  }
  const elapsed = (performance.now() - started) / 1000;
  return {
    ops_per_s: (latencies.length * perCall) / elapsed,
    ...quantiles(latencies),
    errors,
    first_error: firstError,
  };
}

export function quantiles(latencies) {
  const sorted = Float64Array.from(latencies).sort();
  const at = (q) =>
    sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return {
    p50_ms: at(0.5),
    p99_ms: at(0.99),
    max_ms: sorted.length === 0 ? 0 : sorted[sorted.length - 1],
  };
}
