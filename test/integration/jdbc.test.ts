// JDBC (pgjdbc, DBeaver's driver) through gprxy in session mode: SCRAM login, server-side prepared statements,
// batches, an error in a transaction then rollback, a wrong password; and in transaction mode, server-prepared
// statements used across servers. Needs java and Debian's libpostgresql-jdbc-java.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, test } from 'node:test';
import {
  backend,
  createTestDb,
  hasCommand,
  run,
  startTestProxy,
  type TestDb,
  type TestProxy,
} from '../support/harness.ts';

const JAR = '/usr/share/java/postgresql.jar';
const skip = !hasCommand('java') || !existsSync(JAR) ? 'java or libpostgresql-jdbc-java missing' : false;
if (skip && process.env.CI) throw new Error(`${skip}: .ci/run installs them`);

let db: TestDb;
let gp: TestProxy;

before(async () => {
  if (skip) return;
  db = await createTestDb('jdbc');
  gp = await startTestProxy({
    databases: {
      [db.database]: backend(),
      tx: { ...backend(db.database), pool_mode: 'transaction', default_pool_size: 2 },
    },
    users: { [db.user]: { password: db.password } },
  });
});
after(async () => {
  await gp?.stop();
  await db?.drop();
});

test('pgjdbc works through gprxy', { skip }, async () => {
  const url = `jdbc:postgresql://127.0.0.1:${gp.port}/${db.database}?prepareThreshold=1&sslmode=disable`;
  const r = await run('java', [
    '-cp',
    JAR,
    'test/integration/jdbc/JdbcCheck.java',
    url,
    db.user,
    db.password,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.deepEqual(lines, [
    `user=${db.user} answer=42`,
    'prepared_sum=110',
    'batch_count=100 batch_sum=4950',
    'error_state=22012',
    'after_rollback=still fine',
    'bad_password_state=28P01',
  ]);
});

test('pgjdbc server-prepared statements move between servers in transaction mode', { skip }, async () => {
  const url = `jdbc:postgresql://127.0.0.1:${gp.port}/tx?prepareThreshold=1&sslmode=disable`;
  const r = await run('java', [
    '-cp',
    JAR,
    'test/integration/jdbc/JdbcTxCheck.java',
    url,
    db.user,
    db.password,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split('\n'), [
    'sum=110',
    'servers_used=several',
    'server_side_names=gprxy',
  ]);
});
