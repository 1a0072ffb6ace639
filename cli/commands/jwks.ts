import { rename, writeFile } from 'node:fs/promises';
import { Command } from 'commander';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson } from '../output.js';

/** `hsmint jwks`: the public keys verifiers need, for offline distribution. */
export function jwksCommand(context: CliContext): Command {
  return new Command('jwks')
    .description('print the JWKS (public keys only), or write it to a file')
    .option('--out <file>', 'write to FILE (atomically) instead of stdout')
    .action(
      run(context, async (options) => {
        const jwks = await withClient(options, (client) => client.jwks());
        const out = options['out'];
        if (typeof out === 'string') {
          // Verifiers may read the file at any moment: never let them see half of it.
          const temporary = `${out}.${process.pid}.tmp`;
          await writeFile(temporary, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o644 });
          await rename(temporary, out);
          context.io.stderr.write(`wrote ${jwks.keys.length} key(s) to ${out}\n`);
        } else {
          printJson(context.io, jwks);
        }
        return EXIT.ok;
      }),
    );
}
