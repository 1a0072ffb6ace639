import { readFile } from 'node:fs/promises';
import { Command } from 'commander';
import { fromPem } from '../../core/ca/certificates.js';
import { verifyWithRoot } from '../../core/ca/verify-token.js';
import { HsmintError } from '../../core/errors.js';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, fromNow, printJson, wantsJson, type Io } from '../output.js';

async function readToken(io: Io, argument: string | undefined): Promise<string> {
  if (argument !== undefined && argument !== '-') return argument.trim();
  if (io.stdin.isTTY) throw new HsmintError('ERR_USAGE', 'give a token, or pipe one in with -');
  const chunks: Buffer[] = [];
  for await (const chunk of io.stdin)
    chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
  return Buffer.concat(chunks).toString('utf8').trim();
}

/** `hsmint verify`: exit 0 valid, 1 invalid, 2 usage or daemon error. */
export function verifyCommand(context: CliContext): Command {
  return new Command('verify')
    .description('verify a token with the daemon (exit 0 valid, 1 invalid, 2 error)')
    .argument('[token]', 'the token, or - to read it from stdin')
    .option('--aud <audience>', 'require this audience')
    .option(
      '--root <cert>',
      'verify offline, trusting only this root certificate (PEM): the token must carry its chain (x5c)',
    )
    .option('--iss <issuer>', 'with --root: require this issuer')
    .action(
      run<[string | undefined]>(context, async (options, _command, argument) => {
        const token = await readToken(context.io, argument);
        const audience = typeof options['aud'] === 'string' ? { aud: options['aud'] } : {};
        const result =
          typeof options['root'] === 'string'
            ? await verifyWithRoot(token, {
                root: fromPem(await readFile(options['root'], 'utf8'), 'CERTIFICATE'),
                ...(typeof options['aud'] === 'string' ? { audience: options['aud'] } : {}),
                ...(typeof options['iss'] === 'string' ? { issuer: options['iss'] } : {}),
              })
            : await withClient(options, (client) => client.verify(token, audience));
        if (wantsJson(context.io, options)) printJson(context.io, result);
        else if (result.valid) {
          const { sub, aud, exp, jti } = result.claims;
          const parts = [
            `kid=${result.header.kid}`,
            `aud=${JSON.stringify(aud)}`,
            sub ? `sub=${sub}` : '',
            `jti=${jti}`,
          ];
          context.io.stdout.write(
            `valid  ${parts.filter(Boolean).join(' ')}  expires ${fromNow(exp ?? 0)}\n`,
          );
        } else {
          context.io.stdout.write(`invalid  ${result.error.code}: ${result.error.message}\n`);
        }
        return result.valid ? EXIT.ok : EXIT.invalid;
      }),
    );
}
