import { Command } from 'commander';
import { configPath, loadConfig } from '../../core/config.js';
import { HsmintError } from '../../core/errors.js';
import { ALGORITHMS, isAlgorithm } from '../../core/keys/algorithms.js';
import type { KeyInfo } from '../../core/keys/keystore.js';
import { openKeyStore } from '../../core/open.js';
import { run, type CliContext } from '../context.js';
import { EXIT, printJson, printTable, wantsJson } from '../output.js';

function describe(key: KeyInfo, activeKid: string | undefined) {
  return {
    kid: key.kid,
    alg: key.alg,
    label: key.label,
    created: key.createdAt.toISOString(),
    active: key.kid === activeKid,
  };
}

/** `hsmint keys`: offline work on the token named in the config (the daemon may be running). */
export function keysCommand(context: CliContext): Command {
  const keys = new Command('keys').description(
    'list or create signing keys on the token (offline, from the config)',
  );
  keys
    .command('list')
    .description('list hsmint keys on the token; the newest of the configured algorithm signs')
    .option('--config <file>', 'hsmint.yaml (default: $HSMINT_CONFIG or /etc/hsmint/hsmint.yaml)')
    .action(
      run(context, async (options) => {
        const config = loadConfig(configPath(options['config'] as string | undefined));
        const { store } = await openKeyStore(config);
        try {
          const list = await store.list();
          const activeKid = list.filter((key) => key.alg === config.keys.algorithm).at(-1)?.kid;
          const rows = list.map((key) => describe(key, activeKid));
          if (wantsJson(context.io, options)) printJson(context.io, { keys: rows });
          else
            printTable(
              context.io,
              ['KID', 'ALG', 'CREATED', 'STATE', 'LABEL'],
              rows.map((row) => [
                row.kid,
                row.alg,
                row.created,
                row.active ? 'active' : 'verify-only',
                row.label,
              ]),
            );
          return EXIT.ok;
        } finally {
          await store.close();
        }
      }),
    );
  keys
    .command('create')
    .description('generate a non-exportable key pair on the token')
    .requiredOption('--alg <alg>', `one of ${ALGORITHMS.join(', ')}`)
    .option('--config <file>', 'hsmint.yaml (default: $HSMINT_CONFIG or /etc/hsmint/hsmint.yaml)')
    .action(
      run(context, async (options) => {
        const alg = options['alg'];
        if (!isAlgorithm(alg))
          throw new HsmintError('ERR_USAGE', `--alg must be one of ${ALGORITHMS.join(', ')}`);
        const config = loadConfig(configPath(options['config'] as string | undefined));
        const { store } = await openKeyStore({
          ...config,
          keys: { ...config.keys, algorithm: alg },
        });
        try {
          const key = await store.generate(alg);
          if (wantsJson(context.io, options)) printJson(context.io, describe(key, undefined));
          else
            context.io.stdout.write(
              `created ${key.alg} key ${key.kid} (${key.label}); send the daemon SIGHUP to load it\n`,
            );
          return EXIT.ok;
        } finally {
          await store.close();
        }
      }),
    );
  return keys;
}
