// Session-mode basics through gprxy with node-postgres: login, queries, transactions, errors, wrong password.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import {
  backend,
  createTestDb,
  startTestProxy,
  type TestDb,
  type TestProxy,
  writeUserlist,
} from '../support/harness.ts';

let db: TestDb;
let gp: TestProxy;

before(async () => {
  db = await createTestDb('smoke');
  gp = await startTestProxy({ databases: { [db.database]: backend() } });
  const file = await writeUserlist(gp.dir, { [db.user]: db.password }, true);
  gp.proxy.reload({
    ...(await import('../../src/config/load.ts')).configFromObject(
      { listen: { port: 0 }, auth: { file }, databases: { [db.database]: backend() } },
      gp.dir,
    ),
  });
});

after(async () => {
  if (process.env.DUMP) console.log(gp.logs.text());
  await gp?.stop();
  await db?.drop();
});

test('queries and transactions through gprxy', async () => {
  const c = new pg.Client({ connectionString: gp.url(db.user, db.password, db.database) });
  await c.connect();
  const r = await c.query('SELECT current_user AS u, session_user AS s, 1 + 1 AS two');
  assert.deepEqual(r.rows[0], { u: db.user, s: db.user, two: 2 });
  await c.query('BEGIN');
  await c.query('CREATE TABLE t (id int)');
  await c.query('INSERT INTO t SELECT generate_series(1, 10)');
  await assert.rejects(c.query('SELECT 1/0'), { code: '22012' });
  await c.query('ROLLBACK');
  await assert.rejects(c.query('SELECT * FROM t'), { code: '42P01' });
  const p = await c.query('SELECT $1::int + $2::int AS sum', [2, 3]);
  assert.equal(p.rows[0].sum, 5);
  await c.end();
});

test('wrong password and unknown user get the same 28P01', async () => {
  for (const [user, pw] of [
    [db.user, 'wrong'],
    ['nobody_here', 'x'],
  ] as const) {
    const c = new pg.Client({ connectionString: gp.url(user, pw, db.database) });
    await assert.rejects(c.connect(), (e: Error & { code?: string; message: string }) => {
      assert.equal(e.code, '28P01');
      assert.equal(e.message, `password authentication failed for user "${user}"`);
      return true;
    });
  }
});
