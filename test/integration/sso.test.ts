// SSO server side against a real JWKS/discovery endpoint and real signed tokens: token as password and OAUTHBEARER,
// mapping to service-account logins, identity on the server, every kind of bad token, key rotation, expiry.
import assert from 'node:assert/strict';
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { exportJWK, type JWK, SignJWT } from 'jose';
import pg from 'pg';
import { configFromObject } from '../../src/config/load.ts';
import type { RawConfig } from '../../src/config/schema.ts';
import {
  admin,
  backend,
  createTestDb,
  registerSecret,
  startTestProxy,
  type TestDb,
  type TestProxy,
  uniq,
  waitFor,
} from '../support/harness.ts';
import { Wire } from '../support/wire.ts';

let db: TestDb;
let issuer: string;
let server: http.Server;
let keys: { kid: string; privateKey: KeyObject; jwk: JWK }[] = [];
let gp: TestProxy;
const dbaRole = uniq('sso_dba');
const analystRole = uniq('sso_an');
const rolePw = 'role-pw-' + uniq('x');

async function newKey(): Promise<{ kid: string; privateKey: KeyObject; jwk: JWK }> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = await exportJWK(publicKey);
  const kid = createHash('sha256').update(JSON.stringify(jwk)).digest('hex').slice(0, 16);
  return { kid, privateKey, jwk: { ...jwk, kid, alg: 'RS256', use: 'sig' } };
}

interface TokenOpts {
  email?: string;
  groups?: string[];
  aud?: string;
  iss?: string;
  expSeconds?: number;
  nbfSeconds?: number;
  key?: { kid: string; privateKey: KeyObject };
  emailVerified?: boolean;
}

async function token(o: TokenOpts = {}): Promise<string> {
  const k = o.key ?? keys[0]!;
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({
    email: o.email ?? 'alice@example.com',
    email_verified: o.emailVerified ?? true,
    groups: o.groups ?? ['dba'],
  })
    .setProtectedHeader({ alg: 'RS256', kid: k.kid })
    .setIssuer(o.iss ?? issuer)
    .setAudience(o.aud ?? 'gprxy')
    .setSubject(o.email ?? 'alice')
    .setIssuedAt(now)
    .setExpirationTime(now + (o.expSeconds ?? 300));
  if (o.nbfSeconds !== undefined) jwt.setNotBefore(now + o.nbfSeconds);
  const t = await jwt.sign(k.privateKey);
  registerSecret(t);
  return t;
}

function ssoConfig(over: Record<string, unknown> = {}): RawConfig {
  return {
    databases: { [db.database]: backend(), other: backend(db.database) },
    users: { [dbaRole]: { password: rolePw }, [analystRole]: { password: rolePw } },
    server_tls: { sslmode: 'disable' },
    auth: { hba: join(gp?.dir ?? '/tmp', 'hba.conf') },
    sso: {
      providers: [{ name: 'test', issuer, audience: 'gprxy', clock_skew: 0 }],
      mapping: [
        { match: { group: 'dba' }, role: dbaRole, databases: ['*'] },
        { match: { group: 'analyst' }, role: analystRole, databases: [db.database] },
      ],
      allow_loopback_plain: true,
      jwks_refresh_cooldown: '100ms',
      ...over,
    },
  } as RawConfig;
}

function reload(over: Record<string, unknown> = {}, hba = 'host all all 127.0.0.1/32 oidc\n'): void {
  writeFileSync(join(gp.dir, 'hba.conf'), hba);
  gp.proxy.reload(configFromObject({ listen: { port: 0 }, ...ssoConfig(over) }, gp.dir));
}

function connect(user: string, password: string, database = db.database) {
  const c = new pg.Client({ host: '127.0.0.1', port: gp.port, user, password, database });
  return c.connect().then(() => c);
}

before(async () => {
  db = await createTestDb('sso');
  registerSecret(rolePw);
  for (const r of [dbaRole, analystRole]) {
    await admin(`CREATE ROLE ${r} LOGIN PASSWORD '${rolePw}'`);
    await admin(`GRANT CONNECT ON DATABASE ${db.database} TO ${r}`);
  }
  keys = [await newKey()];
  server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    if (req.url === '/.well-known/openid-configuration') {
      res.end(JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks` }));
    } else if (req.url === '/jwks') {
      res.end(JSON.stringify({ keys: keys.map((k) => k.jwk) }));
    } else {
      res.statusCode = 404;
      res.end('{}');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  gp = await startTestProxy({ databases: {}, audit: { sinks: [{ type: 'file', path: 'audit.jsonl' }] } });
  reload();
});

after(async () => {
  await gp?.stop();
  server?.close();
  await db?.drop();
  for (const r of [dbaRole, analystRole]) await admin(`DROP ROLE IF EXISTS ${r}`);
});

test('a token as the password logs alice in as the mapped login, with her identity on the server', async () => {
  for (const user of ['alice@example.com', 'sso']) {
    const c = await connect(user, await token());
    const r = await c.query(
      "SELECT current_user AS role, current_setting('gprxy.identity') AS identity, current_setting('application_name') AS app",
    );
    assert.deepEqual(r.rows[0], {
      role: dbaRole,
      identity: 'alice@example.com',
      app: 'gprxy:alice@example.com',
    });
    await c.end();
  }
  assert.ok(
    gp.logs.lines.some(
      (l) => l.event === 'login' && l.method === 'oidc-password' && l.identity === 'alice@example.com',
    ),
  );
  // Every statement of the session is audited under her email, with the login it ran as.
  const auditPath = join(gp.dir, 'audit.jsonl');
  await waitFor(
    () => existsSync(auditPath) && readFileSync(auditPath, 'utf8').includes('gprxy.identity'),
    10_000,
    'audit records',
  );
  const recs = readFileSync(auditPath, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const q = recs.find((r) => r.event === 'query' && String(r.statement).includes('gprxy.identity'));
  assert.equal(q?.identity, 'alice@example.com');
  assert.equal(q?.backend_role, dbaRole);
  assert.equal(q?.auth_method, 'oidc-password');
  for (const r of recs) assert.ok(!JSON.stringify(r).includes('eyJ'), 'no token in an audit record');
});

test('bob is refused a database his group does not map to; a mismatched user name is refused', async () => {
  const bob = await token({ email: 'bob@example.com', groups: ['analyst'] });
  const c = await connect('bob@example.com', bob);
  assert.equal((await c.query('SELECT current_user AS r')).rows[0].r, analystRole);
  await c.end();
  await assert.rejects(connect('bob@example.com', bob, 'other'), (e: Error & { code?: string }) => {
    assert.equal(e.code, '28000');
    assert.match(e.message, /identity "bob@example.com" is not allowed to use database "other"/);
    assert.ok(!e.message.includes(bob));
    return true;
  });
  await assert.rejects(connect('alice@example.com', bob), { code: '28000' });
  const nobody = await token({ email: 'eve@example.com', groups: ['none'] });
  await assert.rejects(
    connect('eve@example.com', nobody),
    /no SSO mapping rule matches identity "eve@example.com"/,
  );
});

test('bad tokens are refused with 28P01 and a logged reason', async () => {
  const good = await token();
  const [h, p, s] = good.split('.');
  const tampered = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), groups: ['dba', 'x'] })).toString('base64url')}.${s}`;
  const none = `${Buffer.from(JSON.stringify({ alg: 'none' })).toString('base64url')}.${p}.`;
  const pubPem = Buffer.from(createPublicKey(keys[0]!.privateKey).export({ type: 'spki', format: 'pem' }));
  const hs = await new SignJWT({ email: 'alice@example.com', email_verified: true, groups: ['dba'] })
    .setProtectedHeader({ alg: 'HS256', kid: keys[0]!.kid })
    .setIssuer(issuer)
    .setAudience('gprxy')
    .setExpirationTime('5m')
    .sign(pubPem);
  const otherKey = await newKey();
  const cases: [string, string, string][] = [
    ['expired', await token({ expSeconds: -60 }), 'GPRXY_TOKEN_EXPIRED'],
    ['not yet valid', await token({ nbfSeconds: 600 }), 'GPRXY_TOKEN_NOT_YET_VALID'],
    ['wrong audience', await token({ aud: 'someone-else' }), 'GPRXY_TOKEN_AUDIENCE'],
    ['wrong issuer', await token({ iss: 'https://evil.example.com' }), 'GPRXY_TOKEN_ISSUER'],
    ['unknown kid', await token({ key: otherKey }), 'GPRXY_TOKEN_KID'],
    ['alg none', none, 'GPRXY_TOKEN'],
    ['HS256 with the public key', hs, 'GPRXY_TOKEN_ALG'],
    ['tampered payload', tampered, 'GPRXY_TOKEN_SIGNATURE'],
    ['unverified email', await token({ emailVerified: false }), 'GPRXY_TOKEN_EMAIL_UNVERIFIED'],
    ['not a token', 'hunter2hunter2', 'GPRXY_TOKEN_MALFORMED'],
  ];
  for (const [what, t, code] of cases) {
    registerSecret(t);
    await assert.rejects(connect('alice@example.com', t), (e: Error & { code?: string }) => {
      assert.ok(['28P01', '28000'].includes(e.code ?? ''), `${what}: ${e.code}`);
      assert.ok(!e.message.includes(t), `${what}: the token is not echoed`);
      return true;
    });
    await waitFor(
      () => gp.logs.lines.some((l) => l.event === 'login_failed' && String(l.reason).startsWith(code)),
      5000,
      `${what} logged as ${code}`,
    );
  }
});

test('a rotated signing key is picked up without a restart', async () => {
  const rotated = await newKey();
  keys = [rotated];
  const c = await connect('alice@example.com', await token({ key: rotated }));
  await c.end();
});

test('OAUTHBEARER: discovery round, then a bearer token with AuthenticationOk and no SASLFinal', async () => {
  reload({}, 'host all all 127.0.0.1/32 oidc exchange=oauthbearer\n');
  try {
    const w = await Wire.connect(gp.port);
    w.send(startup({ user: 'alice@example.com', database: db.database }));
    let m = await w.expect('R');
    assert.equal(m.body.readInt32BE(0), 10);
    assert.ok(m.body.toString().includes('OAUTHBEARER'));
    const empty = Buffer.from('n,,\x01auth=\x01\x01');
    w.send(saslInitial('OAUTHBEARER', empty));
    m = await w.expect('R');
    assert.equal(m.body.readInt32BE(0), 11);
    const discovery = JSON.parse(m.body.subarray(4).toString()) as Record<string, string>;
    assert.equal(discovery.status, 'invalid_token');
    assert.equal(discovery['openid-configuration'], `${issuer}/.well-known/openid-configuration`);
    assert.ok(discovery.scope);
    w.send(Buffer.from([0x70, 0, 0, 0, 5, 0x01]));
    m = await w.expect('E');
    w.socket.destroy();

    const w2 = await Wire.connect(gp.port);
    w2.send(startup({ user: 'alice@example.com', database: db.database }));
    await w2.expect('R');
    w2.send(saslInitial('OAUTHBEARER', Buffer.from(`n,,\x01auth=Bearer ${await token()}\x01\x01`)));
    m = await w2.expect('R');
    assert.equal(m.body.readInt32BE(0), 0, 'AuthenticationOk right away');
    for (let next = await w2.next(); next.type !== 'Z'; next = await w2.next()) {
      assert.notEqual(next.type, 'E');
    }
    w2.socket.destroy();
  } finally {
    reload();
  }
});

test('tokens are refused on plain connections unless loopback is allowed', async () => {
  reload({ allow_loopback_plain: false });
  try {
    await assert.rejects(connect('alice@example.com', await token()), /accepted only over TLS/);
  } finally {
    reload();
  }
});

test('token expiry: disconnect ends the session; login_only keeps it', async () => {
  const c = await connect('alice@example.com', await token({ expSeconds: 3 }));
  const errors: string[] = [];
  c.on('error', (e) => errors.push(e.message));
  await waitFor(() => errors.some((m) => /login token expired/.test(m)), 15_000, 'the expiry FATAL');
  assert.ok(gp.logs.lines.some((l) => l.event === 'token_expired' && l.action === 'disconnect'));

  reload({ token_expiry: 'login_only' });
  try {
    const k = await connect('alice@example.com', await token({ expSeconds: 2 }));
    await waitFor(
      () => gp.logs.lines.some((l) => l.event === 'token_expired' && l.action === 'keep'),
      10_000,
      'expiry',
    );
    assert.equal((await k.query('SELECT 1 AS v')).rows[0].v, 1);
    await k.end();
  } finally {
    reload();
  }
});

test('a server reused by another person carries that person’s identity (session and transaction mode)', async () => {
  for (const mode of ['session', 'transaction']) {
    writeFileSync(join(gp.dir, 'hba.conf'), 'host all all 127.0.0.1/32 oidc\n');
    const cfg = ssoConfig();
    (cfg.databases as Record<string, Record<string, unknown>>)[db.database] = {
      ...backend(),
      pool_mode: mode,
      default_pool_size: 1,
    };
    gp.proxy.reload(configFromObject({ listen: { port: 0 }, ...cfg }, gp.dir));
    const a = await connect('alice@example.com', await token());
    const pidA = (await a.query('SELECT pg_backend_pid() AS p')).rows[0].p;
    await a.end();
    const carol = await connect('carol@example.com', await token({ email: 'carol@example.com' }));
    const r = await carol.query(
      "SELECT pg_backend_pid() AS p, current_setting('gprxy.identity') AS i, current_setting('application_name') AS app",
    );
    assert.equal(r.rows[0].p, pidA, `${mode}: same server`);
    assert.equal(r.rows[0].i, 'carol@example.com', mode);
    assert.equal(r.rows[0].app, 'gprxy:carol@example.com', mode);
    await carol.end();
  }
  reload();
});

function startup(params: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(params)) parts.push(Buffer.from(`${k}\0${v}\0`));
  const body = Buffer.concat([Buffer.from([0, 3, 0, 0]), ...parts, Buffer.from([0])]);
  const len = Buffer.alloc(4);
  len.writeInt32BE(body.length + 4);
  return Buffer.concat([len, body]);
}

function saslInitial(mech: string, data: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(`${mech}\0`), Buffer.alloc(4), data]);
  body.writeInt32BE(data.length, mech.length + 1);
  const head = Buffer.alloc(5);
  head[0] = 0x70;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

test('set_role: one service login, SET ROLE per person, identity changes refused, nothing left for the next person', async () => {
  const svc = uniq('sso_svc');
  await admin(`CREATE ROLE ${svc} LOGIN NOINHERIT PASSWORD '${rolePw}'`);
  await admin(`GRANT CONNECT ON DATABASE ${db.database} TO ${svc}`);
  await admin(`GRANT ${dbaRole}, ${analystRole} TO ${svc}`);
  try {
    for (const mode of ['session', 'transaction']) {
      writeFileSync(join(gp.dir, 'hba.conf'), 'host all all 127.0.0.1/32 oidc\n');
      const cfg = ssoConfig({ backend: 'set_role', service_user: svc });
      (cfg.databases as Record<string, Record<string, unknown>>)[db.database] = {
        ...backend(),
        pool_mode: mode,
        default_pool_size: 1,
      };
      (cfg.users as Record<string, { password: string }>)[svc] = { password: rolePw };
      gp.proxy.reload(configFromObject({ listen: { port: 0 }, ...cfg }, gp.dir));

      const a = await connect('alice@example.com', await token());
      const r = await a.query(
        "SELECT current_user AS cu, session_user AS su, current_setting('gprxy.identity') AS i, pg_backend_pid() AS p",
      );
      assert.deepEqual(
        { cu: r.rows[0].cu, su: r.rows[0].su, i: r.rows[0].i },
        { cu: dbaRole, su: svc, i: 'alice@example.com' },
        mode,
      );
      for (const sql of [
        'SET ROLE NONE',
        'RESET ROLE',
        `SET SESSION AUTHORIZATION ${svc}`,
        "SELECT set_config('role', 'none', false)",
        "SELECT 1, set_config('gprxy.identity', 'x', false)",
        "SET gprxy.identity = 'mallory'",
        'RESET ALL',
        'DISCARD ALL',
      ]) {
        await assert.rejects(a.query(sql), { code: '42501' }, `${mode}: ${sql}`);
      }
      assert.equal((await a.query('SELECT current_user AS cu')).rows[0].cu, dbaRole, `${mode}: role kept`);
      await a.end();

      const b = await connect(
        'bob@example.com',
        await token({ email: 'bob@example.com', groups: ['analyst'] }),
      );
      const rb = await b.query(
        "SELECT current_user AS cu, current_setting('gprxy.identity') AS i, current_setting('application_name') AS app, pg_backend_pid() AS p",
      );
      assert.equal(rb.rows[0].p, r.rows[0].p, `${mode}: the same server`);
      assert.equal(rb.rows[0].cu, analystRole, mode);
      assert.equal(rb.rows[0].i, 'bob@example.com', mode);
      assert.equal(rb.rows[0].app, 'gprxy:bob@example.com', mode);
      await b.end();
    }
  } finally {
    reload();
    await admin(`DROP OWNED BY ${svc}`, [], db.database).catch(() => undefined);
    await admin(`REVOKE CONNECT ON DATABASE ${db.database} FROM ${svc}`);
    await admin(`DROP ROLE IF EXISTS ${svc}`).catch(() => undefined);
  }
});
