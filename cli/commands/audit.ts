import { readFile, rename, writeFile } from 'node:fs/promises';
import { Command } from 'commander';
import { readAuditRecords } from '../../core/audit/read.js';
import { verifyAuditLog } from '../../core/audit/verify.js';
import { configPath, loadConfig } from '../../core/config.js';
import { parseDuration } from '../../core/duration.js';
import { HsmintError } from '../../core/errors.js';
import type { PublicJwk } from '../../core/keys/keystore.js';
import { run, withClient, type CliContext } from '../context.js';
import { EXIT, printJson, wantsJson } from '../output.js';

/** The audit folder: the argument, else audit.dir of the config. */
function auditDir(argument: string | undefined, configFile: string | undefined): string {
  return argument ?? loadConfig(configPath(configFile)).audit.dir;
}

async function readKeys(file: string): Promise<PublicJwk[]> {
  const parsed = JSON.parse(await readFile(file, 'utf8')) as { keys?: PublicJwk[] };
  if (!Array.isArray(parsed.keys))
    throw new HsmintError('ERR_USAGE', `${file} is not a JWKS ({"keys": [...]})`);
  return parsed.keys;
}

/** `hsmint audit`: the tamper-evident log, checked offline from public keys only. */
export function auditCommand(context: CliContext): Command {
  const audit = new Command('audit').description(
    'the audit log: verify its chain and checkpoints, read it, fetch its public keys',
  );
  audit
    .command('keys')
    .description(
      "the audit checkpoint key's public keys, from the daemon (keep them with the log's copies)",
    )
    .option('--out <file>', 'write them to FILE')
    .action(
      run(context, async (options) => {
        const keys = await withClient(options, (client) => client.auditKeys());
        const out = options['out'];
        if (typeof out === 'string') {
          const temporary = `${out}.${process.pid}.tmp`;
          await writeFile(temporary, `${JSON.stringify(keys, null, 2)}\n`, { mode: 0o644 });
          await rename(temporary, out);
        } else printJson(context.io, keys);
        return EXIT.ok;
      }),
    );
  audit
    .command('verify')
    .description(
      'check the whole chain and every checkpoint signature, offline; names the first bad record',
    )
    .argument('[dir]', 'the audit folder (default: audit.dir of the config)')
    .requiredOption('--keys <file>', 'the audit public keys (hsmint audit keys --out FILE)')
    .option('--config <file>', 'hsmint.yaml, for audit.dir')
    .option('--sealed', 'require the log to end with a checkpoint (a log closed by a clean stop)')
    .option(
      '--anchor <seq:hash>',
      'a head seen before (an audit.checkpoint line, or a last run): catches a cut back to an earlier checkpoint',
    )
    .action(
      run<[string | undefined]>(context, async (options, _command, dir) => {
        const folder = auditDir(dir, options['config'] as string | undefined);
        try {
          const anchorText = options['anchor'];
          let anchor: { seq: number; hash: string } | undefined;
          if (typeof anchorText === 'string') {
            const [seq, hash] = anchorText.split(':');
            if (!seq || !hash || !/^\d+$/.test(seq))
              throw new HsmintError('ERR_USAGE', '--anchor takes SEQ:HASH');
            anchor = { seq: Number(seq), hash };
          }
          const result = await verifyAuditLog(folder, {
            keys: await readKeys(options['keys'] as string),
            requireCheckpointAtEnd: options['sealed'] === true,
            ...(anchor ? { anchor } : {}),
          });
          if (wantsJson(context.io, options)) printJson(context.io, { valid: true, ...result });
          else {
            context.io.stdout.write(
              `valid  ${result.records} records, ${result.checkpoints} checkpoints; last checkpoint at seq ${result.lastCheckpointSeq}, ${result.uncheckpointed} after it\n`,
            );
          }
          return EXIT.ok;
        } catch (error) {
          if (!(error instanceof HsmintError) || error.code !== 'ERR_AUDIT_CORRUPT') throw error;
          if (wantsJson(context.io, options))
            printJson(context.io, { valid: false, error: error.toJSON(), at: error.details });
          else context.io.stdout.write(`invalid  ${error.message}\n`);
          return EXIT.invalid;
        }
      }),
    );
  audit
    .command('tail')
    .description('print records (a table on a terminal, JSON lines otherwise)')
    .argument('[dir]', 'the audit folder (default: audit.dir of the config)')
    .option('--config <file>', 'hsmint.yaml, for audit.dir')
    .option('-f, --follow', 'keep printing new records')
    .option('--event <name>', 'only this event (a trailing * matches a prefix: key.*)')
    .option('--sub <subject>', 'only records for this subject')
    .option('--since <duration>', 'only records from this long ago (90s, 5m, 12h, 30d)')
    .option('-n, --lines <n>', 'at most the last N matching records (without --follow)', '50')
    .action(
      run<[string | undefined]>(context, async (options, _command, dir) => {
        const folder = auditDir(dir, options['config'] as string | undefined);
        const controller = new AbortController();
        process.once('SIGINT', () => controller.abort());
        const since =
          typeof options['since'] === 'string'
            ? new Date(Date.now() - parseDuration(options['since']) * 1000)
            : undefined;
        const filter = {
          ...(typeof options['event'] === 'string' ? { event: options['event'] } : {}),
          ...(typeof options['sub'] === 'string' ? { sub: options['sub'] } : {}),
          ...(since ? { since } : {}),
          ...(options['follow'] === true ? { follow: { signal: controller.signal } } : {}),
        };
        const json = wantsJson(context.io, options);
        const limit = Number(options['lines']);
        const rows: Array<Record<string, unknown>> = [];
        const print = (record: Record<string, unknown>) => {
          if (json) context.io.stdout.write(`${JSON.stringify(record)}\n`);
          else {
            const { seq, ts, event, prev: _prev, ...rest } = record;
            context.io.stdout.write(
              `${String(seq).padStart(7)}  ${String(ts).padEnd(24)}  ${String(event).padEnd(16)}  ${JSON.stringify(rest)}\n`,
            );
          }
        };
        // For people: one header, in the same columns as the rows below it.
        if (!json)
          context.io.stdout.write(
            `${'SEQ'.padStart(7)}  ${'TIME'.padEnd(24)}  ${'EVENT'.padEnd(16)}  FIELDS\n`,
          );
        for await (const record of readAuditRecords(folder, filter)) {
          if (options['follow'] === true) print(record as Record<string, unknown>);
          else {
            rows.push(record as Record<string, unknown>);
            if (rows.length > limit) rows.shift();
          }
        }
        for (const record of rows) print(record);
        return EXIT.ok;
      }),
    );
  return audit;
}
