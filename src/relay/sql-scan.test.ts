// The pinning/SET scanner on real statements: what pins, what is recorded, what is neither.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { firstWords, isMultiStatement, scanSql } from './sql-scan.ts';

test('first keywords skip comments and whitespace', () => {
  assert.deepEqual(firstWords('  -- hi\n /* block */ create temp table x()', 3), ['CREATE', 'TEMP', 'TABLE']);
  assert.deepEqual(firstWords('', 2), []);
});

test('untrackable session state pins, with its reason', () => {
  const cases: [string, string][] = [
    ['PREPARE p AS SELECT 1', 'prepare'],
    ['listen chan', 'listen'],
    ['CREATE TEMP TABLE t (a int)', 'temp_table'],
    ['create temporary table t (a int)', 'temp_table'],
    ['CREATE GLOBAL TEMPORARY TABLE t (a int)', 'temp_table'],
    ['SELECT pg_advisory_lock(1)', 'advisory_lock'],
    ['select pg_try_advisory_lock(1, 2)', 'advisory_lock'],
    ['DECLARE c CURSOR WITH HOLD FOR SELECT 1', 'declare_with_hold'],
    ['SET ROLE admin', 'set_role'],
    ['SET SESSION AUTHORIZATION bob', 'session_authorization'],
    ['SET search_path = a; SELECT 1', 'set_in_multi_statement'],
    ['SELECT 1; SET work_mem = 1', 'set_in_multi_statement'],
  ];
  for (const [sql, reason] of cases) assert.equal(scanSql(sql, false).pin, reason, sql);
  assert.equal(scanSql('SET work_mem = 1', true).pin, 'set_in_transaction');
});

test('transaction-scoped state does not pin', () => {
  for (const sql of [
    'SELECT pg_advisory_xact_lock(1)',
    'SET LOCAL work_mem = 1',
    'SET TRANSACTION ISOLATION LEVEL SERIALIZABLE',
    'DECLARE c CURSOR FOR SELECT 1',
    'CREATE TABLE temp_things (a int)',
    'SELECT 1',
  ]) {
    assert.equal(scanSql(sql, false).pin, undefined, sql);
  }
});

test('standalone SET and RESET are recorded', () => {
  assert.deepEqual(scanSql("SET TimeZone = 'UTC'", false).setting, { name: 'timezone', value: "'UTC'" });
  assert.deepEqual(scanSql('set search_path to a, b;', false).setting, {
    name: 'search_path',
    value: 'a, b',
  });
  assert.deepEqual(scanSql('SET SESSION "my.var" = 3', false).setting, { name: 'my.var', value: '3' });
  assert.deepEqual(scanSql('RESET work_mem', false).setting, { reset: 'work_mem' });
  assert.deepEqual(scanSql('RESET ALL', false).setting, { resetAll: true });
});

test('statement-cache resets', () => {
  assert.equal(scanSql('DISCARD ALL', false).dropsStatements, 'all');
  assert.equal(scanSql('DEALLOCATE ALL', false).dropsStatements, 'all');
  assert.equal(scanSql('deallocate prepare S_1', false).deallocate, 's_1');
  assert.equal(isMultiStatement('SELECT 1;  -- trailing\n'), false);
});
