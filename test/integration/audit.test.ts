// The audit trail end to end: psql (simple), node-postgres (extended with parameters) and COPY produce records with
// the right identity, database, rows and outcome in the JSON-lines file and the PostgreSQL table; errors carry
// their SQLSTATE; the table sink keeps records while its PostgreSQL is down; a full queue drops and counts.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { type EmbeddedPg, startEmbeddedPostgres } from '../../src/dev/postgres.ts';
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

let db: TestDb;
let gp: TestProxy;
let auditPg: EmbeddedPg;
let auditFile: string;

interface Rec {
  event: string;
  identity?: string;
  database?: string;
  statement?: string;
  rows?: number | null;
  outcome?: string;
  sqlstate?: string | null;
  detail?: Record<string, unknown>;
}

const records = (): Rec[] =>
  existsSync(auditFile)
    ? readFileSync(auditFile, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Rec)
    : [];

before(async () => {
  db = await createTestDb('aud');
  await admin(`GRANT CREATE ON SCHEMA public TO ${db.user}`, [], db.database);
  const dir = mkdtempSync(join(tmpdir(), 'gprxy-audit-'));
  chmodSync(dir, 0o755);
  // The table sink writes to a PostgreSQL of its own, so the test can stop and start it.
  auditPg = await startEmbeddedPostgres({ dataDir: join(dir, 'pgdata'), password: 'audit-pg-pass' });
  auditFile = join(dir, 'audit.jsonl');
  gp = await startTestProxy({
    databases: {
      [db.database]: backend(),
      auditdb: { host: auditPg.host, port: auditPg.port, dbname: 'postgres' },
    },
    users: { [db.user]: { password: db.password }, postgres: { password: 'audit-pg-pass' } },
    server_tls: { sslmode: 'disable' },
    audit: {
      sinks: [
        { type: 'file', path: auditFile },
        { type: 'postgres', database: 'auditdb', user: 'postgres', table: 'gprxy_audit' },
      ],
      log_parameters: true,
    },
  });
});

after(async () => {
  await gp?.stop();
  await auditPg?.stop();
  await db?.drop();
});

test('simple, extended and COPY statements are audited with identity, rows and outcome in both sinks', async (t) => {
  const c = new pg.Client({ connectionString: gp.url(db.user, db.password, db.database) });
  await c.connect();
  await c.query('CREATE TABLE audited (id int, v text)');
  await c.query('INSERT INTO audited SELECT g, $1 FROM generate_series(1, 3) g', ['x']);
  await assert.rejects(c.query('SELECT 1/0'), { code: '22012' });
  await c.end();

  const skip = clientSkip('psql');
  if (!skip) {
    const env = { PGPASSWORD: db.password };
    const base = ['-h', '127.0.0.1', '-p', String(gp.port), '-U', db.user, '-d', db.database, '-X', '-q'];
    const r1 = await run('psql', [...base, '-c', 'SELECT count(*) FROM audited'], env);
    assert.equal(r1.code, 0, r1.stderr);
    const r2 = await run('psql', [...base, '-c', '\\copy audited FROM STDIN'], env, '10\tten\n11\televen\n');
    assert.equal(r2.code, 0, r2.stderr);
    const r3 = await run('psql', [...base, '-c', '\\copy audited TO STDOUT'], env);
    assert.equal(r3.code, 0, r3.stderr);
  } else {
    t.diagnostic(skip);
  }

  await waitFor(() => records().some((r) => r.detail?.copy === 'out'), 30_000, 'records in the file');
  const recs = records().filter((r) => r.event === 'query');
  const insert = recs.find((r) => r.statement?.startsWith('INSERT INTO audited'));
  assert.ok(insert, 'the extended INSERT');
  assert.equal(insert.identity, db.user);
  assert.equal(insert.database, db.database);
  assert.equal(insert.rows, 3);
  assert.equal(insert.outcome, 'ok');
  assert.deepEqual(insert.detail?.params, ['x']);
  const failed = recs.find((r) => r.statement === 'SELECT 1/0');
  assert.equal(failed?.outcome, 'error');
  assert.equal(failed?.sqlstate, '22012');
  if (!skip) {
    const copyIn = recs.find((r) => r.detail?.copy === 'in');
    assert.equal(copyIn?.rows, 2);
    const copyOut = recs.find((r) => r.detail?.copy === 'out');
    assert.equal(copyOut?.rows, 5);
    assert.ok(
      recs.some(
        (r) => r.statement === 'SELECT count(*) FROM audited' && r.rows === 1 && r.detail?.kind === 'simple',
      ),
    );
  }
  assert.ok(records().some((r) => r.event === 'login' && r.identity === db.user));
  assert.ok(records().some((r) => r.event === 'disconnect'));

  // The same records in the PostgreSQL table.
  const tableRows = async () => {
    const c2 = new pg.Client({
      host: auditPg.host,
      port: auditPg.port,
      user: 'postgres',
      password: 'audit-pg-pass',
      database: 'postgres',
    });
    await c2.connect();
    try {
      return (
        await c2.query(
          "SELECT statement, rows, outcome, sqlstate, identity FROM gprxy_audit WHERE event = 'query'",
        )
      ).rows;
    } finally {
      await c2.end();
    }
  };
  await waitFor(
    async () => (await tableRows().catch(() => [])).some((r) => r.sqlstate === '22012'),
    10_000,
    'table rows',
  );
  const rows = await tableRows();
  assert.ok(
    rows.some(
      (r) =>
        String(r.statement).startsWith('INSERT INTO audited') &&
        Number(r.rows) === 3 &&
        r.identity === db.user,
    ),
  );
});

test('the table sink keeps records while its PostgreSQL is down and writes them when it is back', async () => {
  await auditPg.stop();
  const c = new pg.Client({ connectionString: gp.url(db.user, db.password, db.database) });
  await c.connect();
  await c.query("SELECT 'while the audit database was down' AS marker");
  await c.end();
  await waitFor(() => gp.logs.lines.some((l) => l.event === 'audit_sink_failed'), 30_000, 'a sink failure');
  auditPg = await startEmbeddedPostgres({
    dataDir: auditPg.dataDir,
    password: 'audit-pg-pass',
    port: auditPg.port,
  });
  await waitFor(
    async () => {
      const c2 = new pg.Client({
        host: auditPg.host,
        port: auditPg.port,
        user: 'postgres',
        password: 'audit-pg-pass',
        database: 'postgres',
      });
      try {
        await c2.connect();
        const r = await c2.query(
          "SELECT count(*)::int AS n FROM gprxy_audit WHERE statement LIKE '%while the audit database was down%'",
        );
        return r.rows[0].n > 0;
      } catch {
        return false;
      } finally {
        await c2.end().catch(() => undefined);
      }
    },
    20_000,
    'the queued record in the table',
  );
});

test('a full queue under on_overflow drop drops, logs and counts in /metrics', async () => {
  const dead = await startTestProxy({
    databases: { [db.database]: backend(), nowhere: { host: '127.0.0.1', port: 1, dbname: 'x' } },
    users: { [db.user]: { password: db.password }, postgres: { password: 'audit-pg-pass' } },
    server_tls: { sslmode: 'disable' },
    admin: { http: '127.0.0.1:0' },
    audit: {
      sinks: [{ type: 'postgres', database: 'nowhere', user: 'postgres', table: 'gprxy_audit' }],
      queue_size: 5,
      on_overflow: 'drop',
    },
  });
  try {
    const c = new pg.Client({ connectionString: dead.url(db.user, db.password, db.database) });
    await c.connect();
    for (let i = 0; i < 20; i++) await c.query('SELECT 1');
    await c.end();
    const res = await fetch(`http://127.0.0.1:${dead.proxy.httpPort}/metrics`);
    const text = await res.text();
    const dropped = Number(/^gprxy_audit_dropped_total (\d+)/m.exec(text)?.[1]);
    const depth = Number(/^gprxy_audit_queue_depth (\d+)/m.exec(text)?.[1]);
    assert.ok(dropped > 0, `dropped ${dropped}`);
    assert.ok(
      dead.logs.lines.some((l) => l.event === 'audit_sink_failed' && /dropped/.test(String(l.reason))),
    );
    assert.equal(depth, 5);
  } finally {
    await dead.stop();
  }
});
