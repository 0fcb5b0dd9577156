// Secret values in config: file:, enc: round trip, wrong key, errors that never contain the value.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseConfigText } from './load.ts';
import { decryptSecret, encryptSecret, masterKey, resolveSecret } from './secrets.ts';

const key = randomBytes(32);
const env = { GPRXY_MASTER_KEY: key.toString('base64') };

test('enc: values decrypt with the master key and not with another', () => {
  const v = encryptSecret('s3cret pässword', key);
  assert.match(v, /^enc:/);
  assert.ok(!v.includes('s3cret'));
  assert.equal(decryptSecret(v, key), 's3cret pässword');
  assert.throws(() => decryptSecret(v, randomBytes(32)), /does not decrypt/);
  assert.equal(masterKey({ GPRXY_MASTER_KEY: key.toString('hex') }).equals(key), true);
  assert.throws(() => masterKey({}), /GPRXY_MASTER_KEY/);
});

test('config passwords resolve file: and enc:; errors name the key, not the value', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gprxy-secret-'));
  writeFileSync(join(dir, 'svc.pw'), 'from-a-file\n');
  const enc = encryptSecret('from-enc', key);
  const c = parseConfigText(`users: { svc: { password: "file:svc.pw" }, other: { password: "${enc}" } }`, {
    env,
    baseDir: dir,
    source: 't.yaml',
  });
  assert.equal(c.users.svc?.password, 'from-a-file');
  assert.equal(c.users.other?.password, 'from-enc');
  assert.throws(
    () =>
      parseConfigText(`users: { other: { password: "${enc}" } }`, {
        env: {},
        baseDir: dir,
        source: 't.yaml',
      }),
    (e: Error) =>
      /users\.other\.password: enc: values need GPRXY_MASTER_KEY/.test(e.message) && !e.message.includes(enc),
  );
  assert.equal(resolveSecret('plain', {}, dir), 'plain');
});
