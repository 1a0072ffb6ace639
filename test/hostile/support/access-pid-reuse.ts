/**
 * PID reuse, for real. Python, because only a plain fork(2) lets us place a new process on a
 * chosen pid: as root we write `pid - 1` to /proc/sys/kernel/ns_last_pid and fork at once
 * (other processes may take the pid in between, so this retries, a bounded number of times).
 *
 *   A  connects as `a`, asks, then forks C (which inherits the connection) and exits; the
 *      orchestrator reaps it, so its pid is free.
 *   B  a new process forced onto A's pid, becoming `b` and exec'ing `node` (another exe).
 *   C  once B is node, speaks on the connection A made (within the daemon's 5 s keep-alive).
 *   B  then connects on its own and asks, and lets the pid go.
 *
 * With `frozen`, the daemon is held stopped from before A connects until B is node on A's pid,
 * and A asks nothing: the daemon first looks at A's connection once /proc describes B.
 *
 * Every process prints one JSON line `{who, ...}`; the orchestrator's last line is `done` or
 * `failed`. Every wait is bounded: the socket has a timeout, C gives up when the orchestrator
 * goes away, B when its stdin ends.
 */
import { spawn } from 'node:child_process';
import type { Answer, Identity, Step } from './access-callers.js';
import { CLIENT, setprivArgs } from './access-callers.js';

const ORCHESTRATOR = `
import json, os, signal, socket, sys, time
sock_path, node, client, setpriv_json, a_json, b_json, a_steps, c_steps, b_steps, attempts, frozen = sys.argv[1:]
frozen = int(frozen)
A, B, SETPRIV_B = json.loads(a_json), json.loads(b_json), json.loads(setpriv_json)

def say(who, **fields):
    print(json.dumps({'who': who, **fields}), flush=True)

def become(who):
    os.setgroups(who['groups'])
    os.setgid(who['gid'])
    os.setuid(who['uid'])

def exchange(s, step):
    body = b'' if step.get('body') is None else json.dumps(step['body']).encode()
    head = '%s %s HTTP/1.1\\r\\nhost: hsmint\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n' % (step['method'], step['path'], len(body))
    s.sendall(head.encode() + body)
    data = b''
    while b'\\r\\n\\r\\n' not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError('the daemon closed the connection')
        data += chunk
    head, rest = data.split(b'\\r\\n\\r\\n', 1)
    lines = head.split(b'\\r\\n')
    length = int([l.split(b':', 1)[1] for l in lines[1:] if l.lower().startswith(b'content-length:')][0])
    while len(rest) < length:
        rest += s.recv(65536)
    return {'status': int(lines[0].split(b' ')[1]), 'body': json.loads(rest[:length])}

if frozen:
    os.kill(frozen, signal.SIGSTOP)  # A's connection waits in the backlog, not yet identified
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
a = os.fork()
if a == 0:
    try:
        become(A)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(sock_path)
        say('A', pid=os.getpid(), answers=[exchange(s, step) for step in json.loads(a_steps)])
        if os.fork() == 0:
            try:
                os.close(go_w)
                os.close(done_r)
                if os.read(go_r, 1) == b'x':
                    say('C', pid=os.getpid(), answers=[exchange(s, step) for step in json.loads(c_steps)])
            except Exception as error:
                say('C', error=repr(error))
            os._exit(0)
    except Exception as error:
        say('A', error=repr(error))
    os._exit(0)
os.close(go_r)
os.close(done_w)
os.waitpid(a, 0)

b_out_r, b_out_w = os.pipe()
b_in_r, b_in_w = os.pipe()
b = None
for attempt in range(1, int(attempts) + 1):
    with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
        f.write(str(a - 1))
    pid = os.fork()
    if pid == 0:
        if os.getpid() != a:
            os._exit(0)
        try:
            os.dup2(b_in_r, 0)
            os.dup2(b_out_w, 1)
            os.execv('/usr/bin/setpriv', ['setpriv', *SETPRIV_B, node, '-e', client, sock_path, b_steps, 'hold'])
        finally:
            os._exit(127)
    if pid == a:
        b = pid
        break
    os.waitpid(pid, 0)
os.close(b_in_r)
os.close(b_out_w)
if b is None:
    if frozen:
        os.kill(frozen, signal.SIGCONT)
    os.close(go_w)
    say('failed', target=a, attempts=int(attempts))
    sys.exit(1)

for _ in range(500):  # B is on the pid at once; wait (bounded) until it is node as its user
    try:
        if os.readlink('/proc/%d/exe' % b) == node and os.stat('/proc/%d' % b).st_uid == B['uid']:
            break
    except OSError:
        pass
    time.sleep(0.01)
if frozen:
    os.kill(frozen, signal.SIGCONT)  # the daemon now identifies A's connection: /proc shows B
try:
    os.write(go_w, b'x')
except BrokenPipeError:
    pass  # no C: A failed before it forked, and said so
os.close(go_w)
os.read(done_r, 1)  # end of file: C has said all it had to say, with B on the pid
os.write(b_in_w, b'go\\n')
line = os.fdopen(b_out_r).readline()
say('B', pid=b, attempt=attempt, answers=json.loads(line) if line else None)
os.close(b_in_w)
os.waitpid(b, 0)
say('done')
`;

export interface PidReuseOptions {
  socket: string;
  /** A: connects, then exits; C, its child, has the same identity. */
  a: Identity;
  /** B: the new process on A's pid. */
  b: Identity;
  aSteps: Step[];
  bSteps: Step[];
  cSteps: Step[];
  attempts: number;
  /**
   * A daemon pid to hold stopped (SIGSTOP) from before A connects until B is node on A's pid,
   * as a busy daemon's accept backlog would: the daemon first looks at A's connection then.
   */
  frozen?: number;
}

export interface PidReuseReport {
  a: { pid: number; answers: Answer[] };
  b: { pid: number; attempt: number; answers: Answer[] };
  c: { pid: number; answers: Answer[] };
}

/**
 * Runs the scenario and returns what each process was answered. Throws with everything the
 * processes printed when the pid could not be forced or a step failed.
 */
export async function pidReuse(options: PidReuseOptions): Promise<PidReuseReport> {
  const child = spawn(
    '/usr/bin/python3',
    [
      '-c',
      ORCHESTRATOR,
      options.socket,
      process.execPath,
      CLIENT,
      // B's identity: setpriv gives it, then execs node.
      JSON.stringify(setprivArgs(options.b)),
      JSON.stringify(options.a),
      JSON.stringify(options.b),
      JSON.stringify(options.aSteps),
      JSON.stringify(options.cSteps),
      JSON.stringify(options.bSteps),
      String(options.attempts),
      String(options.frozen ?? 0),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const bound = setTimeout(() => child.kill('SIGKILL'), 30_000);
  // C writes to the same pipe and outlives the orchestrator: wait for every writer to close it.
  await Promise.all([
    new Promise((resolve) => child.once('exit', resolve)),
    new Promise((resolve) => child.stdout.once('close', resolve)),
  ]);
  clearTimeout(bound);
  const lines = stdout
    .trim()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, any>);
  const find = (who: string) => lines.find((line) => line['who'] === who);
  const failed = find('failed');
  if (failed)
    throw new Error(
      `could not place a new process on pid ${failed['target']} in ${failed['attempts']} attempts (others took it first); rerun on a quieter machine`,
    );
  const [a, b, c] = [find('A'), find('B'), find('C')];
  if (!a?.['answers'] || !b?.['answers'] || !c?.['answers'])
    throw new Error(`the pid reuse scenario did not finish:\n${stdout}\n${stderr}`);
  return {
    a: a as PidReuseReport['a'],
    b: b as PidReuseReport['b'],
    c: c as PidReuseReport['c'],
  };
}
