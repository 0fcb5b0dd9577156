// Admin HTTP: /metrics parsed with a strict Prometheus text-format parser while real clients drive traffic;
// /healthz, /readyz following the backend's reachability; the JSON API behind its bearer token; no secret anywhere.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { configFromObject } from '../../src/config/load.ts';
import type { RawConfig } from '../../src/config/schema.ts';
import { backend, createTestDb, startTestProxy, type TestDb, type TestProxy } from '../support/harness.ts';

const TOKEN = 'api-token-for-tests-0123456789';
let db: TestDb;
let gp: TestProxy;
let base: RawConfig;

before(async () => {
  db = await createTestDb('met');
  base = {
    listen: { host: '127.0.0.1', port: 0 },
    databases: { [db.database]: { ...backend(), pool_mode: 'transaction', default_pool_size: 2 } },
    users: { [db.user]: { password: db.password } },
    admin: { http: '127.0.0.1:0', api_token: TOKEN },
    server_tls: { sslmode: 'disable' },
  };
  gp = await startTestProxy(base);
});

after(async () => {
  if (process.env.DUMP) console.log(gp.logs.text());
  await gp?.stop();
  await db?.drop();
});

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * A strict parser for the Prometheus text exposition format (0.0.4): HELP/TYPE comments, one TYPE per family
 * before its samples, valid metric and label names, escaped label values, float values; throws on anything else.
 */
function parsePrometheus(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
  const lines = text.split('\n');
  assert.equal(lines.at(-1), '', 'exposition ends with a newline');
  for (const [i, line] of lines.slice(0, -1).entries()) {
    const where = `line ${i + 1}: ${line}`;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) continue; // other comments are allowed
      assert.match(m[2]!, NAME, where);
      if (m[1] === 'TYPE') {
        assert.ok(['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(m[3]!), where);
        assert.ok(!types.has(m[2]!), `duplicate TYPE: ${where}`);
        types.set(m[2]!, m[3]!);
      }
      continue;
    }
    if (line.trim() === '') continue; // empty lines are ignored (the format allows them)
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    assert.ok(m, `bad sample: ${where}`);
    const name = m[1]!;
    const labels: Record<string, string> = {};
    let rest = m[3] ?? '';
    while (rest.length) {
      const l = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,?)/.exec(rest);
      assert.ok(l, `bad labels: ${where}`);
      assert.ok(!(l[1]! in labels), `duplicate label: ${where}`);
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      rest = rest.slice(l[0].length);
      assert.ok(l[3] === ',' || rest.length === 0, `bad label separator: ${where}`);
    }
    const raw = m[4]!;
    // Go's ParseFloat, which Prometheus uses: NaN and Inf in any letter case (prom-client writes "Nan").
    const special = raw.toLowerCase();
    const nan = special === 'nan';
    const value = /^[+]?inf$/.test(special)
      ? Infinity
      : special === '-inf'
        ? -Infinity
        : nan
          ? NaN
          : Number(raw);
    assert.ok(nan || (!Number.isNaN(value) && raw.trim() !== ''), `bad value: ${where}`);
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count|total|created)$/, '');
    assert.ok(types.has(family), `sample before its TYPE: ${where}`);
    if (name.endsWith('_bucket') && types.get(family) === 'histogram') assert.ok('le' in labels, where);
    samples.push({ name, labels, value });
  }
  return { types, samples };
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

async function get(path: string, token?: string): Promise<{ status: number; type: string; body: string }> {
  const res = await fetch(`http://127.0.0.1:${gp.proxy.httpPort}${path}`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

async function scrape() {
  const r = await get('/metrics');
  assert.equal(r.status, 200);
  assert.match(r.type, /^text\/plain/);
  for (const secret of [db.password, TOKEN]) assert.ok(!r.body.includes(secret), 'a secret in /metrics');
  return parsePrometheus(r.body).samples;
}

const url = (password = db.password) =>
  `postgresql://${db.user}:${encodeURIComponent(password)}@127.0.0.1:${gp.port}/${db.database}`;

test('/metrics parses strictly and its counters move with traffic', async () => {
  const before = await scrape();
  const c = new pg.Client({ connectionString: url() });
  await c.connect();
  for (let i = 0; i < 5; i++) await c.query('SELECT $1::int AS i', [i]);
  await c.query('BEGIN');
  await c.query('SELECT pg_sleep(0.05)');
  await c.query('COMMIT');
  await assert.rejects(new pg.Client({ connectionString: url('wrong') }).connect(), { code: '28P01' });
  const during = await scrape();
  const labels = { database: db.database, user: db.user };
  assert.equal(value(during, 'gprxy_clients', { ...labels, state: 'idle' }), 1);
  assert.ok(value(during, 'gprxy_servers', { ...labels, state: 'idle' }) >= 1);
  assert.ok(
    value(during, 'gprxy_logins_total', { method: 'scram-sha-256', result: 'ok' }) >
      value(before, 'gprxy_logins_total', { method: 'scram-sha-256', result: 'ok' }),
  );
  assert.equal(value(during, 'gprxy_login_failures_total', { sqlstate: '28P01' }), 1);
  // Login (priming) + 5 queries + 1 transaction: each a lease in transaction mode.
  assert.ok(value(during, 'gprxy_server_assignments_total', labels) >= 6);
  // 5 statements + BEGIN/pg_sleep/COMMIT: 8 requests in 6 transactions.
  assert.ok(value(during, 'gprxy_transaction_duration_seconds_count', labels) >= 6);
  assert.ok(
    value(during, 'gprxy_transaction_duration_seconds_sum', labels) >= 0.05,
    'the pg_sleep transaction counts',
  );
  assert.ok(value(during, 'gprxy_transactions_total', labels) >= 6);
  assert.ok(value(during, 'gprxy_query_duration_seconds_count', labels) >= 8);
  assert.ok(value(during, 'gprxy_queries_total', labels) >= 8);
  // Buckets are cumulative and end at the count.
  const buckets = during
    .filter(
      (s) =>
        s.name === 'gprxy_query_duration_seconds_bucket' &&
        s.labels.database === labels.database &&
        s.labels.user === labels.user,
    )
    .map((s) => s.value);
  assert.ok(buckets.length > 2);
  for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]! >= buckets[i - 1]!, 'cumulative buckets');
  assert.equal(buckets.at(-1), value(during, 'gprxy_query_duration_seconds_count', labels));
  for (const name of ['gprxy_client_bytes_received_total', 'gprxy_client_bytes_sent_total']) {
    assert.ok(value(during, name, labels) > value(before, name, labels) + 100, name);
  }
  assert.ok(value(during, 'gprxy_server_wait_seconds_count', labels) >= 6);
  assert.ok(value(during, 'gprxy_servers_opened_total', labels) >= 1);
  assert.ok(
    during.some((s) => s.name === 'gprxy_process_cpu_user_seconds_total'),
    'process metrics',
  );
  // A named statement: prepared on the server at first use (miss), then found there (hit).
  for (let i = 0; i < 3; i++) await c.query({ name: 'metrics_q', text: 'SELECT $1::int AS i', values: [i] });
  const after = await scrape();
  const prepared = (s: typeof after, result: string) =>
    value(s, 'gprxy_prepared_statements_total', { ...labels, result });
  assert.ok(prepared(after, 'miss') >= prepared(during, 'miss') + 1, 'a miss');
  assert.ok(prepared(after, 'hit') >= prepared(during, 'hit') + 1, 'a hit');
  await c.end();
});

test("/healthz and /readyz; /readyz is 503 while a database's server is unreachable", async () => {
  assert.equal((await get('/healthz')).status, 200);
  const ok = await get('/readyz');
  assert.equal(ok.status, 200, ok.body);
  // A closed port: bind one, note it, close it.
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const down = configFromObject(
    { ...base, databases: { ...base.databases, gone: { host: '127.0.0.1', port } } },
    gp.dir,
  );
  gp.proxy.reload(down);
  const r = await get('/readyz');
  assert.equal(r.status, 503);
  assert.deepEqual(JSON.parse(r.body).databases, { [db.database]: true, gone: false });
  gp.proxy.reload(configFromObject(base, gp.dir));
  assert.equal((await get('/readyz')).status, 200);
});

test('the JSON API needs the bearer token and shows pools, clients and servers without secrets', async () => {
  const c = new pg.Client({ connectionString: url(), application_name: 'api-test' });
  await c.connect();
  await c.query('SELECT 1');
  assert.equal((await get('/api/pools')).status, 401);
  assert.equal((await get('/api/pools', 'wrong-token')).status, 401);
  const pools = await get('/api/pools', TOKEN);
  assert.equal(pools.status, 200);
  assert.match(pools.type, /^application\/json/);
  const pool = (JSON.parse(pools.body) as { database: string; user: string; pool_mode: string }[]).find(
    (p) => p.database === db.database,
  );
  assert.equal(pool?.pool_mode, 'transaction');
  const clients = JSON.parse((await get('/api/clients', TOKEN)).body) as { application_name: string }[];
  assert.ok(clients.some((x) => x.application_name === 'api-test'));
  const servers = JSON.parse((await get('/api/servers', TOKEN)).body) as {
    database: string;
    remote_pid: number;
  }[];
  assert.ok(servers.some((s) => s.database === db.database && s.remote_pid > 0));
  for (const path of ['/api/pools', '/api/clients', '/api/servers']) {
    const body = (await get(path, TOKEN)).body;
    for (const secret of [db.password, TOKEN]) assert.ok(!body.includes(secret), `a secret in ${path}`);
  }
  assert.equal((await get('/nope')).status, 404);
  await c.end();
});
