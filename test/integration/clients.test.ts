// Real clients through gprxy in session mode give what they get directly from PostgreSQL: psql (-c output, \copy),
// pgbench (-i, simple, extended, -C), node-postgres and postgres.js (queries, transactions, errors, COPY streams,
// LISTEN/NOTIFY, rows and parameters over 16 MB).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { finished } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import {
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
import { firstColumns, simpleQuery, Wire } from '../support/wire.ts';

let db: TestDb;
let gp: TestProxy;

before(async () => {
  db = await createTestDb('cli');
  gp = await startTestProxy({
    databases: { [db.database]: backend() },
    users: { [db.user]: { password: db.password } },
  });
});

after(async () => {
  if (process.env.DUMP) console.log(gp?.logs.text());
  await gp?.stop();
  await db?.drop();
});

type Via = 'direct' | 'proxy';
const VIAS: Via[] = ['direct', 'proxy'];

function portOf(via: Via): number {
  return via === 'direct' ? PG.port : gp.port;
}

function pgClient(via: Via, extra: pg.ClientConfig = {}): pg.Client {
  return new pg.Client({
    host: '127.0.0.1',
    port: portOf(via),
    user: db.user,
    password: db.password,
    database: db.database,
    ...extra,
  });
}

function pgjs(via: Via, extra: postgres.Options<Record<string, postgres.PostgresType>> = {}) {
  return postgres({
    host: '127.0.0.1',
    port: portOf(via),
    user: db.user,
    password: db.password,
    database: db.database,
    max: 1,
    onnotice: () => undefined,
    connect_timeout: 30,
    debug: process.env.PGJS_DEBUG ? (_c: number, q: string) => console.log('Q', q.slice(0, 80)) : undefined,
    ...extra,
  });
}

function libpqEnv(via: Via): Record<string, string> {
  return {
    PGHOST: '127.0.0.1',
    PGPORT: String(portOf(via)),
    PGUSER: db.user,
    PGPASSWORD: db.password,
    PGDATABASE: db.database,
    PGSSLMODE: 'disable',
    PGCONNECT_TIMEOUT: '30',
    PGAPPNAME: 'gprxy-test',
  };
}

const psqlSkip = clientSkip('psql');
const pgbenchSkip = clientSkip('pgbench');

test('psql -c output through gprxy equals the direct output', { skip: psqlSkip }, async () => {
  const script = [
    'CREATE TEMP TABLE fruit (id int PRIMARY KEY, name text, price numeric(6,2), at date)',
    "INSERT INTO fruit VALUES (1, 'apple', 1.25, '2024-01-02'), (2, 'pear', NULL, '2024-03-04'), (3, 'kiwi ü', 0.5, NULL)",
    'SELECT * FROM fruit ORDER BY id',
    'SELECT current_user, current_database(), 2 + 2 AS four',
    'BEGIN',
    "UPDATE fruit SET price = 9 WHERE name = 'apple'",
    'SELECT 1/0',
    'ROLLBACK',
    'SELECT name, price FROM fruit ORDER BY id',
    "SELECT current_setting('application_name') AS app",
  ];
  const args = ['-X', '-q'];
  for (const s of script) args.push('-c', s);
  const [direct, proxied] = await Promise.all(VIAS.map((v) => run('psql', args, libpqEnv(v))));
  assert.match(direct!.stderr, /division by zero/);
  assert.match(direct!.stdout, /apple/);
  assert.equal(proxied!.stdout, direct!.stdout);
  assert.equal(proxied!.stderr, direct!.stderr);
  assert.equal(proxied!.code, direct!.code);
});

test('psql \\copy from and to a file through gprxy equals direct', { skip: psqlSkip }, async () => {
  const input = join(gp.dir, 'in.csv');
  const rows: string[] = [];
  for (let i = 1; i <= 5000; i++) rows.push(`${i},"name ${i}, with comma",${i % 7 === 0 ? '' : i * 1.5}`);
  writeFileSync(input, `${rows.join('\n')}\n`);
  const results = await Promise.all(
    VIAS.map(async (v) => {
      const table = `copy_${v}`;
      const out = join(gp.dir, `out_${v}.csv`);
      const r = await run(
        'psql',
        [
          '-X',
          '-q',
          '-v',
          'ON_ERROR_STOP=1',
          '-c',
          `CREATE TABLE ${table} (id int, name text, v numeric)`,
          '-c',
          `\\copy ${table} from '${input}' with (format csv)`,
          '-c',
          `\\copy (select * from ${table} order by id) to '${out}' with (format csv)`,
          '-c',
          `SELECT count(*), sum(v) FROM ${table}`,
        ],
        libpqEnv(v),
      );
      assert.equal(r.code, 0, r.stderr);
      return { stdout: r.stdout, file: readFileSync(out, 'utf8') };
    }),
  );
  assert.match(results[0]!.stdout, /5000/);
  assert.equal(results[1]!.stdout, results[0]!.stdout);
  assert.equal(results[1]!.file, results[0]!.file);
  assert.equal(results[0]!.file, readFileSync(input, 'utf8'));
});

/** One scenario run by node-postgres: plain and parameterized queries, a transaction with an error, named statements. */
async function pgScenario(via: Via): Promise<unknown[]> {
  const c = pgClient(via);
  await c.connect();
  const out: unknown[] = [];
  try {
    const t = `pgs_tmp`;
    out.push((await c.query('SELECT current_user = session_user AS same, 1::int AS one, NULL AS n')).rows);
    await c.query(`CREATE TEMP TABLE ${t} (id serial PRIMARY KEY, v text, b bytea, ts timestamptz)`);
    out.push(
      (
        await c.query(`INSERT INTO ${t} (v, b, ts) VALUES ($1, $2, $3), ($4, $5, $6) RETURNING id, v, b`, [
          'a',
          Buffer.from([0, 1, 2, 255]),
          new Date('2024-05-06T07:08:09Z'),
          "it's",
          null,
          null,
        ])
      ).rows,
    );
    await c.query('BEGIN');
    await c.query(`INSERT INTO ${t} (v) VALUES ('in tx')`);
    const err = await c.query(`INSERT INTO ${t} (id, v) VALUES (1, 'dup')`).catch((e: pg.DatabaseError) => e);
    out.push({ code: (err as pg.DatabaseError).code, message: (err as Error).message });
    const aborted = await c.query('SELECT 1').catch((e: pg.DatabaseError) => e);
    out.push({ code: (aborted as pg.DatabaseError).code });
    await c.query('ROLLBACK');
    out.push((await c.query(`SELECT id, v, b, ts FROM ${t} ORDER BY id`)).rows);
    await c.query('BEGIN');
    await c.query(`UPDATE ${t} SET v = 'committed' WHERE id = 1`);
    await c.query('COMMIT');
    for (let i = 0; i < 3; i++) {
      out.push(
        (await c.query({ name: 'by_id', text: `SELECT v FROM ${t} WHERE id = $1`, values: [1] })).rows,
      );
    }
    // Two statements in one Query: node-postgres returns one result per statement.
    const multi = (await c.query('SELECT 1 AS a; SELECT 2 AS b')) as unknown as pg.QueryResult[];
    out.push(multi.map((r) => r.rows));
    out.push(
      (await c.query({ text: 'SELECT generate_series(1, 3) AS g', rowMode: 'array' })).rows.map(String),
    );
    await c.query(`DROP TABLE ${t}`);
  } finally {
    await c.end();
  }
  return out;
}

test('node-postgres: same results through gprxy as direct', async () => {
  const direct = await pgScenario('direct');
  const proxied = await pgScenario('proxy');
  assert.deepEqual(proxied, direct);
  assert.equal((direct[2] as { code: string }).code, '23505');
  assert.equal((direct[3] as { code: string }).code, '25P02');
});

/** The same kind of scenario with postgres.js (extended protocol, prepared statements, COPY streams). */
async function pgjsScenario(via: Via): Promise<unknown[]> {
  const sql = pgjs(via);
  const out: unknown[] = [];
  try {
    const t = `pjs_tmp`;
    out.push([...(await sql`select ${1}::int as one, ${'x'}::text as s, ${null}::int as n`)]);
    await sql`create temp table ${sql(t)} (id int primary key, v text)`;
    await sql`insert into ${sql(t)} ${sql([
      { id: 1, v: 'a' },
      { id: 2, v: 'b' },
    ])}`;
    const err = await sql
      .begin(async (tx) => {
        await tx`insert into ${sql(t)} values (3, 'c')`;
        await tx`insert into ${sql(t)} values (1, 'dup')`;
      })
      .catch((e: postgres.PostgresError) => e);
    out.push({ code: (err as postgres.PostgresError).code, message: (err as Error).message });
    await sql.begin(async (tx) => {
      await tx`update ${sql(t)} set v = 'B' where id = 2`;
    });
    out.push([...(await sql`select * from ${sql(t)} order by id`)]);
    out.push([...(await sql.unsafe('select 1 as a; select 2 as b'))].map((r) => [...r]));

    // COPY in and out as streams.
    const lines: string[] = [];
    for (let i = 10; i < 3010; i++) lines.push(`${i}\tcopied ${i}\n`);
    const w = await sql`copy ${sql(t)} from stdin`.writable();
    for (const l of lines) w.write(l);
    w.end();
    await finished(w);
    // Out: kept under the Readable's 16 KiB highWaterMark. postgres.js pauses its socket when the stream buffer is
    // full and does not resume it once CopyDone has ended the stream, so the next query hangs, directly against
    // PostgreSQL too (porsager/postgres#499, fix pending in #1016). psql's \copy covers large COPY out.
    const r =
      await sql`copy (select * from ${sql(t)} where id between 10 and 509 order by id) to stdout`.readable();
    const chunks: Buffer[] = [];
    r.on('data', (chunk: Buffer) => chunks.push(Buffer.from(chunk)));
    await finished(r);
    const copied = Buffer.concat(chunks).toString('utf8');
    assert.equal(copied, lines.slice(0, 500).join(''));
    out.push(createHash('sha256').update(copied).digest('hex'));
    out.push([...(await sql`select count(*)::int as n from ${sql(t)}`)]);
    await sql`drop table ${sql(t)}`;
  } finally {
    await sql.end({ timeout: 5 });
  }
  return out;
}

test('postgres.js: same results through gprxy as direct, COPY streams included', async () => {
  const direct = await pgjsScenario('direct');
  const proxied = await pgjsScenario('proxy');
  assert.deepEqual(proxied, direct);
  assert.equal((direct[1] as { code: string }).code, '23505');
});

test('LISTEN/NOTIFY between two clients through gprxy', async () => {
  const listener = pgClient('proxy');
  const notifier = pgClient('proxy');
  await listener.connect();
  await notifier.connect();
  try {
    const got: { channel: string; payload: string | undefined }[] = [];
    listener.on('notification', (n) => got.push({ channel: n.channel, payload: n.payload }));
    await listener.query('LISTEN gprxy_chan');
    await notifier.query("NOTIFY gprxy_chan, 'hello'");
    await notifier.query("SELECT pg_notify('gprxy_chan', 'second')");
    await notifier.query('BEGIN');
    await notifier.query("NOTIFY gprxy_chan, 'after commit'");
    await notifier.query('COMMIT');
    await waitFor(() => got.length >= 3, 10_000, 'notifications');
    assert.deepEqual(got, [
      { channel: 'gprxy_chan', payload: 'hello' },
      { channel: 'gprxy_chan', payload: 'second' },
      { channel: 'gprxy_chan', payload: 'after commit' },
    ]);
  } finally {
    await listener.end();
    await notifier.end();
  }

  // postgres.js listener, notified by node-postgres.
  const sql = pgjs('proxy');
  const n = pgClient('proxy');
  await n.connect();
  try {
    const got: string[] = [];
    await sql.listen('gprxy_chan2', (payload) => got.push(payload));
    await n.query("NOTIFY gprxy_chan2, 'from pg'");
    await waitFor(() => got.length >= 1, 10_000, 'postgres.js notification');
    assert.deepEqual(got, ['from pg']);
  } finally {
    await n.end();
    await sql.end({ timeout: 5 });
  }
});

test('rows and parameters larger than 16 MB pass through gprxy', async () => {
  const size = 20 * 1024 * 1024;
  const big = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) big.writeUInt32BE(i, i);
  const want = createHash('md5').update(big).digest('hex');

  const c = pgClient('proxy');
  await c.connect();
  try {
    const r = await c.query(`SELECT repeat('x', ${size}) AS big`);
    assert.equal(r.rows[0].big.length, size);
    assert.ok(r.rows[0].big === 'x'.repeat(size));
    await c.query('CREATE TABLE big_pg (id int, b bytea)');
    await c.query('INSERT INTO big_pg VALUES (1, $1)', [big]);
    const back = await c.query('SELECT length(b) AS len, md5(b) AS md5 FROM big_pg WHERE id = 1');
    assert.equal(back.rows[0].len, size);
    assert.equal(back.rows[0].md5, want);
    // The session is still in sync afterwards.
    assert.equal((await c.query('SELECT 42 AS x')).rows[0].x, 42);
  } finally {
    await c.end();
  }

  const sql = pgjs('proxy');
  try {
    const [row] = await sql`select repeat('y', ${size}::int) as big`;
    assert.ok(row!.big === 'y'.repeat(size));
    await sql`create table big_pjs (id int, b bytea)`;
    await sql`insert into big_pjs values (1, ${big})`;
    const [back] = await sql`select length(b)::int as len, md5(b) as md5 from big_pjs`;
    assert.deepEqual({ ...back }, { len: size, md5: want });
    const [b] = await sql`select b from big_pjs`;
    assert.ok(Buffer.from(b!.b as Buffer).equals(big));
  } finally {
    await sql.end({ timeout: 5 });
  }
});

interface PgbenchResult {
  processed: number;
  expected: number;
  failed: number;
}

function parsePgbench(stdout: string): PgbenchResult {
  const p = /number of transactions actually processed: (\d+)\/(\d+)/.exec(stdout);
  const f = /number of failed transactions: (\d+)/.exec(stdout);
  assert.ok(p, `no "processed" line in pgbench output:\n${stdout}`);
  assert.ok(f, `no "failed transactions" line in pgbench output:\n${stdout}`);
  return { processed: Number(p[1]), expected: Number(p[2]), failed: Number(f[1]) };
}

test('pgbench -i, then -M simple, -M extended and -C through gprxy with no failures', {
  skip: pgbenchSkip,
}, async () => {
  const env = libpqEnv('proxy');
  const init = await run('pgbench', ['-i', '-s', '1', '-q'], env);
  assert.equal(init.code, 0, init.stderr);
  assert.match(init.stderr, /done in/);
  const counts = await run('psql', ['-X', '-A', '-t', '-c', 'SELECT count(*) FROM pgbench_accounts'], env);
  assert.equal(counts.stdout.trim(), '100000');

  const runs: [string, string[], number][] = [
    ['simple', ['-M', 'simple', '-c', '4', '-j', '2', '-t', '50'], 200],
    ['extended', ['-M', 'extended', '-c', '4', '-j', '2', '-t', '50'], 200],
    ['prepared', ['-M', 'prepared', '-c', '3', '-j', '1', '-t', '30'], 90],
    ['connect', ['-C', '-c', '3', '-j', '1', '-t', '15'], 45],
  ];
  for (const [name, args, total] of runs) {
    const r = await run('pgbench', ['-n', ...args], env);
    assert.equal(r.code, 0, `pgbench ${name} failed:\n${r.stdout}\n${r.stderr}`);
    const res = parsePgbench(r.stdout);
    assert.deepEqual(res, { processed: total, expected: total, failed: 0 }, `pgbench ${name}`);
  }
  // TPC-B invariant: every committed transaction added its delta to an account and to the history.
  const inv = await run(
    'psql',
    [
      '-X',
      '-A',
      '-t',
      '-c',
      'SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)',
    ],
    libpqEnv('direct'),
  );
  assert.equal(inv.stdout.trim(), `t|${200 + 200 + 90 + 45}`);
});

test('a query pipelined behind the password is answered, as PostgreSQL does', async () => {
  for (const via of VIAS) {
    const w = await Wire.login(
      portOf(via),
      db.user,
      db.password,
      db.database,
      Buffer.concat([simpleQuery("SELECT 'first' UNION ALL SELECT current_user"), simpleQuery('SELECT 2')]),
    );
    try {
      const login = await w.until('Z');
      assert.deepEqual(
        login.filter((m) => m.type === 'R').map((m) => m.body.readInt32BE(0)),
        [12, 0],
        `${via}: SASLFinal then AuthenticationOk`,
      );
      assert.deepEqual(firstColumns(await w.until('Z')), ['first', db.user], via);
      assert.deepEqual(firstColumns(await w.until('Z')), ['2'], via);
    } finally {
      w.socket.destroy();
    }
  }
});
