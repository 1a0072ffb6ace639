import { X509Certificate } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { jwtVerify } from 'jose';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fromPem } from '../../core/ca/certificates.js';
import { verifyWithRoot } from '../../core/ca/verify-token.js';
import {
  hsmint,
  makeToken,
  startDaemon,
  type RunningDaemon,
  type TestToken,
} from './support/harness.js';

/** `hsmint ca init` on a token; returns the CA key id and the root certificate's path. */
async function caInit(
  token: TestToken,
  name: string,
): Promise<{ kid: string; certificate: string }> {
  const certificate = join(token.dir, `${name}.pem`);
  const result = await hsmint([
    'ca',
    'init',
    '--config',
    token.config,
    '--out',
    certificate,
    '--subject',
    `CN=${name}`,
  ]);
  expect(result.code, result.stderr).toBe(0);
  return { kid: JSON.parse(result.stdout).kid, certificate };
}

const headerOf = (token: string) =>
  JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString());

describe('the internal CA, online on the daemon token', () => {
  let token: TestToken;
  let other: TestToken;
  let daemon: RunningDaemon;
  let otherDaemon: RunningDaemon;
  let ca: { kid: string; certificate: string };
  let otherCa: { kid: string; certificate: string };

  beforeAll(async () => {
    token = await makeToken('ES256');
    other = await makeToken('EdDSA');
    ca = await caInit(token, 'root');
    otherCa = await caInit(other, 'stranger');
    const withCa = (certificate: string, kid: string) => async (target: TestToken) => {
      const { parse, stringify } = await import('yaml');
      const { writeFile } = await import('node:fs/promises');
      const document = parse(await readFile(target.config, 'utf8'));
      document.ca = { certificate, key: kid };
      document.tokens.embed_x5c = true;
      await writeFile(target.config, stringify(document), { mode: 0o600 });
    };
    await withCa(ca.certificate, ca.kid)(token);
    await withCa(otherCa.certificate, otherCa.kid)(other);
    daemon = await startDaemon(token);
    otherDaemon = await startDaemon(other);
  });
  afterAll(async () => {
    await daemon?.stop();
    await otherDaemon?.stop();
    await token?.cleanup();
    await other?.cleanup();
  });

  it('certifies every key: the JWKS carries x5c, and tokens carry their chain', async () => {
    const jwks = await daemon.client.jwks();
    for (const key of jwks.keys) expect((key as { x5c?: string[] }).x5c).toHaveLength(2);
    const minted = await daemon.client.mint({ aud: 'api' });
    expect(headerOf(minted.token).x5c).toHaveLength(2);
  });

  it('lets a verifier that pins only the root accept tokens from keys it never saw', async () => {
    const minted = await daemon.client.mint({ aud: 'api' });
    const offline = await hsmint([
      'verify',
      minted.token,
      '--root',
      ca.certificate,
      '--aud',
      'api',
      '--iss',
      'urn:hsmint:test',
    ]);
    expect(offline.code, offline.stdout).toBe(0);
    // After an emergency rotation the new key is certified too, and still needs nothing but the root.
    await daemon.client.rotateKeys();
    const rotated = await daemon.client.mint({ aud: 'api' });
    expect(rotated.kid).not.toBe(minted.kid);
    const root = fromPem(await readFile(ca.certificate, 'utf8'), 'CERTIFICATE');
    const result = await verifyWithRoot(rotated.token, { root, audience: 'api' });
    expect(result.valid).toBe(true);
  });

  it('verifies with an independent verifier: node X509 for the chain, jose for the token', async () => {
    const minted = await daemon.client.mint({ aud: 'api' });
    const [leafB64, rootB64] = headerOf(minted.token).x5c as string[];
    const pinned = new X509Certificate(await readFile(ca.certificate));
    const leaf = new X509Certificate(Buffer.from(leafB64!, 'base64'));
    // The chain's root is the pinned one, and the leaf was signed by it.
    expect(new X509Certificate(Buffer.from(rootB64!, 'base64')).fingerprint256).toBe(
      pinned.fingerprint256,
    );
    expect(leaf.checkIssued(pinned)).toBe(true);
    expect(leaf.verify(pinned.publicKey)).toBe(true);
    expect(leaf.subject).toBe(`CN=${minted.kid}`);
    const { payload } = await jwtVerify(minted.token, leaf.publicKey, {
      algorithms: ['ES256'],
      audience: 'api',
    });
    expect(payload.jti).toBe(minted.jti);
  });

  it('rejects keys that another CA certified, and tokens without a chain', async () => {
    const foreign = await otherDaemon.client.mint({ aud: 'api' });
    const root = fromPem(await readFile(ca.certificate, 'utf8'), 'CERTIFICATE');
    const refused = await verifyWithRoot(foreign.token, { root });
    expect(refused.valid ? 'valid' : refused.error.code).toBe('ERR_TOKEN_KID_UNKNOWN');
    const cli = await hsmint(['verify', foreign.token, '--root', ca.certificate]);
    expect(cli.code).toBe(1);
    // Our own token against the other root is refused as well.
    const ours = await daemon.client.mint({ aud: 'api' });
    expect((await hsmint(['verify', ours.token, '--root', otherCa.certificate])).code).toBe(1);
    // A token whose header chain is swapped for the other CA's fails the kid check.
    const swapped = { ...headerOf(ours.token), x5c: headerOf(foreign.token).x5c };
    const forged = `${Buffer.from(JSON.stringify(swapped)).toString('base64url')}.${ours.token.split('.').slice(1).join('.')}`;
    expect((await verifyWithRoot(forged, { root })).valid).toBe(false);
  });

  it('exports bundles whose versions only grow, and refuses a rollback', async () => {
    const state = join(token.dir, 'bundle-state.json');
    const first = join(token.dir, 'bundle-1.jws');
    const second = join(token.dir, 'bundle-2.jws');
    expect(
      (await hsmint(['--socket', token.socket, 'bundle', 'export', '--out', first])).code,
    ).toBe(0);
    expect(
      (await hsmint(['--socket', token.socket, 'bundle', 'export', '--out', second])).code,
    ).toBe(0);

    const accepted = await hsmint([
      'bundle',
      'verify',
      first,
      '--root',
      ca.certificate,
      '--state',
      state,
    ]);
    expect(accepted.code, accepted.stderr).toBe(0);
    const newer = await hsmint([
      'bundle',
      'verify',
      second,
      '--root',
      ca.certificate,
      '--state',
      state,
    ]);
    expect(newer.code, newer.stderr).toBe(0);
    expect(JSON.parse(newer.stdout).version).toBeGreaterThan(JSON.parse(accepted.stdout).version);
    expect(JSON.parse(newer.stdout).keys).toEqual(
      (await daemon.client.jwks()).keys.map((key) => key.kid),
    );

    // The bundle also carries the audit keys: the log verifies across the gap from it alone.
    const auditKeys = join(token.dir, 'bundle-audit-keys.json');
    const withKeys = await hsmint([
      'bundle',
      'verify',
      second,
      '--root',
      ca.certificate,
      '--state',
      join(token.dir, 'fresh-state.json'),
      '--audit-keys-out',
      auditKeys,
    ]);
    expect(withKeys.code, withKeys.stderr).toBe(0);
    const audited = await hsmint([
      'audit',
      'verify',
      join(token.dir, 'state', 'audit'),
      '--keys',
      auditKeys,
    ]);
    expect(audited.code, audited.stdout).toBe(0);

    const rollback = await hsmint([
      'bundle',
      'verify',
      first,
      '--root',
      ca.certificate,
      '--state',
      state,
    ]);
    expect(rollback.code).toBe(2);
    expect(JSON.parse(rollback.stderr).error.code).toBe('ERR_BUNDLE_ROLLBACK');
    const stranger = await hsmint([
      'bundle',
      'verify',
      second,
      '--root',
      otherCa.certificate,
      '--state',
      join(token.dir, 'other-state.json'),
    ]);
    expect(stranger.code).toBe(2);
  });
});

describe('the internal CA kept offline', () => {
  let token: TestToken;
  let caToken: TestToken;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    caToken = await makeToken('ES256');
    token = await makeToken('ES384');
  });
  afterAll(async () => {
    await daemon?.stop();
    await token?.cleanup();
    await caToken?.cleanup();
  });

  it('writes a CSR for each key, and takes the certificate signed across the air gap', async () => {
    // The CA key lives on another token; the daemon only knows the root certificate.
    const ca = await caInit(caToken, 'offline-root');
    const { parse, stringify } = await import('yaml');
    const { writeFile } = await import('node:fs/promises');
    const document = parse(await readFile(token.config, 'utf8'));
    document.ca = { certificate: ca.certificate };
    await writeFile(token.config, stringify(document), { mode: 0o600 });
    daemon = await startDaemon(token);

    const certs = join(token.dir, 'state', 'certs');
    await expect
      .poll(async () => (await readdir(certs)).filter((name) => name.endsWith('.csr.pem')).length)
      .toBeGreaterThan(0);
    expect(((await daemon.client.jwks()).keys[0] as { x5c?: string[] }).x5c).toBeUndefined();
    await expect(daemon.client.bundle()).rejects.toMatchObject({ code: 'ERR_CA_NOT_READY' });

    for (const request of (await readdir(certs)).filter((name) => name.endsWith('.csr.pem'))) {
      const kid = request.replace('.csr.pem', '');
      const signed = await hsmint([
        'ca',
        'sign-csr',
        '--config',
        caToken.config,
        '--ca-cert',
        ca.certificate,
        '--ca-key',
        ca.kid,
        '--in',
        join(certs, request),
        '--out',
        join(certs, `${kid}.pem`),
      ]);
      expect(signed.code, signed.stderr).toBe(0);
    }
    expect((await hsmint(['--socket', token.socket, 'reload'])).code).toBe(0);
    const jwks = await daemon.client.jwks();
    for (const key of jwks.keys) expect((key as { x5c?: string[] }).x5c).toHaveLength(2);
    expect((await daemon.client.bundle()).version).toBeGreaterThan(0);
  });
});
