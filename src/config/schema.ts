// Configuration schema (zod): YAML shape -> validated, frozen Config with durations in milliseconds.
import { z } from 'zod';

/** Durations: a number is seconds (pgbouncer's unit); strings take ms, s, m, h suffixes. */
const duration = z.union([z.number().nonnegative(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return Math.round(v * 1000);
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(v);
  if (!m) {
    ctx.addIssue({ code: 'custom', message: `invalid duration "${v}" (use e.g. 500ms, 30s, 5m)` });
    return z.NEVER;
  }
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000;
  return Math.round(n * factor);
});

const sslmode = z.enum(['disable', 'prefer', 'require', 'verify-ca', 'verify-full']);
const poolMode = z.enum(['session', 'transaction', 'statement']);

/** Pool settings with pgbouncer's names; settable globally, per database and per user. */
const poolSettingsShape = {
  pool_mode: poolMode.optional(),
  default_pool_size: z.number().int().positive().optional(),
  min_pool_size: z.number().int().nonnegative().optional(),
  reserve_pool_size: z.number().int().nonnegative().optional(),
  reserve_pool_timeout: duration.optional(),
  max_db_connections: z.number().int().nonnegative().optional(),
  max_user_connections: z.number().int().nonnegative().optional(),
  server_reset_query: z.string().optional(),
  query_wait_timeout: duration.optional(),
  server_idle_timeout: duration.optional(),
  server_lifetime: duration.optional(),
  server_connect_timeout: duration.optional(),
  server_login_retry: duration.optional(),
  /** Transaction mode: what untrackable session state does to a client (pin it to its server, or refuse). */
  pin_policy: z.enum(['pin', 'refuse']).optional(),
  max_prepared_statements: z.number().int().min(1).optional(),
};

const tlsFiles = z.strictObject({
  cert: z.string(),
  key: z.string(),
  ca: z.string().optional(),
  ciphers: z.string().optional(),
  min_version: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
});

const serverTls = z.strictObject({
  sslmode: sslmode.default('prefer'),
  ca: z.string().optional(),
  cert: z.string().optional(),
  key: z.string().optional(),
});

const database = z.strictObject({
  host: z.string().default('127.0.0.1'),
  port: z.number().int().min(1).max(65535).default(5432),
  dbname: z.string().optional(),
  user: z.string().optional(),
  password: z.string().optional(),
  server_tls: serverTls.optional(),
  ...poolSettingsShape,
});

const user = z.strictObject({
  password: z.string().optional(),
  ...poolSettingsShape,
});

/** `host:port` for the admin HTTP listener (port 0 picks a free one). */
const hostPort = z.string().transform((v, ctx) => {
  const m = /^(.*):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[2]) : Number.NaN;
  if (!m || port > 65535) {
    ctx.addIssue({ code: 'custom', message: `invalid address "${v}" (use host:port, e.g. 127.0.0.1:9930)` });
    return z.NEVER;
  }
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  return { host: host || '127.0.0.1', port };
});

const admin = z.strictObject({
  /** Users allowed every admin console command (pgbouncer's admin_users). */
  users: z.array(z.string()).default([]),
  /** Users allowed the admin console's SHOW commands only (pgbouncer's stats_users). */
  stats_users: z.array(z.string()).default([]),
  /** Admin HTTP listener (/metrics, /healthz, /readyz, /api/*); off when unset. */
  http: hostPort.optional(),
  /** Bearer token required by /api/* when set (use `${ENV}` to keep it out of the file). */
  api_token: z.string().min(1).optional(),
});

const ssoProvider = z.strictObject({
  name: z.string(),
  /** Issuer URL exactly as in its discovery document (`iss`). */
  issuer: z.string().url(),
  /** Accepted audiences (Azure v2: the application's client id GUID; Auth0: the API identifier). */
  audience: z.union([z.string(), z.array(z.string()).min(1)]),
  algorithms: z
    .array(z.enum(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']))
    .default(['RS256', 'PS256', 'ES256']),
  identity_claim: z.string().default('email'),
  groups_claim: z.string().default('groups'),
  roles_claim: z.string().default('roles'),
  clock_skew: duration.prefault(60),
  /** With identity_claim email: require email_verified=true (or a pinned Azure tenant), Azure's nOAuth lesson. */
  require_verified_email: z.boolean().default(true),
  /** Azure AD: only tokens of this tenant (`tid`). */
  tenant: z.string().optional(),
  /** Skip discovery and use this JWKS URL. */
  jwks_uri: z.string().url().optional(),
});

const ssoRule = z.strictObject({
  match: z.strictObject({
    group: z.string().optional(),
    role: z.string().optional(),
    email: z.string().optional(),
  }),
  /** The database login (service_account), the role granted to the person's own login (per_user), or SET ROLE to. */
  role: z.string(),
  databases: z.array(z.string()).default(['*']),
});

export const configSchema = z.strictObject({
  listen: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: z.number().int().min(0).max(65535).default(6432),
      tls: tlsFiles.optional(),
      require_tls: z.boolean().default(false),
      /** With require_tls, let loopback clients in without TLS. */
      allow_plain_loopback: z.boolean().default(true),
    })
    .prefault({}),
  log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  max_client_conn: z.number().int().positive().default(1000),
  client_login_timeout: duration.prefault(60),
  shutdown_timeout: duration.prefault(30),
  /** Largest message the proxy buffers to decode (Query, Parse, ...). */
  max_packet_size: z
    .number()
    .int()
    .min(1024)
    .default(2 ** 30 - 1),
  tcp_keepalive: z.boolean().default(true),
  auth: z
    .strictObject({
      /** pgbouncer's auth_type: the exchange offered to clients. */
      type: z.enum(['scram-sha-256', 'md5', 'plain', 'trust']).default('scram-sha-256'),
      file: z.string().optional(),
      /** Cleartext password over plain TCP from loopback (never from elsewhere). */
      allow_cleartext_loopback: z.boolean().default(false),
      /** pg_hba.conf-style rules: first match decides the method; no match refuses. */
      hba: z.string().optional(),
      /** auth_query: read secrets from PostgreSQL for users not in the auth file. */
      query: z.string().optional(),
      /** Login the auth query runs as (password from users.<name>.password or the auth file). */
      user: z.string().optional(),
      /** Database entry whose server runs the auth query; default: the client's database. */
      database: z.string().optional(),
      cache_ttl: duration.prefault(30),
      negative_cache_ttl: duration.prefault(5),
      /** cert method: certificate common name -> database user, per map name (pg_ident.conf's role). */
      user_maps: z.record(z.string(), z.record(z.string(), z.string())).default({}),
      limits: z
        .strictObject({
          failures_per_address: z.number().int().min(1).default(10),
          failures_per_user: z.number().int().min(1).default(50),
          refill_per_second: z.number().positive().default(1),
          base_delay: duration.prefault('100ms'),
          max_delay: duration.prefault(5),
          startups_per_second: z.number().int().nonnegative().default(0),
        })
        .prefault({}),
    })
    .prefault({}),
  server_tls: serverTls.prefault({}),
  admin: admin.prefault({}),
  sso: z
    .strictObject({
      providers: z.array(ssoProvider).default([]),
      mapping: z.array(ssoRule).default([]),
      /**
       * service_account: each mapped role is its own LOGIN. per_user: gprxy provisions a LOGIN role per person
       * (random password kept encrypted in state_file) and grants it the mapped role. set_role: one service login
       * per database, and SET ROLE to the mapped role for the person (attribution, not confinement).
       */
      backend: z.enum(['service_account', 'per_user', 'set_role']).default('service_account'),
      /** set_role: the login whose servers all SSO sessions share (password in users.<name>.password). */
      service_user: z.string().optional(),
      /**
       * per_user: the login that creates, grants and disables the per-person roles (CREATEROLE, and ADMIN OPTION
       * on the mapped roles from PostgreSQL 16 on; password in users.<user>.password). `database` is a database
       * entry: the per-person roles live on its server.
       */
      provisioner: z.strictObject({ user: z.string().min(1), database: z.string().min(1) }).optional(),
      /** per_user: where gprxy keeps the roles it made, their encrypted passwords and grants (written 0600). */
      state_file: z.string().min(1).optional(),
      /** Startup user names that stand for "whoever the token says" besides the identity itself. */
      aliases: z.array(z.string()).default(['sso']),
      token_expiry: z.enum(['disconnect', 'login_only']).default('disconnect'),
      expiry_grace: duration.prefault(0),
      /** Tokens over plain TCP from loopback clients (gprxy dev); otherwise TLS only. */
      allow_loopback_plain: z.boolean().default(false),
      /** Scope psql 18 asks for in its own device flow (OAUTHBEARER discovery). */
      scope: z.string().default('openid email'),
      /** A token with an unknown key id refetches the JWKS at most this often. */
      jwks_refresh_cooldown: duration.prefault(30),
    })
    .prefault({}),
  audit: z
    .strictObject({
      sinks: z
        .array(
          z.discriminatedUnion('type', [
            z.strictObject({
              type: z.literal('file'),
              path: z.string(),
              max_size: z
                .number()
                .int()
                .positive()
                .default(100 * 1024 * 1024),
              keep: z.number().int().min(1).default(5),
            }),
            z.strictObject({ type: z.literal('stdout') }),
            z.strictObject({
              type: z.literal('postgres'),
              /** A database entry; the sink logs in as `user` (password from users.<name>.password). */
              database: z.string(),
              user: z.string(),
              table: z.string().default('gprxy_audit'),
            }),
          ]),
        )
        .default([]),
      max_statement_length: z.number().int().positive().default(4096),
      log_parameters: z.boolean().default(false),
      max_parameter_length: z.number().int().positive().default(256),
      queue_size: z.number().int().positive().default(10_000),
      on_overflow: z.enum(['block', 'drop']).default('drop'),
    })
    .prefault({}),
  databases: z.record(z.string(), database).default({}),
  users: z.record(z.string(), user).default({}),
  ...poolSettingsShape,
});

export type RawConfig = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;
export type DatabaseConfig = z.output<typeof database>;
export type UserConfig = z.output<typeof user>;
export type ServerTlsConfig = z.output<typeof serverTls>;
export type ListenTlsConfig = z.output<typeof tlsFiles>;
export type PoolMode = z.output<typeof poolMode>;
export type SsoProvider = z.output<typeof ssoProvider>;
export type SsoRule = z.output<typeof ssoRule>;
export type AdminConfig = z.output<typeof admin>;

/** Effective pool settings for one (database, user): user overrides database overrides global overrides defaults. */
export interface PoolSettings {
  pool_mode: PoolMode;
  default_pool_size: number;
  min_pool_size: number;
  reserve_pool_size: number;
  reserve_pool_timeout: number;
  max_db_connections: number;
  max_user_connections: number;
  server_reset_query: string;
  query_wait_timeout: number;
  server_idle_timeout: number;
  server_lifetime: number;
  server_connect_timeout: number;
  server_login_retry: number;
  pin_policy: 'pin' | 'refuse';
  max_prepared_statements: number;
}

export const POOL_DEFAULTS: PoolSettings = {
  pool_mode: 'session',
  default_pool_size: 20,
  min_pool_size: 0,
  reserve_pool_size: 0,
  reserve_pool_timeout: 5000,
  max_db_connections: 0,
  max_user_connections: 0,
  server_reset_query: 'DISCARD ALL',
  query_wait_timeout: 120_000,
  server_idle_timeout: 600_000,
  server_lifetime: 3_600_000,
  server_connect_timeout: 15_000,
  server_login_retry: 15_000,
  pin_policy: 'pin',
  max_prepared_statements: 200,
};

export const POOL_KEYS = Object.keys(POOL_DEFAULTS) as (keyof PoolSettings)[];
