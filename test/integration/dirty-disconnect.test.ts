// Clients that vanish (socket destroyed, process killed) or leave with session state: gprxy never hands a dirty
// server to the next client. No lock, no open transaction, no half-finished extended-protocol work survives them,
// and with one server in the pool the next client (same backend pid) sees none of the previous one's session state.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { after, afterEach, before, test } from 'node:test';
import pg from 'pg';
import { msg } from '../../src/protocol/testing/builders.ts';
import {
  admin,
  backend,
  clientSkip,
  createTestDb,
  PG,
  startTestProxy,
  type TestDb,
  type TestProxy,
  waitFor,
} from '../support/harness.ts';
import { executeNoSync, Wire } from '../support/wire.ts';

let db: TestDb;
let gp: TestProxy;
/** Route with a single server: whoever comes next gets the previous client's backend. */
let one: string;
/** The same with server_reset_query '': session state is handed on by choice, open work never is. */
let noReset: string;

before(async () => {
  db = await createTestDb('dirty');
  one = `${db.database}_one`;
  noReset = `${db.database}_noreset`;
  gp = await startTestProxy({
    databases: {
      [db.database]: backend(),
      [one]: { ...backend(db.database), default_pool_size: 1, query_wait_timeout: '30s' },
      [noReset]: {
        ...backend(db.database),
        default_pool_size: 1,
        query_wait_timeout: '30s',
        server_reset_query: '',
      },
    },
    users: { [db.user]: { password: db.password } },
  });
  const c = direct();
  await c.connect();
  await c.query('CREATE TABLE locked (id int PRIMARY KEY, v text)');
  await c.query("INSERT INTO locked SELECT g, 'row ' || g FROM generate_series(1, 10) g");
  await c.query('CREATE TABLE marks (tag text)');
  await c.query('CREATE SEQUENCE seq');
  await c.end();
});

after(async () => {
  if (process.env.DUMP) console.log(gp?.logs.text());
  await gp?.stop();
  await db?.drop();
});

function direct(extra: pg.ClientConfig = {}): pg.Client {
  return new pg.Client({
    host: '127.0.0.1',
    port: PG.port,
    user: db.user,
    password: db.password,
    database: db.database,
    ...extra,
  });
}

function viaProxy(extra: pg.ClientConfig = {}, database = one): pg.Client {
  const c = new pg.Client({
    host: '127.0.0.1',
    port: gp.port,
    user: db.user,
    password: db.password,
    database,
    ...extra,
  });
  c.on('error', () => undefined); // a client we kill reports its own socket error
  live.add(c);
  return c;
}

/** Clients of the current test; whatever a failed test leaves connected is killed so later tests get the server. */
const live = new Set<pg.Client>();
afterEach(() => {
  for (const c of live) kill(c);
  live.clear();
});

/** Runs `fn` with a client of the one-server route and always ends it, so a failure cannot starve later tests. */
async function withClient<T>(
  fn: (c: pg.Client) => Promise<T>,
  extra: pg.ClientConfig = {},
  database = one,
): Promise<T> {
  const c = viaProxy(extra, database);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Kills the client's TCP connection without a Terminate, like a crashed process or a pulled cable. */
function kill(c: pg.Client): void {
  live.delete(c);
  (c as unknown as { connection: { stream: net.Socket } }).connection.stream.destroy();
}

interface Activity {
  pid: number;
  state: string | null;
  query: string;
}

async function activity(): Promise<Activity[]> {
  return admin<Activity>(
    'SELECT pid, state, query FROM pg_stat_activity WHERE datname = $1 AND usename = $2 ORDER BY pid',
    [db.database, db.user],
  );
}

async function locks(): Promise<{ pid: number; locktype: string; mode: string }[]> {
  return admin(
    `SELECT l.pid, l.locktype, l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE a.datname = $1 AND a.usename = $2`,
    [db.database, db.user],
  );
}

/** Every backend of the test user is idle (or gone) and holds no lock at all; gprxy's pool has nothing lent out. */
async function waitClean(what: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(
    async () => {
      const busy = (await activity()).filter((a) => a.state !== 'idle');
      if (busy.length) return false;
      if ((await locks()).length) return false;
      for (const p of gp.proxy.pools.all()) if (p.counts.active > 0 || p.counts.connecting > 0) return false;
      return true;
    },
    timeoutMs,
    what,
  );
}

/** Waits until a backend of the test user runs a statement matching `like`; returns its pid. */
async function activeBackend(like: string): Promise<number> {
  let pid = 0;
  await waitFor(
    async () => {
      pid = (await activity()).find((a) => a.state === 'active' && a.query.startsWith(like))?.pid ?? 0;
      return pid !== 0;
    },
    15_000,
    `a backend running ${like}`,
  );
  return pid;
}

/** The row can be locked right now (NOWAIT): nobody holds it. */
async function assertLockable(id: number): Promise<void> {
  const c = direct();
  await c.connect();
  try {
    await c.query('BEGIN');
    const r = await c.query('SELECT id FROM locked WHERE id = $1 FOR UPDATE NOWAIT', [id]);
    assert.equal(r.rowCount, 1);
    await c.query('ROLLBACK');
  } finally {
    await c.end();
  }
}

test('client killed idle in a transaction holding a row lock: rolled back, lock gone, pool serves', async () => {
  const a = viaProxy();
  await a.connect();
  await a.query('BEGIN');
  await a.query("UPDATE locked SET v = 'uncommitted' WHERE id = 1");
  await a.query('SELECT * FROM locked WHERE id = 2 FOR UPDATE');
  const pid = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  const before = await activity();
  assert.equal(before.find((x) => x.pid === pid)?.state, 'idle in transaction');
  assert.ok((await locks()).some((l) => l.pid === pid && l.locktype === 'transactionid'));

  kill(a);
  await waitClean('the killed client to leave no transaction and no lock');
  assert.equal(
    (await activity()).filter((x) => x.state?.startsWith('idle in transaction')).length,
    0,
    'no idle in transaction backend',
  );
  await assertLockable(1);
  await assertLockable(2);
  const rows = await admin<{ v: string }>('SELECT v FROM locked WHERE id = 1', [], db.database);
  assert.equal(rows[0]!.v, 'row 1');

  await withClient(async (b) => {
    assert.equal((await b.query('SELECT 1 AS one')).rows[0].one, 1);
    assert.equal((await b.query('SELECT id FROM locked WHERE id = 2 FOR UPDATE NOWAIT')).rowCount, 1);
  });
});

test('client killed in an aborted transaction: rolled back, pool serves', async () => {
  const a = viaProxy();
  await a.connect();
  await a.query('BEGIN');
  await a.query('SELECT * FROM locked WHERE id = 4 FOR UPDATE');
  await assert.rejects(a.query('SELECT 1/0'), { code: '22012' });
  const pid = (await a.query('SELECT pg_backend_pid() AS pid').catch(() => null))?.rows[0]?.pid;
  assert.equal(pid, undefined); // 25P02: the transaction is aborted
  kill(a);
  await waitClean('the aborted transaction to be rolled back');
  await assertLockable(4);
  await withClient(async (b) => assert.equal((await b.query('SELECT 2 AS two')).rows[0].two, 2));
});

test('client killed while its query runs: the query is canceled, locks released promptly', async () => {
  const a = viaProxy();
  await a.connect();
  await a.query('BEGIN');
  await a.query('SELECT * FROM locked WHERE id = 5 FOR UPDATE');
  void a.query('SELECT pg_sleep(30)').catch(() => undefined);
  const pid = await activeBackend('SELECT pg_sleep(30)');
  const t0 = Date.now();
  kill(a);
  // pg_sleep(30) would hold the lock for 30 s if the query were left running.
  await waitClean('the running query to be canceled and its locks released', 15_000);
  assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
  assert.ok(!(await activity()).some((x) => x.pid === pid && x.state !== 'idle'));
  await assertLockable(5);
  await withClient(async (b) => assert.equal((await b.query('SELECT 3 AS three')).rows[0].three, 3));
});

test('psql killed in the middle of COPY FROM STDIN inside a transaction', {
  skip: clientSkip('psql'),
}, async () => {
  const child = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1'], {
    env: {
      ...process.env,
      PGHOST: '127.0.0.1',
      PGPORT: String(gp.port),
      PGUSER: db.user,
      PGPASSWORD: db.password,
      PGDATABASE: one,
      PGSSLMODE: 'disable',
    },
    stdio: ['pipe', 'ignore', 'ignore'],
  });
  const exited = new Promise<void>((res) => child.on('close', () => res()));
  child.stdin.on('error', () => undefined);
  child.stdin.write('BEGIN;\nSELECT * FROM locked WHERE id = 6 FOR UPDATE;\nCOPY marks FROM STDIN;\n');
  for (let i = 0; i < 100; i++) child.stdin.write(`copied ${i}\n`);
  await activeBackend('COPY marks FROM STDIN');
  assert.ok((await locks()).length > 0);
  child.kill('SIGKILL');
  await exited;
  await waitClean('the interrupted COPY to be rolled back');
  await assertLockable(6);
  const n = await admin<{ n: number }>(
    "SELECT count(*)::int AS n FROM marks WHERE tag LIKE 'copied%'",
    [],
    db.database,
  );
  assert.equal(n[0]!.n, 0);
});

test('clean disconnect: same backend, none of the previous session state is visible', async () => {
  const fresh = direct();
  await fresh.connect();
  const defaults = (
    await fresh.query(
      "SELECT current_setting('work_mem') AS work_mem, current_setting('search_path') AS search_path, current_setting('statement_timeout') AS statement_timeout, current_setting('DateStyle') AS datestyle, current_setting('application_name') AS app",
    )
  ).rows[0];
  await fresh.end();

  const a = viaProxy({ application_name: 'client-a', options: '-c lock_timeout=4321' });
  await a.connect();
  const pidA = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  assert.equal((await a.query("SELECT current_setting('application_name') AS app")).rows[0].app, 'client-a');
  assert.equal((await a.query("SELECT current_setting('lock_timeout') AS t")).rows[0].t, '4321ms');
  await a.query('CREATE TEMP TABLE tmp_a (x int)');
  await a.query("SET work_mem = '7MB'");
  await a.query('SET search_path = gprxy_nowhere, public');
  await a.query("SET statement_timeout = '12s'");
  await a.query("SET DateStyle = 'SQL, DMY'");
  await a.query("SET myapp.tenant = 'tenant-a'");
  await a.query('PREPARE sql_prepared AS SELECT 1');
  await a.query({ name: 'proto_prepared', text: 'SELECT $1::int AS n', values: [1] });
  await a.query('SELECT pg_advisory_lock(4242)');
  await a.query('LISTEN chan_a');
  await a.query("SELECT nextval('seq')");
  await a.query('BEGIN');
  await a.query('DECLARE held CURSOR WITH HOLD FOR SELECT 1');
  await a.query('COMMIT');
  assert.ok((await locks()).some((l) => l.pid === pidA && l.locktype === 'advisory'));
  await a.end();

  const b = viaProxy({ application_name: 'client-b' });
  await b.connect();
  const pidB = (await b.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  assert.equal(pidB, pidA, 'the single pooled server was reused (so this test proves the reset)');
  const state = (
    await b.query(
      `SELECT current_setting('work_mem') AS work_mem, current_setting('search_path') AS search_path,
              current_setting('statement_timeout') AS statement_timeout, current_setting('DateStyle') AS datestyle,
              current_setting('lock_timeout') AS lock_timeout,
              coalesce(current_setting('myapp.tenant', true), '') AS tenant,
              current_setting('application_name') AS app,
              to_regclass('pg_temp.tmp_a') IS NULL AS no_temp,
              (SELECT count(*)::int FROM pg_prepared_statements) AS prepared,
              (SELECT count(*)::int FROM pg_listening_channels()) AS listening,
              (SELECT count(*)::int FROM pg_cursors) AS cursors,
              (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory`,
    )
  ).rows[0];
  assert.deepEqual(state, {
    work_mem: defaults.work_mem,
    search_path: defaults.search_path,
    statement_timeout: defaults.statement_timeout,
    datestyle: defaults.datestyle,
    lock_timeout: '0',
    tenant: '',
    app: 'client-b',
    no_temp: true,
    prepared: 0,
    listening: 0,
    cursors: 0,
    advisory: 0,
  });
  await assert.rejects(b.query("SELECT currval('seq')"), { code: '55000' });
  const seen = await admin<{ application_name: string }>(
    'SELECT application_name FROM pg_stat_activity WHERE pid = $1',
    [pidB],
  );
  assert.equal(seen[0]!.application_name, 'client-b');
  // The advisory lock is really free: another session can take it.
  const other = direct();
  await other.connect();
  assert.equal((await other.query('SELECT pg_try_advisory_lock(4242) AS got')).rows[0].got, true);
  await other.end();
  await b.end();

  // A client with no application_name of its own sees the server's default, not the previous client's.
  const c = viaProxy();
  await c.connect();
  assert.equal((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid, pidA);
  assert.equal(
    (await c.query("SELECT current_setting('application_name') AS app")).rows[0].app,
    defaults.app,
  );
  const seenC = await admin<{ application_name: string }>(
    'SELECT application_name FROM pg_stat_activity WHERE pid = $1',
    [pidA],
  );
  assert.equal(seenC[0]!.application_name, defaults.app);
  await c.end();
});

test('killed while idle with session state: the next client sees none of it', async () => {
  const a = viaProxy({ application_name: 'killed-a' });
  await a.connect();
  await a.query('CREATE TEMP TABLE tmp_k (x int)');
  await a.query("SET work_mem = '9MB'");
  await a.query('SELECT pg_advisory_lock(777)');
  await a.query('PREPARE k AS SELECT 2');
  kill(a);
  await waitClean('the killed session to be reset');
  const b = viaProxy();
  await b.connect();
  const s = (
    await b.query(
      `SELECT current_setting('work_mem') AS work_mem, current_setting('application_name') AS app,
              to_regclass('pg_temp.tmp_k') IS NULL AS no_temp,
              (SELECT count(*)::int FROM pg_prepared_statements) AS prepared,
              (SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory') AS advisory`,
    )
  ).rows[0];
  assert.notEqual(s.work_mem, '9MB');
  assert.notEqual(s.app, 'killed-a');
  assert.deepEqual(
    { no_temp: s.no_temp, prepared: s.prepared, advisory: s.advisory },
    {
      no_temp: true,
      prepared: 0,
      advisory: 0,
    },
  );
  await b.end();
});

// ---- extended protocol without Sync ----------------------------------------------------------------------------

async function markCount(tag: string): Promise<number> {
  const r = await admin<{ n: number }>(
    'SELECT count(*)::int AS n FROM marks WHERE tag = $1',
    [tag],
    db.database,
  );
  return r[0]!.n;
}

/** Where a scenario runs: PostgreSQL itself (the reference), gprxy with DISCARD ALL, gprxy with no reset query. */
function targets(): [string, number, string][] {
  return [
    ['direct', PG.port, db.database],
    ['gprxy', gp.port, one],
    ['gprxy without server_reset_query', gp.port, noReset],
  ];
}

/**
 * Runs `scenario` (which leaves a session with unsynced extended-protocol work) everywhere, ends the client both ways,
 * and checks what PostgreSQL itself does: nothing committed, nothing locked, and the next client is served.
 */
async function unsyncedCase(name: string, scenario: (w: Wire, tag: string) => Promise<void>): Promise<void> {
  for (const how of ['killed', 'Terminate'] as const) {
    for (const [where, port, database] of targets()) {
      const tag = `${name} ${how} ${where}`;
      const w = await Wire.login(port, db.user, db.password, database);
      await scenario(w, tag);
      if (how === 'killed') w.socket.destroy();
      else w.socket.end(msg('X'));
      await waitClean(`${tag}: the unsynced work to be undone`);
      assert.equal(await markCount(tag), 0, `${tag}: the client never committed`);
      await assertLockable(7);
      if (port === gp.port) {
        await withClient(
          async (b) => assert.equal((await b.query('SELECT 4 AS four')).rows[0].four, 4),
          {},
          database,
        );
      }
    }
  }
}

test('client gone after an executed but unsynced INSERT: not committed, as directly against PostgreSQL', async () => {
  await unsyncedCase('unsynced', async (w, tag) => {
    w.send(executeNoSync(`INSERT INTO marks VALUES ('${tag}')`));
    await w.until('C'); // executed; its implicit transaction stays open until a Sync
    w.send(executeNoSync('SELECT id FROM locked WHERE id = 7 FOR UPDATE'));
    await w.until('C');
  });
});

test('client gone with a suspended portal (INSERT ... RETURNING, no Sync): not committed', async () => {
  await unsyncedCase('suspended', async (w, tag) => {
    w.send(executeNoSync(`INSERT INTO marks SELECT '${tag}' FROM generate_series(1, 3) RETURNING tag`, 1));
    const got = await w.until('s'); // PortalSuspended: one row out, the INSERT done, its transaction open
    assert.equal(got.filter((m) => m.type === 'D').length, 1);
  });
});

test('client gone after an unsynced statement failed: the server is not left skipping to a Sync', async () => {
  await unsyncedCase('failed', async (w, tag) => {
    w.send(executeNoSync(`INSERT INTO marks VALUES ('${tag}')`));
    await w.until('C');
    w.send(executeNoSync('SELECT 1/0'));
    const got = await w.until('E');
    assert.match(got.at(-1)!.body.toString('latin1'), /C22012\0/);
  });
});

// ---- a client that leaves while gprxy still talks to its server ------------------------------------------------

interface Forwarder {
  port: number;
  /** Hold the server's replies on every connection. */
  holdReplies: boolean;
  /** Hold CancelRequests (the packet and the close after it) on their way to PostgreSQL. */
  holdCancels: boolean;
  /** Everything gprxy sent, as latin1 text. */
  sent(): string;
  /** Drops every forwarded connection at once, without a word to gprxy (a crashed host, a cut cable). */
  cut(): void;
  cancelsSeen(): number;
  release(): void;
  close(): Promise<void>;
}

const CANCEL_CODE = Buffer.from([0x04, 0xd2, 0x16, 0x2e]); // 80877102

/** A TCP forwarder in front of PostgreSQL that can hold traffic, to put gprxy in the middle of a race on purpose. */
async function forwarder(): Promise<Forwarder> {
  let held: (() => void)[] = [];
  let sent = '';
  let cancels = 0;
  const sockets = new Set<net.Socket>();
  const f: Forwarder = {
    port: 0,
    holdReplies: false,
    holdCancels: false,
    sent: () => sent,
    cut() {
      for (const s of sockets) s.destroy();
    },
    cancelsSeen: () => cancels,
    release() {
      f.holdReplies = false;
      f.holdCancels = false;
      const run = held;
      held = [];
      for (const op of run) op();
    },
    close: () =>
      new Promise<void>((res) => {
        for (const s of sockets) s.destroy();
        server.close(() => res());
      }),
  };
  const server = net.createServer({ allowHalfOpen: true }, (down) => {
    const up = net.connect({ host: PG.host, port: PG.port });
    let isCancel = false;
    sockets.add(down);
    sockets.add(up);
    const toServer = (op: () => void) => {
      if (isCancel && f.holdCancels) held.push(op);
      else op();
    };
    down.on('data', (d: Buffer) => {
      sent += d.toString('latin1');
      if (d.length === 16 && d.subarray(4, 8).equals(CANCEL_CODE)) {
        isCancel = true;
        cancels++;
      }
      toServer(() => up.write(d));
    });
    down.on('end', () => toServer(() => up.end()));
    up.on('data', (d: Buffer) => {
      if (f.holdReplies) held.push(() => down.write(d));
      else down.write(d);
    });
    up.on('end', () => down.end());
    down.on('close', () => toServer(() => up.destroy()));
    up.on('close', () => down.destroy());
    down.on('error', () => undefined);
    up.on('error', () => undefined);
  });
  await new Promise<void>((res) => server.listen({ host: '127.0.0.1', port: 0 }, res));
  f.port = (server.address() as net.AddressInfo).port;
  return f;
}

/** gprxy with one route whose single server sits behind a forwarder. */
async function proxyBehind(fwd: Forwarder): Promise<{
  proxy: TestProxy;
  route: string;
  client(app?: string): pg.Client;
  pool(): NonNullable<ReturnType<TestProxy['proxy']['pools']['get']>>;
}> {
  const route = `${db.database}_fwd`;
  const proxy = await startTestProxy({
    databases: {
      [route]: {
        host: '127.0.0.1',
        port: fwd.port,
        dbname: db.database,
        default_pool_size: 1,
        query_wait_timeout: '30s',
      },
    },
    users: { [db.user]: { password: db.password } },
  });
  return {
    proxy,
    route,
    client(app) {
      const c = new pg.Client({
        host: '127.0.0.1',
        port: proxy.port,
        user: db.user,
        password: db.password,
        database: route,
        ...(app ? { application_name: app } : {}),
      });
      c.on('error', () => undefined);
      return c;
    },
    pool: () => proxy.proxy.pools.get({ database: route, user: db.user })!,
  };
}

test('client gone while gprxy applies its startup parameters: the server is not reset underneath', async () => {
  const fwd = await forwarder();
  const { proxy, client, pool } = await proxyBehind(fwd);
  try {
    const a = client();
    await a.connect();
    await a.end();
    await waitFor(() => pool().counts.idle === 1, 10_000, 'the server back in the pool');

    // B's startup application_name makes gprxy run set_config on the pooled server; its reply is held back.
    fwd.holdReplies = true;
    const b = client('stalled-b');
    const bConnect = b.connect().catch((e: Error) => e);
    await waitFor(() => fwd.sent().includes('stalled-b'), 10_000, 'gprxy to apply the startup parameter');
    kill(b);
    await bConnect;
    await waitFor(() => pool().counts.active === 0, 10_000, 'gprxy to let go of the departed client');
    fwd.release();

    for (const app of ['next-c', 'next-d']) {
      const c = client(app);
      await c.connect();
      try {
        const r = await c.query("SELECT current_setting('application_name') AS app, 41 + 1 AS n");
        assert.deepEqual(r.rows[0], { app, n: 42 });
        assert.equal((await c.query('SELECT 2 AS two')).rows[0].two, 2);
      } finally {
        await c.end();
      }
    }
    await waitFor(() => pool().counts.active === 0, 10_000, 'nothing lent out');
  } finally {
    fwd.release();
    await proxy.stop();
    await fwd.close();
  }
});

test("a cancel still in flight when its client leaves never hits the next client's query", async () => {
  const fwd = await forwarder();
  const { proxy, client, pool } = await proxyBehind(fwd);
  try {
    const a = client();
    await a.connect();
    const key = a as unknown as { processID: number; secretKey: number };
    const q = a.query('SELECT pg_sleep(1)').then(
      () => 'finished',
      (e: pg.DatabaseError) => e.code,
    );
    await activeBackend('SELECT pg_sleep(1)');
    // The cancel leaves gprxy but is held on its way to PostgreSQL: A's query finishes normally, A leaves.
    fwd.holdCancels = true;
    await new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: proxy.port });
      const pkt = Buffer.alloc(16);
      pkt.writeInt32BE(16, 0);
      CANCEL_CODE.copy(pkt, 4);
      pkt.writeInt32BE(key.processID, 8);
      pkt.writeInt32BE(key.secretKey, 12);
      s.on('connect', () => s.end(pkt));
      s.on('error', reject);
      s.on('close', () => resolve());
    });
    await waitFor(() => fwd.cancelsSeen() === 1, 10_000, 'gprxy to forward the cancel');
    assert.equal(await q, 'finished');
    await a.end();

    // B asks for the server and runs a query; only then does the held cancel reach PostgreSQL.
    const b = client();
    const bResult = (async () => {
      await b.connect();
      try {
        return (await b.query('SELECT pg_sleep(0.3), 7 AS seven')).rows[0].seven as number;
      } finally {
        await b.end();
      }
    })().catch((e: pg.DatabaseError) => e.code ?? e.message);
    await waitFor(
      async () =>
        pool().counts.waiting > 0 ||
        (await activity()).some((x) => x.state === 'active' && x.query.startsWith('SELECT pg_sleep(0.3)')),
      10_000,
      'B to wait for the server or run its query',
    );
    fwd.release();
    assert.equal(await bResult, 7, "B's query must not be canceled by A's late cancel");
  } finally {
    fwd.release();
    await proxy.stop();
    await fwd.close();
  }
});

test('a server that vanishes without a word: the client gets 08006, the next client gets a new server', async () => {
  const fwd = await forwarder();
  const { proxy, client, pool } = await proxyBehind(fwd);
  try {
    const a = client();
    await a.connect();
    const pidA = (await a.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
    const q = a.query('SELECT pg_sleep(30)').then(
      () => undefined,
      (e: pg.DatabaseError) => e,
    );
    await activeBackend('SELECT pg_sleep(30)');
    fwd.cut();
    const err = await q;
    assert.equal(err?.code, '08006');
    await a.end().catch(() => undefined);
    await waitFor(() => pool().counts.active === 0, 10_000, 'the lost server to leave the pool');

    const b = client();
    await b.connect();
    try {
      const pidB = (await b.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
      assert.notEqual(pidB, pidA);
    } finally {
      await b.end();
    }
    // The orphaned backend is PostgreSQL's to clean up; make sure it does not outlive the test.
    await admin('SELECT pg_terminate_backend($1)', [pidA]);
  } finally {
    await proxy.stop();
    await fwd.close();
  }
});
