// Tests: SASLprep as PostgreSQL applies it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { saslprep } from './saslprep.ts';

test('saslprep: ASCII untouched, prohibited characters fall back to raw bytes', () => {
  assert.deepEqual(saslprep('pencil\x01'), Buffer.from('pencil\x01'));
  assert.deepEqual(saslprep('\u2168'), Buffer.from('IX'));
  assert.deepEqual(saslprep('\u2168\u0007'), Buffer.from('\u2168\u0007')); // control char: raw
  assert.deepEqual(saslprep('\u2168\ue000'), Buffer.from('\u2168\ue000')); // private use: raw
  assert.deepEqual(saslprep('\u00ad'), Buffer.from('\u00ad')); // empty after mapping: raw
  assert.deepEqual(saslprep('\u05d0\ufb01\u05d0'), Buffer.from('\u05d0\ufb01\u05d0')); // bidi: raw
});

test('saslprep: mapping and NFKC', () => {
  assert.deepEqual(saslprep('a\u00a0b'), Buffer.from('a b'));
  assert.deepEqual(saslprep('a\u200bb'), Buffer.from('a b'));
  assert.deepEqual(saslprep('a\u00adb\ufe0f'), Buffer.from('ab'));
  assert.deepEqual(saslprep('\uff21\u00e9'), Buffer.from('A\u00e9'));
  assert.deepEqual(saslprep('e\u0301'), Buffer.from('\u00e9'));
  assert.deepEqual(saslprep('\u05d0\u05d1'), Buffer.from('\u05d0\u05d1'));
});
