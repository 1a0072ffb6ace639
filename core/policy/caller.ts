/**
 * A caller as the daemon knows it. `pid`, `uid` and `gid` come from the kernel (SO_PEERCRED)
 * and are always trusted; everything read from /proc is trusted only while `verified` holds,
 * that is while the process that connected is provably the one still behind that pid.
 */
export interface Caller {
  pid: number;
  uid: number;
  gid: number;
  /** From /etc/passwd; undefined for a uid with no account. */
  user?: string;
  /** The primary group's name, from /etc/group. */
  group?: string;
  /** Names of the primary and (when verified) supplementary groups. */
  groups: string[];
  /** /proc/PID/exe, when verified and the file still exists. */
  exe?: string;
  /** The systemd system unit (`foo.service`) from /proc/PID/cgroup, when verified. */
  unit?: string;
  /** Whether the /proc facts belong to the process that connected. */
  verified: boolean;
}

/** Kernel-only identity: what remains when /proc cannot be trusted. */
export function kernelOnly(caller: Caller, primaryGroup: string | undefined): Caller {
  return {
    pid: caller.pid,
    uid: caller.uid,
    gid: caller.gid,
    ...(caller.user === undefined ? {} : { user: caller.user }),
    ...(primaryGroup === undefined ? {} : { group: primaryGroup }),
    groups: primaryGroup === undefined ? [] : [primaryGroup],
    verified: false,
  };
}
