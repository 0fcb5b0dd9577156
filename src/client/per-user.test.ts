// per_user pure parts: the ownership marker, identifier quoting, and the config rules (master key, provisioner).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { ConfigError, parseConfigText, perUserStateKey } from '../config/load.ts';
import { quoteIdent, roleMarker } from './per-user.ts';

test('the role marker is a MAC of the role name under the master key', () => {
  const k1 = randomBytes(32);
  const k2 = randomBytes(32);
  const m = roleMarker('alice@example.com', k1);
  assert.match(m, /^gprxy sso per_user login; mac=[A-Za-z0-9_-]{24}$/);
  assert.equal(roleMarker('alice@example.com', k1), m, 'stable');
  assert.notEqual(roleMarker('bob@example.com', k1), m, 'per role');
  assert.notEqual(roleMarker('alice@example.com', k2), m, 'per key');
});

test('identifiers are quoted whole', () => {
  assert.equal(quoteIdent('alice@example.com'), '"alice@example.com"');
  assert.equal(quoteIdent('a"; DROP ROLE x; --'), '"a""; DROP ROLE x; --"');
});

const yaml = (extra = '') => `
databases: { app: { host: db1 } }
users: { gprxy_prov: { password: pw } }
sso:
  backend: per_user
  provisioner: { user: gprxy_prov, database: app }
  state_file: state/per-user.json
${extra}`;

test('per_user config: master key required at load, held beside the config, state file resolved', () => {
  const key = randomBytes(32);
  const load = (text: string, env: Record<string, string>) =>
    parseConfigText(text, { env, baseDir: '/etc/gprxy', source: 'test.yaml' });
  assert.throws(
    () => load(yaml(), {}),
    (e: Error) =>
      e instanceof ConfigError &&
      /per_user keeps role passwords encrypted: set GPRXY_MASTER_KEY/.test(e.message),
  );
  assert.throws(() => load(yaml(), { GPRXY_MASTER_KEY: 'c2hvcnQ=' }), /must be 32 bytes/);
  const c = load(yaml(), { GPRXY_MASTER_KEY: key.toString('base64') });
  assert.equal(c.sso.state_file, '/etc/gprxy/state/per-user.json');
  assert.ok(perUserStateKey(c)?.equals(key));
  assert.ok(!JSON.stringify(c).includes(key.toString('base64')), 'the key is not part of the config object');
  const env = { GPRXY_MASTER_KEY: key.toString('hex') };
  assert.throws(() => load(yaml().replace(/ {2}provisioner.*\n/, ''), env), /sso\.provisioner: needed/);
  assert.throws(() => load(yaml().replace(/ {2}state_file.*\n/, ''), env), /sso\.state_file: needed/);
  assert.throws(
    () => load(yaml().replace('users: { gprxy_prov: { password: pw } }', ''), env),
    /users\.gprxy_prov\.password/,
  );
  assert.throws(
    () => load(yaml().replace('database: app', 'database: nope'), env),
    /no database entry "nope"/,
  );
  assert.equal(perUserStateKey(load('sso: { backend: service_account }', {})), undefined);
});
