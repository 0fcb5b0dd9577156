// Tests for wire.ts: BodyReader bounds checks and MessageWriter layout and growth.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PgError } from './errors.ts';
import { encodeStartupMessage } from './frontend.ts';
import { cstr, int16, int32, msg } from './testing/builders.ts';
import { BodyReader, MessageWriter } from './wire.ts';

function isPgError(sqlState: string, code?: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof PgError, `expected PgError, got ${String(err)}`);
    assert.equal(err.sqlState, sqlState);
    if (code !== undefined) assert.equal(err.code, code);
    return true;
  };
}

test('BodyReader: reads each field type in order', () => {
  const r = new BodyReader(
    Buffer.concat([Buffer.from([7]), int16(-2), int32(-3), cstr('héllo'), Buffer.from('rest')]),
  );
  assert.equal(r.remaining, 1 + 2 + 4 + 7 + 4);
  assert.equal(r.byte(), 7);
  assert.equal(r.int16(), -2);
  assert.equal(r.int32(), -3);
  assert.equal(r.cstring(), 'héllo');
  assert.deepEqual(r.bytes(2), Buffer.from('re'));
  assert.deepEqual(r.rest(), Buffer.from('st'));
  assert.equal(r.remaining, 0);
  assert.deepEqual(r.rest(), Buffer.alloc(0));
  assert.deepEqual(r.bytes(0), Buffer.alloc(0));
});

test('BodyReader: reading past the end is 08P01 GPRXY_TRUNCATED, and consumes nothing', () => {
  const r = new BodyReader(Buffer.from([1, 2, 3]));
  assert.throws(() => r.int32(), isPgError('08P01', 'GPRXY_TRUNCATED'));
  assert.equal(r.remaining, 3);
  assert.throws(() => r.bytes(4), isPgError('08P01', 'GPRXY_TRUNCATED'));
  assert.equal(r.int16(), 0x0102);
  assert.throws(() => r.int16(), isPgError('08P01', 'GPRXY_TRUNCATED'));
  assert.equal(r.byte(), 3);
  assert.throws(() => r.byte(), isPgError('08P01', 'GPRXY_TRUNCATED'));
});

test('BodyReader: negative lengths and unterminated strings', () => {
  const r = new BodyReader(Buffer.from('abc'));
  assert.throws(() => r.bytes(-1), isPgError('08P01', 'GPRXY_BAD_LENGTH'));
  assert.throws(() => r.cstring(), isPgError('08P01', 'GPRXY_BAD_STRING'));
  assert.throws(() => new BodyReader(Buffer.alloc(0)).cstring(), isPgError('08P01', 'GPRXY_BAD_STRING'));
  // A NUL before the read position does not count.
  const s = new BodyReader(Buffer.from('\0ab'));
  assert.equal(s.cstring(), '');
  assert.throws(() => s.cstring(), isPgError('08P01', 'GPRXY_BAD_STRING'));
});

test('MessageWriter: finish() writes the type and a length counting itself and the body', () => {
  const m = new MessageWriter()
    .byte(1)
    .int16(-2)
    .int32(0x01020304)
    .cstring('hé')
    .bytes(Buffer.from([9]))
    .finish(0x51);
  assert.deepEqual(
    m,
    msg('Q', Buffer.concat([Buffer.from([1]), int16(-2), int32(0x01020304), cstr('hé'), Buffer.from([9])])),
  );
  assert.deepEqual(new MessageWriter().finish(0x58), Buffer.from([0x58, 0, 0, 0, 4]));
});

test('MessageWriter: grows past its capacity, from any starting capacity', () => {
  for (const cap of [0, 1, 5, 6, 64]) {
    const big = Buffer.alloc(1000, 0x61);
    const m = new MessageWriter(cap).int32(1).bytes(big).cstring('z').finish(0x64);
    assert.equal(m.length, 5 + 4 + 1000 + 2);
    assert.equal(m.readInt32BE(1), m.length - 1);
    assert.ok(m.subarray(9, 1009).equals(big));
    assert.deepEqual(new MessageWriter(cap).finish(0x53), Buffer.from([0x53, 0, 0, 0, 4]), `cap ${cap}`);
  }
});

test('MessageWriter: finishUntyped() writes the self-inclusive length over the placeholder', () => {
  const p = new MessageWriter().int32(0).int32(80877103).finishUntyped();
  assert.deepEqual(p, Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
});

test('MessageWriter: a string with a NUL is refused, so no field can be smuggled in', () => {
  assert.throws(() => new MessageWriter().cstring('a\0b'), isPgError('XX000', 'GPRXY_NUL_IN_STRING'));
  assert.throws(
    () => encodeStartupMessage([['user', 'alice\0options\0-c role=postgres']]),
    isPgError('XX000', 'GPRXY_NUL_IN_STRING'),
  );
});
