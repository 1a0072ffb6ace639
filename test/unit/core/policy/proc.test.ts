import { describe, expect, it } from 'vitest';
import {
  parseCgroupUnit,
  parseIdNames,
  parseStartTime,
  parseStatus,
} from '../../../../core/policy/proc.js';

/**
 * A /proc/PID/stat line as Linux 6 writes it: 52 fields, the command name (field 2) in
 * parentheses, the start time at field 22, a newline at the end.
 */
function statLine(pid: number, comm: string, startTime: string): string {
  const after = [
    'S', // 3 state
    '1', // 4 ppid
    String(pid), // 5 pgrp
    String(pid), // 6 session
    '0', // 7 tty_nr
    '-1', // 8 tpgid
    '4194560', // 9 flags
    '1520', // 10 minflt
    '0', // 11 cminflt
    '0', // 12 majflt
    '0', // 13 cmajflt
    '3', // 14 utime
    '1', // 15 stime
    '0', // 16 cutime
    '0', // 17 cstime
    '20', // 18 priority
    '0', // 19 nice
    '1', // 20 num_threads
    '0', // 21 itrealvalue
    startTime, // 22 starttime
    '12345678', // 23 vsize
    '900', // 24 rss
    '18446744073709551615', // 25 rsslim
    '94045404921856', // 26 startcode
    '94045404941737', // 27 endcode
    '140732745902896', // 28 startstack
    '0', // 29 kstkesp
    '0', // 30 kstkeip
    '0', // 31 signal
    '0', // 32 blocked
    '4096', // 33 sigignore
    '0', // 34 sigcatch
    '0', // 35 wchan
    '0', // 36 nswap
    '0', // 37 cnswap
    '17', // 38 exit_signal
    '1', // 39 processor
    '0', // 40 rt_priority
    '0', // 41 policy
    '0', // 42 delayacct_blkio_ticks
    '0', // 43 guest_time
    '0', // 44 cguest_time
    '94045404957744', // 45 start_data
    '94045404959360', // 46 end_data
    '94046366892032', // 47 start_brk
    '140732745906716', // 48 arg_start
    '140732745906736', // 49 arg_end
    '140732745906736', // 50 env_start
    '140732745908203', // 51 env_end
    '0', // 52 exit_code
  ];
  expect(after).toHaveLength(50);
  return `${pid} (${comm}) ${after.join(' ')}\n`;
}

/** /proc/self/stat of `cat`, copied from a Linux 6.18 machine. */
const REAL_STAT =
  '26828 (cat) R 26826 26826 21898 0 -1 4194304 97 0 0 0 0 0 0 0 20 0 1 0 287628 3133440 412 ' +
  '18446744073709551615 94045404921856 94045404941737 140732745902896 0 0 0 0 0 0 0 0 0 17 0 0 ' +
  '0 0 0 0 94045404957744 94045404959360 94046366892032 140732745906716 140732745906736 ' +
  '140732745906736 140732745908203 0\n';

describe('parseStartTime', () => {
  it('reads field 22 of a real line', () => {
    expect(parseStartTime(REAL_STAT)).toBe('287628');
  });

  it('reads field 22 of a built 52-field line', () => {
    const line = statLine(1234, 'hsmint-demo', '987654');
    expect(line.trim().split(' ')).toHaveLength(52);
    expect(parseStartTime(line)).toBe('987654');
  });

  it('reads past a command name with spaces and parentheses', () => {
    expect(parseStartTime(statLine(1234, 'my (odd) name', '987654'))).toBe('987654');
  });

  it('is not fooled by a command name that imitates the fields after it', () => {
    // A process may call itself anything (prctl PR_SET_NAME), ")" and digits included.
    expect(parseStartTime(statLine(1234, ') S 1 2 3 4 5 (', '555'))).toBe('555');
    expect(parseStartTime(statLine(1234, '))', '556'))).toBe('556');
    expect(parseStartTime(statLine(1234, '', '557'))).toBe('557');
  });

  it('keeps a start time too large for a double exactly, as text', () => {
    expect(parseStartTime(statLine(1, 'init', '18446744073709551615'))).toBe(
      '18446744073709551615',
    );
  });

  it('reads a line without the final newline', () => {
    expect(parseStartTime(REAL_STAT.trimEnd())).toBe('287628');
  });

  it.each([
    ['an empty text', ''],
    ['a line without parentheses', '1234 cat R 1 2 3'],
    ['a line cut before field 22', '1234 (cat) S 1 1234 1234 0 -1 4194560 1520 0 0 0'],
    ['a start time that is not a number', statLine(1, 'x', 'abc')],
    ['a negative start time', statLine(1, 'x', '-5')],
    ['an empty start time', statLine(1, 'x', '')],
  ])('answers undefined for %s', (_what, stat) => {
    expect(parseStartTime(stat)).toBeUndefined();
  });
});

/** /proc/PID/status of a service, after one from a Linux 6.18 machine. */
function statusText(ids: { uid: string; gid: string; groups: string }): string {
  return [
    'Name:\tnode',
    'Umask:\t0022',
    'State:\tS (sleeping)',
    'Tgid:\t4242',
    'Ngid:\t0',
    'Pid:\t4242',
    'PPid:\t1',
    'TracerPid:\t0',
    `Uid:\t${ids.uid}`,
    `Gid:\t${ids.gid}`,
    'FDSize:\t64',
    `Groups:\t${ids.groups}`,
    'NStgid:\t4242',
    'NSpid:\t4242',
    'NSpgid:\t4242',
    'NSsid:\t4242',
    'Kthread:\t0',
    'VmPeak:\t 1043512 kB',
    'VmSize:\t 1043512 kB',
    'Threads:\t11',
    'SigQ:\t0/96364',
    'CapEff:\t0000000000000000',
    'NoNewPrivs:\t1',
    'Seccomp:\t2',
    'Cpus_allowed_list:\t0-1',
    'voluntary_ctxt_switches:\t120',
    'nonvoluntary_ctxt_switches:\t3',
    '',
  ].join('\n');
}

describe('parseStatus', () => {
  it('reads the four uids and gids and the supplementary groups', () => {
    const status = statusText({
      uid: '1000\t1000\t1000\t1000',
      gid: '1000\t1000\t1000\t1000',
      groups: '4 24 27 1500 ',
    });
    expect(parseStatus(status)).toEqual({
      uids: [1000, 1000, 1000, 1000],
      gids: [1000, 1000, 1000, 1000],
      groups: [4, 24, 27, 1500],
    });
  });

  it('keeps real, effective, saved and filesystem ids apart', () => {
    const status = statusText({
      uid: '1000\t0\t0\t0',
      gid: '1000\t1000\t50\t1000',
      groups: '1000',
    });
    expect(parseStatus(status)).toEqual({
      uids: [1000, 0, 0, 0],
      gids: [1000, 1000, 50, 1000],
      groups: [1000],
    });
  });

  it('reads an empty Groups line (the kernel writes a tab and a space) as no groups', () => {
    const status = statusText({ uid: '0\t0\t0\t0', gid: '0\t0\t0\t0', groups: ' ' });
    expect(status).toContain('Groups:\t \n');
    expect(parseStatus(status)?.groups).toEqual([]);
  });

  it('reads Groups with nothing after the colon as no groups', () => {
    const status = statusText({ uid: '0\t0\t0\t0', gid: '0\t0\t0\t0', groups: '' });
    expect(parseStatus(status)?.groups).toEqual([]);
  });

  it('does not take the Gid line for Groups or the other way round', () => {
    const status = statusText({ uid: '5\t5\t5\t5', gid: '6\t6\t6\t6', groups: '7' });
    expect(parseStatus(status)).toEqual({ uids: [5, 5, 5, 5], gids: [6, 6, 6, 6], groups: [7] });
  });

  it.each([
    ['without Uid', (text: string) => text.replace(/^Uid:.*\n/m, '')],
    ['without Gid', (text: string) => text.replace(/^Gid:.*\n/m, '')],
    ['without Groups', (text: string) => text.replace(/^Groups:.*\n/m, '')],
    ['with a uid that is not a number', (text: string) => text.replace('Uid:\t1000', 'Uid:\tx')],
    ['with a negative gid', (text: string) => text.replace('Gid:\t1000', 'Gid:\t-1')],
    ['with a fractional group', (text: string) => text.replace('Groups:\t27', 'Groups:\t2.5')],
  ])('answers undefined for a status %s', (_what, edit) => {
    const status = statusText({
      uid: '1000\t1000\t1000\t1000',
      gid: '1000\t1000\t1000\t1000',
      groups: '27',
    });
    expect(parseStatus(status)).toBeDefined();
    expect(parseStatus(edit(status))).toBeUndefined();
  });

  it('answers undefined for an empty text', () => {
    expect(parseStatus('')).toBeUndefined();
  });
});

/** A whole cgroup v1 (hybrid) file, as a system service sees it. */
const V1_SERVICE = [
  '12:pids:/system.slice/foo.service',
  '11:memory:/system.slice/foo.service',
  '10:devices:/system.slice/foo.service',
  '9:cpu,cpuacct:/system.slice/foo.service',
  '8:blkio:/system.slice/foo.service',
  '7:freezer:/',
  '6:net_cls,net_prio:/',
  '5:perf_event:/',
  '4:cpuset:/',
  '3:hugetlb:/',
  '2:rdma:/',
  '1:name=systemd:/system.slice/foo.service',
  '0::/',
  '',
].join('\n');

/** The same hierarchy, from a shell in a login session. */
const V1_SESSION = [
  '12:pids:/user.slice/user-0.slice/session-3.scope',
  '11:memory:/user.slice/user-0.slice/session-3.scope',
  '7:freezer:/',
  '1:name=systemd:/user.slice/user-0.slice/session-3.scope',
  '0::/user.slice/user-0.slice/session-3.scope',
  '',
].join('\n');

describe('parseCgroupUnit', () => {
  it.each([
    [
      'v2, a system service',
      '0::/system.slice/hsmint-demo.service\n',
      { path: '/system.slice/hsmint-demo.service', unit: 'hsmint-demo.service' },
    ],
    [
      'v2, a cgroup a system service made below its own',
      '0::/system.slice/foo.service/sub\n',
      { path: '/system.slice/foo.service/sub', unit: 'foo.service' },
    ],
    [
      'a full v1 file: the name=systemd hierarchy, since 0:: is the root',
      V1_SERVICE,
      { path: '/system.slice/foo.service', unit: 'foo.service' },
    ],
    [
      'a v1 file without a 0:: line',
      '3:cpu:/\n1:name=systemd:/system.slice/bar.service\n',
      { path: '/system.slice/bar.service', unit: 'bar.service' },
    ],
    [
      'a file without the final newline',
      '0::/system.slice/foo.service',
      { path: '/system.slice/foo.service', unit: 'foo.service' },
    ],
  ])('finds the unit in %s', (_what, cgroup, expected) => {
    expect(parseCgroupUnit(cgroup)).toEqual(expected);
  });

  it.each([
    [
      // Below user@UID.service the user owns the subtree and may name cgroups anything.
      'v2, a user service named like a system one',
      '0::/user.slice/user-1000.slice/user@1000.service/app.slice/evil.service\n',
      '/user.slice/user-1000.slice/user@1000.service/app.slice/evil.service',
    ],
    [
      'v2, a user path that mimics system.slice below it',
      '0::/user.slice/user-1000.slice/user@1000.service/system.slice/foo.service\n',
      '/user.slice/user-1000.slice/user@1000.service/system.slice/foo.service',
    ],
    [
      'v2, a scope (a container), not a service',
      '0::/system.slice/docker-abc.scope\n',
      '/system.slice/docker-abc.scope',
    ],
    ['v2, init.scope', '0::/init.scope\n', '/init.scope'],
    ['v2, system.slice itself', '0::/system.slice\n', '/system.slice'],
    [
      'v2, a name that is no unit name',
      '0::/system.slice/bad name.service\n',
      '/system.slice/bad name.service',
    ],
    [
      'v2, a service in another slice',
      '0::/machine.slice/foo.service\n',
      '/machine.slice/foo.service',
    ],
    [
      'v1, a login session',
      '1:name=systemd:/user.slice/user-0.slice/session-3.scope\n',
      '/user.slice/user-0.slice/session-3.scope',
    ],
    ['a hybrid file from a login session', V1_SESSION, '/user.slice/user-0.slice/session-3.scope'],
    ['v2, the root cgroup alone', '0::/\n', '/'],
  ])('finds no unit in %s', (_what, cgroup, path) => {
    const found = parseCgroupUnit(cgroup);
    expect(found).toEqual({ path });
    expect(found).not.toHaveProperty('unit');
  });

  it('prefers the unified hierarchy over name=systemd when it is not the root', () => {
    const cgroup = [
      '1:name=systemd:/system.slice/foo.service',
      '0::/user.slice/user-1000.slice/session-2.scope',
      '',
    ].join('\n');
    expect(parseCgroupUnit(cgroup)).toEqual({
      path: '/user.slice/user-1000.slice/session-2.scope',
    });
  });

  it.each([
    ['an empty file', ''],
    ['a file of blank lines', '\n\n'],
    ['v1 controllers without name=systemd or 0::', '4:memory:/system.slice/foo.service\n'],
  ])('answers undefined for %s', (_what, cgroup) => {
    expect(parseCgroupUnit(cgroup)).toBeUndefined();
  });
});

const PASSWD = [
  '# /etc/passwd: local accounts',
  'root:x:0:0:root:/root:/bin/bash',
  'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
  '',
  'svc:x:1000:1000:Service,,,:/home/svc:/bin/sh',
  '# a second account for uid 0, as some systems keep',
  'toor:x:0:0:Bourne-again Superuser:/root:/bin/sh',
  'hsmint:x:998:998::/nonexistent:/usr/sbin/nologin',
  'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
  '',
].join('\n');

const GROUP = [
  'root:x:0:',
  '# operators',
  'adm:x:4:syslog,svc',
  '',
  'admins:x:1500:alice,bob',
  'svc:x:1000:',
  'wheel:x:1500:',
  'hsmint-clients:x:997:svc',
  'nogroup:x:65534:',
].join('\n');

describe('parseIdNames', () => {
  it('maps uids to account names, skipping comments and blank lines', () => {
    const names = parseIdNames(PASSWD);
    expect(names.get(0)).toBe('root');
    expect(names.get(1)).toBe('daemon');
    expect(names.get(1000)).toBe('svc');
    expect(names.get(998)).toBe('hsmint');
    expect(names.get(65534)).toBe('nobody');
    expect([...names.values()].some((name) => name.startsWith('#'))).toBe(false);
    expect(names.size).toBe(5);
  });

  it('keeps the first account of a uid that appears twice', () => {
    expect(parseIdNames(PASSWD).get(0)).toBe('root');
  });

  it('maps gids to group names, the first of a duplicate gid winning', () => {
    const names = parseIdNames(GROUP);
    expect(names.get(0)).toBe('root');
    expect(names.get(4)).toBe('adm');
    expect(names.get(1500)).toBe('admins');
    expect(names.get(1000)).toBe('svc');
    expect(names.get(997)).toBe('hsmint-clients');
    expect(names.get(65534)).toBe('nogroup');
    expect(names.size).toBe(6);
  });

  it('answers nothing for an id that is not there', () => {
    expect(parseIdNames(PASSWD).get(4242)).toBeUndefined();
  });

  it('skips lines without an id field', () => {
    const names = parseIdNames('broken\nalso:broken\nsvc:x:1000:1000::/:/bin/sh\n');
    expect([...names.entries()]).toEqual([[1000, 'svc']]);
  });

  it('reads an empty text as no names', () => {
    expect(parseIdNames('').size).toBe(0);
  });
});

describe('parseCgroupUnit: nested slices and delegated sub-cgroups', () => {
  it.each([
    ['0::/system.slice/system-getty.slice/getty@tty1.service', 'getty@tty1.service'],
    [
      '1:name=systemd:/system.slice/system-postgresql.slice/postgresql@15-main.service\n0::/',
      'postgresql@15-main.service',
    ],
    ['0::/custom.slice/hsmint-client.service', 'hsmint-client.service'],
    ['0::/system.slice/foo.service/bar.service', 'foo.service'],
  ])('%s -> %s', (cgroup, unit) => {
    expect(parseCgroupUnit(cgroup)?.unit).toBe(unit);
  });

  it.each([
    '0::/machine.slice/machine-vm1.scope/payload/evil.service',
    '0::/user.slice/user-1000.slice/user@1000.service/evil.service',
    '0::/system.slice/system-getty.slice',
  ])('%s has no trusted unit', (cgroup) => {
    expect(parseCgroupUnit(cgroup)?.unit).toBeUndefined();
  });
});

describe('parseIdNames refuses ids that are not plain decimal', () => {
  it('never reads an empty, hex or padded id as a uid', () => {
    const names = parseIdNames(
      [
        '+::::::',
        'evil:x::0::/:/bin/sh',
        'hex:x:0x10:0::/:',
        'pad:x: 12:0::/:',
        'root:x:0:0::/root:/bin/sh',
      ].join('\n'),
    );
    expect(names.get(0)).toBe('root');
    expect(names.get(16)).toBeUndefined();
    expect(names.get(12)).toBeUndefined();
    expect([...names.values()]).toEqual(['root']);
  });
});
