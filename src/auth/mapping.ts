// Identity -> database login: ordered rules matching a group, an app role or an email glob; first match wins; and
// the per_user backend's role-name rule (identity -> a PostgreSQL role name of at most 63 bytes).
import type { SsoRule } from '../config/schema.ts';
import { sha256 } from './crypto.ts';
import type { Identity } from './oidc/verify.ts';

export interface Mapped {
  role: string;
  databases: readonly string[];
  rule: number;
}

/** `*` matches any run of characters; everything else is literal, case-insensitive (emails). */
export function globMatch(pattern: string, value: string): boolean {
  const re = new RegExp(
    `^${pattern
      .split('*')
      .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
      .join('.*')}$`,
    'i',
  );
  return re.test(value);
}

export function mapIdentity(rules: readonly SsoRule[], id: Identity): Mapped | undefined {
  for (let i = 0; i < rules.length; i++) {
    const r = rules[i]!;
    const m = r.match;
    if (m.group === undefined && m.role === undefined && m.email === undefined) continue;
    if (m.group !== undefined && !id.groups.includes(m.group)) continue;
    if (m.role !== undefined && !id.roles.includes(m.role)) continue;
    if (m.email !== undefined && !(id.email && globMatch(m.email, id.email))) continue;
    return { role: r.role, databases: r.databases, rule: i };
  }
  return undefined;
}

export function databaseAllowed(m: Mapped, database: string): boolean {
  return m.databases.includes('*') || m.databases.includes(database);
}

/** PostgreSQL's longest role name in bytes (NAMEDATALEN - 1); longer names are silently truncated by the server. */
export const MAX_ROLE_NAME_BYTES = 63;
/** Hex digits of SHA-256(identity) that end a shortened per_user role name. */
const HASH_DIGITS = 10;

/**
 * per_user: the LOGIN role gprxy provisions for an identity. The identity itself when it fits 63 bytes of UTF-8;
 * otherwise its longest prefix of whole characters within 52 bytes, `~`, and the first 10 hex digits of
 * SHA-256(identity) (63 bytes at most, stable, and distinct for identities sharing a long prefix). An empty
 * identity or one containing NUL has no role name (undefined).
 */
export function perUserRoleName(identity: string): string | undefined {
  if (identity.length === 0 || identity.includes('\0')) return undefined;
  if (Buffer.byteLength(identity, 'utf8') <= MAX_ROLE_NAME_BYTES) return identity;
  const budget = MAX_ROLE_NAME_BYTES - 1 - HASH_DIGITS;
  let prefix = '';
  let bytes = 0;
  for (const ch of identity) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > budget) break;
    prefix += ch;
    bytes += n;
  }
  return `${prefix}~${sha256(identity).toString('hex').slice(0, HASH_DIGITS)}`;
}
