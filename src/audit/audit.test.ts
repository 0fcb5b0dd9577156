// Hand-built audit lines: a statement record's line equals JSON.stringify of the record, and the cached
// timestamp equals Date#toISOString, for the shapes the proxy produces.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isoClock, type QueryRecord, queryLine } from './audit.ts';

const who = {
  session: 42,
  identity: 'alice@example.com',
  auth_method: 'oidc-password',
  database: 'app "prod"',
  backend_role: 'analyst',
  client_addr: '10.0.0.7',
  application_name: 'psql\n\u2028é',
};

function record(over: Partial<QueryRecord>): QueryRecord {
  return {
    ts: '2026-11-23T19:03:44.007Z',
    event: 'query',
    ...who,
    statement: 'SELECT 1',
    duration_ms: 0.123,
    rows: 1,
    outcome: 'ok',
    sqlstate: null,
    detail: { kind: 'simple' },
    ...over,
  };
}

test('queryLine is byte for byte JSON.stringify of the record', () => {
  const json = JSON.stringify(who).slice(1, -1);
  const cases: QueryRecord[] = [
    record({}),
    record({ detail: { kind: 'extended' }, rows: null, duration_ms: 12 }),
    record({ statement: "SELECT 'a\"b\\\\c'\t-- ü 😀 \u0000", duration_ms: 1234.5 }),
    record({
      outcome: 'error',
      sqlstate: '42P01',
      rows: null,
      detail: { kind: 'simple', message: 'relation "nope" does not exist' },
    }),
    record({ detail: { kind: 'extended', params: ['1', null, 'x"y'], copy: 'in' }, rows: 10_000 }),
    record({ session: 7, identity: null, application_name: null }),
  ];
  for (const r of cases) {
    const w = JSON.stringify({
      session: r.session,
      identity: r.identity,
      auth_method: r.auth_method,
      database: r.database,
      backend_role: r.backend_role,
      client_addr: r.client_addr,
      application_name: r.application_name,
    }).slice(1, -1);
    assert.equal(queryLine(r, w), JSON.stringify(r));
    assert.doesNotThrow(() => JSON.parse(queryLine(r, json)));
  }
});

test('isoClock agrees with toISOString across second and millisecond boundaries', () => {
  const iso = isoClock();
  const base = Date.UTC(2026, 10, 23, 19, 3, 44);
  for (const ms of [0, 1, 9, 10, 99, 100, 999, 1000, 1001, 59_999, 60_000, 86_399_999]) {
    assert.equal(iso(base + ms), new Date(base + ms).toISOString());
  }
  assert.equal(iso(0), new Date(0).toISOString());
  assert.equal(iso(base), new Date(base).toISOString(), 'an earlier second again');
});
