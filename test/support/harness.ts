// Integration-test harness: the suite's PostgreSQL (from test/run.ts), per-file databases and roles, an in-process
// gprxy on port 0 with captured JSON logs, and real clients (pg, postgres.js, psql, pgbench).
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import pino from 'pino';
import { makeScramVerifier, userlistLine } from '../../src/auth/verifiers.ts';
import { configFromObject } from '../../src/config/load.ts';
import type { RawConfig } from '../../src/config/schema.ts';
import { type ProxyHandle, startProxy } from '../../src/main.ts';

export const PG = {
  host: process.env.GPRXY_TEST_PGHOST ?? '127.0.0.1',
  port: Number(process.env.GPRXY_TEST_PGPORT ?? 0),
  user: process.env.GPRXY_TEST_PGUSER ?? 'postgres',
  password: process.env.GPRXY_TEST_PGPASSWORD ?? '',
};

/**
 * The suite's secret scan: every password a test makes is registered here, and every in-process proxy's log lines
 * are written to GPRXY_TEST_LOGDIR when it stops; test/run.ts then greps all logs for all secrets.
 */
export function registerSecret(secret: string): void {
  const dir = process.env.GPRXY_TEST_LOGDIR;
  if (dir && secret) appendFileSync(join(dir, 'secrets.txt'), `${secret}\n`);
}

let proxyCount = 0;

export function requirePg(): void {
  if (!PG.port)
    throw new Error('integration tests need the PostgreSQL started by test/run.ts (run `npm test`)');
}

/** A name unique to this run, safe as an identifier. */
export function uniq(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

export async function superClient(database = 'postgres'): Promise<pg.Client> {
  requirePg();
  const c = new pg.Client({ host: PG.host, port: PG.port, user: PG.user, password: PG.password, database });
  await c.connect();
  return c;
}

export async function admin<T = unknown>(
  sql: string,
  params: unknown[] = [],
  database = 'postgres',
): Promise<T[]> {
  const c = await superClient(database);
  try {
    return (await c.query(sql, params)).rows as T[];
  } finally {
    await c.end();
  }
}

export interface TestDb {
  database: string;
  user: string;
  password: string;
  drop(): Promise<void>;
}

/** A fresh database owned by a fresh LOGIN role with a SCRAM password. */
export async function createTestDb(prefix = 't'): Promise<TestDb> {
  const database = uniq(`${prefix}db`);
  const user = uniq(`${prefix}u`);
  const password = randomBytes(9).toString('base64url');
  registerSecret(password);
  await admin(`CREATE ROLE ${user} LOGIN PASSWORD '${password}'`);
  await admin(`CREATE DATABASE ${database} OWNER ${user}`);
  return {
    database,
    user,
    password,
    async drop() {
      await admin(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
      await admin(`DROP ROLE IF EXISTS ${user}`);
    },
  };
}

export interface LogCapture {
  lines: Record<string, unknown>[];
  text(): string;
}

export interface TestProxy {
  proxy: ProxyHandle;
  port: number;
  logs: LogCapture;
  dir: string;
  url(user: string, password: string, database: string, extra?: string): string;
  stop(): Promise<void>;
}

/** Writes a userlist.txt with SCRAM verifiers (or given secrets) and returns its path. */
export async function writeUserlist(
  dir: string,
  users: Record<string, string>,
  plain = false,
): Promise<string> {
  const lines: string[] = [];
  for (const [u, pw] of Object.entries(users)) {
    lines.push(
      userlistLine(
        u,
        plain || pw.startsWith('SCRAM-') || pw.startsWith('md5') ? pw : await makeScramVerifier(pw),
      ),
    );
  }
  const path = join(dir, 'userlist.txt');
  writeFileSync(path, `${lines.join('\n')}\n`);
  return path;
}

/** Starts gprxy in-process on 127.0.0.1 port 0 with the given config (databases default to the suite's server). */
export async function startTestProxy(raw: RawConfig): Promise<TestProxy> {
  requirePg();
  const dir = mkdtempSync(join(tmpdir(), 'gprxy-proxy-'));
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) {
        if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      }
      cb();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  for (const u of Object.values(raw.users ?? {})) if (u.password) registerSecret(u.password);
  for (const d of Object.values(raw.databases ?? {})) if (d.password) registerSecret(d.password);
  const config = configFromObject({ listen: { host: '127.0.0.1', port: 0 }, ...raw }, dir);
  const proxy = await startProxy(config, log);
  return {
    proxy,
    port: proxy.port,
    dir,
    logs: { lines, text: () => lines.map((l) => JSON.stringify(l)).join('\n') },
    url: (user, password, database, extra = '') =>
      `postgresql://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${proxy.port}/${database}${extra}`,
    stop: async () => {
      await proxy.shutdown({ graceful: false });
      const logDir = process.env.GPRXY_TEST_LOGDIR;
      if (logDir) {
        writeFileSync(
          join(logDir, `${process.pid}-${++proxyCount}.jsonl`),
          lines.map((l) => JSON.stringify(l)).join('\n'),
        );
      }
    },
  };
}

/** The suite's server as a gprxy database entry. */
export function backend(dbname?: string): { host: string; port: number; dbname?: string } {
  return dbname ? { host: PG.host, port: PG.port, dbname } : { host: PG.host, port: PG.port };
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
  input?: string,
): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: { ...process.env, ...env }, timeout: 120_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code: unknown = err ? (err as { code?: unknown }).code : 0;
        resolve({ code: typeof code === 'number' ? code : 1, stdout, stderr });
      },
    );
    if (input !== undefined) child.stdin?.end(input);
  });
}

export function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

/** In CI a missing client is a failure, locally a skip with a reason. */
export function clientSkip(name: string): string | false {
  if (hasCommand(name)) return false;
  if (process.env.CI) throw new Error(`${name} is required in CI (install postgresql-client)`);
  return `${name} not installed`;
}

export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}
