// SSO mapping rules: first match on group, app role or email glob; database allow-lists.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { databaseAllowed, globMatch, MAX_ROLE_NAME_BYTES, mapIdentity, perUserRoleName } from './mapping.ts';
import type { Identity } from './oidc/verify.ts';

const id = (o: Partial<Identity>): Identity => ({
  name: 'x',
  provider: 'p',
  issuer: 'i',
  subject: 's',
  email: undefined,
  groups: [],
  roles: [],
  expiresAt: 0,
  ...o,
});

const rules = [
  { match: { group: 'dba' }, role: 'dba', databases: ['*'] },
  { match: { role: 'Reader' }, role: 'reader', databases: ['app', 'reports'] },
  { match: { email: '*@example.com' }, role: 'analyst', databases: ['app'] },
  { match: {}, role: 'never', databases: ['*'] },
];

test('first matching rule wins; an empty match never matches', () => {
  assert.equal(mapIdentity(rules, id({ groups: ['dba'], email: 'a@example.com' }))?.role, 'dba');
  assert.equal(mapIdentity(rules, id({ roles: ['Reader'], email: 'a@example.com' }))?.role, 'reader');
  assert.equal(mapIdentity(rules, id({ email: 'Bob@Example.com' }))?.role, 'analyst');
  assert.equal(mapIdentity(rules, id({ email: 'bob@example.org' })), undefined);
});

test('globs are literal except *; database lists', () => {
  assert.equal(globMatch('a.b*@x.com', 'a.bc@x.com'), true);
  assert.equal(globMatch('a.b*@x.com', 'aXbc@x.com'), false, 'a dot is a dot');
  const m = mapIdentity(rules, id({ roles: ['Reader'] }))!;
  assert.equal(databaseAllowed(m, 'reports'), true);
  assert.equal(databaseAllowed(m, 'payroll'), false);
});

test('per_user role names: the identity when it fits 63 bytes, else a whole-character prefix, ~ and a hash', () => {
  assert.equal(perUserRoleName('alice@example.com'), 'alice@example.com');
  const exact = `${'a'.repeat(51)}@example.com`;
  assert.equal(Buffer.byteLength(exact), 63);
  assert.equal(perUserRoleName(exact), exact, '63 bytes fit');
  const long = `${'b'.repeat(60)}@example.com`;
  const name = perUserRoleName(long)!;
  assert.match(name, /^b{52}~[0-9a-f]{10}$/);
  assert.equal(Buffer.byteLength(name), MAX_ROLE_NAME_BYTES);
  assert.equal(perUserRoleName(long), name, 'stable');
  assert.notEqual(perUserRoleName(`${'b'.repeat(60)}@example.org`), name, 'a shared prefix still differs');
  // Multi-byte characters are never split: the prefix stays valid UTF-8 within the byte budget.
  const wide = `${'é'.repeat(40)}@example.com`;
  const w = perUserRoleName(wide)!;
  assert.ok(Buffer.byteLength(w) <= MAX_ROLE_NAME_BYTES);
  assert.match(w, /^é{26}~[0-9a-f]{10}$/);
  assert.equal(Buffer.from(w, 'utf8').toString('utf8'), w);
  assert.equal(perUserRoleName(''), undefined);
  assert.equal(perUserRoleName('a\0b'), undefined);
});
