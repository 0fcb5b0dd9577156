// Byte-fixture tests for frontend.ts: startup packets, CancelRequest, password and SASL messages, Query.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PgError } from './errors.ts';
import { StartupFramer } from './framer.ts';
import {
  CANCEL_REQUEST_CODE,
  decodePassword,
  decodeSaslInitialResponse,
  decodeStartupPacket,
  encodeCancelRequest,
  encodePassword,
  encodeQuery,
  encodeSaslInitialResponse,
  encodeSaslResponse,
  encodeSSLRequest,
  encodeStartupMessage,
  F,
  GSSENC_REQUEST_CODE,
  PROTOCOL_3_0,
  SSL_REQUEST_CODE,
  SYNC,
  TERMINATE,
} from './frontend.ts';
import {
  bodyOf,
  cancelRequest,
  cstr,
  gssencRequest,
  int32,
  msg,
  password,
  query,
  saslInitial,
  sslRequest,
  startup,
  sync,
  terminate,
  untyped,
} from './testing/builders.ts';

function isPgError(sqlState: string, code?: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof PgError, `expected PgError, got ${String(err)}`);
    assert.equal(err.sqlState, sqlState);
    if (code !== undefined) assert.equal(err.code, code);
    return true;
  };
}

/** What StartupFramer would hand to decodeStartupPacket for this packet. */
function framed(pkt: Buffer): Buffer {
  const f = new StartupFramer();
  f.push(pkt);
  const body = f.next();
  assert.ok(body);
  return body;
}

test('constants match the PostgreSQL protocol', () => {
  assert.equal(PROTOCOL_3_0, (3 << 16) | 0);
  assert.equal(SSL_REQUEST_CODE, (1234 << 16) | 5679);
  assert.equal(GSSENC_REQUEST_CODE, (1234 << 16) | 5680);
  assert.equal(CANCEL_REQUEST_CODE, (1234 << 16) | 5678);
  assert.equal(F.Query, 'Q'.charCodeAt(0));
  assert.equal(F.Password, 'p'.charCodeAt(0));
  assert.deepEqual(TERMINATE, terminate());
  assert.deepEqual(SYNC, sync());
});

test('decodeStartupPacket: SSLRequest and GSSENCRequest', () => {
  assert.deepEqual(decodeStartupPacket(framed(sslRequest())), { kind: 'ssl' });
  assert.deepEqual(decodeStartupPacket(framed(gssencRequest())), { kind: 'gssenc' });
});

test('decodeStartupPacket: CancelRequest with a 4-byte and a long (protocol 3.2) secret', () => {
  const c = decodeStartupPacket(framed(cancelRequest(4242, Buffer.from([0xde, 0xad, 0xbe, 0xef]))));
  assert.deepEqual(c, { kind: 'cancel', pid: 4242, secret: Buffer.from([0xde, 0xad, 0xbe, 0xef]) });
  const long = Buffer.alloc(256, 0xab);
  const c2 = decodeStartupPacket(framed(cancelRequest(-7, long)));
  assert.deepEqual(c2, { kind: 'cancel', pid: -7, secret: long });
});

test('decodeStartupPacket: CancelRequest secret is copied out of the packet', () => {
  const body = framed(cancelRequest(1, Buffer.from([1, 2, 3, 4])));
  const c = decodeStartupPacket(body);
  body.fill(0);
  assert.deepEqual(c, { kind: 'cancel', pid: 1, secret: Buffer.from([1, 2, 3, 4]) });
});

test('decodeStartupPacket: CancelRequest with a bad secret length is a protocol violation', () => {
  for (const secret of [Buffer.alloc(0), Buffer.alloc(3), Buffer.alloc(257)]) {
    assert.throws(
      () => decodeStartupPacket(framed(cancelRequest(1, secret))),
      isPgError('08P01', 'GPRXY_BAD_CANCEL'),
      `secret ${secret.length}`,
    );
  }
  // No pid at all.
  assert.throws(() => decodeStartupPacket(int32(CANCEL_REQUEST_CODE)), isPgError('08P01', 'GPRXY_TRUNCATED'));
});

test('decodeStartupPacket: StartupMessage 3.0 with params, in order', () => {
  const p = decodeStartupPacket(
    framed(
      startup([
        ['user', 'alice'],
        ['database', 'app'],
        ['options', '-c search_path=x'],
        ['application_name', ''],
        ['client_encoding', 'UTF8'],
      ]),
    ),
  );
  assert.equal(p.kind, 'startup');
  if (p.kind !== 'startup') return;
  assert.equal(p.major, 3);
  assert.equal(p.minor, 0);
  assert.deepEqual(
    [...p.params],
    [
      ['user', 'alice'],
      ['database', 'app'],
      ['options', '-c search_path=x'],
      ['application_name', ''],
      ['client_encoding', 'UTF8'],
    ],
  );
});

test('decodeStartupPacket: no params at all (just the terminator)', () => {
  const p = decodeStartupPacket(framed(startup({})));
  assert.deepEqual(p, { kind: 'startup', major: 3, minor: 0, params: new Map() });
});

test('decodeStartupPacket: UTF-8 names and values', () => {
  const p = decodeStartupPacket(framed(startup({ user: 'zoë', application_name: '日本' })));
  assert.equal(p.kind === 'startup' && p.params.get('user'), 'zoë');
  assert.equal(p.kind === 'startup' && p.params.get('application_name'), '日本');
});

test('decodeStartupPacket: protocol 3.2 (and _pq_ options) parse with their minor', () => {
  const p = decodeStartupPacket(framed(startup({ user: 'u', '_pq_.foo': 'bar' }, { minor: 2 })));
  assert.equal(p.kind, 'startup');
  if (p.kind !== 'startup') return;
  assert.equal(p.major, 3);
  assert.equal(p.minor, 2);
  assert.equal(p.params.get('_pq_.foo'), 'bar');
  const q = decodeStartupPacket(framed(startup({ user: 'u' }, { minor: 0xffff })));
  assert.equal(q.kind === 'startup' && q.minor, 0xffff);
});

test('decodeStartupPacket: protocol 2.0 and other majors are 0A000', () => {
  for (const major of [2, 1, 4, 0, 0xffff]) {
    assert.throws(
      () => decodeStartupPacket(framed(startup({ user: 'u' }, { major, minor: 0 }))),
      isPgError('0A000', 'GPRXY_PROTOCOL_VERSION'),
      `major ${major}`,
    );
  }
  // An unknown 1234.x request code is an unsupported protocol too.
  assert.throws(() => decodeStartupPacket(int32((1234 << 16) | 9999)), isPgError('0A000'));
});

test('decodeStartupPacket: 2.0 error message names the version', () => {
  try {
    decodeStartupPacket(framed(startup({ user: 'u' }, { major: 2 })));
    assert.fail('no error');
  } catch (e) {
    assert.ok(e instanceof PgError);
    assert.match(e.message, /unsupported frontend protocol 2\.0/);
    assert.equal(e.severity, 'FATAL');
  }
});

test('decodeStartupPacket: missing terminator, unterminated name or value, trailing bytes', () => {
  const bad = [
    startup({ user: 'u' }, { terminate: false }),
    startup({}, { terminate: false }),
    untyped(Buffer.concat([int32(PROTOCOL_3_0), Buffer.from('user')])),
    untyped(Buffer.concat([int32(PROTOCOL_3_0), cstr('user'), Buffer.from('alice')])),
    untyped(Buffer.concat([int32(PROTOCOL_3_0), cstr('user')])),
  ];
  for (const [i, pkt] of bad.entries()) {
    assert.throws(() => decodeStartupPacket(framed(pkt)), isPgError('08P01'), `case ${i}`);
  }
  // Bytes after the terminator.
  const trailing = untyped(
    Buffer.concat([int32(PROTOCOL_3_0), cstr('user'), cstr('u'), Buffer.from([0, 0x41])]),
  );
  assert.throws(() => decodeStartupPacket(framed(trailing)), isPgError('08P01', 'GPRXY_BAD_STARTUP'));
  // Too short for a request code.
  assert.throws(() => decodeStartupPacket(Buffer.alloc(3)), isPgError('08P01', 'GPRXY_TRUNCATED'));
});

test('encodeStartupMessage: exact byte layout', () => {
  const got = encodeStartupMessage([
    ['user', 'alice'],
    ['database', 'app'],
  ]);
  const want = Buffer.concat([
    int32(4 + 4 + 5 + 6 + 9 + 4 + 1),
    int32(196608),
    Buffer.from('user\0alice\0database\0app\0\0', 'latin1'),
  ]);
  assert.deepEqual(got, want);
  assert.deepEqual(got, startup({ user: 'alice', database: 'app' }));
  // A big one grows the writer.
  const big = encodeStartupMessage([['options', 'x'.repeat(5000)]]);
  assert.equal(big.readInt32BE(0), big.length);
  const d = decodeStartupPacket(framed(big));
  assert.equal(d.kind === 'startup' && d.params.get('options')?.length, 5000);
});

test('encodeSSLRequest and encodeCancelRequest: exact bytes', () => {
  assert.deepEqual(encodeSSLRequest(), Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
  const c = encodeCancelRequest(0x01020304, Buffer.from([5, 6, 7, 8]));
  assert.equal(c.length, 16);
  assert.deepEqual(c, Buffer.from([0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 1, 2, 3, 4, 5, 6, 7, 8]));
  assert.equal(c.readInt32BE(4), 80877102);
  assert.deepEqual(c, cancelRequest(0x01020304, Buffer.from([5, 6, 7, 8])));
  assert.deepEqual(decodeStartupPacket(framed(c)), {
    kind: 'cancel',
    pid: 0x01020304,
    secret: Buffer.from([5, 6, 7, 8]),
  });
  // Negative pid (signed on the wire) round trips.
  const neg = decodeStartupPacket(framed(encodeCancelRequest(-2, Buffer.alloc(4, 1))));
  assert.equal(neg.kind === 'cancel' && neg.pid, -2);
});

test('PasswordMessage: encode layout and decode', () => {
  assert.deepEqual(encodePassword('secret'), password('secret'));
  assert.deepEqual(encodePassword(''), Buffer.from([0x70, 0, 0, 0, 5, 0]));
  assert.equal(decodePassword(bodyOf(password('pässwörd'))), 'pässwörd');
  const token = 'eyJ'.repeat(3000);
  assert.equal(decodePassword(bodyOf(encodePassword(token))), token);
});

test('decodePassword: unterminated, empty or trailing bytes are protocol violations', () => {
  assert.throws(() => decodePassword(Buffer.from('abc')), isPgError('08P01', 'GPRXY_BAD_STRING'));
  assert.throws(() => decodePassword(Buffer.alloc(0)), isPgError('08P01'));
  assert.throws(() => decodePassword(Buffer.from('abc\0d')), isPgError('08P01', 'GPRXY_BAD_PASSWORD_PACKET'));
  assert.throws(
    () => decodePassword(Buffer.from('abc\0\0')),
    isPgError('08P01', 'GPRXY_BAD_PASSWORD_PACKET'),
  );
});

test('SASLInitialResponse: with data', () => {
  const data = Buffer.from('n,,n=,r=abcdef');
  const enc = encodeSaslInitialResponse('SCRAM-SHA-256', data);
  assert.deepEqual(enc, saslInitial('SCRAM-SHA-256', data));
  const d = decodeSaslInitialResponse(bodyOf(enc));
  assert.deepEqual(d, { mechanism: 'SCRAM-SHA-256', data });
  enc.fill(0, 5 + 14);
  assert.deepEqual(d.data, data, 'data is copied out of the message');
  // Zero-length data is data, not "none".
  assert.deepEqual(decodeSaslInitialResponse(bodyOf(saslInitial('OAUTHBEARER', Buffer.alloc(0)))), {
    mechanism: 'OAUTHBEARER',
    data: Buffer.alloc(0),
  });
});

test('SASLInitialResponse: with -1 (no initial response)', () => {
  assert.deepEqual(decodeSaslInitialResponse(bodyOf(saslInitial('OAUTHBEARER', null))), {
    mechanism: 'OAUTHBEARER',
    data: null,
  });
});

test('decodeSaslInitialResponse: bad lengths are protocol violations', () => {
  const m = cstr('SCRAM-SHA-256');
  const cases = [
    Buffer.concat([m, int32(5), Buffer.from('abcd')]), // shorter than declared
    Buffer.concat([m, int32(3), Buffer.from('abcd')]), // longer than declared
    Buffer.concat([m, int32(-2)]),
    Buffer.concat([m, int32(-1), Buffer.from('x')]),
    Buffer.concat([m, int32(-2147483648)]),
    Buffer.concat([m, Buffer.from([0, 0])]), // truncated length
    m,
    Buffer.from('SCRAM'), // unterminated mechanism
  ];
  for (const [i, body] of cases.entries()) {
    assert.throws(() => decodeSaslInitialResponse(body), isPgError('08P01'), `case ${i}`);
  }
});

test('encodeSaslResponse: raw data after the header', () => {
  const data = Buffer.from('c=biws,r=abc,p=xyz');
  assert.deepEqual(encodeSaslResponse(data), msg('p', data));
  assert.deepEqual(encodeSaslResponse(Buffer.alloc(0)), Buffer.from([0x70, 0, 0, 0, 4]));
});

test('encodeQuery: Q + length + SQL + NUL', () => {
  assert.deepEqual(encodeQuery('select 1'), query('select 1'));
  assert.deepEqual(encodeQuery(''), Buffer.from([0x51, 0, 0, 0, 5, 0]));
  const long = `select '${'é'.repeat(100)}'`;
  const enc = encodeQuery(long);
  assert.equal(enc.readInt32BE(1), enc.length - 1);
  assert.equal(enc.subarray(5, -1).toString('utf8'), long);
});
