// Transaction pooling and session state: parameters and SETs follow each client across a shared server, pinning
// (and refuse) for state that cannot move, statement mode, cancel, plan invalidation, prepared-statement eviction.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import type { RawConfig } from '../../src/config/schema.ts';
import {
  admin,
  backend,
  createTestDb,
  startTestProxy,
  type TestDb,
  type TestProxy,
  waitFor,
} from '../support/harness.ts';

let db: TestDb;
const proxies: TestProxy[] = [];

before(async () => {
  db = await createTestDb('txs');
  await admin(`GRANT CREATE ON SCHEMA public TO ${db.user}`, [], db.database);
});
after(async () => {
  for (const p of proxies) await p.stop();
  await db?.drop();
});

async function proxy(over: Record<string, unknown> = {}): Promise<TestProxy> {
  const gp = await startTestProxy({
    databases: { [db.database]: { ...backend(), pool_mode: 'transaction', default_pool_size: 1, ...over } },
    users: { [db.user]: { password: db.password } },
    server_tls: { sslmode: 'disable' },
  } as RawConfig);
  proxies.push(gp);
  return gp;
}

async function client(gp: TestProxy, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = new pg.Client({
    host: '127.0.0.1',
    port: gp.port,
    user: db.user,
    password: db.password,
    database: db.database,
    ...extra,
  });
  await c.connect();
  return c;
}

const one = async (c: pg.Client, sql: string) => Object.values((await c.query(sql)).rows[0] as object)[0];

test('two clients interleaved on one server each see only their own parameters and SETs', async () => {
  const gp = await proxy();
  const a = await client(gp, { application_name: 'app_a', options: '-c TimeZone=UTC -c DateStyle=ISO,MDY' });
  const b = await client(gp, {
    application_name: 'app_b',
    options: '-c TimeZone=Asia/Tokyo -c DateStyle=German',
  });
  await a.query("SET search_path = 'a_schema', public");
  await b.query('SET work_mem = 1234');
  for (let i = 0; i < 3; i++) {
    assert.equal(await one(a, "SELECT current_setting('TimeZone')"), 'UTC');
    assert.equal(await one(b, "SELECT current_setting('TimeZone')"), 'Asia/Tokyo');
    assert.equal(await one(a, "SELECT current_setting('DateStyle')"), 'ISO, MDY');
    assert.equal(await one(b, "SELECT current_setting('DateStyle')"), 'German, DMY');
    assert.equal(await one(a, "SELECT current_setting('application_name')"), 'app_a');
    assert.equal(await one(b, "SELECT current_setting('application_name')"), 'app_b');
    assert.equal(await one(a, "SELECT current_setting('search_path')"), 'a_schema, public');
    assert.equal(await one(b, "SELECT current_setting('search_path')"), '"$user", public');
    assert.equal(await one(a, "SELECT current_setting('work_mem')"), '4MB');
    assert.equal(await one(b, "SELECT current_setting('work_mem')"), '1234kB');
  }
  // Same server for both: the isolation above came from sync, not from separate connections.
  assert.equal(await one(a, 'SELECT pg_backend_pid()'), await one(b, 'SELECT pg_backend_pid()'));
  await b.query('RESET work_mem');
  assert.equal(await one(b, "SELECT current_setting('work_mem')"), '4MB');
  await a.end();
  await b.end();
});

const PIN_TRIGGERS: [string, string][] = [
  ['prepare', 'PREPARE p1 AS SELECT 1'],
  ['listen', 'LISTEN some_channel'],
  ['temp_table', 'CREATE TEMP TABLE tmp_pin (a int)'],
  ['advisory_lock', 'SELECT pg_advisory_lock(4242)'],
  ['declare_with_hold', 'DECLARE c1 CURSOR WITH HOLD FOR SELECT 1'],
  ['set_role', 'SET ROLE NONE'],
  ['session_authorization', 'SET SESSION AUTHORIZATION DEFAULT'],
];

test('each pinning trigger pins the client to its server; the state never reaches another client', async () => {
  const gp = await proxy({ default_pool_size: 2 });
  for (const [reason, sql] of PIN_TRIGGERS) {
    const a = await client(gp);
    const b = await client(gp);
    await a.query(sql);
    await waitFor(
      () => gp.logs.lines.some((l) => l.event === 'pin' && l.reason === reason),
      5000,
      `pin ${reason}`,
    );
    const pidA = await one(a, 'SELECT pg_backend_pid()');
    // b runs meanwhile on the other server; a keeps its own.
    const pidB = await one(b, 'SELECT pg_backend_pid()');
    assert.notEqual(pidA, pidB, reason);
    assert.equal(await one(a, 'SELECT pg_backend_pid()'), pidA, reason);
    await a.end();
    await b.end();
    // After a pinned client leaves, its server is reset: a new client sees none of that state.
    const c = await client(gp);
    const c2 = await client(gp);
    for (const x of [c, c2]) {
      assert.equal(
        await one(x, "SELECT count(*)::int FROM pg_prepared_statements WHERE name = 'p1'"),
        0,
        reason,
      );
      assert.equal(await one(x, 'SELECT count(*)::int FROM pg_listening_channels()'), 0, reason);
      assert.equal(await one(x, 'SELECT count(*)::int FROM pg_cursors'), 0, reason);
      assert.equal(await one(x, "SELECT to_regclass('pg_temp.tmp_pin') IS NULL"), true, reason);
      assert.equal(await one(x, 'SELECT current_user = session_user'), true, reason);
    }
    const locks = await admin<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
    );
    assert.equal(locks[0]!.n, 0, reason);
    await c.end();
    await c2.end();
  }
});

test('pin_policy refuse answers each trigger with a clear error and keeps the session usable', async () => {
  const gp = await proxy({ pin_policy: 'refuse', default_pool_size: 2 });
  const a = await client(gp);
  for (const [reason, sql] of PIN_TRIGGERS) {
    await assert.rejects(a.query(sql), (e: Error & { code?: string }) => {
      assert.equal(e.code, '0A000');
      assert.match(e.message, new RegExp(reason.replaceAll('_', ' ')));
      return true;
    });
    assert.equal(await one(a, 'SELECT 1'), 1);
  }
  // The extended protocol: a refused Parse fails that statement only.
  await assert.rejects(a.query({ text: 'LISTEN x', values: [] }), { code: '0A000' });
  await assert.rejects(a.query('LISTEN $1::text', ['x']), { code: '0A000' });
  assert.equal((await a.query('SELECT $1::int AS v', [7])).rows[0].v, 7);
  await a.end();
});

test('statement mode runs single statements and refuses transaction blocks', async () => {
  const gp = await proxy({ pool_mode: 'statement' });
  const a = await client(gp);
  assert.equal(await one(a, 'SELECT 40 + 2'), 42);
  assert.equal((await a.query('SELECT $1::int AS v', [5])).rows[0].v, 5);
  await assert.rejects(a.query('BEGIN'), (e: Error & { code?: string }) => {
    assert.equal(e.code, '0A000');
    assert.match(e.message, /transaction blocks are not allowed in statement pooling mode/);
    return true;
  });
  assert.equal(await one(a, 'SELECT 1'), 1, 'the session goes on');
  // A transaction opened where the scan cannot see it ends the session; the server comes back clean.
  a.on('error', () => undefined);
  const closed = new Promise((res) => a.once('end', res));
  await a.query('SELECT 1; BEGIN').catch(() => undefined);
  await closed;
  const b = await client(gp);
  assert.equal(await one(b, "SELECT current_setting('transaction_isolation') IS NOT NULL"), true);
  assert.equal(await one(b, 'SELECT now() = statement_timestamp()'), true, 'not inside an old transaction');
  await b.end();
});

test('cancel reaches the server running the query; a cancel while no server is held is a no-op', async () => {
  const gp = await proxy();
  const sql = postgres(gp.url(db.user, db.password, db.database), { max: 1 });
  const q = sql`SELECT pg_sleep(30)`;
  const started = Date.now();
  setTimeout(() => q.cancel(), 300);
  await assert.rejects(q, (e: Error & { code?: string }) => e.code === '57014');
  assert.ok(Date.now() - started < 10_000);
  assert.deepEqual([...(await sql`SELECT 3 AS v`)], [{ v: 3 }]);
  await sql.end();

  const c = await client(gp);
  const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
  const raw = net.connect({ host: '127.0.0.1', port: gp.port });
  await new Promise((res) => raw.once('connect', res));
  const req = Buffer.alloc(16);
  req.writeInt32BE(16, 0);
  req.writeInt32BE(80877102, 4);
  req.writeInt32BE(processID, 8);
  req.writeInt32BE(secretKey, 12);
  raw.end(req);
  await new Promise((res) => raw.once('close', res));
  await waitFor(() => gp.logs.lines.some((l) => l.event === 'cancel_idle'), 5000, 'the idle cancel');
  assert.equal(await one(c, 'SELECT 5'), 5);
  await c.end();
});

test('a plan invalidated by DDL gives PostgreSQL’s error once, then the statement is prepared again', async () => {
  const gp = await proxy();
  const a = await client(gp);
  await a.query('CREATE TABLE inval (a int)');
  await a.query('INSERT INTO inval VALUES (1)');
  const q = { name: 'sel_inval', text: 'SELECT * FROM inval' };
  assert.deepEqual((await a.query(q)).rows, [{ a: 1 }]);
  await a.query('ALTER TABLE inval ADD COLUMN b int DEFAULT 2');
  await assert.rejects(a.query(q), { code: '0A000' });
  assert.deepEqual((await a.query(q)).rows, [{ a: 1, b: 2 }]);
  await a.end();
});

test('max_prepared_statements evicts least recently used statements from servers', async () => {
  const gp = await proxy({ max_prepared_statements: 2 });
  const a = await client(gp);
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 5; i++) {
      const r = await a.query({ name: `s${i}`, text: `SELECT $1::int + ${i} AS v`, values: [round] });
      assert.equal(r.rows[0].v, round + i);
    }
    assert.ok(
      Number(await one(a, "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'gprxy_%'")) <= 2,
    );
  }
  await a.end();
});
