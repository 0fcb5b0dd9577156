// HBA rules in pg_hba.conf's shape: parse the file, match a connection (type, database, user, address), first
// match wins. Pure: addresses are compared with net.BlockList, nothing is resolved.
import { BlockList, isIP } from 'node:net';

export type HbaType = 'local' | 'host' | 'hostssl' | 'hostnossl';
export type HbaMethod = 'scram-sha-256' | 'md5' | 'password' | 'cert' | 'oidc' | 'trust' | 'reject';

export interface HbaRule {
  line: number;
  type: HbaType;
  databases: string[] | 'all';
  users: string[] | 'all';
  /** null: any address ('all', or a local line). */
  address: BlockList | null;
  method: HbaMethod;
  options: Record<string, string>;
}

export interface HbaConnection {
  type: 'local' | 'host';
  tls: boolean;
  address: string;
  database: string;
  user: string;
}

const TYPES = new Set<HbaType>(['local', 'host', 'hostssl', 'hostnossl']);
const METHODS = new Set<HbaMethod>(['scram-sha-256', 'md5', 'password', 'cert', 'oidc', 'trust', 'reject']);

export class HbaError extends Error {}

/** Splits a line into fields: whitespace-separated; double quotes keep spaces and commas literal. */
function fields(line: string): { text: string; quoted: boolean }[] {
  const out: { text: string; quoted: boolean }[] = [];
  let cur = '';
  let inQuotes = false;
  let quoted = false;
  let any = false;
  for (const ch of line) {
    if (ch === '"') {
      inQuotes = !inQuotes;
      quoted = true;
      any = true;
    } else if (!inQuotes && (ch === ' ' || ch === '\t')) {
      if (any) out.push({ text: cur, quoted });
      cur = '';
      any = false;
      quoted = false;
    } else {
      cur += ch;
      any = true;
    }
  }
  if (inQuotes) throw new HbaError('unterminated quote');
  if (any) out.push({ text: cur, quoted });
  return out;
}

function list(field: { text: string; quoted: boolean }): string[] | 'all' {
  if (field.quoted) return [field.text];
  if (field.text === 'all') return 'all';
  return field.text.split(',').filter((x) => x !== '');
}

function addressList(field: string): BlockList | null {
  if (field === 'all') return null;
  const bl = new BlockList();
  const [addr, bitsText] = field.split('/');
  const family = isIP(addr ?? '');
  if (!addr || family === 0)
    throw new HbaError(`invalid address "${field}" (use CIDR like 10.0.0.0/8, or all)`);
  const max = family === 4 ? 32 : 128;
  const bits = bitsText === undefined ? max : Number(bitsText);
  if (!Number.isInteger(bits) || bits < 0 || bits > max)
    throw new HbaError(`invalid prefix length in "${field}"`);
  bl.addSubnet(addr, bits, family === 4 ? 'ipv4' : 'ipv6');
  return bl;
}

export function parseHba(text: string): HbaRule[] {
  const rules: HbaRule[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.replace(/#.*$/, '').trim();
    if (raw === '') continue;
    try {
      const parts = fields(raw);
      const f = parts.map((p) => p.text);
      const type = f[0] as HbaType;
      if (!TYPES.has(type)) throw new HbaError(`unknown connection type "${f[0]}"`);
      const local = type === 'local';
      const need = local ? 4 : 5;
      if (f.length < need)
        throw new HbaError(`expected ${need} fields (${local ? '' : 'address '}and method)`);
      const method = f[need - 1] as HbaMethod;
      if (!METHODS.has(method)) throw new HbaError(`unknown method "${f[need - 1]}"`);
      const options: Record<string, string> = {};
      for (const opt of f.slice(need)) {
        const eq = opt.indexOf('=');
        if (eq <= 0) throw new HbaError(`option "${opt}" needs name=value`);
        options[opt.slice(0, eq)] = opt.slice(eq + 1);
      }
      rules.push({
        line: i + 1,
        type,
        databases: list(parts[1]!),
        users: list(parts[2]!),
        address: local ? null : addressList(f[3]!),
        method,
        options,
      });
    } catch (e) {
      throw new HbaError(`hba line ${i + 1}: ${(e as Error).message}`);
    }
  }
  return rules;
}

function ipOf(address: string): { ip: string; family: 'ipv4' | 'ipv6' } {
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return isIP(v4) === 4 ? { ip: v4, family: 'ipv4' } : { ip: address, family: 'ipv6' };
}

/** The first rule matching the connection, or undefined (no match: refuse). */
export function matchHba(rules: readonly HbaRule[], c: HbaConnection): HbaRule | undefined {
  const { ip, family } = ipOf(c.address);
  for (const r of rules) {
    if (c.type === 'local' ? r.type !== 'local' : r.type === 'local') continue;
    if (r.type === 'hostssl' && !c.tls) continue;
    if (r.type === 'hostnossl' && c.tls) continue;
    if (r.databases !== 'all' && !r.databases.includes(c.database)) continue;
    if (r.users !== 'all' && !r.users.includes(c.user)) continue;
    if (r.address && !r.address.check(ip, family)) continue;
    return r;
  }
  return undefined;
}
