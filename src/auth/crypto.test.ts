// Tests: KeyCache and async PBKDF2.
import assert from 'node:assert/strict';
import { pbkdf2Sync } from 'node:crypto';
import { test } from 'node:test';
import { KeyCache, saltedPassword } from './crypto.ts';

test('saltedPassword is PBKDF2-HMAC-SHA-256 and cached', async () => {
  const cache = new KeyCache(2);
  const expected = pbkdf2Sync('pw', 'salt', 100, 32, 'sha256');
  const a = saltedPassword(Buffer.from('pw'), Buffer.from('salt'), 100, cache);
  const b = saltedPassword(Buffer.from('pw'), Buffer.from('salt'), 100, cache);
  assert.deepEqual(await a, expected);
  assert.deepEqual(await b, expected);
  assert.equal(cache.size, 1);
  (await a).fill(0); // callers get copies
  assert.deepEqual(await saltedPassword(Buffer.from('pw'), Buffer.from('salt'), 100, cache), expected);
  assert.deepEqual(await saltedPassword(Buffer.from('pw'), Buffer.from('salt'), 100, null), expected);
  await assert.rejects(saltedPassword(Buffer.from('pw'), Buffer.from('salt'), 0, cache), {
    code: 'GPRXY_SCRAM_ITERATIONS',
  });
});

test('KeyCache is bounded and evicts the least recently used entry', async () => {
  const cache = new KeyCache(2);
  let computed = 0;
  const get = (k: string) => cache.get(k, async () => Buffer.from([computed++]));
  await get('a');
  await get('b');
  await get('a'); // a is now most recent
  await get('c'); // evicts b
  assert.equal(cache.size, 2);
  assert.equal(computed, 3);
  await get('a');
  assert.equal(computed, 3);
  await get('b');
  assert.equal(computed, 4);
});

test('KeyCache drops failed computations', async () => {
  const cache = new KeyCache(4);
  await assert.rejects(cache.get('k', () => Promise.reject(new Error('boom'))));
  assert.equal(cache.size, 0);
  assert.deepEqual(await cache.get('k', async () => Buffer.from('ok')), Buffer.from('ok'));
});
