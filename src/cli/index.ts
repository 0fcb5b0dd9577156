// The `gprxy` command: dispatches subcommands (start, dev, passwd, config check, SSO login and clients) from a table.
import { parseArgs } from 'node:util';
import { passwdCommand } from './passwd.ts';
import { startCommand } from './start.ts';

interface Command {
  summary: string;
  run(args: string[]): Promise<number>;
}

const commands: Record<string, Command> = {
  start: { summary: 'run the proxy: gprxy start --config gprxy.yaml', run: startCommand },
  dev: {
    summary: 'run gprxy on an embedded PostgreSQL with a demo database (no setup needed)',
    run: async (args) => (await import('./dev.ts')).devCommand(args),
  },
  passwd: {
    summary: 'print a userlist.txt line with a fresh SCRAM verifier: gprxy passwd USER',
    run: passwdCommand,
  },
  config: { summary: 'gprxy config check --config gprxy.yaml: validate a config file', run: configCommand },
  login: {
    summary:
      'sign in with SSO: gprxy login [--device] --issuer URL --client-id ID --audience API [--profile NAME]',
    run: async (args) => (await import('./login.ts')).loginCommand(args),
  },
  logout: {
    summary: 'forget (and revoke) the stored tokens: gprxy logout [--profile NAME]',
    run: async (args) => (await import('./login.ts')).logoutCommand(args),
  },
  status: {
    summary: 'who you are logged in as, at which issuer, until when: gprxy status [--json]',
    run: async (args) => (await import('./login.ts')).statusCommand(args),
  },
  token: {
    summary: 'print a valid access token (refreshed when needed): PGPASSWORD=$(gprxy token)',
    run: async (args) => (await import('./login.ts')).tokenCommand(args),
  },
  psql: {
    summary: 'run psql through gprxy as yourself: gprxy psql [--profile NAME] [psql options]',
    run: async (args) => (await import('./psql.ts')).psqlCommand(args),
  },
  connect: {
    summary: 'gprxy connect -d DB [-c SQL] [--host H --port P]: psql to one database with your token',
    run: async (args) => (await import('./psql.ts')).connectCommand(args),
  },
  tunnel: {
    summary: 'a 127.0.0.1 listener for GUI clients (no password needed): gprxy tunnel --port 15432',
    run: async (args) => (await import('./tunnel.ts')).tunnelCommand(args),
  },
  secret: {
    summary:
      'gprxy secret keygen | encrypt: make a master key, or an enc: value from stdin (GPRXY_MASTER_KEY)',
    run: async (args) => (await import('./secret.ts')).secretCommand(args),
  },
};

function usage(): string {
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`);
  return `usage: gprxy <command> [options]\n\ncommands:\n${lines.join('\n')}\n`;
}

async function configCommand(args: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args,
    allowPositionals: true,
    options: { config: { type: 'string', short: 'c', default: 'gprxy.yaml' } },
  });
  if (positionals[0] !== 'check') {
    process.stderr.write('usage: gprxy config check --config gprxy.yaml\n');
    return 2;
  }
  const { loadConfigFile } = await import('../config/load.ts');
  const { checkTlsFiles } = await import('../net/tls.ts');
  try {
    checkTlsFiles(loadConfigFile(values.config, process.env));
    process.stdout.write(`${values.config}: ok\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n`);
    return 1;
  }
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage());
    return name ? 0 : 2;
  }
  if (name === '--version' || name === 'version') {
    const { readFileSync } = await import('node:fs');
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    process.stdout.write(`gprxy ${pkg.version}\n`);
    return 0;
  }
  const cmd = commands[name];
  if (!cmd) {
    process.stderr.write(`gprxy: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    process.stderr.write(`gprxy ${name}: ${(e as Error).message}\n`);
    return 1;
  }
}
