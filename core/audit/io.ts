/**
 * The file operations the audit log uses, behind a narrow seam so tests can count syncs and
 * inject ENOSPC or EIO (chmod does not stop root, and tests run as root).
 */
import { constants } from 'node:fs';
import { mkdir, open, readFile, readdir, unlink, type FileHandle } from 'node:fs/promises';

/** An open segment file, written at explicit positions. */
export interface AuditFile {
  /** Writes all of `data` at `position`. */
  write(data: Buffer, position: number): Promise<void>;
  /**
   * Writes all of `data` at `position` and resolves once it and the file size are on disk.
   * The real file is opened O_DSYNC, so this is one system call on one thread where a write
   * then an fdatasync would be two, each waiting its turn on a busy event loop.
   */
  writeDurably(data: Buffer, position: number): Promise<void>;
  /** fdatasync(2): the data and the file size are on disk when this resolves. */
  datasync(): Promise<void>;
  truncate(length: number): Promise<void>;
  size(): Promise<number>;
  close(): Promise<void>;
}

export interface AuditIo {
  /** Creates the folder (mode 0700) when missing. */
  mkdir(dir: string): Promise<void>;
  /** File names in `dir`. */
  list(dir: string): Promise<string[]>;
  readFile(path: string): Promise<Buffer>;
  /**
   * Opens for reading and writing (O_DSYNC, see writeDurably), creating the file (mode 0600)
   * when missing; never truncates.
   */
  openFile(path: string): Promise<AuditFile>;
  unlink(path: string): Promise<void>;
  /** fsync(2) of a folder, so a new file's name survives a crash. */
  syncDir(dir: string): Promise<void>;
}

class NodeAuditFile implements AuditFile {
  constructor(private readonly handle: FileHandle) {}

  async write(data: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(
        data,
        done,
        data.length - done,
        position + done,
      );
      if (bytesWritten <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
      done += bytesWritten;
    }
  }

  /** With O_DSYNC each write(2) returns only once its data is on disk. */
  writeDurably(data: Buffer, position: number): Promise<void> {
    return this.write(data, position);
  }

  datasync(): Promise<void> {
    return this.handle.datasync();
  }

  truncate(length: number): Promise<void> {
    return this.handle.truncate(length);
  }

  async size(): Promise<number> {
    return (await this.handle.stat()).size;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

/** The real file system. */
export const nodeAuditIo: AuditIo = {
  async mkdir(dir) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  },
  list: (dir) => readdir(dir),
  readFile: (path) => readFile(path),
  async openFile(path) {
    return new NodeAuditFile(
      await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_DSYNC, 0o600),
    );
  },
  unlink: (path) => unlink(path),
  async syncDir(dir) {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  },
};
