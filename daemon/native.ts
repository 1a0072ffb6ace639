import { createRequire } from 'node:module';
import { join } from 'node:path';
import { HsmintError } from '../core/errors.js';
import { packageRoot } from '../core/package-root.js';

/** hsmint's C addon (native/hsmint_native.c): what Node cannot do on Unix sockets itself. */
export interface NativeAddon {
  /** SO_PEERCRED of a connected Unix socket: the peer's pid, uid and gid at connect(). */
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  /** One datagram to systemd's notify socket ("@name" for an abstract one). */
  sdNotify(path: string, text: string): boolean;
  /** pidfd_open(2): a file descriptor that follows one process, never a reuse of its pid. */
  pidfdOpen(pid: number): number;
  /** Whether the process behind a pidfd has exited (poll(2) with no wait). */
  pidfdExited(fd: number): boolean;
  /**
   * SO_PEERPIDFD of a connected Unix socket: a pidfd for the very process that connected,
   * never a later owner of its pid. Throws with code ENOPROTOOPT before Linux 6.5.
   */
  peerPidfd(fd: number): number;
  /**
   * flock(LOCK_EX | LOCK_NB) on `path` (created 0600): the fd that holds it, kept for the
   * process's life. Throws with code EWOULDBLOCK when another process holds it.
   */
  lockExclusive(path: string): number;
}

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  if (addon) return addon;
  const path = join(packageRoot(), 'build', 'Release', 'hsmint_native.node');
  try {
    addon = createRequire(import.meta.url)(path) as NativeAddon;
  } catch (cause) {
    throw new HsmintError(
      'ERR_NATIVE_UNAVAILABLE',
      `cannot load ${path}; run npm run build:native`,
      { cause },
    );
  }
  return addon;
}
