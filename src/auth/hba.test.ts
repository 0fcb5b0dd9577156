// HBA parsing and first-match semantics.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HbaError, matchHba, parseHba } from './hba.ts';

const rules = parseHba(`
# comment
hostssl app   alice          10.0.0.0/8     scram-sha-256
host    app   alice          10.0.0.0/8     reject
host    all   "bob,carol"    all            md5
host    a,b   all            ::1/128        trust
hostnossl all all            192.168.1.5    password
local   all   all                           trust
host    all   all            all            cert map=m1
`);

const at = (address: string, user: string, database = 'app', tls = false) =>
  matchHba(rules, { type: 'host', tls, address, user, database });

test('first match wins, by type, database, user and address', () => {
  assert.equal(at('10.1.2.3', 'alice', 'app', true)?.method, 'scram-sha-256');
  assert.equal(at('10.1.2.3', 'alice', 'app', false)?.method, 'reject');
  assert.equal(at('::ffff:10.1.2.3', 'alice', 'app', true)?.method, 'scram-sha-256', 'IPv4-mapped addresses');
  assert.equal(at('8.8.8.8', 'bob,carol')?.method, 'md5', 'a quoted comma is part of the name');
  assert.equal(at('::1', 'zed', 'b')?.method, 'trust');
  assert.equal(at('192.168.1.5', 'zed', 'x')?.method, 'password');
  assert.equal(at('192.168.1.5', 'zed', 'x', true)?.method, 'cert', 'hostnossl skips TLS');
  assert.deepEqual(at('1.1.1.1', 'zed', 'x')?.options, { map: 'm1' });
  assert.equal(
    matchHba(rules.slice(0, 5), { type: 'host', tls: false, address: '1.1.1.1', user: 'x', database: 'y' }),
    undefined,
  );
});

test('local lines never match TCP connections', () => {
  const local = parseHba('local all all trust');
  assert.equal(
    matchHba(local, { type: 'host', tls: false, address: '127.0.0.1', user: 'u', database: 'd' }),
    undefined,
  );
  assert.equal(
    matchHba(local, { type: 'local', tls: false, address: '', user: 'u', database: 'd' })?.method,
    'trust',
  );
});

test('errors name the line', () => {
  assert.throws(
    () => parseHba('host all all 10.0.0.0/33 trust'),
    (e: Error) => e instanceof HbaError && /line 1/.test(e.message),
  );
  assert.throws(() => parseHba('\nhost all all all magic'), /line 2: unknown method "magic"/);
  assert.throws(() => parseHba('hots all all all trust'), /unknown connection type/);
  assert.throws(() => parseHba('host all all trust'), /expected 5 fields/);
  assert.throws(() => parseHba('host all all all trust map'), /needs name=value/);
});
