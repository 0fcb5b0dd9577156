// `gprxy dev` end to end: a real process starts embedded PostgreSQL + a local OIDC issuer + gprxy, prints a
// working URL and the SSO login command (which works, offline), stops on Ctrl-C (SIGINT), and a second run reuses
// the data.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import pg from 'pg';
import { run } from '../support/harness.ts';

const stateDir = mkdtempSync(join(tmpdir(), 'gprxy-devtest-'));
chmodSync(stateDir, 0o755);
after(() => rmSync(stateDir, { recursive: true, force: true }));

async function startDev(): Promise<{ child: ChildProcess; url: string; login: string[] }> {
  const child = spawn(
    process.execPath,
    [
      'bin/gprxy.js',
      'dev',
      '--state-dir',
      stateDir,
      '--port',
      '0',
      '--log-level',
      'warn',
      '--auto-approve',
      'alice@example.com',
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gprxy dev did not get ready: ${out} ${err}`)), 90_000);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /psql "([^"]+)"/.exec(out);
      if (m && out.includes('Press Ctrl-C')) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => reject(new Error(`gprxy dev exited with ${code}: ${out} ${err}`)));
  });
  const login = /gprxy (login --device .*)$/m.exec(out)?.[1]?.split(' ') ?? [];
  return { child, url, login };
}

/** Ctrl-C: the process exits by itself (0, or 130 as a SIGINT-ended process) and PostgreSQL is stopped with it. */
async function stop(child: ChildProcess): Promise<void> {
  const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
  child.kill('SIGINT');
  assert.ok([0, 130].includes((await exited) ?? -1));
  assert.equal(existsSync(join(stateDir, 'pgdata', 'postmaster.pid')), false, 'PostgreSQL still running');
}

test('gprxy dev serves a demo database, stops on SIGINT, and keeps its data', async () => {
  const first = await startDev();
  assert.match(first.url, /^postgresql:\/\/demo:[^@]+@127\.0\.0\.1:\d+\/demo$/);
  const c = new pg.Client({ connectionString: first.url });
  await c.connect();
  const r = await c.query('SELECT current_user AS u, current_database() AS d');
  assert.deepEqual(r.rows[0], { u: 'demo', d: 'demo' });
  await c.query('CREATE TABLE kept (v text)');
  await c.query("INSERT INTO kept VALUES ('from the first run')");
  await c.end();

  // SSO as printed: `gprxy login --device ...` (auto-approved as alice), then her token logs in as sso_dba.
  assert.match(
    first.login.join(' '),
    /^login --device --issuer http:\/\/127\.0\.0\.1:\d+ --client-id gprxy-cli/,
  );
  const home = join(stateDir, 'cli-home');
  const env = { GPRXY_HOME: home };
  const login = await run(process.execPath, ['bin/gprxy.js', ...first.login], env);
  assert.equal(login.code, 0, login.stderr);
  assert.match(login.stdout, /Logged in as alice@example\.com/);
  const token = (await run(process.execPath, ['bin/gprxy.js', 'token'], env)).stdout.trim();
  const port = Number(new URL(first.url).port);
  const sso = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'alice@example.com',
    password: token,
    database: 'demo',
  });
  await sso.connect();
  const who = await sso.query("SELECT current_user AS u, current_setting('gprxy.identity') AS id");
  assert.deepEqual(who.rows[0], { u: 'sso_dba', id: 'alice@example.com' });
  await sso.end();
  await stop(first.child);

  const second = await startDev();
  const c2 = new pg.Client({ connectionString: second.url });
  await c2.connect();
  const r2 = await c2.query('SELECT v FROM kept');
  assert.deepEqual(r2.rows, [{ v: 'from the first run' }]);
  await c2.end();
  await stop(second.child);

  // The state's secrets lost (a state directory recreated) while the cluster stays: the cluster is made afresh
  // with the new passwords instead of every login failing with 28P01.
  for (const f of readdirSync(stateDir)) if (f.endsWith('.password')) rmSync(join(stateDir, f));
  const third = await startDev();
  const c3 = new pg.Client({ connectionString: third.url });
  await c3.connect();
  const r3 = await c3.query("SELECT to_regclass('kept') AS t");
  assert.deepEqual(r3.rows, [{ t: null }], 'a fresh cluster');
  await c3.end();
  await stop(third.child);
});
