import { Command } from 'commander';
import { configPath, loadConfig } from '../../core/config.js';
import { HsmintError } from '../../core/errors.js';
import { ALGORITHMS, isAlgorithm } from '../../core/keys/algorithms.js';
import { join } from 'node:path';
import type { LifecycleDocument } from '../../core/keys/lifecycle.js';
import { JsonFile } from '../../core/keys/state.js';
import type { KeyView } from '../../core/protocol.js';
import { openKeyStore } from '../../core/open.js';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson, printTable, wantsJson, type GlobalOptions } from '../output.js';

const when = (seconds: number | undefined) =>
  seconds === undefined ? '' : new Date(seconds * 1000).toISOString();

function printKeys(context: CliContext, options: GlobalOptions, keys: KeyView[]): void {
  if (wantsJson(context.io, options)) printJson(context.io, { keys });
  else
    printTable(
      context.io,
      ['KID', 'ALG', 'STATE', 'SINCE', 'UNTIL', 'LABEL'],
      keys.map((key) => [
        key.kid,
        key.alg,
        key.state,
        when(key.active_from ?? key.created),
        when(key.activate_at ?? key.retire_at),
        key.label,
      ]),
    );
}

/** Offline: the keys on the token, with the states the daemon recorded in keys.state_dir. */
async function offlineKeys(configFile: string): Promise<KeyView[]> {
  const config = loadConfig(configFile);
  const { store } = await openKeyStore(config);
  try {
    const onToken = await store.list();
    const recorded =
      (await new JsonFile<LifecycleDocument>(join(config.keys.stateDir, 'keys.json')).read())
        ?.keys ?? [];
    return onToken.map((key) => {
      const record = recorded.find((entry) => entry.kid === key.kid);
      return {
        kid: key.kid,
        alg: key.alg,
        // A key the daemon has not recorded yet becomes next (or verify-only) when it next reads the token.
        state: record?.state ?? 'unrecorded',
        label: key.label,
        created: record?.created ?? Math.floor(key.createdAt.getTime() / 1000),
        ...(record?.activateAt === undefined ? {} : { activate_at: record.activateAt }),
        ...(record?.activeFrom === undefined ? {} : { active_from: record.activeFrom }),
        ...(record?.retireAt === undefined ? {} : { retire_at: record.retireAt }),
      };
    });
  } finally {
    await store.close();
  }
}

/** `hsmint keys`: the key lifecycle, from the daemon (admins) or offline from the token. */
export function keysCommand(context: CliContext): Command {
  const keys = new Command('keys').description(
    'signing keys: list, emergency rotate and revoke, offline create',
  );
  keys
    .command('list')
    .description(
      'every key with its state (from the daemon; with --config, offline from the token)',
    )
    .option(
      '--config <file>',
      'read the token and state files directly instead of asking the daemon',
    )
    .action(
      run(context, async (options) => {
        const list =
          typeof options['config'] === 'string'
            ? await offlineKeys(options['config'])
            : (await withClient(options, (client) => client.keys())).keys;
        printKeys(context, options, list);
        return EXIT.ok;
      }),
    );
  keys
    .command('rotate')
    .description('emergency rotation (admins): the next key signs now, the active one retires')
    .action(
      run(context, async (options) => {
        const result = await withClient(options, (client) => client.rotateKeys());
        if (wantsJson(context.io, options)) printJson(context.io, result);
        else context.io.stdout.write(`key ${result.active.kid} signs from now on\n`);
        return EXIT.ok;
      }),
    );
  keys
    .command('revoke')
    .description('stop trusting a key at once (admins); its tokens fail verification')
    .argument('<kid>', 'the key id')
    .action(
      run<[string]>(context, async (options, _command, kid) => {
        const result = await withClient(options, (client) => client.revokeKey(kid));
        if (wantsJson(context.io, options)) printJson(context.io, result);
        else context.io.stdout.write(`key ${kid} is revoked and destroyed on the token\n`);
        return EXIT.ok;
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
          if (wantsJson(context.io, options))
            printJson(context.io, {
              kid: key.kid,
              alg: key.alg,
              label: key.label,
              created: key.createdAt.toISOString(),
            });
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
