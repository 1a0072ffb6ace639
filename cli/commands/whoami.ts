import { Command } from 'commander';
import { formatDuration } from '../../core/duration.js';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson, wantsJson } from '../output.js';

/** `hsmint whoami`: the caller as the daemon sees it, and what the policy grants it. */
export function whoamiCommand(context: CliContext): Command {
  return new Command('whoami')
    .description('show who the daemon thinks you are, the rule that matched and what it grants')
    .action(
      run(context, async (options) => {
        const who = await withClient(options, (client) => client.whoami());
        if (wantsJson(context.io, options)) printJson(context.io, who);
        else {
          const { caller, rule, grants } = who;
          const list = (values: string[]) => (values.length === 0 ? '(none)' : values.join(', '));
          const lines = [
            `caller      uid ${caller.uid}${caller.user ? ` (${caller.user})` : ''}, gid ${caller.gid}${caller.group ? ` (${caller.group})` : ''}, pid ${caller.pid}`,
            `groups      ${list(caller.groups)}`,
            `exe         ${caller.exe ?? '(unknown)'}`,
            `unit        ${caller.unit ?? '(none)'}`,
            `verified    ${caller.verified ? 'yes' : 'no: only the kernel uid and gid are trusted'}`,
            `rule        ${rule ?? '(none: every mint is refused)'}`,
          ];
          if (grants) {
            lines.push(
              `subjects    ${list([...grants.subjects, ...grants.subject_prefixes])}${grants.default_subject ? ` (default ${grants.default_subject})` : ''}`,
              `audiences   ${list(grants.audiences)}`,
              `scopes      ${list(grants.scopes)}`,
              `claims      ${list(Object.entries(grants.claims).map(([name, values]) => (values ? `${name}=${values.join('|')}` : `${name}=*`)))}`,
              `max ttl     ${formatDuration(grants.max_ttl)}`,
              `admin       ${grants.admin ? 'yes' : 'no'}`,
            );
          }
          context.io.stdout.write(`${lines.join('\n')}\n`);
        }
        return who.rule === null ? EXIT.invalid : EXIT.ok;
      }),
    );
}

/** `hsmint reload`: admins only; a bad file is refused and the running config stays. */
export function reloadCommand(context: CliContext): Command {
  return new Command('reload')
    .description(
      'make the daemon re-read hsmint.yaml (admins; a bad file is refused with its errors)',
    )
    .action(
      run(context, async (options) => {
        const result = await withClient(options, (client) => client.reload());
        if (wantsJson(context.io, options)) printJson(context.io, result);
        else {
          const restart =
            result.restart_needed.length > 0
              ? `; restart to apply ${result.restart_needed.join(', ')}`
              : '';
          context.io.stdout.write(`reloaded${restart}\n`);
        }
        return EXIT.ok;
      }),
    );
}
