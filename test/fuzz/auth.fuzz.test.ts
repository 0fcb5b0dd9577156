// Fuzz: fast-check properties for auth/: SCRAM step machines and secret parsers fail only with typed errors.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import fc from 'fast-check';
import { ScramClient } from '../../src/auth/scram-client.ts';
import { ScramServer } from '../../src/auth/scram-server.ts';
import { makeScramVerifier, parseSecret, parseUserlist, type ScramSecret } from '../../src/auth/verifiers.ts';
import { PgError } from '../../src/protocol/errors.ts';

// Time box for the whole file: FUZZ_SECONDS (default 3), split between the properties below.
const PROPERTIES = 5;
const budgetMs = (Number(process.env['FUZZ_SECONDS']) || 3) * 1000;
const params = {
  interruptAfterTimeLimit: Math.floor(budgetMs / PROPERTIES),
  numRuns: Number.MAX_SAFE_INTEGER,
};

let secret: ScramSecret;
before(async () => {
  secret = parseSecret(await makeScramVerifier('pw', { iterations: 16 })) as ScramSecret;
});

const cbind = { tlsServerEndPoint: Buffer.alloc(32, 7) };
const mechanism = fc.constantFrom('SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS', '', 'OAUTHBEARER');
const asciiish = fc.string({
  unit: fc.constantFrom(...'nyp=a,rcicsv=tls-server-end-point-+/AB0 \0é'),
  maxLength: 80,
});
const message = fc.oneof(
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  asciiish.map((s) => Buffer.from(s)),
  fc
    .tuple(fc.constantFrom('n,,', 'y,,', 'p=tls-server-end-point,,', 'n,a=,', 'n,a=x,'), asciiish)
    .map(([h, s]) => Buffer.from(h + s)),
);

/** Only PgError may escape from ScramServer. */
function onlyPgError(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof PgError, `unexpected ${String(err)}`);
  }
}

/** Only Error may escape from the parsers. */
function onlyError(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof Error, `unexpected ${String(err)}`);
  }
}

test('ScramServer.clientFirst/clientFinal on arbitrary bytes throw only PgError', () => {
  fc.assert(
    fc.property(fc.boolean(), mechanism, message, message, (plus, mech, first, final) => {
      const server = new ScramServer(secret, plus ? { channelBinding: cbind } : {});
      onlyPgError(() => server.clientFirst(mech, first));
      onlyPgError(() => server.clientFinal(final));
    }),
    params,
  );
});

test('ScramServer.clientFinal after a valid client-first on mutated finals throws only PgError', () => {
  const suffix = fc.oneof(
    message.map((m) => m.toString('latin1')),
    asciiish,
  );
  fc.assert(
    fc.property(fc.nat(200), suffix, (cut, tail) => {
      const server = new ScramServer(secret);
      const client = new ScramClient({ clientKey: Buffer.alloc(32, 1) });
      const sf = server.clientFirst('SCRAM-SHA-256', client.clientFirst()).toString();
      const nonce = sf.split(',')[0]!.slice(2);
      const valid = `c=biws,r=${nonce},p=${Buffer.alloc(32).toString('base64')}`;
      onlyPgError(() => {
        const result = server.clientFinal(Buffer.from(valid.slice(0, cut) + tail));
        assert.equal(result.ok, false);
      });
    }),
    params,
  );
});

test('ScramClient.serverFirst/serverFinal on arbitrary bytes reject with Error', async () => {
  await fc.assert(
    fc.asyncProperty(message, message, async (first, final) => {
      const client = new ScramClient({ clientKey: Buffer.alloc(32, 1), serverKey: Buffer.alloc(32, 2) });
      client.clientFirst();
      try {
        await client.serverFirst(first);
      } catch (err) {
        assert.ok(err instanceof Error);
      }
      onlyError(() => client.serverFinal(final));
    }),
    params,
  );
});

test('parseSecret on arbitrary strings throws only Error', () => {
  const scramLike = fc
    .tuple(fc.string({ maxLength: 10 }), fc.string({ maxLength: 60 }))
    .map(([a, b]) => `SCRAM-SHA-256$${a}:${b}`);
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 200 }), scramLike), (s) => onlyError(() => parseSecret(s))),
    params,
  );
});

test('parseUserlist on arbitrary text throws only Error', () => {
  const line = fc.oneof(
    fc.string({ maxLength: 60 }),
    fc.string({ unit: fc.constantFrom('"', ' ', '\t', ';', '#', 'a', 'md5', '\r', '$'), maxLength: 40 }),
  );
  fc.assert(
    fc.property(fc.array(line, { maxLength: 20 }), (lines) =>
      onlyError(() => parseUserlist(lines.join('\n'))),
    ),
    params,
  );
});
