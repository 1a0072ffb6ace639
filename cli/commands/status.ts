import { Command } from 'commander';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson, wantsJson } from '../output.js';

/** `hsmint status`: the daemon's health; exit 0 when ok, 1 when degraded or sealed. */
export function statusCommand(context: CliContext): Command {
  return new Command('status')
    .description("show the daemon's health (exit 0 ok, 1 degraded or sealed, 2 unreachable)")
    .action(
      run(context, async (options) => {
        const health = await withClient(options, (client) => client.health());
        if (wantsJson(context.io, options)) printJson(context.io, health);
        else {
          const lines = [
            `status      ${health.status}${health.reason ? ` (${health.reason})` : ''}`,
            `issuer      ${health.issuer}`,
            `active key  ${health.active_kid} (${health.algorithm})`,
            `keys        ${health.keys}`,
            `token       ${health.token.label} (serial ${health.token.serial})`,
            `uptime      ${health.uptime_s}s`,
          ];
          context.io.stdout.write(`${lines.join('\n')}\n`);
        }
        return health.status === 'ok' ? EXIT.ok : EXIT.invalid;
      }),
    );
}
