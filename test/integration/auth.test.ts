// Authentication without plaintext: auth_query (pg_authid and a SECURITY DEFINER function), password changes within
// the TTL, expired and NOLOGIN roles; HBA rules for each method and no match; mTLS with a user map; abuse limits;
// a reload that adds a database and resizes a pool under a connected client.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { configFromObject } from '../../src/config/load.ts';
import type { RawConfig } from '../../src/config/schema.ts';
import { type TestCerts, testCerts } from '../support/certs.ts';
import {
  admin,
  backend,
  createTestDb,
  PG,
  registerSecret,
  startTestProxy,
  type TestDb,
  type TestProxy,
  uniq,
  waitFor,
} from '../support/harness.ts';
import { Wire } from '../support/wire.ts';

let db: TestDb;
let certs: TestCerts;
const proxies: TestProxy[] = [];
const roles: string[] = [];

before(async () => {
  db = await createTestDb('auth');
  certs = testCerts();
});
after(async () => {
  for (const p of proxies) await p.stop();
  await db?.drop();
  for (const r of roles) await admin(`DROP ROLE IF EXISTS ${r}`);
  certs?.cleanup();
});

async function role(password: string, extra = ''): Promise<string> {
  const name = uniq('r');
  registerSecret(password);
  await admin(`CREATE ROLE ${name} LOGIN PASSWORD '${password}' ${extra}`);
  await admin(`GRANT CONNECT ON DATABASE ${db.database} TO ${name}`);
  roles.push(name);
  return name;
}

async function proxy(raw: RawConfig): Promise<TestProxy> {
  const gp = await startTestProxy({ server_tls: { sslmode: 'disable' }, ...raw });
  proxies.push(gp);
  return gp;
}

function connect(
  gp: TestProxy,
  user: string,
  password: string | undefined,
  extra: Partial<pg.ClientConfig> = {},
) {
  const c = new pg.Client({
    host: '127.0.0.1',
    port: gp.port,
    user,
    ...(password === undefined ? {} : { password }),
    database: db.database,
    ...extra,
  });
  return c.connect().then(() => c);
}

async function loginWorks(gp: TestProxy, user: string, password: string): Promise<string> {
  const c = await connect(gp, user, password);
  try {
    return (await c.query('SELECT session_user AS u')).rows[0].u as string;
  } finally {
    await c.end();
  }
}

test('auth_query: a user known only to PostgreSQL logs in as itself; password changes apply within the TTL', async () => {
  const user = await role('first-pass');
  const gp = await proxy({
    databases: { [db.database]: backend() },
    auth: { query: undefined, user: PG.user, cache_ttl: '300ms', negative_cache_ttl: '100ms' },
    users: { [PG.user]: { password: PG.password } },
  } as RawConfig);
  // auth.query unset: the default query is only used when configured; configure it explicitly.
  gp.proxy.reload(
    configFromObject(
      {
        listen: { port: 0 },
        server_tls: { sslmode: 'disable' },
        databases: { [db.database]: backend() },
        auth: {
          query:
            'SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname = $1 AND rolcanlogin',
          user: PG.user,
          cache_ttl: '300ms',
          negative_cache_ttl: '100ms',
        },
        users: { [PG.user]: { password: PG.password } },
      },
      gp.dir,
    ),
  );
  assert.equal(await loginWorks(gp, user, 'first-pass'), user, 'PostgreSQL sees the same user');
  await assert.rejects(connect(gp, user, 'wrong'), { code: '28P01' });

  await admin(`ALTER ROLE ${user} PASSWORD 'second-pass'`);
  await waitFor(
    async () => {
      try {
        await loginWorks(gp, user, 'second-pass');
        return true;
      } catch {
        return false;
      }
    },
    5000,
    'the new password',
  );
  await assert.rejects(connect(gp, user, 'first-pass'), { code: '28P01' });

  await admin(`ALTER ROLE ${user} VALID UNTIL '2000-01-01'`);
  await waitFor(
    async () =>
      connect(gp, user, 'second-pass').then(
        (c) => c.end().then(() => false),
        () => true,
      ),
    5000,
    'expiry',
  );
  await assert.rejects(connect(gp, user, 'second-pass'), { code: '28P01' });
  await admin(`ALTER ROLE ${user} VALID UNTIL 'infinity' NOLOGIN`);
  await new Promise((r) => setTimeout(r, 400));
  await assert.rejects(connect(gp, user, 'second-pass'), { code: '28P01' });
});

test('auth_query through a SECURITY DEFINER function run by a non-superuser; startup parameters stay out', async () => {
  const user = await role('fn-pass');
  const authUser = await role('auth-user-pass');
  await admin(
    `CREATE OR REPLACE FUNCTION public.gprxy_lookup(u text, OUT usename text, OUT passwd text) RETURNS record
       LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
       $$ SELECT rolname::text, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
          FROM pg_authid WHERE rolname = u AND rolcanlogin $$`,
    [],
    db.database,
  );
  await admin('REVOKE ALL ON FUNCTION public.gprxy_lookup(text) FROM PUBLIC', [], db.database);
  await admin(`GRANT EXECUTE ON FUNCTION public.gprxy_lookup(text) TO ${authUser}`, [], db.database);
  const gp = await proxy({
    databases: { [db.database]: backend() },
    auth: { query: 'SELECT usename, passwd FROM public.gprxy_lookup($1)', user: authUser },
    users: { [authUser]: { password: 'auth-user-pass' } },
  });
  const c = await connect(gp, user, 'fn-pass', {
    application_name: 'evil_app',
    options: '-c search_path=evil',
  });
  assert.equal((await c.query('SELECT session_user AS u')).rows[0].u, user);
  const authSessions = await admin<{ application_name: string }>(
    'SELECT application_name FROM pg_stat_activity WHERE usename = $1',
    [authUser],
  );
  assert.ok(authSessions.length >= 1, 'the auth query has its own session');
  for (const s of authSessions)
    assert.equal(s.application_name, '', 'no client startup parameter reached it');
  await c.end();
});

test('HBA: each method, reject, hostssl, and no match', async () => {
  const pw = 'hba-pass';
  const created: string[] = [];
  for (let i = 0; i < 7; i++) created.push(await role(pw)); // one at a time: GRANTs on one database conflict
  const [uScram, uMd5, uPw, uTrust, uReject, uSsl, uNone] = created;
  const gp0 = await proxy({ databases: { [db.database]: backend() } });
  const hba = join(gp0.dir, 'gprxy_hba.conf');
  writeFileSync(
    hba,
    [
      '# TYPE  DATABASE  USER  ADDRESS  METHOD',
      `host    ${db.database}  ${uScram}  127.0.0.1/32  scram-sha-256`,
      `host    all  ${uMd5}  127.0.0.0/8  md5`,
      `host    all  ${uPw}   127.0.0.1/32  password`,
      `host    all  ${uTrust}  all  trust`,
      `host    all  ${uReject} all  reject`,
      `hostssl all  ${uSsl}   all  scram-sha-256`,
    ].join('\n'),
  );
  const users = Object.fromEntries(
    [uScram, uMd5, uPw, uTrust, uReject, uSsl, uNone].map((u) => [u!, { password: pw }]),
  );
  gp0.proxy.reload(
    configFromObject(
      {
        listen: { port: 0 },
        server_tls: { sslmode: 'disable' },
        databases: { [db.database]: backend() },
        auth: { hba, allow_cleartext_loopback: true },
        users,
      },
      gp0.dir,
    ),
  );
  const gp = gp0;
  assert.equal(await loginWorks(gp, uScram!, pw), uScram);
  assert.equal(await loginWorks(gp, uMd5!, pw), uMd5);
  assert.equal(await loginWorks(gp, uPw!, pw), uPw);
  assert.equal(await loginWorks(gp, uTrust!, 'anything'), uTrust, 'trust takes no password');
  const methods = gp.logs.lines.filter((l) => l.event === 'login').map((l) => l.method);
  for (const m of ['scram-sha-256', 'md5', 'password', 'trust']) assert.ok(methods.includes(m), m);
  await assert.rejects(connect(gp, uReject!, pw), (e: Error & { code?: string }) => {
    assert.equal(e.code, '28000');
    assert.match(e.message, /pg_hba.conf rejects connection for host "127.0.0.1", user "/);
    return true;
  });
  await assert.rejects(connect(gp, uSsl!, pw), (e: Error & { code?: string }) => {
    assert.equal(e.code, '28000');
    assert.match(
      e.message,
      /no pg_hba.conf entry for host "127.0.0.1", user ".*", database ".*", no encryption/,
    );
    return true;
  });
  await assert.rejects(connect(gp, uNone!, pw), { code: '28000' });
  await assert.rejects(connect(gp, uScram!, 'wrong'), { code: '28P01' });
});

test('mTLS: the cert method maps the certificate CN to the user; no or a foreign certificate is refused', async () => {
  const user = await role('cert-user-pass');
  const gp0 = await proxy({ databases: { [db.database]: backend() } });
  const hba = join(gp0.dir, 'hba.conf');
  writeFileSync(hba, `hostssl all ${user} all cert map=certs\nhost all all all reject\n`);
  gp0.proxy.reload(
    configFromObject(
      {
        listen: { port: 0, tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.ca } },
        server_tls: { sslmode: 'disable' },
        databases: { [db.database]: backend() },
        auth: { hba, user_maps: { certs: { 'gprxy-test-client': user } } },
        users: { [user]: { password: 'cert-user-pass' } },
      },
      gp0.dir,
    ),
  );
  const ca = readFileSync(certs.ca);
  const c = await connect(gp0, user, undefined, {
    ssl: {
      ca,
      cert: readFileSync(certs.clientCert),
      key: readFileSync(certs.clientKey),
      servername: 'localhost',
    },
  });
  assert.equal((await c.query('SELECT session_user AS u')).rows[0].u, user);
  await c.end();
  await assert.rejects(connect(gp0, user, 'cert-user-pass', { ssl: { ca, servername: 'localhost' } }), {
    code: '28000',
  });
  assert.ok(gp0.logs.lines.some((l) => l.event === 'login' && l.method === 'cert'));
});

test('brute force from one address is slowed down; a user from another address logs in normally', async () => {
  const victim = await role('victim-pass');
  const legit = await role('legit-pass');
  const gp = await proxy({
    databases: { [db.database]: backend() },
    users: { [legit]: { password: 'legit-pass' }, [victim]: { password: 'victim-pass' } },
    auth: {
      limits: { failures_per_address: 5, refill_per_second: 0.5, base_delay: '200ms', max_delay: '2s' },
    },
  });
  const attempt = async () => {
    const started = Date.now();
    await Wire.login(gp.port, victim, 'guess', db.database, undefined, '127.0.0.2').then(
      (w) => {
        w.socket.destroy();
        throw new Error('a wrong password was accepted');
      },
      () => undefined,
    );
    return Date.now() - started;
  };
  // Hundreds of wrong passwords, 50 at a time.
  const times: number[] = [];
  const attack = (async () => {
    for (let round = 0; round < 6; round++)
      times.push(...(await Promise.all(Array.from({ length: 50 }, attempt))));
  })();
  await waitFor(() => gp.logs.lines.some((l) => l.event === 'login_throttled'), 10_000, 'throttling');
  const t0 = Date.now();
  assert.equal(await loginWorks(gp, legit, 'legit-pass'), legit);
  assert.ok(Date.now() - t0 < 2000, `legit login took ${Date.now() - t0} ms`);
  await attack;
  assert.equal(times.length, 300);
  assert.ok(times.filter((t) => t >= 1000).length > 100, 'most attempts were held back');
  assert.ok(gp.logs.lines.some((l) => l.event === 'login_throttled' && l.limit === 'address'));
});

test('reload adds a database and resizes a pool without dropping a connected client', async () => {
  const other = await createTestDb('auth2');
  try {
    const cfg = (size: number, withOther: boolean) =>
      configFromObject(
        {
          listen: { port: 0 },
          server_tls: { sslmode: 'disable' },
          databases: {
            [db.database]: { ...backend(), default_pool_size: size, query_wait_timeout: '500ms' },
            ...(withOther ? { [other.database]: backend() } : {}),
          },
          users: { [db.user]: { password: db.password }, [other.user]: { password: other.password } },
        },
        '/tmp',
      );
    const gp = await proxy({ databases: {} });
    gp.proxy.reload(cfg(1, false));
    const held = await connect(gp, db.user, db.password);
    await assert.rejects(connect(gp, db.user, db.password), { code: '53300' }, 'pool of 1 is full');
    gp.proxy.reload(cfg(2, true));
    assert.equal((await held.query('SELECT 1 AS v')).rows[0].v, 1, 'the connected client keeps working');
    const second = await connect(gp, db.user, db.password);
    await second.end();
    const o = new pg.Client({
      host: '127.0.0.1',
      port: gp.port,
      user: other.user,
      password: other.password,
      database: other.database,
    });
    await o.connect();
    await o.end();
    await held.end();
    // An invalid file is rejected by the loader; the running config stays (covered by start.test.ts's SIGHUP).
  } finally {
    await other.drop();
  }
});
