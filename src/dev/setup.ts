// The embedded default's state: a PostgreSQL under a state directory, a demo database and role whose SCRAM
// verifier gprxy shares (so logins pass through with no plaintext stored), and the gprxy config that serves it.
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
  /** The SSO mapping's service-account logins: each a LOGIN role whose password file sits in the state dir. */
  sso: { dba: string; analyst: string };
}

/** Demo SSO roles: alice (group dba) gets broad, superuser-free rights; bob (group analyst) reads demo. */
export const SSO_ROLES = { dba: 'sso_dba', analyst: 'sso_analyst' } as const;

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

/**
 * PostgreSQL runs as the `postgres` user when we are root, so its data must sit where that user can reach it: then
 * a directory of its own under the temp dir per state directory (two state dirs never share a cluster).
 */
function pgDataDir(stateDir: string): string {
  const inState = join(stateDir, 'pgdata');
  if (userInfo().uid !== 0 || reachableByOthers(inState)) return inState;
  const tag = createHash('sha256').update(stateDir).digest('hex').slice(0, 12);
  const dir = join(tmpdir(), `gprxy-dev-${userInfo().uid}-${tag}`);
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
  const dataDir = pgDataDir(stateDir);
  // A cluster belongs to the superuser password kept beside it: with that password gone (a state directory removed
  // or recreated) nobody can log in to the old cluster, so it is made afresh instead of failing every login.
  if (!existsSync(join(stateDir, 'postgres.password'))) rmSync(dataDir, { recursive: true, force: true });
  const superPassword = persistentSecret(stateDir, 'postgres.password');
  const demoPassword = persistentSecret(stateDir, 'demo.password');
  const pg = await startEmbeddedPostgres({ dataDir, password: superPassword, onLog });
  const demo = { user: 'demo', password: demoPassword, database: 'demo' };
  const ssoVerifiers = {
    dba: await makeScramVerifier(persistentSecret(stateDir, `${SSO_ROLES.dba}.password`)),
    analyst: await makeScramVerifier(persistentSecret(stateDir, `${SSO_ROLES.analyst}.password`)),
  };
  try {
    // The role's verifier is made here and given to both PostgreSQL and gprxy's auth file.
    const verifier = await makeScramVerifier(demoPassword);
    await adminSql(pg, 'postgres', [
      `DO $$ BEGIN
         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo') THEN CREATE ROLE demo LOGIN; END IF;
       END $$`,
      `ALTER ROLE demo PASSWORD ${literal(verifier)}`,
      'CREATE DATABASE demo OWNER demo',
      ...Object.values(SSO_ROLES).map(
        (r) => `DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${r}') THEN CREATE ROLE ${r} LOGIN; END IF;
         END $$`,
      ),
      `ALTER ROLE ${SSO_ROLES.dba} PASSWORD ${literal(ssoVerifiers.dba)} NOSUPERUSER CREATEDB NOCREATEROLE NOBYPASSRLS`,
      `ALTER ROLE ${SSO_ROLES.analyst} PASSWORD ${literal(ssoVerifiers.analyst)} NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS`,
      // dba: reads and writes everything, monitors and signals backends, owns what demo owns (DDL on demo).
      `GRANT pg_read_all_data, pg_write_all_data, pg_monitor, pg_signal_backend TO ${SSO_ROLES.dba}`,
      `GRANT demo TO ${SSO_ROLES.dba}`,
      `GRANT ALL ON DATABASE demo TO ${SSO_ROLES.dba}`,
      `GRANT CONNECT ON DATABASE demo TO ${SSO_ROLES.analyst}`,
    ]);
    // analyst: read-only on demo's public schema, including tables demo creates later.
    await adminSql(pg, 'demo', [
      `GRANT USAGE ON SCHEMA public TO ${SSO_ROLES.analyst}`,
      `GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${SSO_ROLES.analyst}`,
      `ALTER DEFAULT PRIVILEGES FOR ROLE demo IN SCHEMA public GRANT SELECT ON TABLES TO ${SSO_ROLES.analyst}`,
    ]);
    writeFileSync(join(stateDir, 'userlist.txt'), `${userlistLine(demo.user, verifier)}\n`, { mode: 0o600 });
  } catch (e) {
    await pg.stop().catch(() => undefined);
    throw e;
  }
  const configPath = join(stateDir, 'gprxy.yaml');
  return { stateDir, configPath, pg, demo, sso: { ...SSO_ROLES } };
}

export const DEV_HBA = [
  '# Written by `gprxy dev`: the demo login with its password, everyone else with an SSO token.',
  'host demo demo 127.0.0.1/32 scram-sha-256',
  'host all all 127.0.0.1/32 oidc',
  '',
].join('\n');

/** The gprxy config for the dev setup (listen port chosen by the caller; SSO when a local issuer runs). */
export function devConfig(state: DevState, port: number, issuer?: string): Record<string, unknown> {
  const sso = issuer
    ? {
        auth: { type: 'scram-sha-256', file: 'userlist.txt', hba: 'gprxy_hba.conf' },
        sso: {
          providers: [
            { name: 'dev', issuer, audience: 'gprxy', identity_claim: 'email', groups_claim: 'groups' },
          ],
          mapping: [
            { match: { group: 'dba' }, role: state.sso.dba, databases: ['*'] },
            { match: { group: 'analyst' }, role: state.sso.analyst, databases: [state.demo.database] },
          ],
          backend: 'service_account',
          // Tokens over plain TCP from loopback only: gprxy dev listens on 127.0.0.1 without TLS.
          allow_loopback_plain: true,
        },
        users: {
          [state.sso.dba]: { password: `file:${state.sso.dba}.password` },
          [state.sso.analyst]: { password: `file:${state.sso.analyst}.password` },
        },
      }
    : { auth: { type: 'scram-sha-256', file: 'userlist.txt' } };
  return {
    listen: { host: '127.0.0.1', port },
    log_level: 'info',
    ...sso,
    server_tls: { sslmode: 'disable' },
    databases: {
      '*': { host: state.pg.host, port: state.pg.port },
    },
    pool_mode: 'session',
    default_pool_size: 20,
  };
}

export function writeDevConfig(state: DevState, port: number, issuer?: string): void {
  const header =
    '# Written by `gprxy dev` on each start; edit a copy and use `gprxy start --config` for your own setup.\n';
  if (issuer) writeFileSync(join(state.stateDir, 'gprxy_hba.conf'), DEV_HBA, { mode: 0o600 });
  writeFileSync(state.configPath, header + stringify(devConfig(state, port, issuer)), { mode: 0o600 });
}
