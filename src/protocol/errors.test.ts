// Tests for errors.ts: PgError fields, named constructors and toPgError.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PgError, SqlState, toPgError } from './errors.ts';

test('PgError carries severity, SQLSTATE, message, detail, hint, internal code', () => {
  const e = new PgError('ERROR', '42601', 'syntax error', { detail: 'd', hint: 'h', code: 'GPRXY_X' });
  assert.ok(e instanceof Error);
  assert.equal(e.name, 'PgError');
  assert.equal(e.severity, 'ERROR');
  assert.equal(e.sqlState, '42601');
  assert.equal(e.message, 'syntax error');
  assert.equal(e.detail, 'd');
  assert.equal(e.hint, 'h');
  assert.equal(e.code, 'GPRXY_X');
  assert.equal(e.fatal, false);
  assert.equal(new PgError('FATAL', 'x', 'm').fatal, true);
  assert.equal(new PgError('PANIC', 'x', 'm').fatal, true);
  assert.equal(new PgError('WARNING', 'x', 'm').detail, undefined);
});

test('named constructors: SQLSTATE, severity and stable code', () => {
  const cases: [PgError, string, string][] = [
    [PgError.protocolViolation('bad'), SqlState.PROTOCOL_VIOLATION, 'GPRXY_PROTOCOL'],
    [PgError.protocolViolation('bad', 'GPRXY_Y'), '08P01', 'GPRXY_Y'],
    [PgError.passwordFailed('bob', 'scram-sha-256'), '28P01', 'GPRXY_AUTH_SCRAM_SHA_256'],
    [PgError.notAllowed('no'), '28000', 'GPRXY_NOT_ALLOWED'],
    [PgError.tooManyConnections('full'), '53300', 'GPRXY_TOO_MANY'],
    [PgError.unknownDatabase('nope'), '3D000', 'GPRXY_NO_DATABASE'],
    [PgError.serverGone(), '08006', 'GPRXY_SERVER_GONE'],
    [PgError.shuttingDown(), '57P01', 'GPRXY_SHUTDOWN'],
    [PgError.internal('GPRXY_BUG'), 'XX000', 'GPRXY_BUG'],
  ];
  for (const [e, state, code] of cases) {
    assert.equal(e.sqlState, state, code);
    assert.equal(e.code, code);
    assert.equal(e.severity, 'FATAL');
  }
  assert.equal(PgError.passwordFailed('bob', 'md5').message, 'password authentication failed for user "bob"');
  assert.equal(PgError.unknownDatabase('nope').message, 'database "nope" does not exist');
});

test('toPgError: PgError passes through; anything else becomes a bare internal error', () => {
  const e = PgError.notAllowed('x');
  assert.equal(toPgError(e), e);
  const t = toPgError(new TypeError('secret stack detail'));
  assert.equal(t.sqlState, 'XX000');
  assert.equal(t.code, 'GPRXY_INTERNAL');
  assert.ok(!t.message.includes('secret'));
  assert.equal(toPgError('str', 'GPRXY_Z').code, 'GPRXY_Z');
});
