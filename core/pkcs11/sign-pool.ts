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
 * login and object handles.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type pkcs11js from 'pkcs11js';
import { HsmintError } from '../errors.js';

interface Job {
  resolve: (signature: Buffer) => void;
  reject: (error: Error) => void;
}

interface Thread {
  worker: Worker;
  jobs: Map<number, Job>;
}

/** What a worker answers: a signature, or the PKCS#11 error's message (`CKR_NAME:code`). */
type Reply = { id: number; signature: Uint8Array } | { id: number; error: string };

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
  const asBuffer = (bytes: Uint8Array): Buffer =>
    Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  parentPort.on(
    'message',
    (job: {
      id: number;
      op: 'sign' | 'probe';
      session: Uint8Array;
      key: Uint8Array;
      mechanism: unknown;
      data: Uint8Array;
      length: number;
    }) => {
      try {
        const session = asBuffer(job.session);
        if (job.op === 'probe') {
          lib.C_GetSessionInfo(session);
          parentPort.postMessage({ id: job.id, signature: new Uint8Array(0) });
          return;
        }
        lib.C_SignInit(session, job.mechanism, asBuffer(job.key));
        const signature = lib.C_Sign(session, asBuffer(job.data), Buffer.alloc(job.length));
        parentPort.postMessage({ id: job.id, signature });
      } catch (error) {
        parentPort.postMessage({
          id: job.id,
          error: error instanceof Error ? error.message : String(error),
        });
      }
    },
  );
}

export class SignPool {
  private readonly threads: Thread[] = [];
  private nextId = 1;
  private closed = false;

  /** `size` threads at most: more than the machine's cores buys nothing. */
  constructor(
    private readonly modulePath: string,
    private readonly size = Math.max(1, availableParallelism()),
  ) {}

  /**
   * C_SignInit + C_Sign on `session` in a worker. The caller holds the session (one operation
   * per session at a time); a PKCS#11 failure rejects with an Error whose message carries the
   * CKR name and code, as pkcs11js writes it, so ckrCode() reads it the same.
   */
  sign(
    session: Buffer,
    mechanism: pkcs11js.Mechanism,
    key: Buffer,
    data: Buffer,
    length: number,
  ): Promise<Buffer> {
    return this.post({ op: 'sign', session, key, mechanism, data, length });
  }

  /**
   * C_GetSessionInfo on `session` in a worker: the module answers, and a worker is free to
   * ask it. Never a signature (a key that wants a touch would wait for a finger).
   */
  async probe(session: Buffer): Promise<void> {
    await this.post({ op: 'probe', session });
  }

  private post(job: {
    op: 'sign' | 'probe';
    session: Buffer;
    [field: string]: unknown;
  }): Promise<Buffer> {
    if (this.closed)
      return Promise.reject(new HsmintError('ERR_HSM_UNAVAILABLE', 'the token is closed'));
    const thread = this.leastBusy();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      thread.jobs.set(id, { resolve, reject });
      thread.worker.postMessage({ id, ...job });
    });
  }

  /** Waits for the signatures in flight (a worker cannot be stopped inside the module), then stops the workers. */
  async close(): Promise<void> {
    this.closed = true;
    const threads = this.threads.splice(0);
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

  private spawn(): Thread {
    const worker = new Worker(`(${signWorkerMain.toString()})()`, {
      eval: true,
      workerData: { pkcs11jsPath, modulePath: this.modulePath },
    });
    // An idle worker must not keep a CLI command or a stopping daemon alive.
    worker.unref();
    const thread: Thread = { worker, jobs: new Map() };
    worker.on('message', (reply: Reply) => {
      const job = thread.jobs.get(reply.id);
      if (!job) return;
      thread.jobs.delete(reply.id);
      if ('error' in reply) job.reject(new Error(reply.error));
      else
        job.resolve(
          Buffer.from(
            reply.signature.buffer,
            reply.signature.byteOffset,
            reply.signature.byteLength,
          ),
        );
    });
    const lost = (cause: unknown): void => {
      const index = this.threads.indexOf(thread);
      if (index !== -1) this.threads.splice(index, 1);
      const error = new HsmintError('ERR_HSM_UNAVAILABLE', 'a signing thread stopped', {
        cause,
      });
      for (const job of thread.jobs.values()) job.reject(error);
      thread.jobs.clear();
    };
    worker.on('error', lost);
    worker.on('exit', (code) => lost(new Error(`exit code ${code}`)));
    this.threads.push(thread);
    return thread;
  }
}
