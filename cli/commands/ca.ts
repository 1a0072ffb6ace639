import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { Command } from 'commander';
import { configPath, loadConfig } from '../../core/config.js';
import {
  createRootCertificate,
  fromPem,
  signKeyRequest,
  toPem,
} from '../../core/ca/certificates.js';
import { signerFor } from '../../core/ca/signer.js';
import { HsmintError } from '../../core/errors.js';
import { existsSync } from 'node:fs';
import { ALGORITHMS, isAlgorithm, type Algorithm } from '../../core/keys/algorithms.js';
import { openKeyStore } from '../../core/open.js';
import { run, type CliContext } from '../context.js';
import { EXIT, printJson, wantsJson } from '../output.js';

const DAY_MS = 86_400_000;
const CONFIG_HELP = 'hsmint.yaml naming the token that holds (or will hold) the CA key';

function days(value: unknown, fallback: number): number {
  const parsed = value === undefined ? fallback : Number(value);
  if (!Number.isInteger(parsed) || parsed < 1 || parsed > 36500)
    throw new HsmintError('ERR_USAGE', '--days takes a whole number of days');
  return parsed;
}

/** Opens the CA keys on the token of `configFile`; the caller closes the store. */
async function caKeys(configFile: string | undefined, alg?: Algorithm) {
  const config = loadConfig(configPath(configFile));
  // The token must offer the CA key's mechanisms, not only the signing keys' ones.
  const { caStore } = await openKeyStore(
    alg ? { ...config, keys: { ...config.keys, algorithm: alg } } : config,
  );
  return caStore;
}

/** `hsmint ca`: the internal CA that lets offline verifiers trust keys they have never seen. */
export function caCommand(context: CliContext): Command {
  const ca = new Command('ca').description(
    'the internal CA: its key stays on its token (online, or offline on a YubiKey or in a safe)',
  );
  ca.command('init')
    .description('generate a CA key on the token and write its self-signed root certificate')
    .requiredOption('--out <file>', 'where to write the root certificate (PEM)')
    .option('--config <file>', CONFIG_HELP)
    .option('--alg <alg>', `CA key algorithm: ${ALGORITHMS.join(', ')}`, 'ES256')
    .option('--subject <dn>', 'the CA name', 'CN=hsmint internal root CA')
    .option('--days <n>', 'validity in days', '3650')
    .action(
      run(context, async (options) => {
        const alg = options['alg'];
        if (!isAlgorithm(alg))
          throw new HsmintError('ERR_USAGE', `--alg must be one of ${ALGORITHMS.join(', ')}`);
        const out = options['out'] as string;
        // Checked before the key is made, so a refused --out never leaves an orphan CA key.
        if (existsSync(out))
          throw new HsmintError('ERR_USAGE', `${out} exists; choose another --out`);
        const store = await caKeys(options['config'] as string | undefined, alg);
        try {
          const key = await store.generate(alg);
          const now = Date.now();
          const root = await createRootCertificate({
            signer: signerFor(store, key),
            subject: options['subject'] as string,
            notBefore: new Date(now - 60_000),
            notAfter: new Date(now + days(options['days'], 3650) * DAY_MS),
          });
          await writeFile(options['out'] as string, toPem(root, 'CERTIFICATE'), {
            mode: 0o644,
            flag: 'wx',
          });
          const summary = {
            kid: key.kid,
            alg,
            label: key.label,
            certificate: options['out'],
            fingerprint256: new X509Certificate(root).fingerprint256,
          };
          if (wantsJson(context.io, options)) printJson(context.io, summary);
          else {
            context.io.stdout.write(
              [
                `CA key ${key.kid} (${alg}, ${key.label}) on the token; root certificate in ${summary.certificate}`,
                `SHA-256 fingerprint ${summary.fingerprint256}`,
                'Online CA: in hsmint.yaml set  ca: {certificate: <that file>, key: <the kid above>}',
                'Offline CA: set only ca.certificate; sign the CSRs the daemon writes with hsmint ca sign-csr',
                '',
              ].join('\n'),
            );
          }
          return EXIT.ok;
        } finally {
          await store.close();
        }
      }),
    );
  ca.command('sign-csr')
    .description('sign a key CSR with the CA key (across the air gap, by file)')
    .requiredOption('--in <file>', 'the CSR (PEM), e.g. KID.csr.pem from keys.state_dir/certs')
    .requiredOption('--out <file>', 'where to write the certificate (PEM): KID.pem beside the CSR')
    .requiredOption('--ca-cert <file>', 'the CA certificate (PEM)')
    .requiredOption('--ca-key <kid>', 'the CA key on the token')
    .option('--config <file>', CONFIG_HELP)
    .option('--days <n>', 'validity in days (capped at the CA certificate)', '30')
    .action(
      run(context, async (options) => {
        const caCertificate = fromPem(
          await readFile(options['caCert'] as string, 'utf8'),
          'CERTIFICATE',
        );
        const csr = fromPem(await readFile(options['in'] as string, 'utf8'), 'CERTIFICATE REQUEST');
        const store = await caKeys(options['config'] as string | undefined);
        try {
          const key = (await store.list()).find((candidate) => candidate.kid === options['caKey']);
          if (!key)
            throw new HsmintError(
              'ERR_CA_INVALID',
              `no CA key ${String(options['caKey'])} on the token`,
            );
          const now = Date.now();
          const caEnd = new Date(new X509Certificate(caCertificate).validTo).getTime();
          const leaf = await signKeyRequest({
            caSigner: signerFor(store, key),
            caCertificate,
            csr,
            notBefore: new Date(now - 60_000),
            notAfter: new Date(Math.min(now + days(options['days'], 30) * DAY_MS, caEnd)),
          });
          await writeFile(options['out'] as string, toPem(leaf, 'CERTIFICATE'), { mode: 0o644 });
          const subject = new X509Certificate(leaf).subject;
          if (wantsJson(context.io, options))
            printJson(context.io, { certificate: options['out'], subject });
          else context.io.stdout.write(`signed ${subject} into ${String(options['out'])}\n`);
          return EXIT.ok;
        } finally {
          await store.close();
        }
      }),
    );
  return ca;
}
