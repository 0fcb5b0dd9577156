// Tests: ScramClient: RFC 7677 vector, server-final checks, malformed server messages.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ScramClient } from './scram-client.ts';
import { ScramServer } from './scram-server.ts';
import { makeScramVerifier, parseSecret, type ScramSecret } from './verifiers.ts';

// RFC 7677 section 3.
const RFC = {
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};
const b = (s: string) => Buffer.from(s);
const rfcClient = (cred: ConstructorParameters<typeof ScramClient>[0] = { password: 'pencil' }) =>
  new ScramClient(cred, { nonce: 'rOprNGfwEbeRWgbNEkqO', username: 'user' });

test('RFC 7677 test vector: client side', async () => {
  const client = rfcClient();
  assert.equal(client.mechanism, 'SCRAM-SHA-256');
  assert.equal(client.clientFirst().toString(), RFC.clientFirst);
  assert.equal((await client.serverFirst(b(RFC.serverFirst))).toString(), RFC.clientFinal);
  assert.equal(client.done, false);
  assert.equal(client.serverFinal(b(RFC.serverFinal)), true);
  assert.equal(client.done, true);
  assert.equal(client.serverVerified, true);
});

test('libpq-style client-first-message: empty username, 18-byte base64 nonce', () => {
  const client = new ScramClient({ password: 'x' }, { random: (n) => Buffer.alloc(n, 1) });
  assert.equal(client.clientFirst().toString(), `n,,n=,r=${Buffer.alloc(18, 1).toString('base64')}`);
  assert.throws(() => client.clientFirst(), { code: 'GPRXY_SCRAM_STATE' });
  assert.equal(
    new ScramClient({ password: 'x' }, { username: 'a=b,c' }).clientFirst().toString().split(',')[2],
    'n=a=3Db=2Cc',
  );
});

test('server-final: e= error, bad signature, unverifiable signature', async () => {
  const errored = rfcClient();
  errored.clientFirst();
  await errored.serverFirst(b(RFC.serverFirst));
  assert.throws(() => errored.serverFinal(b('e=invalid-proof')), {
    code: 'GPRXY_SCRAM_SERVER_ERROR',
    message: 'server rejected SCRAM authentication: invalid-proof',
  });
  assert.equal(errored.done, false);

  const forged = rfcClient();
  forged.clientFirst();
  await forged.serverFirst(b(RFC.serverFirst));
  assert.throws(() => forged.serverFinal(b(`v=${Buffer.alloc(32).toString('base64')}`)), {
    code: 'GPRXY_SCRAM_SERVER_SIGNATURE',
  });
  assert.equal(forged.done, false);

  // Pass-through without a ServerKey: the proof is right, the signature cannot be checked.
  const secret = parseSecret(
    await makeScramVerifier('pencil', { salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64') }),
  ) as ScramSecret;
  const server = new ScramServer(secret);
  const withKey = new ScramClient({ password: 'pencil' });
  const ok = server.clientFinal(
    await withKey.serverFirst(server.clientFirst('SCRAM-SHA-256', withKey.clientFirst())),
  );
  assert.ok(ok.ok);
  const blind = rfcClient({ clientKey: ok.clientKey });
  blind.clientFirst();
  assert.equal((await blind.serverFirst(b(RFC.serverFirst))).toString(), RFC.clientFinal);
  assert.equal(blind.serverFinal(b(RFC.serverFinal)), false);
  assert.equal(blind.done, true);
  assert.equal(blind.serverVerified, false);
});

test('malformed server-first-message', async () => {
  const cases: [string, string][] = [
    ['', 'GPRXY_SCRAM_PROTOCOL'],
    ['r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==', 'GPRXY_SCRAM_PROTOCOL'],
    ['r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==,i=4096,x=1', 'GPRXY_SCRAM_PROTOCOL'],
    ['m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==,i=4096', 'GPRXY_SCRAM_PROTOCOL'],
    ['r=someoneelse,s=c2FsdA==,i=4096', 'GPRXY_SCRAM_NONCE'],
    ['r=rOprNGfwEbeRWgbNEkqO,s=c2FsdA==,i=4096', 'GPRXY_SCRAM_NONCE'],
    ['r=rOprNGfwEbeRWgbNEkqOxyz,s=!,i=4096', 'GPRXY_SCRAM_PROTOCOL'],
    ['r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096', 'GPRXY_SCRAM_PROTOCOL'],
    ['r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==,i=0', 'GPRXY_SCRAM_PROTOCOL'],
    ['r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==,i=-1', 'GPRXY_SCRAM_PROTOCOL'],
    ['r=rOprNGfwEbeRWgbNEkqOxyz,s=c2FsdA==,i=10000001', 'GPRXY_SCRAM_ITERATIONS'],
  ];
  for (const [msg, code] of cases) {
    const client = rfcClient();
    client.clientFirst();
    await assert.rejects(client.serverFirst(b(msg)), { code }, msg);
    await assert.rejects(client.serverFirst(b(RFC.serverFirst)), { code: 'GPRXY_SCRAM_STATE' });
  }
});

test('steps out of order and bad keys', async () => {
  await assert.rejects(rfcClient().serverFirst(b(RFC.serverFirst)), { code: 'GPRXY_SCRAM_STATE' });
  assert.throws(() => rfcClient().serverFinal(b(RFC.serverFinal)), { code: 'GPRXY_SCRAM_STATE' });
  assert.throws(() => new ScramClient({ clientKey: Buffer.alloc(31) }), { code: 'GPRXY_SCRAM_KEY' });
  assert.throws(() => new ScramClient({ clientKey: Buffer.alloc(32), serverKey: Buffer.alloc(1) }), {
    code: 'GPRXY_SCRAM_KEY',
  });
});
