// Identity -> database login: ordered rules matching a group, an app role or an email glob; first match wins.
import type { SsoRule } from '../config/schema.ts';
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
