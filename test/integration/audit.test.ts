import { execFileSync } from 'node:child_process';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAuditRecords } from '../../core/audit/read.js';
import { HsmintClient } from '../../core/client/index.js';
import {
  hsmint,
  makeToken,
  startDaemon,
  type RunningDaemon,
  type TestToken,
} from './support/harness.js';

const isRoot = process.getuid?.() === 0;

async function recordsOf(dir: string): Promise<Array<Record<string, unknown>>> {
  const records: Array<Record<string, unknown>> = [];
  for await (const record of readAuditRecords(dir)) records.push(record as Record<string, unknown>);
  return records;
}

describe('the audit log of a running daemon', () => {
  let token: TestToken;
  let daemon: RunningDaemon;
  let auditDir: string;
  let keysFile: string;

  beforeAll(async () => {
    token = await makeToken('ES256');
    daemon = await startDaemon(token);
    auditDir = join(token.dir, 'state', 'audit');
    keysFile = join(token.dir, 'audit-keys.json');
  });
  afterAll(async () => {
    await daemon?.stop();
    await token?.cleanup();
  });

  it('records every mint before answering it, and never a token or a PIN', async () => {
    const minted = await Promise.all(
      Array.from({ length: 40 }, () => daemon.client.mint({ aud: 'api' })),
    );
    await daemon.client.verify('not.a.token');
    const records = await recordsOf(auditDir);
    const mints = new Set(
      records.filter((record) => record['event'] === 'mint').map((record) => record['jti']),
    );
    for (const entry of minted) expect(mints.has(entry.jti)).toBe(true);
    const text = (
      await Promise.all(
        (await readdir(auditDir)).map((file) => readFile(join(auditDir, file), 'utf8')),
      )
    ).join('');
    const pin = (await readFile(token.pinFile, 'utf8')).trim();
    for (const entry of minted) expect(text).not.toContain(entry.token.split('.')[2]);
    expect(text).not.toContain(pin);
    expect(records.some((record) => record['event'] === 'daemon.start')).toBe(true);
    await expect
      .poll(async () =>
        (await recordsOf(auditDir)).some((record) => record['event'] === 'verify.fail'),
      )
      .toBe(true);
  });

  it('verifies offline from the audit public keys, and names the first bad record', async () => {
    expect(
      (await hsmint(['--socket', token.socket, 'audit', 'keys', '--out', keysFile])).code,
    ).toBe(0);
    const good = await hsmint(['audit', 'verify', auditDir, '--keys', keysFile]);
    expect(good.code, good.stdout).toBe(0);
    expect(JSON.parse(good.stdout)).toMatchObject({ valid: true });

    // A copy with one byte changed in the middle of a record.
    const copy = join(token.dir, 'audit-copy');
    await mkdir(copy);
    for (const file of await readdir(auditDir))
      await writeFile(join(copy, file), await readFile(join(auditDir, file)));
    // The first segment (the folder also holds the daemon's lock file).
    const [first] = (await readdir(copy)).filter((name) => name.startsWith('audit-')).sort();
    const bytes = await readFile(join(copy, first!));
    const at = bytes.indexOf('"event":"mint"') + 10;
    bytes[at] = bytes[at]! ^ 0x01;
    await writeFile(join(copy, first!), bytes);
    const bad = await hsmint(['audit', 'verify', copy, '--keys', keysFile]);
    expect(bad.code).toBe(1);
    const report = JSON.parse(bad.stdout);
    expect(report.valid).toBe(false);
    expect(report.error.code).toBe('ERR_AUDIT_CORRUPT');
    expect(report.at).toMatchObject({ file: first });
    expect(typeof report.at.seq).toBe('number');
  });

  it('tails records with filters', async () => {
    const tail = await hsmint(['audit', 'tail', auditDir, '--event', 'mint', '-n', '5']);
    expect(tail.code).toBe(0);
    const lines = tail.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    expect(lines).toHaveLength(5);
    expect(lines.every((line) => line.event === 'mint')).toBe(true);
  });
});

// A full disk needs a small tmpfs, which only root can mount; CI runs as root.
describe.runIf(isRoot)('a full audit disk', () => {
  let token: TestToken;
  let daemon: RunningDaemon;
  let mount: string;

  beforeAll(async () => {
    token = await makeToken('ES256');
    mount = join(token.dir, 'audit-disk');
    await mkdir(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', mount]);
    const { parse, stringify } = await import('yaml');
    const document = parse(await readFile(token.config, 'utf8'));
    document.audit = { dir: join(mount, 'audit') };
    await writeFile(token.config, stringify(document), { mode: 0o600 });
    daemon = await startDaemon(token);
  });
  afterAll(async () => {
    await daemon?.stop();
    execFileSync('umount', ['-l', mount]);
    await token?.cleanup();
  });

  it('refuses to mint and turns degraded while full, and recovers by itself when freed', async () => {
    expect((await daemon.client.mint({ aud: 'api' })).jti).toBeTruthy();
    // Fill the disk to the last byte.
    const filler = join(mount, 'filler');
    await writeFile(filler, Buffer.alloc(512 * 1024)).catch(() => undefined);
    // The segment's last page may still have room: mint until the log needs a new block.
    let refused: unknown;
    for (let i = 0; i < 200 && refused === undefined; i++) {
      await daemon.client.mint({ aud: 'api' }).catch((error: unknown) => (refused = error));
    }
    expect(refused).toMatchObject({ code: 'ERR_AUDIT_UNAVAILABLE' });
    const health = await daemon.client.health();
    expect(health.status).toBe('degraded');
    expect(health.reason).toMatch(/audit/);
    // Verification keeps working while the log is down.
    const earlier = await hsmint(['--socket', token.socket, 'status']);
    expect(earlier.code).toBe(1);

    await rm(filler);
    await expect
      .poll(async () => (await daemon.client.mint({ aud: 'api' }).catch(() => undefined))?.jti, {
        timeout: 10_000,
      })
      .toBeTruthy();
    expect((await daemon.client.health()).status).toBe('ok');
    expect(
      (
        await hsmint([
          '--socket',
          token.socket,
          'audit',
          'keys',
          '--out',
          join(token.dir, 'k.json'),
        ])
      ).code,
    ).toBe(0);
    const verified = await hsmint([
      'audit',
      'verify',
      join(mount, 'audit'),
      '--keys',
      join(token.dir, 'k.json'),
    ]);
    expect(verified.code, verified.stdout).toBe(0);
  });
});

describe('kill -9 under concurrent load', () => {
  let token: TestToken;

  beforeAll(async () => {
    token = await makeToken('ES256');
  });
  afterAll(async () => {
    await token?.cleanup();
  });

  it('keeps every acknowledged mint in a chain that verifies, 50 times over', async () => {
    const acknowledged = new Set<string>();
    let seed = 5;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let run = 0; run < 50; run++) {
      const daemon = await startDaemon(token);
      const client = new HsmintClient({ socketPath: token.socket });
      let stop = false;
      const workers = Array.from({ length: 8 }, async () => {
        while (!stop) {
          try {
            acknowledged.add((await client.mint({ aud: 'api' })).jti);
          } catch {
            return; // the daemon died under us: that mint was never acknowledged
          }
        }
      });
      await new Promise((resolve) => setTimeout(resolve, 20 + Math.floor(random() * 80)));
      const exited = new Promise((resolve) => daemon.process.once('exit', resolve));
      daemon.process.kill('SIGKILL');
      stop = true;
      await exited;
      await Promise.all(workers);
      client.close();
      daemon.client.close();
    }
    // One last start repairs a torn tail if the last kill left one, and seals nothing away.
    const daemon = await startDaemon(token);
    const keys = join(token.dir, 'audit-keys.json');
    expect((await hsmint(['--socket', token.socket, 'audit', 'keys', '--out', keys])).code).toBe(0);
    await daemon.stop();
    const auditDir = join(token.dir, 'state', 'audit');
    const verified = await hsmint(['audit', 'verify', auditDir, '--keys', keys, '--sealed']);
    expect(verified.code, verified.stdout).toBe(0);
    const records = await recordsOf(auditDir);
    const logged = new Set(
      records.filter((record) => record['event'] === 'mint').map((record) => record['jti']),
    );
    const missing = [...acknowledged].filter((jti) => !logged.has(jti));
    expect(acknowledged.size).toBeGreaterThan(100);
    expect(missing).toEqual([]);
    // Repairs are recorded, and only ever of a torn tail.
    const recoveries = records.filter((record) => record['event'] === 'audit.recover');
    expect(recoveries.length).toBeLessThanOrEqual(50);
    // 50 daemon starts take minutes on a loaded 2-core machine.
  }, 300_000);
});
