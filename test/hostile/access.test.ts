/**
 * Issue 9, access: a caller of another uid without a rule, callers of allowed groups, and a
 * process whose pid is reused after it connected each get exactly what the policy says; the
 * socket and its folder are never writable by others; and a daemon refuses a socket path
 * another process serves, taking over only a socket nobody listens on.
 *
 * Everything runs as real processes against the built daemon on SoftHSM: other users through
 * setpriv, pid reuse through /proc/sys/kernel/ns_last_pid. Both need root, which CI has.
 */
import { spawn } from 'node:child_process';
import { realpathSync } from 'node:fs';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  readFile,
  readdir,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import {
  failedStart,
  makeToken,
  startDaemon,
  startFailure,
  useDaemon,
  type TestToken,
} from '../integration/support/harness.js';
import { listenOnPath } from '../../daemon/socket.js';
import { rejection } from '../support/codes.js';
import { asCaller, claimsOf, type Identity, type Step } from './support/access-callers.js';
import { pidReuse } from './support/access-pid-reuse.js';

const isRoot = process.getuid?.() === 0;

// Debian's fixed accounts: daemon 1, bin 2, sys 3, nobody 65534; groups operator 37, staff 50,
// users 100 (the socket's group, so every caller below may open the socket).
const USERS = 100;
/** No rule names uid 1, its group or `users`. */
const STRANGER: Identity = { uid: 1, gid: 1, groups: [USERS] };
/** `staff` held only as a supplementary group. */
const STAFF: Identity = { uid: 2, gid: USERS, groups: [50] };
/** `operator` held only as the primary group. */
const OPERATOR: Identity = { uid: 65534, gid: 37, groups: [USERS] };
/** In both `operator` (primary) and `staff` (supplementary): the first rule decides alone. */
const BOTH: Identity = { uid: 3, gid: 37, groups: [USERS, 50] };
/** bin without staff: matches only the exe rule, and only while running node. */
const BIN_ALONE: Identity = { uid: 2, gid: USERS, groups: [] };

const NODE = realpathSync(process.execPath);
const PYTHON = realpathSync('/usr/bin/python3');

/** Root (from softhsm init) is admin; three narrow rules for others, in this order. */
function policy(config: Record<string, any>): void {
  config['socket'] = { ...config['socket'], mode: '0660', group: 'users' };
  config['policy']['rules'].push(
    {
      name: 'operators',
      match: { group: 'operator' },
      subjects: ['ops:{user}'],
      audiences: ['ops'],
      scopes: ['read'],
      max_ttl: '2m',
      metrics: true,
    },
    {
      name: 'staff',
      match: { group: 'staff' },
      subjects: ['svc:{user}', 'batch:*'],
      audiences: ['api'],
      scopes: ['read', 'write'],
      claims: { tenant: ['t1'] },
      max_ttl: '10m',
    },
    {
      name: 'bin-tool',
      match: { uid: 2, exe: NODE },
      subjects: ['svc:bin-tool'],
      audiences: ['tools'],
      max_ttl: '1m',
      admin: true,
    },
  );
}

interface AuditRecord {
  event: string;
  [field: string]: unknown;
}

/** Every record of a token's audit log, in order (a line still being written is left out). */
async function auditRecords(token: TestToken): Promise<AuditRecord[]> {
  const dir = join(token.dir, 'state', 'audit');
  const segments = (await readdir(dir)).filter((name) => name.endsWith('.jsonl')).sort();
  const records: AuditRecord[] = [];
  for (const segment of segments) {
    const lines = (await readFile(join(dir, segment), 'utf8')).split('\n');
    lines.pop(); // empty after the last newline, or the part of a line written so far
    for (const line of lines) records.push(JSON.parse(line) as AuditRecord);
  }
  return records;
}

/** Denial records are written without holding up the answer: wait until `count` are there. */
async function denials(
  token: TestToken,
  count: number,
  which: (record: AuditRecord) => boolean,
): Promise<AuditRecord[]> {
  let found: AuditRecord[] = [];
  await expect
    .poll(
      async () => {
        found = (await auditRecords(token)).filter((r) => r.event === 'deny' && which(r));
        return found.length;
      },
      { timeout: 5_000 },
    )
    .toBe(count);
  return found;
}

const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );

describe.runIf(isRoot)('access: every caller gets exactly what the policy says', () => {
  const env = useDaemon('ES256', policy);

  beforeAll(async () => {
    // The temp folder is 0700 root: open it to the socket's group only, never to others.
    await chown(env.token.dir, 0, USERS);
    await chmod(env.token.dir, 0o750);
  });

  it('refuses a caller of another uid without a rule on every granted route, and signs nothing for it', async () => {
    const owners = await env.daemon.client.mint({ aud: 'api' });
    const keysBefore = await env.daemon.client.keys();
    const impersonation = {
      'x-forwarded-user': 'root',
      'x-remote-user': 'root',
      'x-hsmint-uid': '0',
      forwarded: 'for=root',
    };
    const granted: Step[] = [
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api' }, headers: impersonation },
      {
        method: 'POST',
        path: '/v1/tokens:batch',
        body: { requests: [{ aud: 'api' }, { aud: 'ops' }, { aud: 'tools' }] },
      },
      { method: 'POST', path: '/v1/reload' },
      { method: 'GET', path: '/v1/keys' },
      { method: 'POST', path: '/v1/keys/rotate' },
      { method: 'POST', path: `/v1/keys/${owners.kid}/revoke` },
      { method: 'POST', path: '/v1/tokens/revoke', body: { jti: owners.jti } },
      { method: 'POST', path: '/v1/tokens/revoke', body: { token: owners.token } },
      { method: 'GET', path: '/v1/bundle' },
      { method: 'GET', path: '/v1/metrics' },
    ];
    const answers = await asCaller(STRANGER, env.token.socket, granted);

    const batch = answers.splice(2, 1)[0]!;
    for (const [index, answer] of answers.entries()) {
      expect({ index, status: answer.status, code: answer.body?.error?.code }).toEqual({
        index,
        status: 403,
        code: 'ERR_FORBIDDEN',
      });
      expect(JSON.stringify(answer.body)).not.toContain('eyJ'); // no token, in any field
    }
    // A batch is answered 200 with each mint's own answer (README, Socket API): all refused.
    expect(batch.status).toBe(200);
    expect(batch.body.results).toHaveLength(3);
    for (const result of batch.body.results) {
      expect(result.token).toBeUndefined();
      expect(result.error.code).toBe('ERR_FORBIDDEN');
    }

    // Nothing changed: same keys, the owner's token neither revoked nor its key.
    expect(await env.daemon.client.keys()).toEqual(keysBefore);
    expect((await env.daemon.client.verify(owners.token, { aud: 'api' })).valid).toBe(true);

    // Five mints asked (two single, three batched): five denials recorded, nothing minted.
    const denied = await denials(env.token, 5, (record) => record['uid'] === STRANGER.uid);
    for (const record of denied) expect(record).toMatchObject({ code: 'ERR_FORBIDDEN', gid: 1 });
    const records = await auditRecords(env.token);
    expect(records.filter((r) => r.event === 'mint' && r['uid'] === STRANGER.uid)).toEqual([]);
  });

  it('answers that caller on the public routes, and whoami names it as the kernel does', async () => {
    const owners = await env.daemon.client.mint({ aud: 'api' });
    const [verify, jwks, health, whoami, auditKeys] = await asCaller(STRANGER, env.token.socket, [
      { method: 'POST', path: '/v1/tokens/verify', body: { token: owners.token, aud: 'api' } },
      { method: 'GET', path: '/v1/jwks' },
      { method: 'GET', path: '/v1/health' },
      // Headers claiming another identity change nothing.
      { method: 'GET', path: '/v1/whoami', headers: { 'x-forwarded-user': 'root' } },
      { method: 'GET', path: '/v1/audit/keys' },
    ]);
    expect(verify).toMatchObject({ status: 200, body: { valid: true } });
    expect(jwks!.status).toBe(200);
    expect(jwks!.body.keys.map((key: { kid: string }) => key.kid)).toContain(owners.kid);
    expect(health).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect(whoami!.status).toBe(200);
    expect(whoami!.body).toMatchObject({
      caller: { uid: 1, gid: 1, user: 'daemon', group: 'daemon', verified: true },
      rule: null,
      grants: null,
    });
    expect(whoami!.body.caller.groups).toEqual(expect.arrayContaining(['daemon', 'users']));
    expect(auditKeys!.status).toBe(200);
    expect(auditKeys!.body.keys.length).toBeGreaterThan(0);
  });

  it('gives a caller of a supplementary group exactly its rule, and nothing of the others', async () => {
    const [whoami, within, ...beyond] = await asCaller(STAFF, env.token.socket, [
      { method: 'GET', path: '/v1/whoami' },
      {
        method: 'POST',
        path: '/v1/tokens',
        body: {
          aud: 'api',
          sub: 'batch:nightly',
          scope: ['read', 'write'],
          ttl: 600,
          claims: { tenant: 't1' },
        },
      },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops' } },
      // bin running node would match bin-tool too, but staff comes first and decides alone.
      { method: 'POST', path: '/v1/tokens', body: { aud: 'tools' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api', sub: 'ops:bin' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api', sub: 'svc:bin-tool' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api', scope: ['admin'] } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api', ttl: 601 } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api', claims: { tenant: 't2' } } },
      { method: 'GET', path: '/v1/metrics' },
      { method: 'GET', path: '/v1/keys' },
    ]);
    expect(whoami!.body.caller).toMatchObject({ uid: 2, gid: USERS, exe: NODE, verified: true });
    expect(whoami!.body.caller.groups).toEqual(expect.arrayContaining(['users', 'staff']));
    expect(whoami!.body.rule).toBe('staff');
    expect(whoami!.body.grants).toEqual({
      subjects: ['svc:bin'],
      subject_prefixes: ['batch:*'],
      default_subject: 'svc:bin',
      audiences: ['api'],
      scopes: ['read', 'write'],
      claims: { tenant: ['t1'] },
      max_ttl: 600,
      admin: false,
      metrics: false,
    });

    expect(within!.status).toBe(201);
    const claims = claimsOf(within!.body.token);
    expect(claims).toMatchObject({
      sub: 'batch:nightly',
      aud: 'api',
      scope: 'read write',
      tenant: 't1',
      azp: 'svc:bin',
      hsmint: { uid: 2, rule: 'staff' },
    });
    expect(claims['exp'] - claims['iat']).toBe(600);
    expect((await env.daemon.client.verify(within!.body.token, { aud: 'api' })).valid).toBe(true);

    expect(beyond.map((answer) => [answer.status, answer.body.error?.code])).toEqual([
      [403, 'ERR_AUDIENCE_NOT_ALLOWED'],
      [403, 'ERR_AUDIENCE_NOT_ALLOWED'],
      [403, 'ERR_SUBJECT_NOT_ALLOWED'],
      [403, 'ERR_SUBJECT_NOT_ALLOWED'],
      [403, 'ERR_SCOPE_NOT_ALLOWED'],
      [400, 'ERR_TTL_TOO_LONG'],
      [403, 'ERR_CLAIM_NOT_ALLOWED'],
      [403, 'ERR_FORBIDDEN'],
      [403, 'ERR_FORBIDDEN'],
    ]);
  });

  it('gives a caller of a primary group exactly its rule, metrics included and admin not', async () => {
    const [whoami, within, metrics, ...beyond] = await asCaller(OPERATOR, env.token.socket, [
      { method: 'GET', path: '/v1/whoami' },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', scope: ['read'], ttl: 120 } },
      { method: 'GET', path: '/v1/metrics' },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', scope: ['write'] } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', sub: 'batch:x' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', ttl: 121 } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', claims: { tenant: 't1' } } },
      { method: 'GET', path: '/v1/keys' },
      { method: 'POST', path: '/v1/keys/rotate' },
      { method: 'POST', path: '/v1/reload' },
    ]);
    expect(whoami!.body.caller).toMatchObject({
      uid: 65534,
      gid: 37,
      user: 'nobody',
      group: 'operator',
      verified: true,
    });
    expect(whoami!.body.rule).toBe('operators');
    expect(whoami!.body.grants).toEqual({
      subjects: ['ops:nobody'],
      subject_prefixes: [],
      default_subject: 'ops:nobody',
      audiences: ['ops'],
      scopes: ['read'],
      claims: {},
      max_ttl: 120,
      admin: false,
      metrics: true,
    });
    expect(within!.status).toBe(201);
    expect(claimsOf(within!.body.token)).toMatchObject({
      sub: 'ops:nobody',
      aud: 'ops',
      scope: 'read',
      hsmint: { uid: 65534, rule: 'operators' },
    });
    expect(metrics!.status).toBe(200);
    expect(metrics!.body).toContain('# TYPE');
    expect(beyond.map((answer) => [answer.status, answer.body.error?.code])).toEqual([
      [403, 'ERR_AUDIENCE_NOT_ALLOWED'],
      [403, 'ERR_SCOPE_NOT_ALLOWED'],
      [403, 'ERR_SUBJECT_NOT_ALLOWED'],
      [400, 'ERR_TTL_TOO_LONG'],
      [403, 'ERR_CLAIM_NOT_ALLOWED'],
      [403, 'ERR_FORBIDDEN'],
      [403, 'ERR_FORBIDDEN'],
      [403, 'ERR_FORBIDDEN'],
    ]);
  });

  it('gives a caller of two allowed groups the first matching rule, never the union', async () => {
    const [whoami, within, ...beyond] = await asCaller(BOTH, env.token.socket, [
      { method: 'GET', path: '/v1/whoami' },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'api' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: ['ops', 'api'] } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', sub: 'batch:x' } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', scope: ['write'] } },
      { method: 'POST', path: '/v1/tokens', body: { aud: 'ops', claims: { tenant: 't1' } } },
    ]);
    expect(whoami!.body.caller.groups).toEqual(
      expect.arrayContaining(['operator', 'users', 'staff']),
    );
    expect(whoami!.body.rule).toBe('operators');
    expect(within!.status).toBe(201);
    expect(claimsOf(within!.body.token)).toMatchObject({
      sub: 'ops:sys',
      hsmint: { uid: 3, rule: 'operators' },
    });
    expect(beyond.map((answer) => [answer.status, answer.body.error?.code])).toEqual([
      [403, 'ERR_AUDIENCE_NOT_ALLOWED'],
      [403, 'ERR_AUDIENCE_NOT_ALLOWED'],
      [403, 'ERR_SUBJECT_NOT_ALLOWED'],
      [403, 'ERR_SCOPE_NOT_ALLOWED'],
      [403, 'ERR_CLAIM_NOT_ALLOWED'],
    ]);
  });

  it('credits a connection whose process exited neither with its facts nor with those of the process that got its pid', async () => {
    const whoami: Step = { method: 'GET', path: '/v1/whoami' };
    const mark = (await auditRecords(env.token)).length;
    const report = await pidReuse({
      socket: env.token.socket,
      a: STAFF,
      b: BIN_ALONE,
      aSteps: [whoami, { method: 'POST', path: '/v1/tokens', body: { aud: 'api' } }],
      bSteps: [
        whoami,
        { method: 'POST', path: '/v1/tokens', body: { aud: 'tools' } },
        { method: 'POST', path: '/v1/tokens', body: { aud: 'api' } },
      ],
      cSteps: [
        whoami,
        { method: 'POST', path: '/v1/tokens', body: { aud: 'api' } },
        { method: 'POST', path: '/v1/tokens', body: { aud: 'tools' } },
        { method: 'GET', path: '/v1/keys' },
      ],
      attempts: 100,
    });
    const pid = report.a.pid;

    // A, while alive: verified, python, staff through its supplementary group.
    const [aWhoami, aMint] = report.a.answers;
    expect(aWhoami!.body.caller).toMatchObject({ pid, uid: 2, exe: PYTHON, verified: true });
    expect(aWhoami!.body.caller.groups).toContain('staff');
    expect(aWhoami!.body.rule).toBe('staff');
    expect(aMint!.status).toBe(201);

    // B, a new process on A's pid with the same uid, another exe and no staff, asking on its
    // own connection once C is done: its own grant, and nothing of A's.
    expect(report.b.pid).toBe(pid);
    const [bWhoami, bMint, bStaffs] = report.b.answers;
    expect(bWhoami!.body.caller).toEqual({
      pid,
      uid: 2,
      gid: USERS,
      user: 'bin',
      group: 'users',
      groups: ['users'],
      exe: NODE,
      verified: true,
    });
    expect(bWhoami!.body.rule).toBe('bin-tool');
    expect(bMint!.status).toBe(201);
    expect(claimsOf(bMint!.body.token).hsmint).toEqual({ uid: 2, rule: 'bin-tool' });
    expect(bStaffs!.body.error.code).toBe('ERR_AUDIENCE_NOT_ALLOWED');

    // C, on the connection A made, while B holds the pid: the kernel's facts and nothing else.
    expect(report.c.pid).not.toBe(pid);
    const [cWhoami, ...cRefused] = report.c.answers;
    expect(cWhoami!.body).toEqual({
      caller: {
        pid,
        uid: 2,
        gid: USERS,
        user: 'bin',
        group: 'users',
        groups: ['users'],
        verified: false,
      },
      rule: null,
      grants: null,
    });
    for (const answer of cRefused) expect(answer.body.error.code).toBe('ERR_FORBIDDEN');

    // The audit log agrees: A minted as python under staff, C's two refusals carry no exe at
    // all, and B minted as node under bin-tool and was refused staff's audience.
    const since = (record: AuditRecord) =>
      (record['seq'] as number) > mark && record['pid'] === pid;
    const refused = await denials(env.token, 3, since);
    expect(refused.map((record) => [record['uid'], record['code'], record['exe']])).toEqual([
      [2, 'ERR_FORBIDDEN', undefined],
      [2, 'ERR_FORBIDDEN', undefined],
      [2, 'ERR_AUDIENCE_NOT_ALLOWED', NODE],
    ]);
    const minted = (await auditRecords(env.token)).filter(
      (record) => record.event === 'mint' && since(record),
    );
    expect(minted.map((record) => [record['rule'], record['exe']])).toEqual([
      ['staff', PYTHON],
      ['bin-tool', NODE],
    ]);
  });

  it('credits a connection nothing of the process that got its pid before the daemon identified it', async () => {
    // The daemon is held stopped while A connects and exits and B takes its pid, as a busy
    // daemon's accept backlog would hold A's connection: /proc then describes B, not A.
    const whoami: Step = { method: 'GET', path: '/v1/whoami' };
    let report;
    try {
      report = await pidReuse({
        socket: env.token.socket,
        a: STAFF,
        b: BIN_ALONE,
        aSteps: [],
        bSteps: [whoami],
        cSteps: [whoami, { method: 'POST', path: '/v1/tokens', body: { aud: 'tools' } }],
        attempts: 100,
        frozen: env.daemon.process.pid!,
      });
    } finally {
      env.daemon.process.kill('SIGCONT');
    }
    const pid = report.a.pid;
    expect(report.b.pid).toBe(pid);
    expect(report.b.answers[0]!.body.rule).toBe('bin-tool');
    const [cWhoami, cMint] = report.c.answers;
    expect(cWhoami!.body).toEqual({
      caller: {
        pid,
        uid: 2,
        gid: USERS,
        user: 'bin',
        group: 'users',
        groups: ['users'],
        verified: false,
      },
      rule: null,
      grants: null,
    });
    expect(cMint!.body.error.code).toBe('ERR_FORBIDDEN');
  });

  it('keeps its socket at the configured mode and group, never writable by others', async () => {
    const socket = await stat(env.token.socket);
    expect(socket.isSocket()).toBe(true);
    expect(socket.mode & 0o7777).toBe(0o660);
    expect(socket.uid).toBe(0);
    expect(socket.gid).toBe(USERS);
    const folder = await stat(env.token.dir);
    expect(folder.mode & 0o002).toBe(0);
  });

  describe('a second daemon, and the socket path', () => {
    /** A token of its own: a daemon on it shares nothing with the one above but a path. */
    let spare: TestToken;
    let variant = 0;

    beforeAll(async () => {
      spare = await makeToken('ES256');
    });
    afterAll(async () => {
      await spare?.cleanup();
    });

    /** The spare token's configuration with another socket, written to a file of its own. */
    async function spareConfig(socket: Record<string, unknown>): Promise<string> {
      const document = parse(await readFile(spare.config, 'utf8')) as Record<string, any>;
      document['socket'] = { ...document['socket'], ...socket };
      const path = join(spare.dir, `variant-${++variant}.yaml`);
      await writeFile(path, stringify(document), { mode: 0o600 });
      return path;
    }

    it('refuses to start on the path the first daemon serves, and the first serves on as before', async () => {
      const before = await stat(env.token.socket);
      const second = await failedStart(await spareConfig({ path: env.token.socket }));
      expect(second.code).toBe(1);
      expect(startFailure(second.lines)?.['code']).toBe('ERR_SOCKET_IN_USE');

      const after = await stat(env.token.socket);
      expect([after.ino, after.mode, after.gid]).toEqual([before.ino, before.mode, before.gid]);
      const minted = await env.daemon.client.mint({ aud: 'api' });
      expect((await env.daemon.client.verify(minted.token, { aud: 'api' })).valid).toBe(true);
      expect((await env.daemon.client.health()).status).toBe('ok');
    });

    it('refuses to start on the same configuration without touching the audit log of the first', async () => {
      const second = await failedStart(env.token.config);
      expect(second.code).toBe(1);
      expect(startFailure(second.lines)?.['code']).toBe('ERR_SOCKET_IN_USE');
      // The first daemon writes its log at its own offsets: a record the second appended
      // would be overwritten, or leave a torn line behind, at the first daemon's next write.
      expect(
        (await auditRecords(env.token)).filter((r) => r.event === 'daemon.start'),
      ).toHaveLength(1);
      await env.daemon.client.mint({ aud: 'api' });
      const records = await auditRecords(env.token);
      expect(records.map((record) => record['seq'])).toEqual(records.map((_, index) => index + 1));
    });

    it('makes its socket with the configured mode, and its folder private, under umask 000', async () => {
      const path = join(spare.dir, 'run', 'hsmint', 'hsmint.sock');
      const config = await spareConfig({ path, mode: '0660', group: 'users' });
      const daemon = await startDaemon(
        { config, socket: path },
        { wrapper: ['sh', '-c', 'umask 000 && exec "$@"', 'sh'] },
      );
      try {
        const socket = await stat(path);
        expect(socket.mode & 0o7777).toBe(0o660);
        expect(socket.gid).toBe(USERS);
        for (const folder of [join(spare.dir, 'run'), join(spare.dir, 'run', 'hsmint')])
          expect((await stat(folder)).mode & 0o7777).toBe(0o750);
        expect((await daemon.client.health()).status).toBe('ok');
      } finally {
        await daemon.stop();
      }
    });

    it('takes over a stale socket nobody listens on, even one another user left open to all', async () => {
      const path = join(spare.dir, 'stale.sock');
      // Bound and never listened on: a connect is refused, as for a daemon killed with -9.
      const bind = `import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])`;
      await new Promise((resolve, reject) =>
        spawn('/usr/bin/python3', ['-c', bind, path], { stdio: 'inherit' })
          .once('exit', resolve)
          .once('error', reject),
      );
      await chown(path, 65534, 65534);
      await chmod(path, 0o666);
      const stale = await stat(path);
      expect([stale.isSocket(), stale.mode & 0o7777, stale.uid]).toEqual([true, 0o666, 65534]);

      const daemon = await startDaemon({ config: await spareConfig({ path }), socket: path });
      try {
        // A socket of its own (the inode number may be reused, so owner and mode tell).
        const taken = await stat(path);
        expect(taken.isSocket()).toBe(true);
        expect([taken.mode & 0o7777, taken.uid, taken.gid]).toEqual([0o600, 0, 0]);
        expect((await daemon.client.mint({ aud: 'api' })).token).toBeTruthy();
      } finally {
        await daemon.stop();
      }
    });

    it('refuses a socket in a world-writable folder, and makes no socket there', async () => {
      const open = join(spare.dir, 'open');
      await mkdir(open);
      await chmod(open, 0o777);
      const path = join(open, 'hsmint.sock');
      const result = await failedStart(await spareConfig({ path }));
      expect(result.code).toBe(1);
      expect(startFailure(result.lines)?.['code']).toBe('ERR_SOCKET_PATH_INVALID');
      expect(await exists(path)).toBe(false);
    });

    /**
     * The rest of the folder rules, on listenOnPath itself: each refusal is the same start-up
     * failure as above, without a token opened for nothing.
     */
    it.each([
      ['a folder below a world-writable one', 'above/inner', 0o777, 0],
      ['a folder another user owns', 'theirs', 0o750, 65534],
      ['a sticky world-writable folder another user owns', 'their-tmp', 0o1777, 65534],
      ['a symlink to a folder below a world-writable one', 'link-above/inner', 0o777, 0],
    ])('refuses a socket in %s, and makes no socket there', async (_case, folder, mode, owner) => {
      const [top, inner] = folder.split('/') as [string, string | undefined];
      await mkdir(join(spare.dir, folder), { recursive: true });
      await chmod(join(spare.dir, top), mode);
      await chown(join(spare.dir, top), owner, owner);
      let dir = join(spare.dir, folder);
      if (top.startsWith('link-')) {
        dir = join(spare.dir, `via-${top}`);
        await symlink(join(spare.dir, top, inner!), dir);
      }
      const server = createHttpServer();
      const error = await rejection(listenOnPath(server, join(dir, 'hsmint.sock'), 0o660));
      expect(error.code).toBe('ERR_SOCKET_PATH_INVALID');
      expect(server.listening).toBe(false);
      expect(await exists(join(spare.dir, folder, 'hsmint.sock'))).toBe(false);
    });

    it('refuses a symlink planted at the socket path, even to a live socket, and leaves it', async () => {
      const elsewhere = join(spare.dir, 'elsewhere.sock');
      const listener: Server = createServer((connection) => connection.destroy());
      await new Promise<void>((resolve) => listener.listen(elsewhere, resolve));
      const path = join(spare.dir, 'planted.sock');
      await symlink(elsewhere, path);
      const server = createHttpServer();
      try {
        const error = await rejection(listenOnPath(server, path, 0o660));
        expect(error.code).toBe('ERR_SOCKET_PATH_INVALID');
        expect(server.listening).toBe(false);
        expect((await lstat(path)).isSymbolicLink()).toBe(true);
        expect(listener.listening).toBe(true);
      } finally {
        await new Promise((resolve) => listener.close(resolve));
        await rm(path, { force: true });
      }
    });

    it('accepts a sticky world-writable folder root owns, like /tmp', async () => {
      const shared = join(spare.dir, 'shared-tmp');
      await mkdir(shared);
      await chmod(shared, 0o1777);
      const server = createHttpServer();
      await listenOnPath(server, join(shared, 'hsmint.sock'), 0o660);
      try {
        expect((await stat(join(shared, 'hsmint.sock'))).mode & 0o7777).toBe(0o660);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    });

    it('refuses socket modes that let others in, before opening anything', async () => {
      const modes = ['0666', '0604'];
      const results = await Promise.all(
        modes.map(async (mode) => {
          const path = join(spare.dir, `mode-${mode}.sock`);
          const result = await failedStart(await spareConfig({ path, mode }));
          const failure = startFailure(result.lines);
          return [
            mode,
            result.code,
            failure?.['code'],
            String(failure?.['msg']),
            await exists(path),
          ];
        }),
      );
      for (const [mode, code, error, message, made] of results) {
        expect([mode, code, error, made]).toEqual([mode, 1, 'ERR_CONFIG_INVALID', false]);
        expect(message).toContain('socket.mode');
      }
    });
  });
});
