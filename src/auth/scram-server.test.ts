// Tests: ScramServer: RFC 7677 vector, full exchanges, pass-through, gs2 channel binding, malformed input.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PgError } from '../protocol/errors.ts';
import { hmacSha256, saltedPassword, scramKeys, xor } from './crypto.ts';
import { ScramClient } from './scram-client.ts';
import { ScramServer } from './scram-server.ts';
import { makeScramVerifier, mockScramSecret, parseSecret, type ScramSecret } from './verifiers.ts';

// RFC 7677 section 3.
const RFC = {
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

async function secretFor(password: string, salt = Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64')) {
  const s = parseSecret(await makeScramVerifier(password, { salt, iterations: 4096 }));
  assert.equal(s.kind, 'scram-sha-256');
  return s as ScramSecret;
}

const b = (s: string) => Buffer.from(s);
const random = (n: number) => Buffer.alloc(n, 0xab);
const cbData = Buffer.alloc(32, 0x42);

/** A hand-built client-final-message, for gs2 headers ScramClient does not send. */
async function manualFinal(
  password: string,
  secret: ScramSecret,
  gs2: string,
  cbind: Buffer,
  bare: string,
  sf: string,
) {
  const { clientKey, storedKey } = scramKeys(
    await saltedPassword(b(password), secret.salt, secret.iterations, null),
  );
  const nonce = sf.split(',')[0]!.slice(2);
  const withoutProof = `c=${Buffer.concat([b(gs2), cbind]).toString('base64')},r=${nonce}`;
  const proof = xor(clientKey, hmacSha256(storedKey, `${bare},${sf},${withoutProof}`));
  return b(`${withoutProof},p=${proof.toString('base64')}`);
}

function rejects(fn: () => unknown, sqlState: string, pattern?: RegExp) {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof PgError, String(err));
    assert.equal(err.sqlState, sqlState);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

test('RFC 7677 test vector: server side', async () => {
  const server = new ScramServer(await secretFor('pencil'), { nonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0' });
  assert.deepEqual(server.mechanisms(), ['SCRAM-SHA-256']);
  assert.equal(server.clientFirst('SCRAM-SHA-256', b(RFC.clientFirst)).toString(), RFC.serverFirst);
  const result = server.clientFinal(b(RFC.clientFinal));
  assert.equal(result.ok, true);
  if (!result.ok) return;
  assert.equal(result.serverFinal.toString(), RFC.serverFinal);
  assert.equal(result.clientKey.length, 32);
});

test('full exchange with a fresh verifier; nonces from injected randomness', async () => {
  const secret = parseSecret(await makeScramVerifier('correct horse')) as ScramSecret;
  const client = new ScramClient({ password: 'correct horse' }, { random });
  const server = new ScramServer(secret, { random: (n) => Buffer.alloc(n, 0xcd) });
  const first = client.clientFirst().toString();
  assert.equal(first, `n,,n=,r=${random(18).toString('base64')}`);
  const serverFirst = server.clientFirst('SCRAM-SHA-256', b(first));
  assert.match(serverFirst.toString(), new RegExp(`^r=${random(18).toString('base64')}zc3N`));
  const result = server.clientFinal(await client.serverFirst(serverFirst));
  assert.ok(result.ok);
  assert.equal(client.serverFinal(result.serverFinal), true);
});

test('wrong password: { ok: false }', async () => {
  const server = new ScramServer(await secretFor('right'));
  const client = new ScramClient({ password: 'wrong' });
  const sf = server.clientFirst('SCRAM-SHA-256', client.clientFirst());
  assert.deepEqual(server.clientFinal(await client.serverFirst(sf)), { ok: false });
});

test('mock secret: the exchange looks normal and always fails', async () => {
  const server = new ScramServer(mockScramSecret('ghost', Buffer.alloc(32, 9)));
  const client = new ScramClient({ password: 'anything' });
  const sf = server.clientFirst('SCRAM-SHA-256', client.clientFirst());
  assert.match(sf.toString(), /^r=[^,]+,s=[A-Za-z0-9+/]{22}==,i=4096$/);
  assert.deepEqual(server.clientFinal(await client.serverFirst(sf)), { ok: false });
});

test('SCRAM pass-through: the recovered ClientKey logs in to a server with the same verifier', async () => {
  const secret = await secretFor('s3cret');
  const front = new ScramServer(secret);
  const app = new ScramClient({ password: 's3cret' });
  const frontResult = front.clientFinal(
    await app.serverFirst(front.clientFirst('SCRAM-SHA-256', app.clientFirst())),
  );
  assert.ok(frontResult.ok);

  const backend = new ScramServer(secret);
  const proxy = new ScramClient({
    clientKey: frontResult.clientKey,
    serverKey: secret.serverKey,
    salt: secret.salt,
    iterations: secret.iterations,
  });
  const backResult = backend.clientFinal(
    await proxy.serverFirst(backend.clientFirst('SCRAM-SHA-256', proxy.clientFirst())),
  );
  assert.ok(backResult.ok);
  assert.equal(proxy.serverFinal(backResult.serverFinal), true);

  // A backend with a different verifier (other salt) is detected before a proof is sent.
  const other = new ScramServer(await secretFor('s3cret', Buffer.alloc(16, 1)));
  const proxy2 = new ScramClient({ clientKey: frontResult.clientKey, salt: secret.salt });
  const sf = other.clientFirst('SCRAM-SHA-256', proxy2.clientFirst());
  await assert.rejects(proxy2.serverFirst(sf), { code: 'GPRXY_SCRAM_PASSTHROUGH_MISMATCH' });
});

test('gs2 y: accepted when -PLUS is not offered, refused when it is', async () => {
  const secret = await secretFor('pw');
  const bare = 'n=,r=abcdefghijkl';
  const server = new ScramServer(secret);
  const sf = server.clientFirst('SCRAM-SHA-256', b(`y,,${bare}`)).toString();
  assert.ok(server.clientFinal(await manualFinal('pw', secret, 'y,,', Buffer.alloc(0), bare, sf)).ok);

  const tls = new ScramServer(secret, { channelBinding: { tlsServerEndPoint: cbData } });
  assert.deepEqual(tls.mechanisms(), ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
  rejects(() => tls.clientFirst('SCRAM-SHA-256', b(`y,,${bare}`)), '08P01', /channel binding/);

  // n is fine either way; c= must then be biws.
  const tlsN = new ScramServer(secret, { channelBinding: { tlsServerEndPoint: cbData } });
  const sfN = tlsN.clientFirst('SCRAM-SHA-256', b(`n,,${bare}`)).toString();
  const wrongC = await manualFinal('pw', secret, 'y,,', Buffer.alloc(0), bare, sfN);
  rejects(() => tlsN.clientFinal(wrongC), '08P01', /channel binding check failed/);
});

test('gs2 p=tls-server-end-point: only with SCRAM-SHA-256-PLUS and binding data', async () => {
  const secret = await secretFor('pw');
  const bare = 'n=,r=abcdefghijkl';
  const gs2 = 'p=tls-server-end-point,,';
  const server = new ScramServer(secret, { channelBinding: { tlsServerEndPoint: cbData } });
  const sf = server.clientFirst('SCRAM-SHA-256-PLUS', b(gs2 + bare)).toString();
  assert.ok(server.clientFinal(await manualFinal('pw', secret, gs2, cbData, bare, sf)).ok);

  const wrongData = new ScramServer(secret, { channelBinding: { tlsServerEndPoint: cbData } });
  const sf2 = wrongData.clientFirst('SCRAM-SHA-256-PLUS', b(gs2 + bare)).toString();
  const final2 = await manualFinal('pw', secret, gs2, Buffer.alloc(32, 1), bare, sf2);
  rejects(() => wrongData.clientFinal(final2), '08P01', /channel binding check failed/);

  const cb = { channelBinding: { tlsServerEndPoint: cbData } };
  rejects(() => new ScramServer(secret, cb).clientFirst('SCRAM-SHA-256', b(gs2 + bare)), '08P01');
  rejects(() => new ScramServer(secret, cb).clientFirst('SCRAM-SHA-256-PLUS', b(`n,,${bare}`)), '08P01');
  rejects(
    () => new ScramServer(secret, cb).clientFirst('SCRAM-SHA-256-PLUS', b(`p=tls-unique,,${bare}`)),
    '08P01',
  );
  rejects(
    () => new ScramServer(secret).clientFirst('SCRAM-SHA-256-PLUS', b(gs2 + bare)),
    '08P01',
    /mechanism/,
  );
});

test('authzid and extensions', async () => {
  const secret = await secretFor('pw');
  rejects(() => new ScramServer(secret).clientFirst('SCRAM-SHA-256', b('n,a=admin,n=,r=abc')), '0A000');
  rejects(() => new ScramServer(secret).clientFirst('SCRAM-SHA-256', b('n,,m=ext,n=,r=abc')), '0A000');
  const bare = 'n=,r=abcdef,x=ignored';
  const server = new ScramServer(secret);
  const sf = server.clientFirst('SCRAM-SHA-256', b(`n,a=,${bare}`)).toString();
  assert.ok(server.clientFinal(await manualFinal('pw', secret, 'n,a=,', Buffer.alloc(0), bare, sf)).ok);
});

test('malformed messages are 08P01 and never echo secrets', async () => {
  const secret = await secretFor('pw');
  const first = (msg: string | Buffer) =>
    new ScramServer(secret).clientFirst('SCRAM-SHA-256', typeof msg === 'string' ? b(msg) : msg);
  for (const msg of [
    '',
    'n',
    'n,',
    'x,,n=,r=abc',
    'n,,r=abc',
    'n,,n=',
    'n,,n=,r=',
    'n,,n=,r=ab,c',
    'n,,n=,r=a b',
    'n,,n=,r=abc,',
    Buffer.from('n,,n=,r=abc\0'),
    Buffer.from([0x6e, 0x2c, 0x2c, 0xff]),
    'n,,n=,r=' + 'a'.repeat(9000),
  ]) {
    rejects(() => first(msg), '08P01');
  }

  const finalFor = async (mutate: (msg: string) => string) => {
    const server = new ScramServer(secret);
    const client = new ScramClient({ password: 'pw' });
    const sf = server.clientFirst('SCRAM-SHA-256', client.clientFirst());
    const cf = (await client.serverFirst(sf)).toString();
    return () => server.clientFinal(b(mutate(cf)));
  };
  rejects(await finalFor((m) => m.replace(/,p=.*/, '')), '08P01', /proof/);
  rejects(await finalFor((m) => m.replace(/p=.*/, 'p=!!!!')), '08P01', /proof/);
  rejects(await finalFor((m) => m.replace(/p=.*/, 'p=c2hvcnQ=')), '08P01', /proof/);
  rejects(await finalFor((m) => m.replace(/r=[^,]*/, 'r=other')), '08P01', /nonce/);
  rejects(await finalFor((m) => m.replace('c=biws', 'c=eSws')), '08P01', /channel binding/);
  rejects(await finalFor((m) => m.replace('c=biws,', '')), '08P01');
  rejects(await finalFor((m) => m.replace(',p=', ',bad,p=')), '08P01');
  const secretText = secret.storedKey.toString('base64');
  try {
    (await finalFor((m) => m.replace(/r=[^,]*/, 'r=other')))();
  } catch (err) {
    assert.ok(!(err as Error).message.includes(secretText));
  }
});

test('steps out of order are refused', async () => {
  const secret = await secretFor('pw');
  rejects(() => new ScramServer(secret).clientFinal(b('c=biws,r=x,p=x')), '08P01');
  const server = new ScramServer(secret);
  server.clientFirst('SCRAM-SHA-256', b('n,,n=,r=abc'));
  rejects(() => server.clientFirst('SCRAM-SHA-256', b('n,,n=,r=abc')), '08P01');
  rejects(() => server.clientFinal(b('c=biws,r=x,p=x')), '08P01');
});
