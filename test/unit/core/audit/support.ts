/** Helpers for the audit tests: temporary folders, a file system with a fault switch, keys. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { signerFor, type Signer } from '../../../../core/ca/signer.js';
import { nodeAuditIo, type AuditFile, type AuditIo } from '../../../../core/audit/io.js';
import { HsmintError } from '../../../../core/errors.js';
import type { Algorithm } from '../../../../core/keys/algorithms.js';
import { MemoryKeyStore } from '../../../support/memory-keystore.js';

const folders: string[] = [];

export async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'hsmint-audit-'));
  folders.push(dir);
  return dir;
}

export async function removeTempDirs(): Promise<void> {
  await Promise.all(folders.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
}

export async function auditSigner(alg: Algorithm = 'ES256'): Promise<{
  signer: Signer;
  store: MemoryKeyStore;
}> {
  const store = new MemoryKeyStore();
  return { signer: signerFor(store, await store.generate(alg)), store };
}

/** What FaultyIo counts. */
export interface IoCounts {
  writes: number;
  datasyncs: number;
  truncates: number;
  opens: number;
}

/**
 * The real file system behind a fault switch: while `fault` holds an errno, every write-side
 * call fails with it (as a full or read-only disk would). `partialWrite` writes the first half
 * of the next write's data, then fails, leaving a torn line on disk.
 */
export class FaultyIo implements AuditIo {
  fault: string | undefined;
  partialWrite: string | undefined;
  /** Fail only when opening this segment file (a fault at rotation). */
  failOpenOf: { name: string; errno: string } | undefined;
  readonly counts: IoCounts = { writes: 0, datasyncs: 0, truncates: 0, opens: 0 };

  private check(): void {
    if (this.fault) throw errno(this.fault);
  }

  mkdir(dir: string): Promise<void> {
    return nodeAuditIo.mkdir(dir);
  }

  list(dir: string): Promise<string[]> {
    return nodeAuditIo.list(dir);
  }

  readFile(path: string): Promise<Buffer> {
    return nodeAuditIo.readFile(path);
  }

  async openFile(path: string): Promise<AuditFile> {
    this.counts.opens += 1;
    this.check();
    if (this.failOpenOf && path.endsWith(this.failOpenOf.name)) throw errno(this.failOpenOf.errno);
    const file = await nodeAuditIo.openFile(path);
    const faulty: AuditFile = {
      // Counted as the write and the sync it stands for, so group commit shows in datasyncs.
      writeDurably: async (data, position) => {
        await faulty.write(data, position);
        await faulty.datasync();
      },
      write: async (data, position) => {
        this.counts.writes += 1;
        if (this.partialWrite) {
          const code = this.partialWrite;
          this.partialWrite = undefined;
          await file.write(data.subarray(0, Math.ceil(data.length / 2)), position);
          throw errno(code);
        }
        this.check();
        await file.write(data, position);
      },
      datasync: async () => {
        this.counts.datasyncs += 1;
        this.check();
        await file.datasync();
      },
      truncate: async (length) => {
        this.counts.truncates += 1;
        this.check();
        await file.truncate(length);
      },
      size: () => file.size(),
      close: () => file.close(),
    };
    return faulty;
  }

  async unlink(path: string): Promise<void> {
    this.check();
    await nodeAuditIo.unlink(path);
  }

  async syncDir(dir: string): Promise<void> {
    this.check();
    await nodeAuditIo.syncDir(dir);
  }
}

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated`), { code });
}

/** A clock the test moves by hand. */
export function fakeClock(start = Date.UTC(2026, 10, 28, 12)) {
  let ms = start;
  return {
    now: () => new Date(ms),
    advance: (seconds: number) => {
      ms += seconds * 1000;
    },
  };
}

/** The details of the ERR_AUDIT_CORRUPT a call fails with; fails the test otherwise. */
export async function corruptDetails(
  run: () => Promise<unknown>,
): Promise<{ seq: number; file: string; line: number; problem: string }> {
  try {
    await run();
  } catch (error) {
    if (error instanceof HsmintError && error.code === 'ERR_AUDIT_CORRUPT')
      return error.details as { seq: number; file: string; line: number; problem: string };
    throw error;
  }
  throw new Error('expected ERR_AUDIT_CORRUPT, but the call succeeded');
}

/** A small deterministic PRNG (mulberry32), so a failing mutation can be replayed. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Segment files held in memory, for verifyAuditLog: the mutation tests tamper with copies of
 * the buffers instead of rewriting files on disk hundreds of times.
 */
export function memoryFiles(files: ReadonlyMap<string, Buffer>): AuditIo {
  const refuse = async (): Promise<never> => {
    throw errno('EROFS');
  };
  return {
    mkdir: refuse,
    openFile: refuse,
    unlink: refuse,
    syncDir: refuse,
    list: async () => [...files.keys()],
    readFile: async (path) => {
      const name = path.slice(path.lastIndexOf('/') + 1);
      const data = files.get(name);
      if (data === undefined) throw errno('ENOENT');
      return data;
    },
  };
}
