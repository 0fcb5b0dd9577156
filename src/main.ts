// Composition root: builds the proxy from a Config (listener, sessions, pools, cancel routing, secrets) and
// offers reload and shutdown. The only place that wires modules together.
import { readFileSync } from 'node:fs';
import { type Audit, startAudit } from './audit/audit.ts';
import { JsonLinesSink, PostgresSink } from './audit/sinks.ts';
import { type HbaRule, parseHba } from './auth/hba.ts';
import { LoginLimiter, StartupRate } from './auth/limits.ts';
import { parseUserlist, type Secret } from './auth/verifiers.ts';
import { CancelRegistry } from './cancel/registry.ts';
import { AuthQuery } from './client/auth-query.ts';
import type { ProxyContext } from './client/context.ts';
import { PerUserRoles } from './client/per-user.ts';
import { backendCredential, ClientSession, newMockKey } from './client/session.ts';
import { type Config, findDatabase, loadConfigFile } from './config/load.ts';
import { createEvents } from './events.ts';
import type { Logger } from './log/logger.ts';
import { dialServer, sendCancelRequest } from './net/dial.ts';
import { type Listener, listen } from './net/listener.ts';
import { createKeyResolvers } from './net/oidc-keys.ts';
import { type ListenTls, loadListenContext } from './net/tls.ts';
import { createOperations } from './operations.ts';
import { PoolRegistry } from './pool/pool.ts';
import { encodeError } from './protocol/backend.ts';
import { PgError } from './protocol/errors.ts';
import { cancelTarget, ServerConnection, serverTarget } from './server/connection.ts';

export interface ProxyHandle {
  readonly host: string;
  readonly port: number;
  readonly pools: PoolRegistry<ServerConnection>;
  /** Applies a new config to new connections; existing clients keep going. Throws (and keeps the old) if invalid. */
  reload(next: Config): void;
  /** Stops accepting, waits for clients up to shutdown_timeout, then closes everything. */
  shutdown(opts?: { graceful?: boolean }): Promise<void>;
  clientCount(): number;
  /** The admin HTTP port when admin.http is set. */
  readonly httpPort: number | undefined;
  /** Settles once shutdown has finished (SHUTDOWN from the admin console, a signal, or shutdown()). */
  readonly stopped: Promise<void>;
}

export interface ProxyOptions {
  /** What the admin console's RELOAD applies; defaults to re-reading the config file the proxy started from. */
  loadConfig?: () => Config;
}

function loadSecrets(cfg: Config): Map<string, Secret> {
  const secrets = new Map<string, Secret>();
  if (cfg.auth.file) {
    let text: string;
    try {
      text = readFileSync(cfg.auth.file, 'utf8');
    } catch (e) {
      throw new Error(
        `cannot read auth.file ${cfg.auth.file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
      );
    }
    for (const [u, s] of parseUserlist(text)) secrets.set(u, s);
  }
  return secrets;
}

function loadHba(cfg: Config): HbaRule[] | undefined {
  if (!cfg.auth.hba) return undefined;
  let text: string;
  try {
    text = readFileSync(cfg.auth.hba, 'utf8');
  } catch (e) {
    throw new Error(`cannot read auth.hba ${cfg.auth.hba}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  return parseHba(text);
}

function makeLimiter(cfg: Config): LoginLimiter {
  const l = cfg.auth.limits;
  return new LoginLimiter({
    perAddress: { burst: l.failures_per_address, refillPerSecond: l.refill_per_second },
    perUser: { burst: l.failures_per_user, refillPerSecond: l.refill_per_second },
    baseDelayMs: l.base_delay,
    maxDelayMs: l.max_delay,
  });
}

export async function startProxy(
  initial: Config,
  log: Logger,
  opts: ProxyOptions = {},
): Promise<ProxyHandle> {
  let config = initial;
  let secrets = loadSecrets(config);
  let hba = loadHba(config);
  const checkedServiceLogins = new Set<string>();
  let keyResolvers = createKeyResolvers({ cooldownMs: config.sso.jwks_refresh_cooldown });
  let limiter = makeLimiter(config);
  let startups = new StartupRate(config.auth.limits.startups_per_second);
  /** auth_query per database entry, made on first use; dropped on reload. */
  let authQueries = new Map<string, AuthQuery>();
  let tlsContext: ListenTls | undefined = config.listen.tls
    ? loadListenContext(config.listen.tls)
    : undefined;
  const sessions = new Set<ClientSession>();
  const cancels = new CancelRegistry();
  const events = createEvents();
  // The audit trail subscribes to the events; its PostgreSQL sink logs in through the same dialer as pools.
  const audit: Audit | undefined = config.audit.sinks.length
    ? startAudit(
        events,
        config.audit.sinks.map((s) => {
          if (s.type === 'stdout') return new JsonLinesSink(undefined);
          if (s.type === 'file') return new JsonLinesSink(s.path, s.max_size, s.keep);
          return new PostgresSink(() => {
            const c = config;
            const db = findDatabase(c, s.database);
            if (!db) return Promise.reject(new Error(`audit database ${s.database} is not configured`));
            return ServerConnection.connect(
              serverTarget(c, s.database, db, s.user, backendCredential(ctx, s.user)),
              dialServer,
            );
          }, s.table);
        }),
        {
          maxStatementLength: config.audit.max_statement_length,
          logParameters: config.audit.log_parameters,
          maxParameterLength: config.audit.max_parameter_length,
          queueSize: config.audit.queue_size,
          onOverflow: config.audit.on_overflow,
        },
        (sink, err) =>
          log.warn(
            { event: 'audit_sink_failed', sink, reason: err.message },
            'audit sink failed; records kept',
          ),
      )
    : undefined;
  const pools = new PoolRegistry<ServerConnection>(Date.now, (key, err) =>
    log.warn(
      {
        event: 'server_login_failed',
        db: key.database,
        user: key.user,
        sqlstate: err.sqlState,
        reason: err.message,
      },
      'server login failed',
    ),
  );
  let draining = false;
  let listening = false;
  // ---- operations: admin console, admin HTTP, metrics (src/operations.ts) ----
  let handle: ProxyHandle | undefined;
  const pins = new Map<string, number>();
  const ops = createOperations({
    config: () => config,
    log,
    sessions,
    pools,
    events,
    pins,
    audit,
    listening: () => listening,
    reload() {
      if (opts.loadConfig) return handle?.reload(opts.loadConfig());
      if (config.source === '(inline)')
        throw new Error('RELOAD needs a config file (this proxy was started inline)');
      handle?.reload(loadConfigFile(config.source, process.env));
    },
    shutdown: () => void handle?.shutdown({ graceful: false }),
  });
  // ----

  const ctx: ProxyContext = {
    config: () => config,
    log,
    secretFor(user) {
      const s = secrets.get(user);
      if (s) return s;
      const pw = config.users[user]?.password;
      return pw === undefined ? undefined : { kind: 'plain', password: pw };
    },
    async lookupSecret(user, database) {
      const known = ctx.secretFor(user);
      if (known || !config.auth.query || !config.auth.user) return known;
      const dbName = config.auth.database ?? database;
      let q = authQueries.get(dbName);
      if (!q) {
        const db = findDatabase(config, dbName);
        if (!db) return undefined;
        const authUser = config.auth.user;
        const cfgAtStart = config;
        q = new AuthQuery(
          () =>
            ctx.connectServer(
              serverTarget(
                cfgAtStart,
                dbName,
                db,
                authUser,
                backendCredential(ctx, authUser),
                db.dbname ?? (dbName === '*' ? database : dbName),
              ),
            ),
          {
            sql: config.auth.query,
            ttlMs: config.auth.cache_ttl,
            negativeTtlMs: config.auth.negative_cache_ttl,
            onFailure: (reason) =>
              log.warn({ event: 'auth_query_failed', db: dbName, reason }, 'auth_query failed'),
          },
        );
        authQueries.set(dbName, q);
      }
      return q.lookup(user);
    },
    hba: () => hba,
    perUser: new PerUserRoles({ config: () => config, log, connect: (t) => ctx.connectServer(t) }),
    checkServiceLogin(database) {
      const user = config.sso.service_user;
      if (!user || checkedServiceLogins.has(database)) return;
      checkedServiceLogins.add(database);
      const db = findDatabase(config, database);
      if (!db) return;
      void ctx
        .connectServer(serverTarget(config, database, db, user, backendCredential(ctx, user)))
        .then(async (conn) => {
          const r = await conn.queryRows(
            'SELECT rolsuper::text, rolbypassrls::text, rolinherit::text FROM pg_roles WHERE rolname = current_user',
            [],
          );
          conn.close('service login check');
          const row = r instanceof Error ? undefined : r.rows[0];
          if (!row) return;
          const [sup, bypass, inherit] = row;
          if (sup === 'true' || bypass === 'true' || inherit === 'true') {
            log.warn(
              {
                event: 'sso_service_login_too_strong',
                db: database,
                user,
                superuser: sup === 'true',
                bypassrls: bypass === 'true',
                inherit: inherit === 'true',
              },
              'sso.service_user can do more than the mapped roles: make it NOINHERIT, not superuser, not BYPASSRLS',
            );
          }
        })
        .catch(() => undefined);
    },
    ...(audit ? { audit } : {}),
    keys: () => keyResolvers,
    limiter: () => limiter,
    pools,
    cancels,
    async connectServer(target) {
      const conn = await ServerConnection.connect(target, dialServer);
      log.info(
        {
          event: 'server_connect',
          server: conn.id,
          db: target.database,
          user: target.user,
          server_pid: conn.pid,
        },
        'server connected',
      );
      conn.onClosed((c) =>
        log.info(
          {
            event: 'server_close',
            server: c.id,
            db: target.database,
            user: target.user,
            reason: c.closeReason,
          },
          'server closed',
        ),
      );
      return conn;
    },
    cancelServer(server) {
      server.trackCancel(
        sendCancelRequest(cancelTarget(server), server.pid, server.secret).catch((e: Error) =>
          log.warn({ event: 'cancel_failed', reason: e.message }, 'cancel request failed'),
        ),
      );
    },
    learned: new Map(),
    pins,
    mockKey: newMockKey(),
    clientCount: () => sessions.size,
    draining: () => draining,
    events,
    admin: ops.console,
  };

  pools.startMaintenance(1000, (key) => {
    const db = config.databases[key.database] ?? config.databases['*'];
    return Boolean(db?.password || ctx.secretFor(key.user)?.kind === 'plain' || ctx.learned.has(key.user));
  });

  const listener: Listener = await listen(config.listen.host, config.listen.port, {
    tlsContext: () => tlsContext,
    keepalive: config.tcp_keepalive,
    loginTimeoutMs: () => config.client_login_timeout,
    onStartup(client) {
      if (!startups.allow()) {
        log.warn(
          { event: 'startup_throttled', client: client.remoteAddress },
          'startups_per_second exceeded',
        );
        client.socket.end(
          encodeError(
            PgError.tooManyConnections('too many connection attempts, try again later', 'GPRXY_STARTUP_RATE'),
          ),
        );
        return;
      }
      const s = new ClientSession(ctx, client, (done) => sessions.delete(done));
      sessions.add(s);
      log.debug(
        { event: 'connect', session: s.id, client: client.remoteAddress, tls: client.tls },
        'client connected',
      );
      void s.start();
    },
    onCancel(pid, secret) {
      const matched = cancels.cancel(pid, secret);
      if (events.cancel.hasSubscribers) events.cancel.publish({ matched });
      if (!matched) log.debug({ event: 'cancel_unknown' }, 'cancel request for an unknown key ignored');
    },
    onRejected(info) {
      log.info(
        { event: 'startup_rejected', client: info.remoteAddress, reason: info.reason, code: info.code },
        'connection rejected',
      );
    },
  });
  log.info(
    { event: 'listening', host: listener.host, port: listener.port, tls: Boolean(tlsContext) },
    'gprxy listening',
  );
  listening = true;
  void ctx.perUser.reconcile('start');
  const http = await ops.startHttp().catch(async (e: Error) => {
    await listener.close();
    throw e;
  });
  let stopping: Promise<void> | undefined;
  let markStopped: () => void = () => undefined;
  const stopped = new Promise<void>((r) => {
    markStopped = r;
  });

  handle = {
    host: listener.host,
    port: listener.port,
    pools,
    clientCount: () => sessions.size,
    httpPort: http?.port,
    stopped,
    reload(next) {
      const nextSecrets = loadSecrets(next);
      const nextTls = next.listen.tls ? loadListenContext(next.listen.tls) : undefined;
      const nextHba = loadHba(next);
      config = next;
      secrets = nextSecrets;
      tlsContext = nextTls;
      hba = nextHba;
      keyResolvers = createKeyResolvers({ cooldownMs: next.sso.jwks_refresh_cooldown });
      limiter = makeLimiter(next);
      startups = new StartupRate(next.auth.limits.startups_per_second);
      for (const q of authQueries.values()) q.close();
      authQueries = new Map();
      log.info({ event: 'reload', source: next.source }, 'configuration reloaded');
      void ctx.perUser.reconcile('reload');
    },
    shutdown(opts = {}) {
      stopping ??= stop(opts.graceful !== false).then(markStopped);
      return stopping;
    },
  };
  return handle;

  async function stop(graceful: boolean): Promise<void> {
    draining = true;
    listening = false;
    // Stops accepting now; the close itself completes only once every client connection has ended, which
    // cannot happen while we wait on it (a SHUTDOWN from the console, clients still connected): not awaited.
    void listener.close().catch(() => undefined);
    if (graceful) {
      const deadline = Date.now() + config.shutdown_timeout;
      while (sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    }
    for (const s of [...sessions]) s.fail(PgError.shuttingDown());
    for (const q of authQueries.values()) q.close();
    pools.shutdown();
    for (const p of pools.all()) p.closeIdle('shutdown');
    await ops.close();
    // Everything queued for the audit trail is written before we go.
    await audit?.close();
    log.info({ event: 'stopped' }, 'gprxy stopped');
  }
}
