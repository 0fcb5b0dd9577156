// Loading the config: YAML text + environment -> validated, frozen Config; lookups of databases and pool settings.
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { ZodError } from 'zod';
import {
  configSchema,
  type DatabaseConfig,
  type ParsedConfig,
  POOL_DEFAULTS,
  POOL_KEYS,
  type PoolSettings,
  type RawConfig,
} from './schema.ts';
import { masterKey, resolveSecret } from './secrets.ts';

export type Config = Readonly<ParsedConfig> & {
  /** Directory relative paths in the file are resolved against. */
  readonly baseDir: string;
  readonly source: string;
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type Env = Readonly<Record<string, string | undefined>>;

/** Replaces `${NAME}` in every string value; an unset variable is an error naming the key. */
function substituteEnv(value: unknown, env: Env, path: string): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => {
      const v = env[name];
      if (v === undefined)
        throw new ConfigError(`${path || '(root)'}: environment variable ${name} is not set`);
      return v;
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substituteEnv(v, env, `${path}[${i}]`));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = substituteEnv(v, env, path ? `${path}.${k}` : k);
    return out;
  }
  return value;
}

function formatZodError(err: ZodError): string {
  return err.issues
    .map((i) => {
      const key = i.path.length ? i.path.join('.') : '(root)';
      return `${key}: ${i.message}`;
    })
    .join('; ');
}

function deepFreeze<T>(o: T): T {
  if (o !== null && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

export function parseConfig(raw: unknown, opts: { env: Env; baseDir: string; source: string }): Config {
  if (raw === null || raw === undefined) raw = {};
  const substituted = substituteEnv(raw, opts.env, '');
  const result = configSchema.safeParse(substituted);
  if (!result.success)
    throw new ConfigError(`invalid config ${opts.source}: ${formatZodError(result.error)}`);
  const c = result.data;
  const abs = (p: string | undefined) => (p === undefined || isAbsolute(p) ? p : resolve(opts.baseDir, p));
  if (c.auth.file !== undefined) c.auth.file = abs(c.auth.file);
  if (c.auth.hba !== undefined) c.auth.hba = abs(c.auth.hba);
  for (const sink of c.audit.sinks) if (sink.type === 'file') sink.path = abs(sink.path)!;
  if (c.sso.backend === 'set_role' && c.sso.service_user === undefined) {
    throw new ConfigError(
      `invalid config ${opts.source}: sso.service_user: needed with sso.backend set_role`,
    );
  }
  const perUserKey = c.sso.backend === 'per_user' ? checkPerUser(c, opts) : undefined;
  if (c.auth.query !== undefined && c.auth.user === undefined) {
    throw new ConfigError(
      `invalid config ${opts.source}: auth.user: needed with auth.query (the login it runs as)`,
    );
  }
  if (c.listen.tls) {
    c.listen.tls.cert = abs(c.listen.tls.cert)!;
    c.listen.tls.key = abs(c.listen.tls.key)!;
    c.listen.tls.ca = abs(c.listen.tls.ca);
  }
  for (const t of [c.server_tls, ...Object.values(c.databases).map((d) => d.server_tls)]) {
    if (!t) continue;
    t.ca = abs(t.ca);
    t.cert = abs(t.cert);
    t.key = abs(t.key);
  }
  // Secrets that must be plaintext for gprxy's own logins may come from a file or be encrypted.
  const secret = (value: string | undefined, key: string): string | undefined => {
    if (value === undefined) return undefined;
    try {
      return resolveSecret(value, opts.env, opts.baseDir);
    } catch (e) {
      throw new ConfigError(`invalid config ${opts.source}: ${key}: ${(e as Error).message}`);
    }
  };
  for (const [name, u] of Object.entries(c.users)) u.password = secret(u.password, `users.${name}.password`);
  for (const [name, d] of Object.entries(c.databases))
    d.password = secret(d.password, `databases.${name}.password`);
  if (c.listen.tls === undefined && c.listen.require_tls) {
    throw new ConfigError(
      `invalid config ${opts.source}: listen.require_tls: needs listen.tls (cert and key)`,
    );
  }
  const frozen = deepFreeze({ ...c, baseDir: opts.baseDir, source: opts.source });
  if (perUserKey) perUserKeys.set(frozen, perUserKey);
  return frozen;
}

/** per_user state keys by config: held beside the frozen object, never in it (nothing prints or walks it). */
const perUserKeys = new WeakMap<Config, Buffer>();

/** The master key the per_user state file is encrypted with (set when sso.backend is per_user). */
export function perUserStateKey(config: Config): Buffer | undefined {
  return perUserKeys.get(config);
}

/** sso.backend per_user: provisioner, state file and master key are required; the state file path is resolved. */
function checkPerUser(c: ParsedConfig, opts: { env: Env; baseDir: string; source: string }): Buffer {
  const bad = (msg: string) => new ConfigError(`invalid config ${opts.source}: ${msg}`);
  const p = c.sso.provisioner;
  if (!p) throw bad('sso.provisioner: needed with sso.backend per_user ({ user, database })');
  if ((c.databases[p.database] ?? c.databases['*']) === undefined) {
    throw bad(`sso.provisioner.database: no database entry "${p.database}"`);
  }
  if (c.users[p.user]?.password === undefined) {
    throw bad(`users.${p.user}.password: needed for the provisioner login (sso.provisioner.user)`);
  }
  if (c.sso.state_file === undefined) throw bad('sso.state_file: needed with sso.backend per_user');
  if (!isAbsolute(c.sso.state_file)) c.sso.state_file = resolve(opts.baseDir, c.sso.state_file);
  if (opts.env.GPRXY_MASTER_KEY === undefined && !opts.env.GPRXY_MASTER_KEY_FILE) {
    throw bad(
      'sso.backend: per_user keeps role passwords encrypted: set GPRXY_MASTER_KEY or GPRXY_MASTER_KEY_FILE',
    );
  }
  try {
    return masterKey(opts.env);
  } catch (e) {
    throw bad(`sso.backend: per_user: ${(e as Error).message}`);
  }
}

export function parseConfigText(text: string, opts: { env: Env; baseDir: string; source: string }): Config {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`invalid YAML in ${opts.source}: ${(e as Error).message}`);
  }
  return parseConfig(raw, opts);
}

export function loadConfigFile(path: string, env: Env): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  return parseConfigText(text, { env, baseDir: dirname(resolve(path)), source: path });
}

export function configFromObject(raw: RawConfig, baseDir = process.cwd()): Config {
  return parseConfig(raw, { env: {}, baseDir, source: '(inline)' });
}

/** The database entry a client's database name routes to: exact name, else the `*` fallback. */
export function findDatabase(config: Config, name: string): DatabaseConfig | undefined {
  return config.databases[name] ?? config.databases['*'];
}

export function poolSettings(config: Config, dbName: string, userName: string): PoolSettings {
  const db = findDatabase(config, dbName);
  const user = config.users[userName];
  const out = { ...POOL_DEFAULTS } as Record<keyof PoolSettings, unknown>;
  for (const layer of [config, db, user]) {
    if (!layer) continue;
    for (const k of POOL_KEYS) {
      const v = (layer as Partial<PoolSettings>)[k];
      if (v !== undefined) out[k] = v;
    }
  }
  return out as unknown as PoolSettings;
}
