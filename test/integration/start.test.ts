// `gprxy start` as a real process: SIGHUP reloads (a new database works, an invalid file is rejected and the old
// config stays), SIGTERM drains (no new logins, connected clients finish, then exit); `gprxy passwd`.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { stringify } from 'yaml';
import { parseUserlist, verifyPassword } from '../../src/auth/verifiers.ts';
import { freePort } from '../../src/dev/postgres.ts';
import { testCerts } from '../support/certs.ts';
import { createTestDb, PG, run, type TestDb, waitFor } from '../support/harness.ts';

let db1: TestDb;
let db2: TestDb;
const dir = mkdtempSync(join(tmpdir(), 'gprxy-start-'));
chmodSync(dir, 0o755);
const configPath = join(dir, 'gprxy.yaml');
let port = 0;

function writeConfig(databases: TestDb[], extra: Record<string, unknown> = {}): void {
  const users: Record<string, { password: string }> = {};
  const dbs: Record<string, { host: string; port: number }> = {};
  for (const d of databases) {
    users[d.user] = { password: d.password };
    dbs[d.database] = { host: PG.host, port: PG.port };
  }
  writeFileSync(
    configPath,
    stringify({
      listen: { host: '127.0.0.1', port },
      log_level: 'info',
      server_tls: { sslmode: 'disable' },
      databases: dbs,
      users,
      shutdown_timeout: 20,
      ...extra,
    }),
  );
}

function startGprxy(): { child: ChildProcess; logs: string[] } {
  const logs: string[] = [];
  const child = spawn(process.execPath, ['bin/gprxy.js', 'start', '--config', configPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => logs.push(...d.toString().split('\n').filter(Boolean)));
  child.stderr?.on('data', (d: Buffer) => logs.push(...d.toString().split('\n').filter(Boolean)));
  return { child, logs };
}

const connect = (d: TestDb) => {
  const c = new pg.Client({
    host: '127.0.0.1',
    port,
    user: d.user,
    password: d.password,
    database: d.database,
  });
  return c.connect().then(() => c);
};

before(async () => {
  db1 = await createTestDb('st1');
  db2 = await createTestDb('st2');
  port = await freePort();
});
after(async () => {
  await db1?.drop();
  await db2?.drop();
});

test('SIGHUP reloads; an invalid reload keeps the old config; SIGTERM drains', async () => {
  writeConfig([db1]);
  const { child, logs } = startGprxy();
  const exited = new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
  try {
    await waitFor(() => logs.some((l) => l.includes('"listening"')), 30_000, 'gprxy to listen');
    const c1 = await connect(db1);
    assert.equal((await c1.query('SELECT 1 AS one')).rows[0].one, 1);
    await assert.rejects(connect(db2), { code: '3D000' });

    writeConfig([db1, db2]);
    child.kill('SIGHUP');
    await waitFor(() => logs.some((l) => l.includes('"reload"')), 10_000, 'reload');
    const c2 = await connect(db2);
    assert.equal((await c2.query('SELECT current_database() AS d')).rows[0].d, db2.database);
    await c2.end();

    writeFileSync(configPath, 'databases: { broken: { port: "not a number" } }\n');
    child.kill('SIGHUP');
    await waitFor(() => logs.some((l) => l.includes('reload_rejected')), 10_000, 'reload rejection');
    assert.ok(
      logs.some((l) => l.includes('databases.broken.port')),
      'the rejection names the key',
    );
    const c3 = await connect(db2);
    await c3.end();

    // SIGTERM: new logins refused, the connected client keeps working until it leaves, then gprxy exits.
    child.kill('SIGTERM');
    await waitFor(() => logs.some((l) => l.includes('"shutdown"')), 10_000, 'drain start');
    await assert.rejects(connect(db1));
    assert.equal((await c1.query('SELECT 2 AS two')).rows[0].two, 2);
    await c1.end();
    assert.equal(await exited, 0);
  } finally {
    child.kill('SIGKILL');
  }
});

test('gprxy passwd prints a userlist line whose verifier checks the password', async () => {
  const r = await run(process.execPath, ['bin/gprxy.js', 'passwd', 'alice'], {}, 'correct horse\n');
  assert.equal(r.code, 0, r.stderr);
  const secrets = parseUserlist(r.stdout);
  const s = secrets.get('alice');
  assert.equal(s?.kind, 'scram-sha-256');
  assert.equal(await verifyPassword(s!, 'alice', 'correct horse'), true);
  assert.equal(await verifyPassword(s!, 'alice', 'wrong'), false);
  assert.ok(!r.stdout.includes('correct horse'));
});

test('gprxy config check opens the TLS files: a missing file or a key of another certificate fails naming the key', async () => {
  const certs = testCerts();
  const check = async (doc: Record<string, unknown>) => {
    const path = join(dir, 'check.yaml');
    writeFileSync(path, stringify({ databases: { app: { host: '127.0.0.1', port: 5432 } }, ...doc }));
    return run(process.execPath, ['bin/gprxy.js', 'config', 'check', '--config', path]);
  };
  const good = await check({ listen: { tls: { cert: certs.serverCert, key: certs.serverKey } } });
  assert.equal(good.code, 0, good.stderr);
  const missing = await check({ listen: { tls: { cert: join(dir, 'nope.pem'), key: certs.serverKey } } });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^listen\.tls: file not found: .*nope\.pem/);
  const mismatched = await check({ listen: { tls: { cert: certs.serverCert, key: certs.clientKey } } });
  assert.equal(mismatched.code, 1);
  assert.match(mismatched.stderr, /^listen\.tls: /);
  const serverLeg = await check({
    databases: {
      app: {
        host: '127.0.0.1',
        port: 5432,
        server_tls: { sslmode: 'verify-full', ca: join(dir, 'gone.pem') },
      },
    },
  });
  assert.equal(serverLeg.code, 1);
  assert.match(serverLeg.stderr, /^databases\.app\.server_tls: file not found/);
  // No key material in any message.
  for (const r of [missing, mismatched, serverLeg]) assert.ok(!r.stderr.includes('PRIVATE KEY'));
});
