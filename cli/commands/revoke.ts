import { Command } from 'commander';
import { HsmintError } from '../../core/errors.js';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson, wantsJson } from '../output.js';

/** `hsmint revoke`: a token is refused by verify from now until it would have expired. */
export function revokeCommand(context: CliContext): Command {
  return new Command('revoke')
    .description(
      'revoke a token: by JTI (admins), or by --token (admins, or the caller that minted it)',
    )
    .argument('[jti]', "the token's jti")
    .option('--token <token>', 'the token itself (proves you minted it; revoked until its exp)')
    .action(
      run<[string | undefined]>(context, async (options, _command, jti) => {
        const token = options['token'];
        if ((jti === undefined) === (typeof token !== 'string'))
          throw new HsmintError('ERR_USAGE', 'give a JTI or --token, not both');
        const result = await withClient(options, (client) =>
          client.revokeToken(jti !== undefined ? { jti } : { token: token as string }),
        );
        if (wantsJson(context.io, options)) printJson(context.io, result);
        else
          context.io.stdout.write(
            `revoked ${result.revoked} until ${new Date(result.until * 1000).toISOString()}\n`,
          );
        return EXIT.ok;
      }),
    );
}
