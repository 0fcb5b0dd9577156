// The embedded default's state: a PostgreSQL under a state directory, a demo database and role whose SCRAM
// verifier gprxy shares (so logins pass through with no plaintext stored), and the gprxy config that serves it.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { makeScramVerifier, userlistLine } from '../auth/verifiers.ts';
import { dialServer } from '../net/dial.ts';
import { ServerConnection } from '../server/connection.ts';
import { literal } from '../server/sql.ts';
import { type EmbeddedPg, reachableByOthers, startEmbeddedPostgres } from './postgres.ts';

export interface DevState {
  stateDir: string;
  configPath: string;
  pg: EmbeddedPg;
  demo: { user: string; password: string; database: string };
}

export function defaultStateDir(): string {
  return join(homedir(), '.gprxy', 'dev');
}

/** A secret kept in the state directory (mode 0600), made on the first run and reused after. */
function persistentSecret(dir: string, name: string): string {
  const path = join(dir, name);
  if (existsSync(path)) return readFileSync(path, 'utf8').trim();
  const v = randomBytes(12).toString('base64url');
  writeFileSync(path, `${v}\n`, { mode: 0o600 });
  return v;
}

/** PostgreSQL runs as the `postgres` user when we are root, so its data must sit where that user can reach it. */
function pgDataDir(stateDir: string): string {
  const inState = join(stateDir, 'pgdata');
  if (userInfo().uid !== 0 || reachableByOthers(inState)) return inState;
  const dir = join(tmpdir(), `gprxy-dev-${userInfo().uid}`);
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755);
  return join(dir, 'pgdata');
}

async function adminSql(pg: EmbeddedPg, database: string, statements: string[]): Promise<void> {
  const conn = await ServerConnection.connect(
    {
      host: pg.host,
      port: pg.port,
      tls: { sslmode: 'disable' },
      connectTimeoutMs: 10_000,
      database,
      user: pg.superuser,
      credential: { kind: 'password', password: pg.password },
    },
    dialServer,
  );
  try {
    for (const sql of statements) {
      const err = await conn.query(sql);
      // 42P04 duplicate_database: a second run reuses what the first made.
      if (err && err.sqlState !== '42P04') throw new Error(`setting up the demo failed: ${err.message}`);
    }
  } finally {
    conn.close('setup done');
  }
}

export async function prepareDev(stateDir: string, onLog: (line: string) => void): Promise<DevState> {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const superPassword = persistentSecret(stateDir, 'postgres.password');
  const demoPassword = persistentSecret(stateDir, 'demo.password');
  const pg = await startEmbeddedPostgres({ dataDir: pgDataDir(stateDir), password: superPassword, onLog });
  const demo = { user: 'demo', password: demoPassword, database: 'demo' };
  try {
    // The role's verifier is made here and given to both PostgreSQL and gprxy's auth file.
    const verifier = await makeScramVerifier(demoPassword);
    await adminSql(pg, 'postgres', [
      `DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo') THEN CREATE ROLE demo LOGIN; END IF;
       END $$`,
      `ALTER ROLE demo PASSWORD ${literal(verifier)}`,
      'CREATE DATABASE demo OWNER demo',
    ]);
    writeFileSync(join(stateDir, 'userlist.txt'), `${userlistLine(demo.user, verifier)}\n`, { mode: 0o600 });
  } catch (e) {
    await pg.stop().catch(() => undefined);
    throw e;
  }
  const configPath = join(stateDir, 'gprxy.yaml');
  return { stateDir, configPath, pg, demo };
}

/** The gprxy config for the dev setup (listen port chosen by the caller). */
export function devConfig(state: DevState, port: number): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port },
    log_level: 'info',
    auth: { type: 'scram-sha-256', file: 'userlist.txt' },
    server_tls: { sslmode: 'disable' },
    databases: {
      '*': { host: state.pg.host, port: state.pg.port },
    },
    pool_mode: 'session',
    default_pool_size: 20,
  };
}

export function writeDevConfig(state: DevState, port: number): void {
  const header =
    '# Written by `gprxy dev` on each start; edit a copy and use `gprxy start --config` for your own setup.\n';
  writeFileSync(state.configPath, header + stringify(devConfig(state, port)), { mode: 0o600 });
}
