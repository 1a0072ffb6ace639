import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { HsmintError } from '../errors.js';

/** Somewhere a small JSON document survives a crash: a file, or memory in tests. */
export interface DocumentStore<T> {
  read(): Promise<T | undefined>;
  write(value: T): Promise<void>;
}

/**
 * A JSON file replaced atomically: written to a temporary file, fsynced, renamed over the
 * old one, and the folder fsynced, so a crash leaves either the old or the new document.
 */
export class JsonFile<T> implements DocumentStore<T> {
  constructor(readonly path: string) {}

  async read(): Promise<T | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new HsmintError('ERR_STATE_UNAVAILABLE', `cannot read ${this.path}`, { cause: error });
    }
    try {
      return JSON.parse(text) as T;
    } catch (cause) {
      throw new HsmintError('ERR_STATE_UNAVAILABLE', `${this.path} is not valid JSON`, { cause });
    }
  }

  async write(value: T): Promise<void> {
    const folder = dirname(this.path);
    const temporary = join(folder, `.${randomBytes(6).toString('hex')}.tmp`);
    try {
      await mkdir(folder, { recursive: true, mode: 0o700 });
      const handle = await open(temporary, 'wx', 0o600);
      try {
        await handle.writeFile(`${JSON.stringify(value, null, 2)}\n`);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temporary, this.path);
      const directory = await open(folder, 'r');
      try {
        await directory.sync();
      } finally {
        await directory.close();
      }
    } catch (error) {
      await unlink(temporary).catch(() => undefined);
      if (error instanceof HsmintError) throw error;
      throw new HsmintError('ERR_STATE_UNAVAILABLE', `cannot write ${this.path}`, { cause: error });
    }
  }
}

/** For tests and for a daemon that keeps no state on disk. */
export class MemoryDocument<T> implements DocumentStore<T> {
  private value: string | undefined;

  async read(): Promise<T | undefined> {
    return this.value === undefined ? undefined : (JSON.parse(this.value) as T);
  }

  async write(value: T): Promise<void> {
    this.value = JSON.stringify(value);
  }
}
