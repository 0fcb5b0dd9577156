// SSO mapping rules: first match on group, app role or email glob; database allow-lists.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { databaseAllowed, globMatch, mapIdentity } from './mapping.ts';
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
