import { Command } from 'commander';
import { HsmintError } from '../../core/errors.js';
import type { MintParams } from '../../core/client/index.js';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson } from '../output.js';

const collect = (value: string, previous: string[] = []) => [...previous, value];

function parseClaim(pair: string, claims: Record<string, unknown>): Record<string, unknown> {
  const eq = pair.indexOf('=');
  if (eq <= 0)
    throw new HsmintError('ERR_USAGE', `--claim takes NAME=VALUE, got ${JSON.stringify(pair)}`);
  return { ...claims, [pair.slice(0, eq)]: pair.slice(eq + 1) };
}

/** `hsmint mint`: prints the token alone, so `$(hsmint mint --aud api)` just works. */
export function mintCommand(context: CliContext): Command {
  return new Command('mint')
    .description(
      'mint a signed, short-lived token (prints the token; --json prints the whole answer)',
    )
    .requiredOption('--aud <audience>', 'audience (repeat for several)', collect)
    .option('--sub <subject>', 'subject')
    .option(
      '--ttl <duration>',
      "lifetime, like 90s or 5m (default: the daemon's tokens.default_ttl)",
    )
    .option('--scope <scope>', 'scope (repeat for several)', collect)
    .option('--claim <name=value>', 'extra claim, a string (repeat for several)', collect)
    .action(
      run(context, async (options) => {
        const audiences = options['aud'] as string[];
        const params: MintParams = { aud: audiences.length === 1 ? audiences[0]! : audiences };
        if (typeof options['sub'] === 'string') params.sub = options['sub'];
        if (typeof options['ttl'] === 'string') params.ttl = options['ttl'];
        if (Array.isArray(options['scope'])) params.scope = options['scope'] as string[];
        if (Array.isArray(options['claim']))
          params.claims = (options['claim'] as string[]).reduce(
            (all, pair) => parseClaim(pair, all),
            {},
          );
        const minted = await withClient(options, (client) => client.mint(params));
        if (options.json) printJson(context.io, minted);
        else context.io.stdout.write(`${minted.token}\n`);
        return EXIT.ok;
      }),
    );
}
