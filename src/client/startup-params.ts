// Startup parameters a client asked for (application_name, DateStyle, options -c ...), turned into one
// set_config() statement for its pooled server; values are escaped literals, never spliced identifiers.
import { PgError } from '../protocol/errors.ts';
import { literal } from '../server/sql.ts';

/** Startup keys that are not settings. */
const NOT_SETTINGS = new Set(['user', 'database', 'replication', 'options']);

/** Parses libpq's `options` (`-c name=value`, `--name=value`, backslash-escaped spaces). */
export function parseOptions(options: string): [string, string][] | PgError {
  const words: string[] = [];
  let cur = '';
  let inWord = false;
  for (let i = 0; i < options.length; i++) {
    const ch = options[i]!;
    if (ch === '\\' && i + 1 < options.length) {
      cur += options[++i];
      inWord = true;
    } else if (ch === ' ' || ch === '\t' || ch === '\n') {
      if (inWord) words.push(cur);
      cur = '';
      inWord = false;
    } else {
      cur += ch;
      inWord = true;
    }
  }
  if (inWord) words.push(cur);
  const out: [string, string][] = [];
  for (let i = 0; i < words.length; i++) {
    let w = words[i]!;
    if (w === '-c') {
      const next = words[++i];
      if (next === undefined) return badOption('-c without a setting');
      w = next;
    } else if (w.startsWith('-c')) {
      w = w.slice(2);
    } else if (w.startsWith('--')) {
      w = w.slice(2);
    } else {
      return badOption(`unsupported option "${w}"`);
    }
    const eq = w.indexOf('=');
    if (eq <= 0) return badOption(`option "${w}" needs name=value`);
    out.push([w.slice(0, eq).replaceAll('-', '_'), w.slice(eq + 1)]);
  }
  return out;
}

function badOption(message: string): PgError {
  return new PgError('FATAL', '08P01', `invalid command-line argument in options: ${message}`, {
    code: 'GPRXY_BAD_OPTIONS',
  });
}

const GUC_NAME = /^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*$/;

/**
 * The settings a client's startup packet asks for that its server does not already have, as one statement.
 * `current` holds the server's reported values; equal ones are skipped.
 */
export function startupSettings(
  params: ReadonlyMap<string, string>,
  current: ReadonlyMap<string, string>,
  forced: ReadonlyMap<string, string> = new Map(),
): { sql: string | undefined; error?: PgError } {
  const wanted: [string, string][] = [];
  for (const [k, v] of params) {
    if (NOT_SETTINGS.has(k) || k.startsWith('_pq_.')) continue;
    wanted.push([k, v]);
  }
  const opts = params.get('options');
  if (opts) {
    const parsed = parseOptions(opts);
    if (parsed instanceof PgError) return { sql: undefined, error: parsed };
    wanted.push(...parsed);
  }
  // Values gprxy sets itself (SSO identity) come last, so nothing the client sends overrides them.
  wanted.push(...forced);
  const calls: string[] = [];
  for (const [k, v] of wanted) {
    if (!GUC_NAME.test(k)) {
      return {
        sql: undefined,
        error: new PgError('FATAL', '42704', `unrecognized configuration parameter "${k}"`, {
          code: 'GPRXY_BAD_GUC',
        }),
      };
    }
    if (current.get(k) === v) continue;
    calls.push(`pg_catalog.set_config(${literal(k)}, ${literal(v)}, false)`);
  }
  return { sql: calls.length ? `SELECT ${calls.join(', ')}` : undefined };
}

/** Transaction mode: the client's startup settings as name -> `text:<value>`, replayed on every server it leases. */
export function startupSettingMap(
  params: ReadonlyMap<string, string>,
  forced: ReadonlyMap<string, string> = new Map(),
): Map<string, string> | PgError {
  const out = new Map<string, string>();
  for (const [k, v] of params) {
    if (NOT_SETTINGS.has(k) || k.startsWith('_pq_.')) continue;
    if (!GUC_NAME.test(k)) return unrecognized(k);
    out.set(k.toLowerCase(), `text:${v}`);
  }
  const opts = params.get('options');
  if (opts) {
    const parsed = parseOptions(opts);
    if (parsed instanceof PgError) return parsed;
    for (const [k, v] of parsed) {
      if (!GUC_NAME.test(k)) return unrecognized(k);
      out.set(k.toLowerCase(), `text:${v}`);
    }
  }
  for (const [k, v] of forced) out.set(k.toLowerCase(), `text:${v}`);
  return out;
}

function unrecognized(name: string): PgError {
  return new PgError('FATAL', '42704', `unrecognized configuration parameter "${name}"`, {
    code: 'GPRXY_BAD_GUC',
  });
}
