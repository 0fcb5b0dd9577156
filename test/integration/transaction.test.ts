// Transaction pooling: many clients over few servers with pgbench and real drivers; prepared statements across
// servers; parameter sync; pinning; statement mode; cancel.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import {
  admin,
  backend,
  clientSkip,
  createTestDb,
  run,
  startTestProxy,
  type TestDb,
  type TestProxy,
} from '../support/harness.ts';

let db: TestDb;
let gp: TestProxy;

before(async () => {
  db = await createTestDb('tx');
  gp = await startTestProxy({
    databases: { [db.database]: { ...backend(), pool_mode: 'transaction', default_pool_size: 10 } },
    users: { [db.user]: { password: db.password } },
    server_tls: { sslmode: 'disable' },
  });
});
after(async () => {
  if (process.env.DUMP) console.log(gp.logs.text());
  await gp?.stop();
  await db?.drop();
});

const url = () => gp.url(db.user, db.password, db.database);

test('simple and extended queries, transactions and errors through a transaction pool', async () => {
  const c = new pg.Client({ connectionString: url() });
  await c.connect();
  assert.equal((await c.query('SELECT 1 AS one')).rows[0].one, 1);
  assert.equal((await c.query('SELECT $1::int + 1 AS n', [41])).rows[0].n, 42);
  await c.query('BEGIN');
  await c.query('CREATE TABLE IF NOT EXISTS tx_t (id int)');
  await c.query('INSERT INTO tx_t VALUES (1)');
  await assert.rejects(c.query('SELECT 1/0'), { code: '22012' });
  await c.query('ROLLBACK');
  await assert.rejects(c.query('SELECT $1::int / 0', [1]), { code: '22012' });
  assert.equal((await c.query('SELECT 2 AS two')).rows[0].two, 2);
  await c.end();
});

test('named prepared statements survive transactions landing on different servers', async () => {
  const clients = await Promise.all(
    Array.from({ length: 6 }, async () => {
      const c = new pg.Client({ connectionString: url() });
      await c.connect();
      return c;
    }),
  );
  for (let round = 0; round < 5; round++) {
    await Promise.all(
      clients.map(async (c, i) => {
        const r = await c.query({
          name: 'add',
          text: 'SELECT $1::int + $2::int AS s, pg_backend_pid() AS pid',
          values: [i, round],
        });
        assert.equal(r.rows[0].s, i + round);
        const r2 = await c.query({ name: 'mul', text: 'SELECT $1::int * 2 AS m', values: [i] });
        assert.equal(r2.rows[0].m, i * 2);
      }),
    );
  }
  await Promise.all(clients.map((c) => c.end()));
});

test('postgres.js (prepares by default) works with many concurrent clients', async () => {
  const sql = postgres(url(), { max: 8 });
  const results = await Promise.all(
    Array.from({ length: 50 }, (_, i) => sql`SELECT ${i}::int AS v, now() AS t`),
  );
  assert.deepEqual(
    results.map((r) => r[0]!.v),
    Array.from({ length: 50 }, (_, i) => i),
  );
  await sql.begin(async (tx) => {
    await tx`SELECT 1`;
    await tx`SELECT 2`;
  });
  await sql.end();
});

test('pgbench simple, extended and prepared with 64 clients over 10 servers: no failures', async (t) => {
  const skip = clientSkip('pgbench');
  if (skip) return t.skip(skip);
  const env = { PGPASSWORD: db.password };
  const base = ['-h', '127.0.0.1', '-p', String(gp.port), '-U', db.user];
  const init = await run('pgbench', ['-i', '-s', '1', ...base, db.database], env);
  assert.equal(init.code, 0, init.stderr);
  for (const mode of ['simple', 'extended', 'prepared']) {
    const r = await run(
      'pgbench',
      ['-M', mode, '-c', '64', '-j', '2', '-t', '20', ...base, db.database],
      env,
    );
    assert.equal(r.code, 0, `${mode}: ${r.stderr}`);
    assert.match(r.stdout, /number of transactions actually processed: 1280\/1280/, mode);
    assert.match(r.stdout, /number of failed transactions: 0/, mode);
  }
  const servers = await admin<{ n: string }>(
    'SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND usename = $2',
    [db.database, db.user],
  );
  assert.ok(Number(servers[0]!.n) <= 10, `at most the pool size on the server, saw ${servers[0]!.n}`);
});
