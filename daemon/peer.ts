import { closeSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import type { Socket } from 'node:net';
import { kernelOnly, type Caller } from '../core/policy/caller.js';
import { parseCgroupUnit, parseIdNames, parseStartTime, parseStatus } from '../core/policy/proc.js';
import { native } from './native.js';

/** uid/gid -> name, re-read when /etc/passwd or /etc/group changes. */
class NameTable {
  private names = new Map<number, string>();
  private stamp = -1;

  constructor(private readonly file: string) {}

  name(id: number): string | undefined {
    let mtime = 0;
    try {
      mtime = statSync(this.file).mtimeMs;
    } catch {
      return undefined;
    }
    if (mtime !== this.stamp) {
      this.names = parseIdNames(readFileSync(this.file, 'utf8'));
      this.stamp = mtime;
    }
    return this.names.get(id);
  }
}

const users = new NameTable('/etc/passwd');
const groups = new NameTable('/etc/group');

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** What a connection remembers of its peer: the kernel's word and the /proc facts. */
export interface Peer {
  caller: Caller;
  /** Start time of the pid at connect; a different one later means the pid was reused. */
  startTime: string | undefined;
  /**
   * A pidfd of the process that connected, taken between the two start-time readings: it
   * says when that process exits at the cost of one poll, where /proc costs an open, a read
   * and a close on every request. Undefined where pidfd_open is refused (then /proc).
   */
  pidfd?: number;
}

/** A pidfd for `pid`, or undefined where the kernel has none (before 5.3) or refuses it. */
function openPidfd(pid: number): number | undefined {
  try {
    return native().pidfdOpen(pid);
  } catch {
    return undefined;
  }
}

/**
 * A pidfd for the process that connected. Since Linux 6.5 the kernel keeps one from the
 * connect itself (SO_PEERPIDFD): it is `exact`, and `gone` when that process has exited. Before
 * that, pidfd_open(pid) names whoever holds the pid by now, which may already be another
 * process: the start-time readings around the /proc reads are then all there is.
 */
function peerPidfd(fd: number, pid: number): { pidfd?: number; exact: boolean } | 'gone' {
  try {
    return { pidfd: native().peerPidfd(fd), exact: true };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOPROTOOPT') return 'gone';
  }
  const pidfd = openPidfd(pid);
  return pidfd === undefined ? { exact: false } : { pidfd, exact: false };
}

/**
 * Identifies the process at the other end of a just-accepted connection, before any of its
 * bytes are read. The kernel's pid/uid/gid are facts; /proc is read between two readings of
 * the pid's start time, and its facts are kept only if the start time held still and the
 * process still has the uid that connected (after SPIRE's unix workload attestor).
 */
export function identifyPeer(socket: Socket): Peer {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('the connection has no file descriptor');
  const { pid, uid, gid } = native().peerCredentials(fd);
  const user = users.name(uid);
  const primary = groups.name(gid);
  const base: Caller = {
    pid,
    uid,
    gid,
    ...(user === undefined ? {} : { user }),
    groups: [],
    verified: false,
  };
  const untrusted = { caller: kernelOnly(base, primary), startTime: undefined };
  if (pid <= 0) return untrusted;

  const before = parseStartTime(read(`/proc/${pid}/stat`) ?? '');
  const handle = peerPidfd(fd, pid);
  if (handle === 'gone') return untrusted;
  const { pidfd } = handle;
  if (pidfd !== undefined) socket.once('close', () => closeSync(pidfd));
  const status = parseStatus(read(`/proc/${pid}/status`) ?? '');
  const cgroup = parseCgroupUnit(read(`/proc/${pid}/cgroup`) ?? '');
  let exe: string | undefined;
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    exe = undefined;
  }
  const after = parseStartTime(read(`/proc/${pid}/stat`) ?? '');
  // The effective uid (second Uid field) must still be the one the kernel saw at connect.
  if (before === undefined || before !== after || !status || status.uids[1] !== uid)
    return untrusted;
  // Alive after the reads, the process that connected held its pid all along: they were of it.
  if (handle.exact && pidfd !== undefined && native().pidfdExited(pidfd)) return untrusted;

  const names = new Set<string>();
  for (const id of [gid, ...status.groups]) {
    const name = groups.name(id);
    if (name !== undefined) names.add(name);
  }
  const caller: Caller = {
    ...base,
    ...(primary === undefined ? {} : { group: primary }),
    groups: [...names],
    ...(exe !== undefined && !exe.endsWith(' (deleted)') ? { exe } : {}),
    ...(cgroup?.unit === undefined ? {} : { unit: cgroup.unit }),
    verified: true,
  };
  return { caller, startTime: before, ...(pidfd === undefined ? {} : { pidfd }) };
}

/**
 * The caller for a request on a connection: the connect-time facts while the pid still has
 * the same start time, else only what the kernel said (the process is gone or was replaced).
 */
export function currentCaller(peer: Peer): Caller {
  if (!peer.caller.verified) return peer.caller;
  if (peer.pidfd !== undefined)
    return native().pidfdExited(peer.pidfd)
      ? kernelOnly(peer.caller, peer.caller.group)
      : peer.caller;
  const now = parseStartTime(read(`/proc/${peer.caller.pid}/stat`) ?? '');
  if (now === peer.startTime) return peer.caller;
  return kernelOnly(peer.caller, peer.caller.group);
}
