/**
 * Callers of other users for the access tests. The client is nothing but Node's http module,
 * so it runs as any user without reading the repository; setpriv gives it the uid, gid and
 * groups a local service would have. Needs root, as CI has.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Sends each request of its second argument in order, each on its own connection, and prints
 * the answers as one JSON array of {status, body}. With a third argument `hold` it first waits
 * for a line on its stdin, and afterwards stays alive (keeping its pid) until its stdin ends.
 */
export const CLIENT = `
const [socketPath, program, hold] = process.argv.slice(1);
const http = require('node:http');
const send = ({ method, path, body, headers }) =>
  new Promise((resolve) => {
    const request = http.request(
      {
        socketPath,
        method,
        path,
        agent: false,
        headers: { host: 'hsmint', 'content-type': 'application/json', ...headers },
      },
      (response) => {
        let text = '';
        response.on('data', (chunk) => (text += chunk));
        response.on('end', () => {
          let parsed = text;
          try {
            parsed = JSON.parse(text);
          } catch {}
          resolve({ status: response.statusCode, body: parsed });
        });
      },
    );
    request.on('error', (error) => resolve({ status: 0, body: { error: { code: error.code } } }));
    request.end(body === undefined ? undefined : JSON.stringify(body));
  });
const run = async () => {
  const answers = [];
  for (const step of JSON.parse(program)) answers.push(await send(step));
  console.log(JSON.stringify(answers));
};
if (hold === 'hold') {
  const bound = setTimeout(() => process.exit(3), 20000);
  const input = require('node:readline').createInterface({ input: process.stdin });
  input.once('line', run);
  input.once('close', () => (clearTimeout(bound), process.exit(0)));
} else run();
`;

export interface Identity {
  uid: number;
  gid: number;
  /** Supplementary groups; none when empty. */
  groups: number[];
}

export interface Step {
  method: 'GET' | 'POST';
  path: string;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface Answer {
  status: number;
  body: any;
}

/** setpriv's arguments that make the rest of the command line run as `identity`. */
export function setprivArgs(identity: Identity): string[] {
  return [
    '--reuid',
    String(identity.uid),
    '--regid',
    String(identity.gid),
    ...(identity.groups.length > 0 ? ['--groups', identity.groups.join(',')] : ['--clear-groups']),
  ];
}

/** Runs the client as `identity` and returns its answers, one per step. */
export async function asCaller(
  identity: Identity,
  socket: string,
  steps: Step[],
): Promise<Answer[]> {
  const { stdout } = await run(
    'setpriv',
    [...setprivArgs(identity), process.execPath, '-e', CLIENT, socket, JSON.stringify(steps)],
    { timeout: 20_000 },
  );
  return JSON.parse(stdout) as Answer[];
}

/** The claims of a compact JWS, unverified (the tests verify through the daemon). */
export const claimsOf = (token: string) =>
  JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, any>;
