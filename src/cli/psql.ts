// `gprxy psql [psql args]` and `gprxy connect -d DB`: run psql against gprxy with a fresh access token as the
// password (PGPASSWORD, never on the command line) and the token's identity as the user.
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { freshCredential, LoginRequired } from './sso/oidc.ts';
import { type Credential, type Profile, Store } from './sso/store.ts';

export interface ProxyTarget {
  host: string;
  port: number;
  sslmode: NonNullable<Profile['sslmode']>;
  sslrootcert?: string;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** Where gprxy is: flags, then the profile, then 127.0.0.1:6432; TLS verify-full unless gprxy is on loopback. */
export function proxyTarget(profile: Profile, host?: string, port?: string): ProxyTarget {
  const h = host ?? profile.host ?? '127.0.0.1';
  const p = Number(port ?? profile.port ?? 6432);
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`invalid port "${port ?? profile.port}"`);
  return {
    host: h,
    port: p,
    sslmode: profile.sslmode ?? (isLoopback(h) ? 'prefer' : 'verify-full'),
    ...(profile.sslrootcert ? { sslrootcert: profile.sslrootcert } : {}),
  };
}

export function libpqEnv(target: ProxyTarget, cred: Credential, database?: string): Record<string, string> {
  if (!cred.identity) throw new Error('the token names no identity (email claim): log in again');
  return {
    PGHOST: target.host,
    PGPORT: String(target.port),
    PGUSER: cred.identity,
    PGPASSWORD: cred.access_token,
    PGSSLMODE: target.sslmode,
    ...(target.sslrootcert ? { PGSSLROOTCERT: target.sslrootcert } : {}),
    ...(database ? { PGDATABASE: database } : {}),
  };
}

function runPsql(args: string[], env: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.env.GPRXY_PSQL || 'psql', args, {
      stdio: 'inherit',
      env: { ...process.env, ...env },
    });
    // Ctrl-C belongs to psql (it cancels the running query); gprxy waits for psql to finish.
    const ignore = () => undefined;
    process.on('SIGINT', ignore);
    child.once('error', (e: NodeJS.ErrnoException) => {
      process.off('SIGINT', ignore);
      reject(e.code === 'ENOENT' ? new Error('psql not found in PATH (or set GPRXY_PSQL)') : e);
    });
    child.once('exit', (code, signal) => {
      process.off('SIGINT', ignore);
      resolve(code ?? (signal ? 128 + 2 : 1));
    });
  });
}

/** Takes gprxy's own options out of psql's argument list (anywhere before `--`). */
function takeOption(args: string[], name: string): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') break;
    if (a === `--${name}`) {
      value = args[i + 1];
      args.splice(i, 2);
      i--;
    } else if (a.startsWith(`--${name}=`)) {
      value = a.slice(name.length + 3);
      args.splice(i, 1);
      i--;
    }
  }
  return value;
}

async function tokenFor(profileName: string | undefined): Promise<{ profile: Profile; cred: Credential }> {
  const store = Store.fromEnv(process.env);
  const name = store.profileName(profileName);
  const cred = await freshCredential(store, name);
  return { profile: store.profile(name)!, cred };
}

export async function psqlCommand(argv: string[]): Promise<number> {
  const args = [...argv];
  const profileName = takeOption(args, 'profile');
  try {
    const { profile, cred } = await tokenFor(profileName);
    // psql's own -h/-p/-U/-d given here win over these defaults.
    return await runPsql(args, libpqEnv(proxyTarget(profile), cred, profile.database));
  } catch (e) {
    if (e instanceof LoginRequired) {
      process.stderr.write(`gprxy psql: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}

export async function connectCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      dbname: { type: 'string', short: 'd' },
      profile: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      command: { type: 'string', short: 'c' },
    },
  });
  try {
    const { profile, cred } = await tokenFor(values.profile);
    const target = proxyTarget(profile, values.host, values.port);
    const db = values.dbname ?? positionals[0] ?? profile.database;
    const psqlArgs = [
      ...(values.command !== undefined ? ['-c', values.command] : []),
      ...positionals.slice(1),
    ];
    return await runPsql(psqlArgs, libpqEnv(target, cred, db));
  } catch (e) {
    if (e instanceof LoginRequired) {
      process.stderr.write(`gprxy connect: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}
