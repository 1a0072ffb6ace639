import { Command } from 'commander';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT } from '../output.js';

/**
 * `hsmint metrics`: the daemon's metrics (admins). The Prometheus text is already what
 * machines read, so it is printed as it comes, with or without --json.
 */
export function metricsCommand(context: CliContext): Command {
  return new Command('metrics')
    .description("print the daemon's metrics in the Prometheus text format (admins)")
    .action(
      run(context, async (options) => {
        context.io.stdout.write(await withClient(options, (client) => client.metrics()));
        return EXIT.ok;
      }),
    );
}
