import { readFileSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, realpath, stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import type { Server } from 'node:http';
import { dirname } from 'node:path';
import { HsmintError } from '../core/errors.js';

/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

/** Resolves true when something accepts a connection on `path`. */
function somethingListens(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
    probe.setTimeout(1000, () => {
      probe.destroy();
      resolve(true); // something holds the socket but does not answer: do not steal it
    });
  });
}

/** `dir` and every folder above it, up to the root. */
function withAncestors(dir: string): string[] {
  const chain = [dir];
  for (let up = dirname(dir); up !== chain.at(-1); up = dirname(up)) chain.push(up);
  return chain;
}

/**
 * Refuses a socket folder that anyone but root or the daemon's own user could change, here or
 * above: whoever may rename or replace an entry on the way can put a socket of their own in
 * the daemon's place, and callers would send it their tokens. A world-writable folder passes
 * only when sticky (like /tmp, where nobody may move another's entry). The path as written and
 * its resolved form are both checked, so a symlink neither hides an unsafe folder nor sits in
 * one.
 */
async function refuseUnsafeFolders(dir: string): Promise<void> {
  const self = process.geteuid?.() ?? 0;
  const folders = new Set([...withAncestors(dir), ...withAncestors(await realpath(dir))]);
  for (const folder of folders) {
    const info = await stat(folder);
    if ((info.mode & 0o002) !== 0 && (info.mode & 0o1000) === 0) {
      throw new HsmintError(
        'ERR_SOCKET_PATH_INVALID',
        `${folder} is world-writable: anyone could replace the socket`,
      );
    }
    if (info.uid !== 0 && info.uid !== self) {
      throw new HsmintError(
        'ERR_SOCKET_PATH_INVALID',
        `${folder} belongs to uid ${info.uid}: that user could replace the socket`,
      );
    }
  }
}

/**
 * Refuses a socket path another process listens on, changing nothing. listenOnPath asks again
 * when it binds; the daemon asks first too, before it opens the token and the audit log, which
 * belong to the daemon serving there.
 */
export async function refuseLiveSocket(path: string): Promise<void> {
  const existing = await lstat(path).catch(() => undefined);
  if (existing?.isSocket() && (await somethingListens(path)))
    throw new HsmintError('ERR_SOCKET_IN_USE', `another process listens on ${path}`);
}

function groupId(name: string): number {
  const line = readFileSync('/etc/group', 'utf8')
    .split('\n')
    .find((entry) => entry.split(':')[0] === name);
  const gid = line === undefined ? Number.NaN : Number(line.split(':')[2]);
  if (!Number.isInteger(gid))
    throw new HsmintError('ERR_SOCKET_PATH_INVALID', `socket.group ${name} does not exist`);
  return gid;
}

/**
 * Listens on a Unix socket path without a window in which anyone else could connect: the
 * umask is set so the socket is born with its final mode, a stale socket is removed only when
 * nothing answers on it, and a live one (another daemon) makes this refuse to start.
 */
export async function listenOnPath(
  server: Server,
  path: string,
  mode: number,
  group?: string,
): Promise<void> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    throw new HsmintError(
      'ERR_SOCKET_PATH_INVALID',
      `socket path is over ${MAX_SOCKET_PATH_BYTES} bytes: ${path}`,
    );
  }
  const parent = dirname(path);
  await mkdir(parent, { recursive: true, mode: 0o750 });
  await refuseUnsafeFolders(parent);
  const existing = await lstat(path).catch(() => undefined);
  if (existing) {
    if (!existing.isSocket())
      throw new HsmintError('ERR_SOCKET_PATH_INVALID', `${path} exists and is not a socket`);
    await refuseLiveSocket(path);
    await unlink(path);
  }
  const gid = group === undefined ? undefined : groupId(group);

  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      reject(
        error.code === 'EADDRINUSE'
          ? new HsmintError('ERR_SOCKET_IN_USE', `another process listens on ${path}`)
          : new HsmintError('ERR_SOCKET_PATH_INVALID', `cannot listen on ${path}: ${error.code}`, {
              cause: error,
            }),
      );
    };
    server.once('error', onError);
    // bind(2) happens synchronously inside listen() for a path, so the umask covers exactly it.
    const previous = process.umask(0o777 & ~mode);
    try {
      server.listen(path, () => {
        server.off('error', onError);
        resolve();
      });
    } finally {
      process.umask(previous);
    }
  });
  if (gid !== undefined) await chown(path, -1, gid);
  await chmod(path, mode);
}

/**
 * Serves on a listening socket systemd passed (socket activation). systemd made the socket,
 * with the unit's path, mode and group, and removes it: the daemon neither binds nor unlinks.
 */
export async function listenOnFd(server: Server, fd: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) =>
      reject(
        new HsmintError(
          'ERR_SOCKET_ACTIVATION',
          `cannot serve on the socket systemd passed (fd ${fd}): ${error.code ?? error.message}`,
          { cause: error },
        ),
      );
    server.once('error', onError);
    server.listen({ fd }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}
