// Config loading: defaults, durations, ${ENV}, error messages naming the key, pool setting layering.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, findDatabase, parseConfigText, poolSettings } from './load.ts';

const load = (text: string, env: Record<string, string> = {}) =>
  parseConfigText(text, { env, baseDir: '/etc/gprxy', source: 'test.yaml' });

test('defaults and durations', () => {
  const c = load('databases: { app: { host: db1 } }\nquery_wait_timeout: 5\nserver_idle_timeout: 250ms\n');
  assert.equal(c.listen.port, 6432);
  assert.equal(c.client_login_timeout, 60_000);
  assert.equal(c.databases.app?.port, 5432);
  const s = poolSettings(c, 'app', 'someone');
  assert.equal(s.query_wait_timeout, 5000);
  assert.equal(s.server_idle_timeout, 250);
  assert.equal(s.server_reset_query, 'DISCARD ALL');
  assert.ok(Object.isFrozen(c.databases));
});

test('user settings override database settings override top level', () => {
  const c = load(`
default_pool_size: 5
databases: { app: { default_pool_size: 7, pool_mode: session } }
users: { rep: { default_pool_size: 2 } }
`);
  assert.equal(poolSettings(c, 'app', 'rep').default_pool_size, 2);
  assert.equal(poolSettings(c, 'app', 'other').default_pool_size, 7);
  assert.equal(poolSettings(c, 'unknown', 'other').default_pool_size, 5);
});

test('${ENV} references are substituted; a missing one names the key', () => {
  const c = load('users: { svc: { password: "${SVC_PW}" } }', { SVC_PW: 's3cret' });
  assert.equal(c.users.svc?.password, 's3cret');
  assert.throws(
    () => load('users: { svc: { password: "${NOPE}" } }'),
    (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /users\.svc\.password: environment variable NOPE is not set/);
      return true;
    },
  );
});

test('invalid values and unknown keys are errors naming the key', () => {
  assert.throws(() => load('databases: { app: { port: 70000 } }'), /databases\.app\.port/);
  assert.throws(() => load('default_pool_sise: 3'), /default_pool_sise|Unrecognized key/);
  assert.throws(() => load('query_wait_timeout: soon'), /query_wait_timeout: invalid duration/);
  assert.throws(() => load('listen: { require_tls: true }'), /require_tls: needs listen.tls/);
  assert.throws(() => load('listen: [oops'), /invalid YAML/);
});

test('relative paths resolve against the config directory; "*" catches other databases', () => {
  const c = load('auth: { file: users.txt }\ndatabases: { "*": { host: h } }');
  assert.equal(c.auth.file, '/etc/gprxy/users.txt');
  assert.equal(findDatabase(c, 'anything')?.host, 'h');
});
