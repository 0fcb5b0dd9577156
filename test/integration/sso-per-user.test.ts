// SSO per_user backend against real PostgreSQL and real signed tokens: a LOGIN role per person provisioned through
// the provisioner login, password kept encrypted in the state file and a SCRAM verifier in pg_authid, grants moved
// and logins disabled as the mapping changes, one role for concurrent first logins, clear FATALs on failure.
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { exportJWK, type JWK, SignJWT } from 'jose';
import pg from 'pg';
import { MAX_ROLE_NAME_BYTES, perUserRoleName } from '../../src/auth/mapping.ts';
import { parseConfig } from '../../src/config/load.ts';
import { decryptSecret } from '../../src/config/secrets.ts';
import {
  admin,
  backend,
  createTestDb,
  PG,
  registerSecret,
  startTestProxy,
  type TestDb,
  type TestProxy,
  uniq,
  waitFor,
} from '../support/harness.ts';

let db: TestDb;
let issuer: string;
let server: http.Server;
let signing: { kid: string; privateKey: KeyObject; jwk: JWK };
let gp: TestProxy;
const dbaRole = uniq('pu_dba');
const analystRole = uniq('pu_an');
const prov = uniq('pu_prov');
const weak = uniq('pu_weak');
const provPw = `prov-${randomBytes(9).toString('base64url')}`;
const masterKey = randomBytes(32);
const tag = randomBytes(3).toString('hex');
const alice = `alice-${tag}@example.com`;
const dave = `dave-${tag}@example.com`;
const carol = `carol-${'x'.repeat(60)}-${tag}@example.com`;
const erin = `erin-${tag}@example.com`;
const frank = `frank-${tag}@example.com`;
const personRoles = [alice, dave, perUserRoleName(carol)!, erin, frank];

async function token(email: string, groups: string[], subject = email): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const t = await new SignJWT({ email, email_verified: true, groups })
    .setProtectedHeader({ alg: 'RS256', kid: signing.kid })
    .setIssuer(issuer)
    .setAudience('gprxy')
    .setSubject(subject)
    .setIssuedAt(now)
    .setExpirationTime(now + 300)
    .sign(signing.privateKey);
  registerSecret(t);
  return t;
}

const dbaRules = () => [
  { match: { group: 'dba' }, role: dbaRole, databases: ['*'] },
  { match: { group: 'analyst' }, role: analystRole, databases: ['*'] },
];

/** Reloads gprxy with a per_user config (the master key comes from the environment the config is loaded with). */
function reload(
  sso: Record<string, unknown> = {},
  databases?: Record<string, unknown>,
  users: Record<string, unknown> = {},
): void {
  writeFileSync(join(gp.dir, 'hba.conf'), 'host all all 127.0.0.1/32 oidc\n');
  const raw = {
    listen: { port: 0 },
    databases: databases ?? { [db.database]: backend() },
    users: { [prov]: { password: provPw }, [weak]: { password: provPw }, ...users },
    server_tls: { sslmode: 'disable' },
    auth: { hba: join(gp.dir, 'hba.conf'), limits: { failures_per_address: 1000, failures_per_user: 1000 } },
    sso: {
      providers: [{ name: 'test', issuer, audience: 'gprxy', clock_skew: 0 }],
      mapping: dbaRules(),
      backend: 'per_user',
      provisioner: { user: prov, database: db.database },
      state_file: 'per-user.json',
      allow_loopback_plain: true,
      ...sso,
    },
  };
  const env = { GPRXY_MASTER_KEY: masterKey.toString('base64') };
  gp.proxy.reload(parseConfig(raw, { env, baseDir: gp.dir, source: '(inline)' }));
}

function connect(user: string, password: string): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: gp.port, user, password, database: db.database });
  return c.connect().then(() => c);
}

async function whoami(identity: string, groups: string[]) {
  const c = await connect(identity, await token(identity, groups));
  try {
    const r = await c.query(
      `SELECT current_user AS cu, pg_has_role(current_user, $1, 'member') AS dba, pg_has_role(current_user, $2, 'member') AS an`,
      [dbaRole, analystRole],
    );
    return r.rows[0] as { cu: string; dba: boolean; an: boolean };
  } finally {
    await c.end();
  }
}

interface Authid {
  rolcanlogin: boolean;
  rolpassword: string | null;
  oid: number;
  comment: string | null;
  member_of: string[];
}

async function roleInfo(role: string): Promise<Authid | undefined> {
  const rows = await admin<Authid>(
    `SELECT a.oid::int AS oid, a.rolcanlogin, a.rolpassword, shobj_description(a.oid, 'pg_authid') AS comment,
            coalesce(array_agg(g.rolname::text) FILTER (WHERE g.rolname IS NOT NULL), '{}') AS member_of
       FROM pg_authid a LEFT JOIN pg_auth_members m ON m.member = a.oid LEFT JOIN pg_roles g ON g.oid = m.roleid
      WHERE a.rolname = $1 GROUP BY a.oid, a.rolcanlogin, a.rolpassword`,
    [role],
  );
  return rows[0];
}

const logged = (event: string, identity: string) =>
  gp.logs.lines.filter((l) => l.event === event && l.identity === identity);

function refusal(code: string, message: RegExp) {
  return (e: Error & { code?: string; severity?: string }) => {
    assert.equal(e.code, code, e.message);
    assert.match(e.message, message);
    assert.ok(!/\n\s+at /.test(e.message), 'no stack trace');
    return true;
  };
}

before(async () => {
  db = await createTestDb('ssopu');
  registerSecret(provPw);
  registerSecret(masterKey.toString('base64'));
  await admin(`CREATE ROLE ${dbaRole} NOLOGIN`);
  await admin(`CREATE ROLE ${analystRole} NOLOGIN`);
  await admin(`CREATE ROLE ${prov} LOGIN CREATEROLE PASSWORD '${provPw}'`);
  // PostgreSQL 16+: granting a role needs ADMIN OPTION on it; without INHERIT/SET the provisioner gains no rights.
  await admin(`GRANT ${dbaRole}, ${analystRole} TO ${prov} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE`);
  await admin(`CREATE ROLE ${weak} LOGIN PASSWORD '${provPw}'`);
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = await exportJWK(publicKey);
  const kid = createHash('sha256').update(JSON.stringify(jwk)).digest('hex').slice(0, 16);
  signing = { kid, privateKey, jwk: { ...jwk, kid, alg: 'RS256', use: 'sig' } };
  server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url === '/.well-known/openid-configuration') {
      res.end(JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks` }));
    } else if (req.url === '/jwks') {
      res.end(JSON.stringify({ keys: [signing.jwk] }));
    } else {
      res.statusCode = 404;
      res.end('{}');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  gp = await startTestProxy({ databases: {} });
  reload();
});

after(async () => {
  await gp?.stop();
  server?.close();
  await db?.drop();
  for (const r of [...personRoles, dbaRole, analystRole, prov, weak]) {
    await admin(`DROP ROLE IF EXISTS "${r.replaceAll('"', '""')}"`).catch(() => undefined);
  }
});

test('alice gets her own login, a member of the mapped role; its password is kept encrypted and PostgreSQL holds a SCRAM verifier; a second login reuses it', async () => {
  const first = await whoami(alice, ['dba']);
  assert.deepEqual(first, { cu: alice, dba: true, an: false });

  const statePath = join(gp.dir, 'per-user.json');
  assert.equal(statSync(statePath).mode & 0o777, 0o600, 'state file is 0600');
  const stateText = readFileSync(statePath, 'utf8');
  const state = JSON.parse(stateText) as {
    roles: Record<string, { identity: string; password: string; granted: string[]; login: boolean }>;
  };
  const rec = state.roles[alice]!;
  assert.equal(rec.identity, alice);
  assert.deepEqual(rec.granted, [dbaRole]);
  assert.match(rec.password, /^enc:/);
  const password = decryptSecret(rec.password, masterKey);
  registerSecret(password);
  assert.ok(password.length >= 24);
  assert.ok(!stateText.includes(password), 'no plaintext password in the state file');

  const info = (await roleInfo(alice))!;
  assert.match(info.rolpassword ?? '', /^SCRAM-SHA-256\$4096:/, 'pg_authid holds a SCRAM verifier');
  assert.match(info.comment ?? '', /^gprxy sso per_user login; mac=/);
  assert.equal(info.rolcanlogin, true);
  // The decrypted password is the role's real password: it logs in to PostgreSQL directly.
  const direct = new pg.Client({
    host: PG.host,
    port: PG.port,
    user: alice,
    password,
    database: db.database,
  });
  await direct.connect();
  assert.equal((await direct.query('SELECT current_user AS u')).rows[0].u, alice);
  await direct.end();

  const second = await whoami(alice, ['dba']);
  assert.deepEqual(second, first);
  // The same email with another subject is another person: alice's login is not theirs.
  await assert.rejects(
    connect(alice, await token(alice, ['dba'], 'someone-else')),
    (e: Error & { code?: string }) => {
      assert.equal(e.code, '28000');
      assert.match(e.message, /another identity provider or subject/);
      return true;
    },
  );
  assert.equal((await roleInfo(alice))!.oid, info.oid, 'the same role');
  assert.equal(logged('sso_per_user_created', alice).length, 1, 'created once');
  assert.equal(
    JSON.parse(readFileSync(statePath, 'utf8')).roles[alice].password,
    rec.password,
    'same password',
  );
});

test('a reload that maps her elsewhere moves the grant; when she no longer maps her login is disabled and refused with 28000', async () => {
  await whoami(alice, ['dba']);
  // dba now maps to the analyst role: the reload moves the grant right away, without a login.
  reload({ mapping: [{ match: { group: 'dba' }, role: analystRole, databases: ['*'] }] });
  await waitFor(
    async () => {
      const i = await roleInfo(alice);
      return i !== undefined && i.member_of.length === 1 && i.member_of[0] === analystRole;
    },
    5000,
    'grant moved by the reload',
  );
  assert.deepEqual(await whoami(alice, ['dba']), { cu: alice, dba: false, an: true });
  assert.equal(logged('sso_per_user_grant_moved', alice).length, 1);

  // No rule for dba any more: her last-known claims no longer map, so the reload disables her login.
  reload({ mapping: [{ match: { group: 'analyst' }, role: analystRole, databases: ['*'] }] });
  await waitFor(
    async () => {
      const i = await roleInfo(alice);
      return i !== undefined && !i.rolcanlogin && i.member_of.length === 0;
    },
    5000,
    'login disabled and grant revoked by the reload',
  );
  for (let i = 0; i < 2; i++) {
    await assert.rejects(
      connect(alice, await token(alice, ['dba'])),
      refusal('28000', /no SSO mapping rule matches identity/),
    );
  }
  const disabled = logged('sso_per_user_disabled', alice);
  assert.equal(disabled.length, 1, 'logged once');
  assert.equal(disabled[0]!.reason, 'reload');
  assert.ok(!JSON.stringify(disabled[0]).includes('enc:'));

  // The same at login: dave maps, then logs in with a token that maps to nothing.
  assert.equal((await whoami(dave, ['analyst'])).an, true);
  await assert.rejects(connect(dave, await token(dave, ['none'])), refusal('28000', /no SSO mapping rule/));
  const d = (await roleInfo(dave))!;
  assert.equal(d.rolcanlogin, false);
  assert.deepEqual(d.member_of, []);
  assert.equal(logged('sso_per_user_disabled', dave)[0]?.reason, 'no_mapping');
  // Mapped again: the same login is enabled and granted again.
  assert.deepEqual(await whoami(dave, ['analyst']), { cu: dave, dba: false, an: true });
  assert.equal((await roleInfo(dave))!.oid, d.oid);
  assert.equal(logged('sso_per_user_enabled', dave).length, 1);
  reload();
});

test('two concurrent first logins of one new identity both succeed and create one role (a long identity gets a shortened name)', async () => {
  const role = perUserRoleName(carol)!;
  assert.ok(Buffer.byteLength(carol) > MAX_ROLE_NAME_BYTES);
  assert.ok(Buffer.byteLength(role) <= MAX_ROLE_NAME_BYTES);
  const [a, b] = await Promise.all([whoami(carol, ['dba']), whoami(carol, ['dba'])]);
  assert.deepEqual(a, { cu: role, dba: true, an: false });
  assert.deepEqual(b, a);
  const n = await admin<{ n: number }>('SELECT count(*)::int AS n FROM pg_roles WHERE rolname = $1', [role]);
  assert.equal(n[0]!.n, 1);
  assert.equal(logged('sso_per_user_created', carol).length, 1);
});

test('a role gprxy did not create is never adopted; a provisioner without CREATEROLE or unreachable gives a clear FATAL', async () => {
  // erin's role exists already (made by someone else, even with a look-alike comment): refused, left untouched.
  await admin(`CREATE ROLE "${erin}" LOGIN`);
  await admin(`COMMENT ON ROLE "${erin}" IS 'gprxy sso per_user login; mac=AAAAAAAAAAAAAAAAAAAAAAAA'`);
  await assert.rejects(
    connect(erin, await token(erin, ['dba'])),
    refusal('28000', /exists and was not created by gprxy/),
  );
  const e = (await roleInfo(erin))!;
  assert.deepEqual(e.member_of, []);
  assert.equal(e.rolpassword, null);

  reload({ provisioner: { user: weak, database: db.database } });
  await assert.rejects(
    connect(frank, await token(frank, ['dba'])),
    refusal('28000', /the provisioner login may not create or grant roles/),
  );
  await waitFor(
    () => gp.logs.lines.some((l) => l.event === 'sso_provisioner_cannot_create_roles'),
    5000,
    'the provisioner warning',
  );
  assert.equal(await roleInfo(frank), undefined);

  // A provisioner that cannot be reached (a port nobody listens on).
  const closed = net.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
  const deadPort = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  reload({}, { [db.database]: { host: '127.0.0.1', port: deadPort, server_connect_timeout: 2 } });
  await assert.rejects(
    connect(frank, await token(frank, ['dba'])),
    refusal('08006', /provisioner login could not connect/),
  );

  // A superuser provisioner works, with a warning (checked once per config, at the reload).
  reload({ provisioner: { user: PG.user, database: db.database } }, undefined, {
    [PG.user]: { password: PG.password },
  });
  await waitFor(
    () => gp.logs.lines.some((l) => l.event === 'sso_provisioner_too_strong' && l.user === PG.user),
    5000,
    'the superuser warning',
  );
  reload();
});
