// Startup parameters -> one set_config() statement: options parsing, escaping, skipping equal values.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PgError } from '../protocol/errors.ts';
import { parseOptions, startupSettings } from './startup-params.ts';

test('options: -c forms, --name=value, escaped spaces', () => {
  assert.deepEqual(
    parseOptions('-c search_path=a,b --statement-timeout=5s -cwork_mem=64MB -c x.y=hello\\ world'),
    [
      ['search_path', 'a,b'],
      ['statement_timeout', '5s'],
      ['work_mem', '64MB'],
      ['x.y', 'hello world'],
    ],
  );
  assert.ok(parseOptions('-x') instanceof PgError);
  assert.ok(parseOptions('-c') instanceof PgError);
});

test('values are escaped literals; equal values are skipped; user/database are not settings', () => {
  const params = new Map([
    ['user', 'u'],
    ['database', 'd'],
    ['application_name', "it's \\ me"],
    ['client_encoding', 'UTF8'],
    ['_pq_.x', '1'],
  ]);
  const r = startupSettings(params, new Map([['client_encoding', 'UTF8']]));
  assert.equal(r.sql, "SELECT pg_catalog.set_config(E'application_name', E'it''s \\\\ me', false)");
  assert.equal(startupSettings(new Map([['user', 'u']]), new Map()).sql, undefined);
});

test('a parameter name that is not a GUC name is refused, not spliced', () => {
  const r = startupSettings(new Map([["x'; drop table t; --", 'v']]), new Map());
  assert.equal(r.error?.sqlState, '42704');
});
