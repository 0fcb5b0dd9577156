// Admin console: the virtual database gprxy/pgbouncer through the normal listener, driven by psql and node-postgres:
// pgbouncer's column names, permissions (admin_users, stats_users, others), and every command against real servers.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import pino from 'pino';
import { loadConfigFile } from '../../src/config/load.ts';
import { startProxy } from '../../src/main.ts';
import {
  admin,
  backend,
  clientSkip,
  createTestDb,
  PG,
  run,
  startTestProxy,
  type TestDb,
  type TestProxy,
  waitFor,
} from '../support/harness.ts';

const ADMIN = { user: 'gp_admin', password: 'admin-pw-1' };
const STATS = { user: 'gp_stats', password: 'stats-pw-1' };

/** pgbouncer's SHOW POOLS columns, in order (doc/usage.md, 1.24). */
const PGBOUNCER_POOLS_COLUMNS = [
  'database',
  'user',
  'cl_active',
  'cl_waiting',
  'cl_active_cancel_req',
  'cl_waiting_cancel_req',
  'sv_active',
  'sv_active_cancel',
  'sv_being_canceled',
  'sv_idle',
  'sv_used',
  'sv_tested',
  'sv_login',
  'maxwait',
  'maxwait_us',
  'pool_mode',
  'load_balance_hosts',
];

let db: TestDb;
let gp: TestProxy;

before(async () => {
  db = await createTestDb('adm');
  gp = await startTestProxy({
    databases: { [db.database]: { ...backend(), pool_mode: 'transaction', default_pool_size: 2 } },
    users: {
      [db.user]: { password: db.password },
      [ADMIN.user]: { password: ADMIN.password },
      [STATS.user]: { password: STATS.password },
    },
    admin: { users: [ADMIN.user], stats_users: [STATS.user] },
    server_tls: { sslmode: 'disable' },
  });
});

after(async () => {
  if (process.env.DUMP) console.log(gp.logs.text());
  await gp?.stop();
  await db?.drop();
});

async function connect(user: string, password: string, database: string, port = gp.port): Promise<pg.Client> {
  const c = new pg.Client({
    host: '127.0.0.1',
    port,
    user,
    password,
    database,
    application_name: 'admin-test',
  });
  await c.connect();
  return c;
}

const console_ = (database = 'gprxy') => connect(ADMIN.user, ADMIN.password, database);
const app = async (name = 'app') => {
  const c = new pg.Client({
    host: '127.0.0.1',
    port: gp.port,
    user: db.user,
    password: db.password,
    database: db.database,
    application_name: name,
  });
  await c.connect();
  return c;
};

async function show(
  c: pg.Client,
  what: string,
): Promise<{ fields: string[]; rows: Record<string, string>[] }> {
  const r = await c.query(`SHOW ${what}`);
  return { fields: r.fields.map((f) => f.name), rows: r.rows as Record<string, string>[] };
}

const settled = (p: Promise<unknown>, ms: number) =>
  Promise.race([p.then(() => true), new Promise((r) => setTimeout(() => r(false), ms))]);

test("psql runs SHOW POOLS on the admin database; the columns are exactly pgbouncer's", async (t) => {
  const skip = clientSkip('psql');
  if (skip) return t.skip(skip);
  const a = await app();
  await a.query('SELECT 1');
  const env = { PGPASSWORD: ADMIN.password };
  const args = ['-h', '127.0.0.1', '-p', String(gp.port), '-U', ADMIN.user, '-A', '-F', '|', '-X'];
  for (const database of ['gprxy', 'pgbouncer']) {
    const r = await run('psql', [...args, '-d', database, '-c', 'SHOW POOLS'], env);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.deepEqual(lines[0]!.split('|'), PGBOUNCER_POOLS_COLUMNS);
    const row = lines.slice(1).find((l) => l.startsWith(`${db.database}|${db.user}|`));
    assert.ok(row, r.stdout);
    assert.equal(row.split('|')[15], 'transaction');
  }
  const bad = await run('psql', [...args, '-d', 'gprxy', '-c', 'SHOW NOTHING'], env);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /invalid command/);
  await a.end();
});

test("every SHOW command answers with pgbouncer's columns and live figures", async () => {
  const a = await app('show-me');
  await a.query('SELECT 1');
  const c = await console_();
  const pools = await show(c, 'POOLS');
  assert.deepEqual(pools.fields, PGBOUNCER_POOLS_COLUMNS);
  const pool = pools.rows.find((r) => r.database === db.database)!;
  assert.equal(pool.user, db.user);
  assert.equal(pool.cl_active, '1');
  assert.equal(Number(pool.sv_idle) + Number(pool.sv_active) >= 1, true);

  const clients = await show(c, 'CLIENTS');
  assert.deepEqual(clients.fields.slice(0, 5), ['type', 'user', 'database', 'replication', 'state']);
  assert.equal(clients.fields.at(-1), 'id');
  const mine = clients.rows.find((r) => r.application_name === 'show-me')!;
  assert.equal(mine.type, 'C');
  assert.equal(mine.database, db.database);
  assert.equal(mine.addr, '127.0.0.1');
  assert.ok(clients.rows.some((r) => r.database === 'gprxy' && r.user === ADMIN.user));

  const servers = await show(c, 'SERVERS');
  assert.deepEqual(servers.fields, clients.fields);
  const srv = servers.rows.find((r) => r.database === db.database)!;
  assert.equal(srv.type, 'S');
  const pids = await admin<{ pid: number }>(
    'SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2',
    [db.database, db.user],
  );
  assert.ok(pids.some((p) => String(p.pid) === srv.remote_pid));

  const stats = await show(c, 'STATS');
  assert.equal(stats.fields[0], 'database');
  assert.ok(stats.fields.includes('total_xact_count') && stats.fields.includes('avg_wait_time'));
  const statsOf = async () => (await show(c, 'STATS')).rows.find((r) => r.database === db.database)!;
  const s0 = await statsOf();
  assert.ok(Number(s0.total_xact_count) >= 1);
  // Traffic counters move with the statements relayed: 100,000 bytes of result, one query, one transaction.
  await a.query("SELECT repeat('x', 100000) AS big");
  const s1 = await statsOf();
  const grew = (k: string) => Number(s1[k]) - Number(s0[k]);
  assert.ok(grew('total_sent') >= 100_000, `total_sent grew by ${grew('total_sent')}`);
  assert.ok(grew('total_received') >= 'SELECT repeat'.length, 'total_received');
  assert.ok(grew('total_query_count') >= 1 && grew('total_xact_count') >= 1);
  assert.ok(grew('total_query_time') > 0 && Number(s1.avg_query_time) > 0);
  // node-postgres' parameterised query: one Parse and one Bind through the extended protocol.
  await a.query('SELECT $1::int AS n', [1]);
  const s2 = await statsOf();
  assert.ok(Number(s2.total_client_parse_count) > Number(s1.total_client_parse_count));
  assert.ok(Number(s2.total_bind_count) > Number(s1.total_bind_count));

  const dbs = await show(c, 'DATABASES');
  assert.deepEqual(dbs.fields.slice(0, 4), ['name', 'host', 'port', 'database']);
  const d = dbs.rows.find((r) => r.name === db.database)!;
  assert.equal(d.port, String(PG.port));
  assert.equal(d.paused, '0');

  const users = await show(c, 'USERS');
  assert.deepEqual(users.fields.slice(0, 2), ['name', 'pool_size']);
  assert.ok(users.rows.some((r) => r.name === db.user));

  const config = await show(c, 'CONFIG');
  assert.deepEqual(config.fields, ['key', 'value', 'default', 'changeable']);
  assert.ok(config.rows.some((r) => r.key === 'pool_mode'));
  const text = JSON.stringify(config.rows);
  for (const secret of [db.password, ADMIN.password, STATS.password]) assert.ok(!text.includes(secret));

  const version = await show(c, 'VERSION');
  assert.deepEqual(version.fields, ['version']);
  assert.match(version.rows[0]!.version!, /^gprxy \d/);

  const lists = await show(c, 'LISTS');
  assert.deepEqual(lists.fields, ['list', 'items']);
  assert.ok(Number(lists.rows.find((r) => r.list === 'used_clients')!.items) >= 2);

  // The extended protocol is refused, and the console stays usable.
  await assert.rejects(c.query({ text: 'SHOW POOLS', name: 'p1' }), { code: '08P01' });
  assert.equal((await show(c, 'VERSION')).rows.length, 1);
  await c.end();
  await a.end();
});

test('stats_users may SHOW but not control; other users are refused the console with 28000', async () => {
  const s = await connect(STATS.user, STATS.password, 'pgbouncer');
  assert.ok((await show(s, 'POOLS')).rows.length >= 0);
  for (const cmd of [
    'PAUSE',
    'RESUME',
    'RELOAD',
    'RECONNECT',
    `KILL ${db.database}`,
    'KILL_CLIENT 1',
    'SHUTDOWN',
  ]) {
    await assert.rejects(s.query(cmd), { code: '42501' }, cmd);
  }
  await s.end();
  await assert.rejects(connect(db.user, db.password, 'gprxy'), { code: '28000' });
  await assert.rejects(connect(ADMIN.user, 'wrong', 'gprxy'), { code: '28P01' });
});

test('PAUSE waits for the transaction in flight, then new transactions wait until RESUME', async () => {
  const c = await console_();
  const busy = await app('busy');
  await busy.query('BEGIN');
  await busy.query('SELECT 1');
  const paused = c.query('PAUSE');
  assert.equal(await settled(paused, 300), false, 'PAUSE returned while a transaction held a server');
  await busy.query('COMMIT');
  await paused;
  const [pool] = (await show(c, 'POOLS')).rows.filter((r) => r.database === db.database);
  assert.equal(pool!.sv_active, '0');
  assert.equal(pool!.sv_idle, '0', 'PAUSE closes the idle servers');
  assert.equal((await show(c, 'DATABASES')).rows.find((r) => r.name === db.database)!.paused, '1');

  const waiting = busy.query('SELECT 42 AS n');
  assert.equal(await settled(waiting, 300), false, 'a transaction ran while paused');
  const p2 = (await show(c, 'POOLS')).rows.find((r) => r.database === db.database)!;
  assert.equal(p2.cl_waiting, '1');
  await c.query('RESUME');
  assert.equal((await waiting).rows[0].n, 42);
  await busy.end();
  await c.end();
});

test('PAUSE under pgbench load: transactions stop, servers go idle-closed, RESUME lets every client finish', {
  skip: clientSkip('pgbench'),
}, async () => {
  const c = await console_();
  const dir = mkdtempSync(join(tmpdir(), 'gprxy-pause-'));
  const script = join(dir, 'select.sql');
  writeFileSync(script, 'SELECT 1;\n');
  const xacts = async () =>
    Number((await show(c, 'STATS')).rows.find((r) => r.database === db.database)!.total_xact_count);
  const start = await xacts();
  // 8 clients over the pool of 2 servers, for 6 seconds, with no setup (-n: no vacuum of pgbench tables).
  const bench = run(
    'pgbench',
    [
      '-n',
      '-f',
      script,
      '-c',
      '8',
      '-j',
      '2',
      '-T',
      '6',
      '-h',
      '127.0.0.1',
      '-p',
      String(gp.port),
      '-U',
      db.user,
      db.database,
    ],
    { PGPASSWORD: db.password, PGSSLMODE: 'disable' },
  );
  await waitFor(async () => (await xacts()) > start + 200, 10_000, 'pgbench traffic through the proxy');
  await c.query('PAUSE');
  const pool = (await show(c, 'POOLS')).rows.find((r) => r.database === db.database)!;
  assert.equal(pool.sv_active, '0', 'PAUSE returned with a server still lent');
  await waitFor(
    async () =>
      Number((await show(c, 'POOLS')).rows.find((r) => r.database === db.database)!.cl_waiting) === 8,
    5000,
    'all 8 pgbench clients queued',
  );
  const frozen = await xacts();
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(await xacts(), frozen, 'a transaction ran while paused');
  await c.query('RESUME');
  const r = await bench;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /number of failed transactions: 0 /);
  assert.ok((await xacts()) > frozen + 100, 'traffic resumed');
  await c.end();
});

test('KILL_CLIENT ends that client with 57P01; RECONNECT closes idle servers', async () => {
  const c = await console_();
  const victim = await app('victim');
  await victim.query('SELECT 1');
  const errors: (Error & { code?: string })[] = [];
  victim.on('error', (e) => errors.push(e));
  const id = (await show(c, 'CLIENTS')).rows.find((r) => r.application_name === 'victim')!.id!;
  await c.query(`KILL_CLIENT ${id}`);
  await waitFor(() => errors.length > 0, 5000, 'the killed client to hear about it');
  assert.equal(errors[0]!.code, '57P01');
  assert.ok(!(await show(c, 'CLIENTS')).rows.some((r) => r.id === id));
  await assert.rejects(c.query('KILL_CLIENT 999999'), { code: '42704' });

  const a = await app();
  await a.query('SELECT 1');
  const before = (await show(c, 'SERVERS')).rows.filter((r) => r.database === db.database);
  assert.ok(before.length >= 1);
  await c.query(`RECONNECT ${db.database}`);
  const pids = before.map((r) => Number(r.remote_pid));
  await waitFor(
    async () =>
      (
        await admin<{ n: number }>('SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ANY($1)', [
          pids,
        ])
      )[0]!.n === 0,
    5000,
    'old servers to close',
  );
  assert.equal((await a.query('SELECT 2 AS two')).rows[0].two, 2, 'a new server is opened');
  await a.end();
  await c.end();
});

test('KILL db drops its clients and holds new ones until RESUME db', async () => {
  const c = await console_();
  const victim = await app('kill-db');
  const errors: (Error & { code?: string })[] = [];
  victim.on('error', (e) => errors.push(e));
  await victim.query('SELECT 1');
  await c.query(`KILL ${db.database}`);
  await waitFor(() => errors.length > 0, 5000, 'the killed client to hear about it');
  assert.equal(errors[0]!.code, '57P01');
  await assert.rejects(c.query('KILL nosuchdb'), { code: '3D000' });
  const next = await app('after-kill');
  const q = next.query('SELECT 3 AS n');
  assert.equal(await settled(q, 300), false);
  await c.query(`RESUME ${db.database}`);
  assert.equal((await q).rows[0].n, 3);
  await next.end();
  await c.end();
});

test('RELOAD re-reads the config file (and keeps the old one when the new is invalid); SHUTDOWN stops', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'gprxy-admin-'));
  const file = join(dir, 'gprxy.yaml');
  const yaml = (extra: string) =>
    `listen: { host: 127.0.0.1, port: 0 }
server_tls: { sslmode: disable }
users:
  ${ADMIN.user}: { password: ${ADMIN.password} }
admin: { users: [${ADMIN.user}] }
databases:
  ${db.database}: { host: ${PG.host}, port: ${PG.port} }
${extra}`;
  writeFileSync(file, yaml(''));
  const proxy = await startProxy(loadConfigFile(file, {}), pino({ level: 'silent' }));
  try {
    const c = await connect(ADMIN.user, ADMIN.password, 'gprxy', proxy.port);
    assert.deepEqual(
      (await show(c, 'DATABASES')).rows.map((r) => r.name),
      [db.database],
    );
    writeFileSync(file, yaml(`  extra_db: { host: ${PG.host}, port: ${PG.port}, dbname: postgres }\n`));
    await c.query('RELOAD');
    assert.deepEqual(
      (await show(c, 'DATABASES')).rows.map((r) => r.name).sort(),
      [db.database, 'extra_db'].sort(),
    );
    writeFileSync(file, `${yaml('')}bogus_key: 1\n`);
    await assert.rejects(c.query('RELOAD'), { code: 'F0000' });
    assert.equal((await show(c, 'DATABASES')).rows.length, 2, 'the old config stays');

    const errors: (Error & { code?: string })[] = [];
    c.on('error', (e) => errors.push(e));
    await c.query('SHUTDOWN').catch(() => undefined);
    await proxy.stopped;
    await assert.rejects(connect(ADMIN.user, ADMIN.password, 'gprxy', proxy.port), { code: 'ECONNREFUSED' });
  } finally {
    await proxy.shutdown({ graceful: false });
  }
});
