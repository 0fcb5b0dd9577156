// Tests: MD5 response and verification.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { md5Response, verifyMd5 } from './md5.ts';
import { md5Secret, parseSecret } from './verifiers.ts';

const md5hex = (b: Buffer | string) => createHash('md5').update(b).digest('hex');
const salt = Buffer.from([1, 2, 3, 4]);

test('md5Response matches an independent computation', () => {
  const inner = md5hex('passuser');
  const expected = 'md5' + md5hex(Buffer.concat([Buffer.from(inner), salt]));
  assert.equal(md5Response('user', 'pass', salt), expected);
  assert.equal(md5Response('user', md5Secret('user', 'pass'), salt), expected);
});

test('verifyMd5 accepts the right response for md5 and plaintext secrets only', () => {
  const response = md5Response('user', 'pass', salt);
  assert.equal(verifyMd5(parseSecret(md5Secret('user', 'pass')), 'user', salt, response), true);
  assert.equal(verifyMd5(parseSecret('pass'), 'user', salt, response), true);
  assert.equal(verifyMd5(parseSecret('pass'), 'user', Buffer.from([1, 2, 3, 5]), response), false);
  assert.equal(verifyMd5(parseSecret('wrong'), 'user', salt, response), false);
  assert.equal(verifyMd5(parseSecret('pass'), 'user', salt, response.slice(0, 10)), false);
  assert.equal(verifyMd5(parseSecret('pass'), 'user', salt, ''), false);
  const scram =
    'SCRAM-SHA-256$4096:XJKohOQkZFeWO17lEld+zw==$eWkukEYXNXnRQY4DSc9aFi+ldrpWRlmoDYIjl3Ub0WI=:LbkC7DCd9WX3Wx5BdPgmP0d9cimlzlh4p3ecKdH6WYM=';
  assert.equal(verifyMd5(parseSecret(scram), 'user', salt, response), false);
});
