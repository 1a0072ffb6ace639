import { hostname } from 'node:os';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import { stringify } from 'yaml';
import { loadConfig } from '../../core/config.js';
import { HsmintError } from '../../core/errors.js';
import { ALGORITHMS, DEFAULT_ALGORITHM, isAlgorithm } from '../../core/keys/algorithms.js';
import { openKeyStore } from '../../core/open.js';
import { defaultTokenLabel, initSoftHsmToken } from '../../core/pkcs11/softhsm.js';
import { findModule, loadProfile } from '../../core/profiles.js';
import { run, type CliContext } from '../context.js';
import { EXIT, printJson, wantsJson } from '../output.js';

const collect = (value: string, previous: string[] = []) => [...previous, value];

/** `hsmint softhsm init`: a whole development set-up in one folder, nothing outside it touched. */
export function softhsmCommand(context: CliContext): Command {
  const softhsm = new Command('softhsm').description('SoftHSM helpers for development and CI');
  softhsm
    .command('init')
    .description('create a SoftHSM token, PIN files, an active key and a ready hsmint.yaml in DIR')
    .option('--dir <dir>', 'where to put everything', 'var')
    .option('--alg <alg>', `signing algorithm: ${ALGORITHMS.join(', ')}`, DEFAULT_ALGORITHM)
    .option('--label <label>', 'token label (default: hsmint-<random>)')
    .option('--issuer <issuer>', 'the iss of minted tokens (default: urn:hsmint:<hostname>)')
    .option(
      '--audience <audience>',
      'an audience you may mint for (repeat; default: demo)',
      collect,
    )
    .option('--scope <scope>', 'a scope you may ask for (repeat; default: read and write)', collect)
    .option(
      '--subject <subject>',
      'a subject you may mint for (repeat; default: user:{user}, then uid:{uid})',
      collect,
    )
    .option('--module <path>', 'the SoftHSM module (default: found from hsm-profiles/softhsm.yaml)')
    .action(
      run(context, async (options) => {
        const alg = options['alg'];
        if (!isAlgorithm(alg))
          throw new HsmintError('ERR_USAGE', `--alg must be one of ${ALGORITHMS.join(', ')}`);
        const modulePath =
          (options['module'] as string | undefined) ?? findModule(loadProfile('softhsm'));
        const label = (options['label'] as string | undefined) ?? defaultTokenLabel();
        const created = await initSoftHsmToken({
          dir: options['dir'] as string,
          modulePath,
          label,
        });
        const configFile = join(created.dir, 'hsmint.yaml');
        const socketPath = join(created.dir, 'hsmint.sock');
        const document = {
          issuer: (options['issuer'] as string | undefined) ?? `urn:hsmint:${hostname()}`,
          socket: { path: socketPath, mode: '0600' },
          hsm: {
            profile: 'softhsm',
            module: modulePath,
            token: `pkcs11:token=${encodeURIComponent(label)};serial=${encodeURIComponent(created.serial)}`,
            pin_file: created.pinFile,
            environment: { SOFTHSM2_CONF: created.confPath },
          },
          keys: {
            algorithm: alg,
            rotation_period: '7d',
            publish_ahead: '1h',
            state_dir: join(created.dir, 'state'),
          },
          tokens: { default_ttl: '5m', max_ttl: '1h', clock_skew: '30s' },
          policy: {
            // Safe by default: the one user who ran init, and nobody else, may mint and administer.
            rules: [
              {
                name: 'owner',
                match: { uid: process.getuid?.() ?? 0 },
                subjects: (options['subject'] as string[] | undefined) ?? [
                  'user:{user}',
                  'uid:{uid}',
                ],
                audiences: (options['audience'] as string[] | undefined) ?? ['demo'],
                scopes: (options['scope'] as string[] | undefined) ?? ['read', 'write'],
                admin: true,
              },
            ],
          },
          log: { level: 'info' },
        };
        const header = `# Written by \`hsmint softhsm init\` on ${new Date().toISOString()}.\n# The socket (mode 0600) and the policy admit only the user who ran init. Every key:\n# systemd/hsmint.example.yaml.\n`;
        await writeFile(configFile, header + stringify(document), { mode: 0o600, flag: 'wx' });

        const config = loadConfig(configFile);
        const { store } = await openKeyStore(config);
        let key;
        try {
          key = await store.generate(alg);
        } finally {
          await store.close();
        }
        const summary = {
          dir: created.dir,
          config: configFile,
          socket: socketPath,
          token: label,
          serial: created.serial,
          pin_file: created.pinFile,
          kid: key.kid,
          alg: key.alg,
        };
        if (wantsJson(context.io, options)) printJson(context.io, summary);
        else {
          context.io.stdout.write(
            [
              `SoftHSM token ${label} (serial ${created.serial}) in ${created.dir}`,
              `active ${key.alg} key ${key.kid}`,
              `PINs in ${created.pinFile} and ${created.soPinFile} (mode 0600)`,
              `start the daemon: hsmintd --config ${configFile}`,
              '',
            ].join('\n'),
          );
        }
        if (Buffer.byteLength(socketPath) > 107) {
          context.io.stderr.write(
            `warning: ${socketPath} is over 107 bytes; set socket.path to a shorter path\n`,
          );
        }
        return EXIT.ok;
      }),
    );
  return softhsm;
}
