// Byte-fixture tests for backend.ts: Authentication, ParameterStatus, BackendKeyData, ReadyForQuery, errors, NPV.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  AuthCode,
  B,
  decodeAuthentication,
  decodeBackendKeyData,
  decodeErrorFields,
  decodeParameterStatus,
  decodeReadyForQuery,
  encodeAuthCleartext,
  encodeAuthMd5,
  encodeAuthOk,
  encodeAuthSasl,
  encodeAuthSaslContinue,
  encodeAuthSaslFinal,
  encodeBackendKeyData,
  encodeError,
  encodeNegotiateProtocolVersion,
  encodeNotice,
  encodeParameterStatus,
  encodeReadyForQuery,
  pgErrorFromFields,
} from './backend.ts';
import { PgError, SqlState } from './errors.ts';
import { MessageFramer } from './framer.ts';
import {
  auth,
  authSasl,
  backendKeyData,
  bodyOf,
  cstr,
  errorResponse,
  int32,
  msg,
  parameterStatus,
  readyForQuery,
} from './testing/builders.ts';

function isPgError(sqlState: string, code?: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof PgError, `expected PgError, got ${String(err)}`);
    assert.equal(err.sqlState, sqlState);
    if (code !== undefined) assert.equal(err.code, code);
    return true;
  };
}

/** Parses an encoded message through MessageFramer: checks the length field agrees with the bytes. */
function frame(bytes: Buffer): { type: number; body: Buffer } {
  const f = new MessageFramer(1 << 20);
  f.push(bytes);
  const m = f.next();
  assert.ok(m, 'one whole message');
  assert.equal(f.pending, 0, 'no bytes beyond the declared length');
  return m;
}

test('message type constants', () => {
  const want: Record<string, string> = {
    Authentication: 'R',
    ParameterStatus: 'S',
    BackendKeyData: 'K',
    ReadyForQuery: 'Z',
    ErrorResponse: 'E',
    NoticeResponse: 'N',
    CommandComplete: 'C',
    RowDescription: 'T',
    DataRow: 'D',
    CopyInResponse: 'G',
    CopyOutResponse: 'H',
    CopyBothResponse: 'W',
    CopyData: 'd',
    CopyDone: 'c',
    NotificationResponse: 'A',
    NegotiateProtocolVersion: 'v',
  };
  for (const [k, v] of Object.entries(want)) assert.equal(B[k as keyof typeof B], v.charCodeAt(0), k);
});

// ---------------------------------------------------------------- Authentication

test('Authentication encoders: exact bytes', () => {
  assert.deepEqual(encodeAuthOk(), auth(0));
  assert.deepEqual(encodeAuthOk(), Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0]));
  assert.deepEqual(encodeAuthCleartext(), auth(3));
  assert.deepEqual(encodeAuthMd5(Buffer.from([1, 2, 3, 4])), auth(5, Buffer.from([1, 2, 3, 4])));
  assert.deepEqual(
    encodeAuthSasl(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']),
    authSasl(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']),
  );
  assert.deepEqual(
    encodeAuthSasl(['SCRAM-SHA-256']),
    Buffer.concat([Buffer.from([0x52, 0, 0, 0, 23]), int32(10), Buffer.from('SCRAM-SHA-256\0\0')]),
  );
  const data = Buffer.from('r=abc,s=c2FsdA==,i=4096');
  assert.deepEqual(encodeAuthSaslContinue(data), auth(11, data));
  assert.deepEqual(encodeAuthSaslFinal(data), auth(12, data));
});

test('decodeAuthentication: 0, 3, 5, 10, 11, 12 from fixtures', () => {
  assert.deepEqual(decodeAuthentication(bodyOf(auth(0))), { code: 0 });
  assert.deepEqual(decodeAuthentication(bodyOf(auth(3))), { code: 3 });
  assert.deepEqual(decodeAuthentication(bodyOf(auth(5, Buffer.from([9, 8, 7, 6])))), {
    code: 5,
    salt: Buffer.from([9, 8, 7, 6]),
  });
  assert.deepEqual(decodeAuthentication(bodyOf(authSasl(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']))), {
    code: 10,
    mechanisms: ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256'],
  });
  assert.deepEqual(decodeAuthentication(bodyOf(authSasl([]))), { code: 10, mechanisms: [] });
  const data = Buffer.from('v=c2lnbmF0dXJl');
  assert.deepEqual(decodeAuthentication(bodyOf(auth(11, data))), { code: 11, data });
  assert.deepEqual(decodeAuthentication(bodyOf(auth(12, data))), { code: 12, data });
  assert.deepEqual(decodeAuthentication(bodyOf(auth(11))), { code: 11, data: Buffer.alloc(0) });
  // Others (GSS 7, SSPI 9, ...) decode to just the code for the caller to refuse.
  assert.deepEqual(decodeAuthentication(bodyOf(auth(7))), { code: 7 });
  assert.deepEqual(decodeAuthentication(bodyOf(auth(-1))), { code: -1 });
});

test('Authentication: encode -> decode round trips', () => {
  const salt = Buffer.from([0xff, 0, 0x80, 1]);
  const data = Buffer.from([0, 1, 2, 255]);
  assert.deepEqual(decodeAuthentication(frame(encodeAuthOk()).body), { code: AuthCode.Ok });
  assert.deepEqual(decodeAuthentication(frame(encodeAuthCleartext()).body), {
    code: AuthCode.CleartextPassword,
  });
  assert.deepEqual(decodeAuthentication(frame(encodeAuthMd5(salt)).body), {
    code: AuthCode.MD5Password,
    salt,
  });
  assert.deepEqual(decodeAuthentication(frame(encodeAuthSasl(['A', 'B'])).body), {
    code: AuthCode.SASL,
    mechanisms: ['A', 'B'],
  });
  assert.deepEqual(decodeAuthentication(frame(encodeAuthSaslContinue(data)).body), { code: 11, data });
  assert.deepEqual(decodeAuthentication(frame(encodeAuthSaslFinal(data)).body), { code: 12, data });
});

test('decodeAuthentication: salt and SASL data are copied out of the body', () => {
  const body = bodyOf(auth(5, Buffer.from([1, 2, 3, 4])));
  const a = decodeAuthentication(body);
  body.fill(0);
  assert.deepEqual(a, { code: 5, salt: Buffer.from([1, 2, 3, 4]) });
  const body2 = bodyOf(auth(11, Buffer.from('xyz')));
  const b = decodeAuthentication(body2);
  body2.fill(0);
  assert.deepEqual(b, { code: 11, data: Buffer.from('xyz') });
});

test('decodeAuthentication: truncated bodies are protocol violations', () => {
  const cases = [
    Buffer.alloc(0),
    Buffer.from([0, 0, 0]),
    Buffer.concat([int32(5), Buffer.from([1, 2, 3])]), // short salt
    Buffer.concat([int32(10), Buffer.from('SCRAM-SHA-256\0')]), // no list terminator
    Buffer.concat([int32(10), Buffer.from('SCRAM')]), // unterminated name
    int32(10),
  ];
  for (const [i, body] of cases.entries()) {
    assert.throws(() => decodeAuthentication(body), isPgError('08P01'), `case ${i}`);
  }
});

// ---------------------------------------------------------------- ParameterStatus, BackendKeyData, ReadyForQuery

test('ParameterStatus: layout and round trip', () => {
  assert.deepEqual(
    encodeParameterStatus('TimeZone', 'Europe/Paris'),
    parameterStatus('TimeZone', 'Europe/Paris'),
  );
  assert.deepEqual(decodeParameterStatus(bodyOf(parameterStatus('server_version', '17.2'))), [
    'server_version',
    '17.2',
  ]);
  assert.deepEqual(decodeParameterStatus(frame(encodeParameterStatus('application_name', '')).body), [
    'application_name',
    '',
  ]);
  assert.deepEqual(decodeParameterStatus(frame(encodeParameterStatus('x', 'é'.repeat(200))).body), [
    'x',
    'é'.repeat(200),
  ]);
});

test('decodeParameterStatus: truncated is a protocol violation', () => {
  for (const body of [Buffer.alloc(0), cstr('name'), Buffer.from('name\0value')]) {
    assert.throws(() => decodeParameterStatus(body), isPgError('08P01', 'GPRXY_BAD_STRING'));
  }
});

test('BackendKeyData: layout, round trip, secret bounds', () => {
  const secret = Buffer.from([0xca, 0xfe, 0xba, 0xbe]);
  assert.deepEqual(encodeBackendKeyData(4321, secret), backendKeyData(4321, secret));
  assert.deepEqual(
    encodeBackendKeyData(1, secret),
    Buffer.from([0x4b, 0, 0, 0, 12, 0, 0, 0, 1, 0xca, 0xfe, 0xba, 0xbe]),
  );
  assert.deepEqual(decodeBackendKeyData(frame(encodeBackendKeyData(-5, secret)).body), { pid: -5, secret });
  const long = Buffer.alloc(256, 7); // protocol 3.2: up to 256 bytes
  assert.deepEqual(decodeBackendKeyData(frame(encodeBackendKeyData(0x7fffffff, long)).body), {
    pid: 0x7fffffff,
    secret: long,
  });
  for (const s of [Buffer.alloc(0), Buffer.alloc(3), Buffer.alloc(257)]) {
    assert.throws(
      () => decodeBackendKeyData(bodyOf(backendKeyData(1, s))),
      isPgError('08P01'),
      `secret ${s.length}`,
    );
  }
  assert.throws(() => decodeBackendKeyData(Buffer.alloc(2)), isPgError('08P01', 'GPRXY_TRUNCATED'));
  // The secret is a copy.
  const body = bodyOf(backendKeyData(1, secret));
  const k = decodeBackendKeyData(body);
  body.fill(0);
  assert.deepEqual(k.secret, secret);
});

test('ReadyForQuery: layout and round trip', () => {
  for (const s of ['I', 'T', 'E'] as const) {
    assert.deepEqual(encodeReadyForQuery(s), readyForQuery(s));
    assert.equal(decodeReadyForQuery(frame(encodeReadyForQuery(s)).body), s);
  }
  for (const body of [
    Buffer.alloc(0),
    Buffer.from('X'),
    Buffer.from('II'),
    Buffer.from('i'),
    Buffer.from([0]),
  ]) {
    assert.throws(() => decodeReadyForQuery(body), isPgError('08P01'));
  }
});

// ---------------------------------------------------------------- NegotiateProtocolVersion

test('NegotiateProtocolVersion: byte layout as PostgreSQL sends it', () => {
  // Byte1('v'), Int32 length, Int32 newest version supported (3 << 16 | minor, as the server sends it and libpq
  // reads it, whatever the docs' "minor" says), Int32 number of unrecognized options, String names.
  const got = encodeNegotiateProtocolVersion(0, ['_pq_.foo', '_pq_.bar']);
  const want = Buffer.concat([
    Buffer.from('v'),
    int32(4 + 4 + 4 + 9 + 9),
    int32(0x30000),
    int32(2),
    Buffer.from('_pq_.foo\0_pq_.bar\0'),
  ]);
  assert.deepEqual(got, want);
  assert.deepEqual(
    got,
    msg('v', Buffer.concat([int32(0x30000), int32(2), cstr('_pq_.foo'), cstr('_pq_.bar')])),
  );
  assert.deepEqual(
    encodeNegotiateProtocolVersion(0, []),
    Buffer.from([0x76, 0, 0, 0, 12, 0, 3, 0, 0, 0, 0, 0, 0]),
  );
  assert.equal(frame(encodeNegotiateProtocolVersion(2, [])).body.readInt32BE(0), (3 << 16) | 2);
});

// ---------------------------------------------------------------- ErrorResponse / NoticeResponse

test('encodeError: field layout S V C M [D] [H] then NUL; no internal code', () => {
  const err = new PgError('FATAL', '28P01', 'password authentication failed for user "bob"', {
    code: 'GPRXY_AUTH_SCRAM',
  });
  assert.deepEqual(
    encodeError(err),
    errorResponse([
      ['S', 'FATAL'],
      ['V', 'FATAL'],
      ['C', '28P01'],
      ['M', 'password authentication failed for user "bob"'],
    ]),
  );
  assert.ok(!encodeError(err).includes('GPRXY'));
  const full = new PgError('ERROR', '53300', 'too many', { detail: 'd', hint: 'h' });
  assert.deepEqual(
    encodeError(full),
    errorResponse([
      ['S', 'ERROR'],
      ['V', 'ERROR'],
      ['C', '53300'],
      ['M', 'too many'],
      ['D', 'd'],
      ['H', 'h'],
    ]),
  );
});

test('ErrorResponse: encodeError -> decodeErrorFields -> pgErrorFromFields', () => {
  const cases = [
    new PgError('FATAL', SqlState.PROTOCOL_VIOLATION, 'invalid startup packet length 3'),
    new PgError('ERROR', '42P01', 'relation "ü" does not exist', { detail: 'some detail', hint: 'a hint' }),
    new PgError('WARNING', '01000', '', { detail: '' }),
    new PgError('PANIC', 'XX000', 'x'.repeat(10_000), { hint: 'long' }),
  ];
  for (const err of cases) {
    const f = frame(encodeError(err));
    assert.equal(f.type, B.ErrorResponse);
    const fields = decodeErrorFields(f.body);
    assert.equal(fields.get('S'), err.severity);
    assert.equal(fields.get('V'), err.severity);
    const back = pgErrorFromFields(fields);
    assert.ok(back instanceof PgError);
    assert.equal(back.severity, err.severity);
    assert.equal(back.sqlState, err.sqlState);
    assert.equal(back.message, err.message);
    assert.equal(back.detail, err.detail);
    assert.equal(back.hint, err.hint);
    assert.equal(back.code, 'GPRXY_SERVER_ERROR');
    assert.equal(back.fatal, err.fatal);
  }
});

test('decodeErrorFields: a real server error with unknown fields; localized S, V preferred', () => {
  const body = bodyOf(
    errorResponse([
      ['S', 'FATAL'],
      ['V', 'FATAL'],
      ['C', '57P01'],
      ['M', 'terminating connection due to administrator command'],
      ['F', 'postgres.c'],
      ['L', '3300'],
      ['R', 'ProcessInterrupts'],
    ]),
  );
  const fields = decodeErrorFields(body);
  assert.equal(fields.size, 7);
  assert.equal(fields.get('R'), 'ProcessInterrupts');
  const e = pgErrorFromFields(fields);
  assert.equal(e.sqlState, '57P01');
  assert.ok(e.fatal);
  // Localized S with non-localized V: V wins.
  const loc = pgErrorFromFields(
    decodeErrorFields(
      bodyOf(
        errorResponse([
          ['S', 'FATAL-DE'],
          ['V', 'FATAL'],
          ['C', '28000'],
          ['M', 'm'],
        ]),
      ),
    ),
  );
  assert.equal(loc.severity, 'FATAL');
  // Pre-9.6 servers send no V.
  assert.equal(pgErrorFromFields(new Map([['S', 'ERROR']])).severity, 'ERROR');
  // Nothing at all: defaults.
  const empty = pgErrorFromFields(decodeErrorFields(Buffer.from([0])));
  assert.equal(empty.severity, 'ERROR');
  assert.equal(empty.sqlState, 'XX000');
  assert.equal(empty.detail, undefined);
  assert.equal(empty.hint, undefined);
});

test('decodeErrorFields: truncated or unterminated is a protocol violation', () => {
  for (const body of [Buffer.alloc(0), Buffer.from('SERROR'), Buffer.from('SERROR\0'), Buffer.from('S')]) {
    assert.throws(() => decodeErrorFields(body), isPgError('08P01'));
  }
});

test('encodeNotice: N message with severity and 00000', () => {
  const n = frame(encodeNotice('hello'));
  assert.equal(n.type, B.NoticeResponse);
  const f = decodeErrorFields(n.body);
  assert.equal(f.get('S'), 'NOTICE');
  assert.equal(f.get('C'), '00000');
  assert.equal(f.get('M'), 'hello');
  assert.equal(decodeErrorFields(frame(encodeNotice('w', 'WARNING')).body).get('V'), 'WARNING');
});

test('encodeError: a NUL inside a field cannot break the frame', () => {
  const err = new PgError('FATAL', '28000', 'no role for "a\0M\0evil"', { detail: 'x\0y', hint: '\0' });
  const f = frame(encodeError(err));
  const fields = decodeErrorFields(f.body);
  assert.deepEqual([...fields.keys()], ['S', 'V', 'C', 'M', 'D', 'H']);
  assert.equal(fields.get('C'), '28000');
  assert.ok(!fields.get('M')?.includes('\0'));
});
