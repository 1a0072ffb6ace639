/**
 * Signing off the main thread. C_SignInit is not cheap (SoftHSM decrypts the key and builds
 * its OpenSSL context there: about 65 µs of an 80 µs ES256 signature) and pkcs11js runs it
 * synchronously, so with only C_Sign on libuv's pool the event loop spent most of its time
 * inside the token. Here a few worker threads run C_SignInit + C_Sign together, each call on a
 * session the main thread's pool lent it: the pool still decides how many operations the
 * token sees at once, and the event loop only posts and receives messages.
 *
 * A PKCS#11 module is loaded once per process: the workers load the same library (dlopen
 * counts references), never call C_Initialize or C_Finalize, and share the application's
 * login and object handles. A module that gives each load its own state instead (p11-kit's
 * client does: every C_GetFunctionList is a new connection) answers a worker with
 * CKR_CRYPTOKI_NOT_INITIALIZED; the pool then signs on the main thread, C_SignInit in line and
 * C_Sign on libuv's pool, as hsmint did before it had workers.
 *
 * Jobs travel in batches, one batch at a time per thread: what is posted while a thread works
 * waits for its answer and then goes in one message, and the thread answers a batch with one
 * message. A wake-up between threads costs a third of a signature in a virtual machine; this
 * way a busy thread is woken once per batch, not once per job, and an idle one at the end of
 * the loop round that posted to it.
 *
 * Every call has a deadline. A call past it is given up on: its worker is terminated (the
 * thread only ends once the call returns, if ever) and the call counts as stranded until then,
 * so that the token layer knows not to finalize the module under it. On a device whose keys can
 * wait for a touch, a signature has the profile's longer deadline, and missing it says so.
 *
 * A key with CKA_ALWAYS_AUTHENTICATE (PIV slot 9c) wants C_Login(CKU_CONTEXT_SPECIFIC, PIN)
 * between C_SignInit and C_Sign, on the same session, so the worker needs the PIN. Posting it
 * copies it into the worker's heap; the main thread holds it already (it logs in again after
 * a fault), and the worker is a thread of the same process, so no one new can read it. Only
 * such signatures carry it: every other job travels without a PIN.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import pkcs11js from 'pkcs11js';
import { HsmintError } from '../errors.js';
import { isCkr } from './ckr.js';

interface Job {
  resolve: (signature: Buffer) => void;
  reject: (error: Error) => void;
  /** What was posted, kept to run it again on the main thread if the worker cannot. */
  message: PostedJob;
  timer: NodeJS.Timeout;
}

interface PostedJob {
  op: 'sign' | 'probe';
  session: Buffer;
  key?: Buffer;
  mechanism?: pkcs11js.Mechanism;
  data?: Buffer;
  length?: number;
  /** The PIN for the context-specific login; only for keys that ask for one. */
  contextPin?: string;
}

/**
 * A job as it travels to a worker, inside one JSON string per batch: handles and data as
 * base64. Posting typed arrays or nested objects costs the sender ~6 µs a job in V8's
 * serializer (measured: 17 µs for a batch of three), a string under 1 µs.
 */
interface WireJob {
  id: number;
  op: 'sign' | 'probe';
  session: string;
  key?: string;
  mechanism?: pkcs11js.Mechanism;
  data?: string;
  length?: number;
  contextPin?: string;
}

interface Thread {
  worker: Worker;
  jobs: Map<number, Job>;
  /** Jobs posted and not yet sent: they go together when the thread is free. */
  outbox: WireJob[];
  /** Whether a batch is with the thread (its answer will send the outbox). */
  working: boolean;
  /** Whether a flush is due at the end of this loop round. */
  flushDue: boolean;
}

/**
 * What a worker answers for a job, in one JSON string per batch: the signature in base64, or
 * the PKCS#11 error as `CKR_NAME:code` (see ckr.ts).
 */
type Reply = { id: number; signature: string } | { id: number; error: string };

const pkcs11jsPath = createRequire(import.meta.url).resolve('pkcs11js');

/**
 * The worker's whole program. It is sent as source (`eval`), so it must stay plain, import
 * nothing from this module and use only `require`: it then runs the same from dist/ and from
 * the TypeScript sources under vitest.
 */
function signWorkerMain(): void {
  const { parentPort, workerData } = require('node:worker_threads');
  const pkcs11 = require(workerData.pkcs11jsPath);
  const lib = new pkcs11.PKCS11();
  lib.load(workerData.modulePath);
  const bytes = (base64: string): Buffer => Buffer.from(base64, 'base64');
  const run = (job: {
    id: number;
    op: 'sign' | 'probe';
    session: string;
    key: string;
    mechanism: unknown;
    data: string;
    length: number;
    contextPin?: string;
  }): { id: number; signature: string } | { id: number; error: string } => {
    try {
      const session = bytes(job.session);
      if (job.op === 'probe') {
        lib.C_GetSessionInfo(session);
        return { id: job.id, signature: '' };
      }
      lib.C_SignInit(session, job.mechanism, bytes(job.key));
      if (job.contextPin !== undefined)
        lib.C_Login(session, pkcs11.CKU_CONTEXT_SPECIFIC, job.contextPin);
      const signature: Buffer = lib.C_Sign(session, bytes(job.data), Buffer.alloc(job.length));
      return { id: job.id, signature: signature.toString('base64') };
    } catch (error) {
      // pkcs11js's message is the bare CKR name; the number travels with it (see ckr.ts).
      const message = error instanceof Error ? error.message : String(error);
      const code = error instanceof Error ? (error as { code?: unknown }).code : undefined;
      return {
        id: job.id,
        error:
          typeof code === 'number' && /^CKR_\w+$/.test(message) ? `${message}:${code}` : message,
      };
    }
  };
  // A batch in, its answers out in one message.
  parentPort.on('message', (batch: string) =>
    parentPort.postMessage(JSON.stringify(JSON.parse(batch).map(run))),
  );
}

/** The error of a call given up on at its deadline; the token counts it as a hang. */
function deadlineError(what: string, ms: number): HsmintError {
  return new HsmintError('ERR_HSM_UNAVAILABLE', `${what} did not return within ${ms} ms`, {
    details: { deadline: true },
  });
}

/**
 * A signature on a device whose keys can wait for a touch, past the profile's deadline: most
 * likely no one touched the key. Still a deadline: the session stays with the stranded call.
 */
function touchTimeoutError(ms: number, hint: string): HsmintError {
  return new HsmintError(
    'ERR_HSM_TOUCH_TIMEOUT',
    `the signature did not complete within ${ms} ms: ${hint}`,
    { details: { deadline: true, touch: true } },
  );
}

export function isDeadline(error: unknown): boolean {
  return error instanceof HsmintError && error.details?.['deadline'] === true;
}

export interface SignPoolOptions {
  modulePath: string;
  /** Threads at most: more than the machine's cores buys nothing. */
  size?: number;
  /** The main thread's binding, initialized and logged in: signs when workers cannot. */
  lib: pkcs11js.PKCS11;
  /** How long one call may take before it is given up on (ms). */
  callTimeoutMs: number;
  /**
   * For devices whose keys can wait for a touch: how long a signature may take (the profile's
   * sign_timeout_ms), and the words that tell the operator to touch the key. A signature past
   * it fails with ERR_HSM_TOUCH_TIMEOUT; probes keep callTimeoutMs.
   */
  touch?: { signTimeoutMs: number; hint: string };
  /** Start on the main thread (a previous pool found that workers cannot share the module). */
  inline?: boolean;
  /** Told once when the pool moves to the main thread. */
  onInline?: () => void;
}

export class SignPool {
  private readonly threads: Thread[] = [];
  private nextId = 1;
  private closed = false;
  private inlineMode: boolean;
  /** Main-thread signatures still running. */
  private readonly inlineJobs = new Set<Promise<unknown>>();
  /** Calls given up on that have not returned from the module. */
  private strandedCalls = 0;
  private readonly size: number;

  constructor(private readonly options: SignPoolOptions) {
    this.size = options.size ?? Math.max(1, availableParallelism());
    this.inlineMode = options.inline ?? false;
  }

  /** Calls given up on at their deadline that have not returned from the module yet. */
  get stranded(): number {
    return this.strandedCalls;
  }

  /**
   * C_SignInit + C_Sign on `session`. The caller holds the session (one operation per session
   * at a time); a PKCS#11 failure rejects with an Error whose message carries the CKR name and
   * code, as pkcs11js writes it, so ckrCode() reads it the same. Past the deadline it rejects
   * with deadlineError (touchTimeoutError on a touch device). `contextPin` is for keys with
   * CKA_ALWAYS_AUTHENTICATE: the context-specific login between C_SignInit and C_Sign.
   */
  sign(
    session: Buffer,
    mechanism: pkcs11js.Mechanism,
    key: Buffer,
    data: Buffer,
    length: number,
    contextPin?: string,
  ): Promise<Buffer> {
    return this.post({
      op: 'sign',
      session,
      key,
      mechanism,
      data,
      length,
      ...(contextPin === undefined ? {} : { contextPin }),
    });
  }

  /**
   * C_GetSessionInfo on `session`: the module answers, and a worker is free to ask it. Never a
   * signature (a key that wants a touch would wait for a finger).
   */
  async probe(session: Buffer): Promise<void> {
    await this.post({ op: 'probe', session });
  }

  private post(message: PostedJob): Promise<Buffer> {
    if (this.closed)
      return Promise.reject(new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed'));
    if (this.inlineMode) return this.runInline(message);
    const thread = this.leastBusy();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.strand(thread, id), this.deadlineOf(message));
      thread.jobs.set(id, { resolve, reject, message, timer });
      if (!thread.working && !thread.flushDue) {
        thread.flushDue = true;
        setImmediate(() => {
          thread.flushDue = false;
          this.flush(thread);
        });
      }
      thread.outbox.push({
        id,
        op: message.op,
        session: message.session.toString('base64'),
        ...(message.key ? { key: message.key.toString('base64') } : {}),
        ...(message.mechanism ? { mechanism: message.mechanism } : {}),
        ...(message.data ? { data: message.data.toString('base64') } : {}),
        ...(message.length === undefined ? {} : { length: message.length }),
        ...(message.contextPin === undefined ? {} : { contextPin: message.contextPin }),
      });
    });
  }

  /** Sends what waits for `thread` as one message, unless it is still working on a batch. */
  private flush(thread: Thread): void {
    const batch = thread.outbox;
    if (batch.length === 0 || thread.working) return;
    thread.outbox = [];
    // A thread given up on meanwhile has failed these jobs already.
    if (!this.threads.includes(thread)) return;
    thread.working = true;
    thread.worker.postMessage(JSON.stringify(batch));
  }

  /** The call `id` is past its deadline: reject it, and give up its thread (see the top). */
  private strand(thread: Thread, id: number): void {
    const job = thread.jobs.get(id);
    if (!job) return;
    thread.jobs.delete(id);
    job.reject(this.missed(job.message));
    this.forget(thread, new HsmintError('ERR_HSM_UNAVAILABLE', 'a signing thread was given up'));
    this.strandedCalls++;
    thread.worker.once('exit', () => this.strandedCalls--);
    void thread.worker.terminate();
  }

  private describe(message: PostedJob): string {
    return message.op === 'sign' ? 'a signature on the token' : 'a probe of the token';
  }

  private deadlineOf(message: PostedJob): number {
    const touch = this.options.touch;
    return message.op === 'sign' && touch ? touch.signTimeoutMs : this.options.callTimeoutMs;
  }

  /** The error of `message` given up on at its deadline. */
  private missed(message: PostedJob): HsmintError {
    const touch = this.options.touch;
    if (message.op === 'sign' && touch) return touchTimeoutError(touch.signTimeoutMs, touch.hint);
    return deadlineError(this.describe(message), this.options.callTimeoutMs);
  }

  /** On the main thread: C_SignInit in line, C_Sign on libuv's pool, both under the deadline. */
  private runInline(message: PostedJob): Promise<Buffer> {
    const lib = this.options.lib;
    let call: Promise<Buffer>;
    try {
      if (message.op === 'probe') {
        lib.C_GetSessionInfo(message.session);
        return Promise.resolve(Buffer.alloc(0));
      }
      lib.C_SignInit(message.session, message.mechanism!, message.key!);
      if (message.contextPin !== undefined)
        lib.C_Login(message.session, pkcs11js.CKU_CONTEXT_SPECIFIC, message.contextPin);
      call = lib.C_SignAsync(message.session, message.data!, Buffer.alloc(message.length!));
    } catch (error) {
      return Promise.reject(error as Error);
    }
    this.inlineJobs.add(call);
    let timer: NodeJS.Timeout | undefined;
    let late = false;
    const settled = call.finally(() => {
      clearTimeout(timer);
      this.inlineJobs.delete(call);
      if (late) this.strandedCalls--;
    });
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        late = true;
        this.strandedCalls++;
        this.inlineJobs.delete(call);
        reject(this.missed(message));
      }, this.deadlineOf(message));
    });
    // The losing side of the race must not surface as an unhandled rejection.
    settled.catch(() => undefined);
    return Promise.race([settled, deadline]);
  }

  /** Moves to the main thread for good, and runs there what the workers could not. */
  private goInline(): void {
    if (this.inlineMode) return;
    this.inlineMode = true;
    this.options.onInline?.();
    for (const thread of this.threads.splice(0)) {
      for (const job of thread.jobs.values()) {
        clearTimeout(job.timer);
        this.runInline(job.message).then(job.resolve, job.reject);
      }
      thread.jobs.clear();
      thread.outbox = [];
      void thread.worker.terminate();
    }
  }

  /** Waits for the calls in flight (none outlives its deadline), then stops the workers. */
  async close(): Promise<void> {
    this.closed = true;
    const threads = this.threads.splice(0);
    await Promise.allSettled([...this.inlineJobs]);
    await Promise.all(
      threads.map(async (thread) => {
        await Promise.allSettled(
          [...thread.jobs.values()].map(
            (job) =>
              new Promise<void>((settled) => {
                const { resolve, reject } = job;
                job.resolve = (signature) => (resolve(signature), settled());
                job.reject = (error) => (reject(error), settled());
              }),
          ),
        );
        await thread.worker.terminate();
      }),
    );
  }

  private leastBusy(): Thread {
    let best: Thread | undefined;
    for (const thread of this.threads)
      if (best === undefined || thread.jobs.size < best.jobs.size) best = thread;
    if (best !== undefined && (best.jobs.size === 0 || this.threads.length >= this.size))
      return best;
    return this.spawn();
  }

  /** Drops a thread from the pool and fails what it still holds. */
  private forget(thread: Thread, error: Error): void {
    const index = this.threads.indexOf(thread);
    if (index !== -1) this.threads.splice(index, 1);
    for (const job of thread.jobs.values()) {
      clearTimeout(job.timer);
      job.reject(error);
    }
    thread.jobs.clear();
    thread.outbox = [];
  }

  private spawn(): Thread {
    const worker = new Worker(`(${signWorkerMain.toString()})()`, {
      eval: true,
      // A signing thread allocates next to nothing: small heaps keep the daemon's RSS down.
      resourceLimits: { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 32 },
      workerData: { pkcs11jsPath, modulePath: this.options.modulePath },
    });
    // An idle worker must not keep a CLI command or a stopping daemon alive.
    worker.unref();
    const thread: Thread = {
      worker,
      jobs: new Map(),
      outbox: [],
      working: false,
      flushDue: false,
    };
    worker.on('message', (answer: string) => {
      const replies = JSON.parse(answer) as Reply[];
      thread.working = false;
      // What waited goes now; what these answers free up waits for the next answer.
      this.flush(thread);
      for (const reply of replies) {
        const job = thread.jobs.get(reply.id);
        if (!job) continue;
        if (
          'error' in reply &&
          isCkr(new Error(reply.error), pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED)
        ) {
          // The worker's load of the module is a separate, uninitialized instance.
          this.goInline();
          return;
        }
        thread.jobs.delete(reply.id);
        clearTimeout(job.timer);
        if ('error' in reply) job.reject(new Error(reply.error));
        else job.resolve(Buffer.from(reply.signature, 'base64'));
      }
    });
    const lost = (cause: unknown): void =>
      this.forget(
        thread,
        new HsmintError('ERR_HSM_UNAVAILABLE', 'a signing thread stopped', { cause }),
      );
    worker.on('error', lost);
    worker.on('exit', (code) => lost(new Error(`exit code ${code}`)));
    this.threads.push(thread);
    return thread;
  }
}
