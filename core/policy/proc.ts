/**
 * Parsers for the /proc and /etc files that describe a caller. They are pure so that tests
 * run them on fixtures of real contents; daemon/peer.ts does the reading.
 */

/** Field 22 of /proc/PID/stat: the start time in clock ticks since boot, unique per pid lifetime. */
export function parseStartTime(stat: string): string | undefined {
  // The command name (field 2) is in parentheses and may itself hold spaces and parentheses.
  const end = stat.lastIndexOf(')');
  if (end === -1) return undefined;
  const fields = stat.slice(end + 2).split(' ');
  // fields[0] is field 3 (state), so field 22 is fields[19].
  const start = fields[19];
  return start !== undefined && /^\d+$/.test(start) ? start : undefined;
}

export interface ProcStatus {
  /** Real, effective, saved and filesystem uids. */
  uids: number[];
  gids: number[];
  groups: number[];
}

export function parseStatus(status: string): ProcStatus | undefined {
  const field = (name: string) => {
    const line = status.split('\n').find((entry) => entry.startsWith(`${name}:`));
    if (line === undefined) return undefined;
    const values = line.slice(name.length + 1).trim();
    return values === '' ? [] : values.split(/\s+/).map(Number);
  };
  const uids = field('Uid');
  const gids = field('Gid');
  const groups = field('Groups');
  if (
    !uids ||
    !gids ||
    !groups ||
    [...uids, ...gids, ...groups].some((n) => !Number.isInteger(n) || n < 0)
  ) {
    return undefined;
  }
  return { uids, gids, groups };
}

const UNIT = /^[A-Za-z0-9:_.\\@-]+\.service$/;

/**
 * The systemd system unit a process runs in, from /proc/PID/cgroup (v2 `0::/path`, or the v1
 * `name=systemd` hierarchy): below any slices, the first component, when it is a `.service`.
 * `/system.slice/system-getty.slice/getty@tty1.service` gives `getty@tty1.service`;
 * `/system.slice/foo.service/bar.service` (a cgroup a delegated service made) gives
 * `foo.service`. Nothing under user.slice or machine.slice counts: below user@UID.service a
 * user may create cgroups with any name, so a "unit" found there proves nothing.
 */
export function parseCgroupUnit(cgroup: string): { path: string; unit?: string } | undefined {
  const lines = cgroup.split('\n').filter((line) => line !== '');
  const unified = lines.find((line) => line.startsWith('0::'));
  const systemd = lines.find((line) => /^\d+:name=systemd:/.test(line));
  const chosen = unified !== undefined && unified !== '0::/' ? unified : (systemd ?? unified);
  if (chosen === undefined) return undefined;
  const path = chosen.slice(chosen.indexOf(':', chosen.indexOf(':') + 1) + 1);
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === undefined || UNTRUSTED_SLICES.has(parts[0])) return { path };
  const first = parts.find((part) => !part.endsWith('.slice'));
  if (first === undefined || !UNIT.test(first)) return { path };
  return { path, unit: first };
}

const UNTRUSTED_SLICES = new Set(['user.slice', 'machine.slice']);

/** name:passwd:id:... lines of /etc/passwd or /etc/group, as id -> name. */
export function parseIdNames(text: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const [name, , id] = line.split(':');
    // Only plain decimal ids: "" (NIS "+" lines), "0x10" or " 1 " must never read as a uid.
    if (!name || id === undefined || !/^\d{1,10}$/.test(id)) continue;
    const number = Number(id);
    if (!names.has(number)) names.set(number, name);
  }
  return names;
}
