// The SSO CLI end to end against the local OIDC issuer (oidc-provider): `gprxy login --device` and the browser flow
// (authorization code + PKCE, loopback redirect), credentials at 0600, `status`, `token` with silent refresh, then
// `gprxy psql` and `gprxy tunnel` (node-postgres, no password) through a gprxy configured for SSO.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { type LocalIssuer, startLocalIssuer } from '../../src/dev/oidc.ts';
import { encodeCancelRequest } from '../../src/protocol/frontend.ts';
import {
  admin,
  backend,
  clientSkip,
  createTestDb,
  registerSecret,
  run,
  startTestProxy,
  type TestDb,
  type TestProxy,
  uniq,
} from '../support/harness.ts';

/** Access token lifetime: short enough to wait out, long enough for two CLI runs on a loaded 2-core machine. */
const TTL = 24; // long enough for a few CLI starts (tsx) on a loaded 2-core machine while "fresh"
const home = mkdtempSync(join(tmpdir(), 'gprxy-home-'));
let issuer: LocalIssuer;
let db: TestDb;
let gp: TestProxy;
const dbaRole = uniq('sso_dba');
const analystRole = uniq('sso_an');
const rolePw = `role-${uniq('pw')}`;

function gprxy(args: string[], env: Record<string, string> = {}) {
  return run(process.execPath, ['bin/gprxy.js', ...args], { GPRXY_HOME: home, ...env });
}

function claims(jwt: string): Record<string, unknown> {
  const [, payload] = jwt.split('.');
  assert.ok(payload, 'not a JWT');
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
}

/** Every token the CLI prints is a secret: the suite's log scan must never find one. */
function secretToken(out: string): string {
  const t = out.trim();
  registerSecret(t);
  return t;
}

before(async () => {
  issuer = await startLocalIssuer({ autoApprove: 'alice@example.com', accessTokenTtl: TTL });
  db = await createTestDb('ssocli');
  registerSecret(rolePw);
  for (const r of [dbaRole, analystRole]) {
    await admin(`CREATE ROLE ${r} LOGIN PASSWORD '${rolePw}'`);
    await admin(`GRANT CONNECT ON DATABASE ${db.database} TO ${r}`);
  }
  const hba = join(home, 'hba.conf');
  writeFileSync(
    hba,
    `host ${db.database} ${db.user} 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 oidc\n`,
  );
  gp = await startTestProxy({
    databases: { [db.database]: backend(), other: backend('postgres') },
    server_tls: { sslmode: 'disable' },
    auth: { hba },
    users: { [dbaRole]: { password: rolePw }, [analystRole]: { password: rolePw } },
    sso: {
      providers: [
        {
          name: 'dev',
          issuer: issuer.issuer,
          audience: 'gprxy',
          identity_claim: 'email',
          groups_claim: 'groups',
        },
      ],
      mapping: [
        { match: { group: 'dba' }, role: dbaRole, databases: ['*'] },
        { match: { group: 'analyst' }, role: analystRole, databases: [db.database] },
      ],
      backend: 'service_account',
      allow_loopback_plain: true,
    },
  });
});

after(async () => {
  await gp?.stop();
  await issuer?.stop();
  await db?.drop();
  for (const r of [dbaRole, analystRole]) await admin(`DROP ROLE IF EXISTS ${r}`);
  rmSync(home, { recursive: true, force: true });
});

test('gprxy login --device: the device flow completes and the credentials file is 0600', async () => {
  const r = await gprxy([
    'login',
    '--device',
    '--issuer',
    issuer.issuer,
    '--client-id',
    issuer.clientId,
    '--audience',
    issuer.audience,
    '--port',
    String(gp.port),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /open http:\/\/127\.0\.0\.1:\d+\/device and enter the code [A-Z]{4}-[A-Z]{4}/);
  assert.match(r.stdout, /Logged in as alice@example\.com/);
  assert.equal(statSync(join(home, 'credentials')).mode & 0o777, 0o600);
  const stored = JSON.parse(readFileSync(join(home, 'credentials'), 'utf8')) as {
    profiles: Record<string, { refresh_token?: string; access_token: string; identity: string }>;
  };
  const cred = stored.profiles.default;
  assert.ok(cred?.refresh_token, 'a refresh token is kept');
  assert.equal(cred.identity, 'alice@example.com');
  registerSecret(cred.access_token);
  registerSecret(cred.refresh_token);
});

test('gprxy status shows the identity, issuer, groups and expiry', async () => {
  const r = await gprxy(['status']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /identity: +alice@example\.com/);
  assert.ok(r.stdout.includes(issuer.issuer));
  assert.match(r.stdout, /groups: +dba/);
  const j = await gprxy(['status', '--json']);
  const info = JSON.parse(j.stdout) as Record<string, unknown>;
  assert.equal(info.identity, 'alice@example.com');
  assert.equal(info.refreshable, true);
});

test('gprxy token prints a JWT access token for gprxy with email and groups, and refreshes it after expiry', async () => {
  const first = secretToken((await gprxy(['token'])).stdout);
  const c = claims(first);
  assert.equal(c.iss, issuer.issuer);
  assert.ok(c.aud === 'gprxy' || (Array.isArray(c.aud) && c.aud.includes('gprxy')), `aud ${String(c.aud)}`);
  assert.equal(c.email, 'alice@example.com');
  assert.equal(c.email_verified, true);
  assert.deepEqual(c.groups, ['dba']);
  assert.equal(Number(c.exp) - Number(c.iat), TTL);
  // Still fresh (within three quarters of its life): the same token, no round trip.
  assert.ok(secretToken((await gprxy(['token'])).stdout) === first, 'a fresh token is reused');

  await new Promise((r) => setTimeout(r, (Number(c.exp) + 0.5) * 1000 - Date.now()));
  const second = secretToken((await gprxy(['token'])).stdout);
  assert.ok(second !== first, 'an expired token is replaced');
  const c2 = claims(second);
  assert.equal(c2.email, 'alice@example.com');
  assert.ok(Number(c2.exp) > Number(c.exp));
  assert.equal(statSync(join(home, 'credentials')).mode & 0o777, 0o600);
});

test('gprxy token without a login says how to log in', async () => {
  const r = await gprxy(['token', '--profile', 'nobody']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /gprxy login --profile nobody/);
});

test('the browser flow: authorization code with PKCE and a loopback redirect on a free port', async () => {
  const child = spawn(
    process.execPath,
    [
      'bin/gprxy.js',
      'login',
      '--profile',
      'browser',
      '--no-browser',
      '--issuer',
      issuer.issuer,
      '--client-id',
      issuer.clientId,
      '--audience',
      issuer.audience,
    ],
    { env: { ...process.env, GPRXY_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const out = collect(child);
  const authUrl = await out.waitFor(/^\s+(http:\/\/127\.0\.0\.1:\d+\/auth\?\S+)$/m, 'stderr');
  const u = new URL(authUrl);
  assert.equal(u.searchParams.get('code_challenge_method'), 'S256');
  assert.match(u.searchParams.get('redirect_uri') ?? '', /^http:\/\/127\.0\.0\.1:\d+\/callback$/);
  await followAsBrowser(authUrl);
  assert.equal(await out.exit, 0, out.stderr());
  assert.match(out.stdout(), /Logged in as alice@example\.com/);
  const t = secretToken((await gprxy(['token', '--profile', 'browser'])).stdout);
  assert.equal(claims(t).email, 'alice@example.com');
});

test('gprxy psql runs psql through gprxy as the mapped role with alice as the identity', async (t) => {
  const skip = clientSkip('psql');
  if (skip) return t.skip(skip);
  const r = await gprxy([
    'psql',
    '-d',
    db.database,
    '-Atc',
    "select current_user, current_setting('gprxy.identity')",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), `${dbaRole}|alice@example.com`);
  const c = await gprxy(['connect', '-d', 'other', '-c', 'select current_database()']);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stdout, /postgres/);
});

test('a device login approved by hand (bob): his group maps to one database only', async (t) => {
  const skip = clientSkip('psql');
  if (skip) return t.skip(skip);
  issuer.setAutoApprove(undefined);
  try {
    const child = spawn(
      process.execPath,
      [
        'bin/gprxy.js',
        'login',
        '--device',
        '--profile',
        'bob',
        '--issuer',
        issuer.issuer,
        '--client-id',
        issuer.clientId,
        '--audience',
        issuer.audience,
        '--port',
        String(gp.port),
      ],
      { env: { ...process.env, GPRXY_HOME: home }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const out = collect(child);
    const code = await out.waitFor(/enter the code ([A-Z]{4}-[A-Z]{4})/, 'stderr');
    await issuer.approveDevice(code, 'bob@example.com');
    assert.equal(await out.exit, 0, out.stderr());
    assert.match(out.stdout(), /Logged in as bob@example\.com/);
  } finally {
    issuer.setAutoApprove('alice@example.com');
  }
  const ok = await gprxy(['psql', '--profile', 'bob', '-d', db.database, '-Atc', 'select current_user']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout.trim(), analystRole);
  const refused = await gprxy(['psql', '--profile', 'bob', '-d', 'other', '-Atc', 'select 1']);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /bob@example\.com/);
});

test('gprxy tunnel: node-postgres with no password, logged in as alice; cancel is forwarded', async () => {
  const child = spawn(process.execPath, ['bin/gprxy.js', 'tunnel', '--port', '0'], {
    env: { ...process.env, GPRXY_HOME: home },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = collect(child);
  try {
    const port = Number(await out.waitFor(/gprxy tunnel on 127\.0\.0\.1:(\d+)/, 'stdout'));
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'whoever', database: db.database });
    await c.connect();
    const r = await c.query("select current_user as u, current_setting('gprxy.identity') as id");
    assert.deepEqual(r.rows[0], { u: dbaRole, id: 'alice@example.com' });
    // A second connection, and a CancelRequest sent to the tunnel with the key the client was given.
    const c2 = new pg.Client({ host: '127.0.0.1', port, database: db.database });
    await c2.connect();
    const slow = c2.query('select pg_sleep(30)');
    await new Promise((res) => setTimeout(res, 300));
    const key = c2 as unknown as { processID: number; secretKey: number };
    const secret = Buffer.alloc(4);
    secret.writeInt32BE(key.secretKey);
    await new Promise<void>((res, rej) => {
      const s = net.connect({ host: '127.0.0.1', port }, () =>
        s.end(encodeCancelRequest(key.processID, secret)),
      );
      s.on('close', () => res());
      s.on('error', rej);
    });
    await assert.rejects(slow, (e: { code?: string }) => e.code === '57014');
    await c2.end();
    await c.end();
  } finally {
    child.kill('SIGINT');
    await out.exit;
  }
});

test('gprxy logout removes the tokens (and revokes the refresh token at the issuer)', async () => {
  const r = await gprxy(['logout', '--profile', 'browser']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /revoked/);
  const s = await gprxy(['status', '--profile', 'browser']);
  assert.equal(s.code, 1);
});

interface Collected {
  stdout(): string;
  stderr(): string;
  exit: Promise<number | null>;
  waitFor(re: RegExp, stream: 'stdout' | 'stderr', timeoutMs?: number): Promise<string>;
}

function collect(child: ChildProcess): Collected {
  const buf = { stdout: '', stderr: '' };
  const waiters: (() => void)[] = [];
  const poke = () => {
    for (const w of waiters.splice(0)) w();
  };
  child.stdout?.on('data', (d: Buffer) => {
    buf.stdout += d.toString();
    poke();
  });
  child.stderr?.on('data', (d: Buffer) => {
    buf.stderr += d.toString();
    poke();
  });
  const exit = new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
  return {
    stdout: () => buf.stdout,
    stderr: () => buf.stderr,
    exit,
    waitFor(re, stream, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`timed out waiting for ${re} in ${stream}: ${buf.stdout} ${buf.stderr}`)),
          timeoutMs,
        );
        const check = () => {
          const m = re.exec(buf[stream]);
          if (m) {
            clearTimeout(timer);
            resolve(m[1] ?? m[0]);
          } else waiters.push(check);
        };
        void exit.then(() => setTimeout(check, 0));
        check();
      });
    },
  };
}

/** What a browser does with the login URL: follows redirects with cookies until the loopback callback answers. */
async function followAsBrowser(start: string): Promise<void> {
  const jar = new Map<string, string>();
  let url = start;
  for (let i = 0; i < 20; i++) {
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const res = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const eq = pair?.indexOf('=') ?? -1;
      if (pair && eq > 0) jar.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    const loc = res.headers.get('location');
    await res.arrayBuffer();
    if (new URL(url).pathname === '/callback') {
      assert.equal(res.status, 200);
      return;
    }
    if (!loc) throw new Error(`login stopped at ${url} with ${res.status}`);
    url = new URL(loc, url).href;
  }
  throw new Error('too many redirects');
}
