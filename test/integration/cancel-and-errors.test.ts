// Cancel and failure paths through gprxy in session mode: client cancels (postgres.js, psql, a raw CancelRequest
// with node-postgres' key), wrong password, unknown databases, an exhausted pool, a server terminated under its
// client, and client_login_timeout for connections that never finish their startup.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
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
  waitFor,
} from '../support/harness.ts';

let db: TestDb;
let gp: TestProxy;
/** A route to the same database with one server and a short query_wait_timeout. */
let one: string;
/** A configured route whose database does not exist on the server. */
let ghost: string;
let ghostDbname: string;

before(async () => {
  db = await createTestDb('cxl');
  one = `${db.database}_one`;
  ghost = `${db.database}_ghost`;
  ghostDbname = `${db.database}_missing`;
  gp = await startTestProxy({
    databases: {
      [db.database]: backend(),
      [one]: { ...backend(db.database), default_pool_size: 1, query_wait_timeout: '500ms' },
      [ghost]: backend(ghostDbname),
    },
    users: { [db.user]: { password: db.password } },
  });
});

after(async () => {
  if (process.env.DUMP) console.log(gp?.logs.text());
  await gp?.stop();
  await db?.drop();
});

function pgClient(database = db.database, extra: pg.ClientConfig = {}): pg.Client {
  return new pg.Client({
    host: '127.0.0.1',
    port: gp.port,
    user: db.user,
    password: db.password,
    database,
    ...extra,
  });
}

function libpqEnv(database = db.database, password = db.password): Record<string, string> {
  return {
    PGHOST: '127.0.0.1',
    PGPORT: String(gp.port),
    PGUSER: db.user,
    PGPASSWORD: password,
    PGDATABASE: database,
    PGSSLMODE: 'disable',
    PGCONNECT_TIMEOUT: '30',
  };
}

/** Waits until a backend of the test user runs a statement matching `like` and returns its pid. */
async function activeBackend(like: string): Promise<number> {
  let pid = 0;
  await waitFor(
    async () => {
      const rows = await admin<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2 AND state = 'active' AND query LIKE $3`,
        [db.database, db.user, like],
      );
      pid = rows[0]?.pid ?? 0;
      return pid !== 0;
    },
    15_000,
    `a backend running ${like}`,
  );
  return pid;
}

async function backendGone(pid: number): Promise<void> {
  await waitFor(
    async () => (await admin('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).length === 0,
    15_000,
    `backend ${pid} to exit`,
  );
}

function cancelRequest(port: number, pid: number, secret: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const pkt = Buffer.alloc(16);
    pkt.writeInt32BE(16, 0);
    pkt.writeInt32BE(80877102, 4);
    pkt.writeInt32BE(pid, 8);
    pkt.writeInt32BE(secret, 12);
    s.on('connect', () => s.write(pkt));
    s.on('error', reject);
    s.on('close', () => resolve());
  });
}

test('postgres.js query.cancel() reaches the server: 57014 promptly, session usable', async () => {
  const sql = postgres({
    host: '127.0.0.1',
    port: gp.port,
    user: db.user,
    password: db.password,
    database: db.database,
    max: 1,
    connect_timeout: 30,
  });
  try {
    await sql`select 1`;
    const q = sql`select pg_sleep(30) as slept`;
    const done = q.then(
      () => undefined,
      (e: postgres.PostgresError) => e,
    );
    await activeBackend('select pg_sleep(30)%');
    const t0 = Date.now();
    q.cancel();
    const err = await done;
    assert.ok(err, 'the query was not canceled');
    assert.equal(err.code, '57014');
    assert.match(err.message, /canceling statement due to user request/);
    assert.ok(Date.now() - t0 < 5000, `cancel took ${Date.now() - t0} ms`);
    const [row] = await sql`select 'still here' as s`;
    assert.equal(row!.s, 'still here');
  } finally {
    await sql.end({ timeout: 5 });
  }
});

test('psql: Ctrl-C (SIGINT) cancels the running statement through gprxy', {
  skip: clientSkip('psql'),
}, async () => {
  const child = spawn('psql', ['-X', '-c', 'select pg_sleep(30)'], {
    env: { ...process.env, ...libpqEnv() },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  try {
    await activeBackend('select pg_sleep(30)%');
    const t0 = Date.now();
    child.kill('SIGINT');
    const code = await exited;
    assert.ok(Date.now() - t0 < 5000, `cancel took ${Date.now() - t0} ms`);
    assert.equal(code, 1);
    assert.match(stderr, /canceling statement due to user request/);
  } finally {
    child.kill('SIGKILL');
  }
});

test('BackendKeyData: pid is the server pid; a wrong secret is ignored, the right one cancels', async () => {
  const c = pgClient();
  await c.connect();
  try {
    const keyed = c as unknown as { processID: number; secretKey: number };
    const { rows } = await c.query('SELECT pg_backend_pid() AS pid');
    assert.equal(keyed.processID, rows[0].pid);
    const q = c.query('SELECT pg_sleep(30)').then(
      () => undefined,
      (e: pg.DatabaseError) => e,
    );
    const pid = await activeBackend('SELECT pg_sleep(30)%');
    assert.equal(pid, keyed.processID);
    const unknownBefore = gp.logs.lines.filter((l) => l.event === 'cancel_unknown').length;
    await cancelRequest(gp.port, keyed.processID, keyed.secretKey ^ 0x5a5a5a5a);
    await waitFor(
      () => gp.logs.lines.filter((l) => l.event === 'cancel_unknown').length > unknownBefore,
      10_000,
      'the wrong key to be refused',
    );
    assert.equal((await activeBackend('SELECT pg_sleep(30)%')) === pid, true);
    const t0 = Date.now();
    await cancelRequest(gp.port, keyed.processID, keyed.secretKey);
    const err = await q;
    assert.equal(err?.code, '57014');
    assert.ok(Date.now() - t0 < 5000, `cancel took ${Date.now() - t0} ms`);
    assert.equal((await c.query('SELECT 7 AS n')).rows[0].n, 7);
  } finally {
    await c.end();
  }
});

test('wrong password: 28P01 for node-postgres, postgres.js and psql', async () => {
  const c = pgClient(db.database, { password: 'not-the-password' });
  await assert.rejects(c.connect(), { code: '28P01' });

  const sql = postgres({
    host: '127.0.0.1',
    port: gp.port,
    user: db.user,
    password: 'not-the-password',
    database: db.database,
    max: 1,
    connect_timeout: 30,
  });
  try {
    await assert.rejects(sql`select 1`, { code: '28P01' });
  } finally {
    await sql.end({ timeout: 1 });
  }

  if (!clientSkip('psql')) {
    const r = await run('psql', ['-X', '-c', 'select 1'], libpqEnv(db.database, 'not-the-password'));
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`password authentication failed for user "${db.user}"`));
  }
});

test('unknown database: not in the config, and configured but missing on the server', async () => {
  const c = pgClient('no_such_route');
  await assert.rejects(c.connect(), (e: pg.DatabaseError) => {
    assert.equal(e.code, '3D000');
    assert.equal(e.message, 'database "no_such_route" does not exist');
    return true;
  });

  // Twice: the first dials and gets PostgreSQL's own FATAL, the second gets it again without a hang.
  for (let i = 0; i < 2; i++) {
    const g = pgClient(ghost);
    const t0 = Date.now();
    await assert.rejects(g.connect(), (e: pg.DatabaseError) => {
      assert.equal(e.code, '3D000');
      assert.equal(e.message, `database "${ghostDbname}" does not exist`);
      return true;
    });
    assert.ok(Date.now() - t0 < 10_000);
  }

  if (!clientSkip('psql')) {
    const r = await run('psql', ['-X', '-c', 'select 1'], libpqEnv('no_such_route'));
    assert.equal(r.code, 2);
    assert.match(r.stderr, /database "no_such_route" does not exist/);
  }

  // The proxy still serves the databases that exist.
  const ok = pgClient();
  await ok.connect();
  assert.equal((await ok.query('SELECT 1 AS one')).rows[0].one, 1);
  await ok.end();
});

test('pool exhausted past query_wait_timeout: 53300, not a hang; the pool serves again afterwards', async () => {
  const holder = pgClient(one);
  await holder.connect();
  await holder.query('SELECT 1');
  try {
    const waiter = pgClient(one);
    const t0 = Date.now();
    await assert.rejects(waiter.connect(), (e: pg.DatabaseError) => {
      assert.equal(e.code, '53300');
      assert.match(e.message, /query_wait_timeout/);
      return true;
    });
    assert.ok(Date.now() - t0 < 10_000, `waited ${Date.now() - t0} ms`);
  } finally {
    await holder.end();
  }
  const next = pgClient(one);
  await next.connect();
  assert.equal((await next.query('SELECT 2 AS two')).rows[0].two, 2);
  await next.end();
});

test("pg_terminate_backend: the client gets PostgreSQL's 57P01 FATAL, the pool's next client works", async () => {
  // Idle client: the FATAL arrives unsolicited.
  const idle = pgClient(one);
  await idle.connect();
  const idlePid = (await idle.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  const idleError = new Promise<pg.DatabaseError>((res) =>
    idle.on('error', (e) => res(e as pg.DatabaseError)),
  );
  const ended = new Promise<void>((res) => idle.on('end', () => res()));
  await admin('SELECT pg_terminate_backend($1)', [idlePid]);
  const e1 = await idleError;
  assert.equal(e1.code, '57P01');
  assert.match(e1.message, /terminating connection due to administrator command/);
  await ended;
  await backendGone(idlePid);

  // Client in a query.
  const busy = pgClient(one);
  busy.on('error', () => undefined);
  await busy.connect();
  const busyPid = (await busy.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  assert.notEqual(busyPid, idlePid);
  const q = busy.query('SELECT pg_sleep(30)').then(
    () => undefined,
    (e: pg.DatabaseError) => e,
  );
  await activeBackend('SELECT pg_sleep(30)%');
  await admin('SELECT pg_terminate_backend($1)', [busyPid]);
  const e2 = await q;
  assert.equal(e2?.code, '57P01');
  await busy.end().catch(() => undefined);

  // default_pool_size 1: the next client can only work if the dead server was dropped from the pool.
  const next = pgClient(one);
  await next.connect();
  const nextPid = (await next.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  assert.ok(nextPid !== idlePid && nextPid !== busyPid);
  await next.end();
  const pool = gp.proxy.pools.get({ database: one, user: db.user });
  await waitFor(() => pool?.counts.active === 0, 10_000, 'the pool to have no active server');

  // A server terminated while idle in the pool is dropped, not handed to the next client.
  assert.equal(pool?.counts.idle, 1);
  await admin('SELECT pg_terminate_backend($1)', [nextPid]);
  await waitFor(() => pool?.counts.idle === 0, 10_000, 'the terminated idle server to leave the pool');
  const last = pgClient(one);
  await last.connect();
  const lastPid = (await last.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  assert.notEqual(lastPid, nextPid);
  await last.end();
});

test('client_login_timeout closes connections that never finish their startup or login', async () => {
  const lt = await startTestProxy({
    client_login_timeout: '500ms',
    databases: { [db.database]: backend() },
    users: { [db.user]: { password: db.password } },
  });
  try {
    const startup = (() => {
      const params = Buffer.from(`user\0${db.user}\0database\0${db.database}\0\0`);
      const b = Buffer.alloc(8 + params.length);
      b.writeInt32BE(b.length, 0);
      b.writeInt32BE(196608, 4);
      params.copy(b, 8);
      return b;
    })();
    const cases: [string, Buffer][] = [
      ['nothing', Buffer.alloc(0)],
      ['half a startup packet', startup.subarray(0, 11)],
      ['a startup packet but no password', startup],
    ];
    const results = await Promise.all(
      cases.map(
        ([name, bytes]) =>
          new Promise<{ name: string; ms: number; received: Buffer }>((resolve, reject) => {
            const s = net.connect({ host: '127.0.0.1', port: lt.port });
            const got: Buffer[] = [];
            let t0 = 0;
            s.on('connect', () => {
              t0 = Date.now();
              if (bytes.length) s.write(bytes);
            });
            s.on('data', (d: Buffer) => got.push(d));
            s.on('error', () => undefined);
            s.on('close', () => resolve({ name, ms: Date.now() - t0, received: Buffer.concat(got) }));
            setTimeout(() => reject(new Error(`${name}: still open after 20 s`)), 20_000).unref();
          }),
      ),
    );
    for (const r of results) {
      assert.ok(r.ms < 10_000, `${r.name}: closed after ${r.ms} ms`);
    }
    // The one that got as far as authentication was asked for SASL, then told why it is being closed.
    const last = results[2]!.received;
    assert.equal(String.fromCharCode(last[0]!), 'R');
    assert.match(last.toString('latin1'), /C08006\0/);
    assert.match(last.toString('latin1'), /client_login_timeout/);
  } finally {
    await lt.stop();
  }
});
