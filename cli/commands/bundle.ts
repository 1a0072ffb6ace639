import { readFile, rename, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { acceptBundle, readBundleState, verifyBundle } from '../../core/ca/bundle.js';
import { fromPem } from '../../core/ca/certificates.js';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson, wantsJson } from '../output.js';

/** `hsmint bundle`: public keys across an air gap, signed, and never rolled back. */
export function bundleCommand(context: CliContext): Command {
  const bundle = new Command('bundle').description(
    'the offline verification bundle: the JWKS and the CA chain in one signed file',
  );
  bundle
    .command('export')
    .description('get a signed bundle from the daemon (admins) and write it to a file')
    .requiredOption('--out <file>', 'where to write it')
    .action(
      run(context, async (options) => {
        const { version, bundle: text } = await withClient(options, (client) => client.bundle());
        const out = options['out'] as string;
        const temporary = `${out}.${process.pid}.tmp`;
        await writeFile(temporary, `${text}\n`, { mode: 0o644 });
        await rename(temporary, out);
        if (wantsJson(context.io, options)) printJson(context.io, { version, out });
        else context.io.stdout.write(`bundle version ${version} written to ${out}\n`);
        return EXIT.ok;
      }),
    );
  bundle
    .command('verify')
    .description(
      'check a bundle against the pinned root, refusing any not newer than the last accepted',
    )
    .argument('<file>', 'the bundle')
    .requiredOption('--root <file>', 'the pinned root certificate (PEM)')
    .option(
      '--state <file>',
      'where the last accepted version is kept',
      join(homedir(), '.hsmint-bundle-state.json'),
    )
    .option('--jwks-out <file>', 'write the verified JWKS here for local verifiers')
    .option(
      '--audit-keys-out <file>',
      'write the audit public keys here, for hsmint audit verify --keys',
    )
    .action(
      run<[string]>(context, async (options, _command, file) => {
        const root = fromPem(await readFile(options['root'] as string, 'utf8'), 'CERTIFICATE');
        const stateFile = options['state'] as string;
        const last = (await readBundleState(stateFile))?.lastVersion;
        const verified = await verifyBundle((await readFile(file, 'utf8')).trim(), {
          pinnedRoot: root,
          ...(last === undefined ? {} : { minVersion: last }),
        });
        await acceptBundle(stateFile, verified.version);
        if (typeof options['auditKeysOut'] === 'string') {
          await writeFile(
            options['auditKeysOut'],
            `${JSON.stringify({ keys: verified.auditKeys ?? [] }, null, 2)}\n`,
            { mode: 0o644 },
          );
        }
        if (typeof options['jwksOut'] === 'string')
          await writeFile(options['jwksOut'], `${JSON.stringify(verified.jwks, null, 2)}\n`, {
            mode: 0o644,
          });
        const summary = {
          version: verified.version,
          issuer: verified.issuer,
          iat: verified.iat,
          keys: verified.jwks.keys.map((key) => key.kid),
        };
        if (wantsJson(context.io, options)) printJson(context.io, summary);
        else
          context.io.stdout.write(
            `bundle version ${summary.version} from ${summary.issuer} is valid: ${summary.keys.length} key(s)\n`,
          );
        return EXIT.ok;
      }),
    );
  return bundle;
}
