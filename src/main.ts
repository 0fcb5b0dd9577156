// Composition root: builds the proxy from a Config (listener, sessions, pools, cancel routing, secrets) and
// offers reload and shutdown. The only place that wires modules together.
import { readFileSync } from 'node:fs';
import { parseUserlist, type Secret } from './auth/verifiers.ts';
import { CancelRegistry } from './cancel/registry.ts';
import type { ProxyContext } from './client/context.ts';
import { ClientSession, newMockKey } from './client/session.ts';
import type { Config } from './config/load.ts';
import type { Logger } from './log/logger.ts';
import { dialServer, sendCancelRequest } from './net/dial.ts';
import { type Listener, listen } from './net/listener.ts';
import { type ListenTls, loadListenContext } from './net/tls.ts';
import { PoolRegistry } from './pool/pool.ts';
import { PgError } from './protocol/errors.ts';
import { cancelTarget, ServerConnection } from './server/connection.ts';

export interface ProxyHandle {
  readonly host: string;
  readonly port: number;
  readonly pools: PoolRegistry<ServerConnection>;
  /** Applies a new config to new connections; existing clients keep going. Throws (and keeps the old) if invalid. */
  reload(next: Config): void;
  /** Stops accepting, waits for clients up to shutdown_timeout, then closes everything. */
  shutdown(opts?: { graceful?: boolean }): Promise<void>;
  clientCount(): number;
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

export async function startProxy(initial: Config, log: Logger): Promise<ProxyHandle> {
  let config = initial;
  let secrets = loadSecrets(config);
  let tlsContext: ListenTls | undefined = config.listen.tls
    ? loadListenContext(config.listen.tls)
    : undefined;
  const sessions = new Set<ClientSession>();
  const cancels = new CancelRegistry();
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

  const ctx: ProxyContext = {
    config: () => config,
    log,
    secretFor(user) {
      const s = secrets.get(user);
      if (s) return s;
      const pw = config.users[user]?.password;
      return pw === undefined ? undefined : { kind: 'plain', password: pw };
    },
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
    pins: new Map(),
    mockKey: newMockKey(),
    clientCount: () => sessions.size,
    draining: () => draining,
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
      const s = new ClientSession(ctx, client, (done) => sessions.delete(done));
      sessions.add(s);
      log.debug(
        { event: 'connect', session: s.id, client: client.remoteAddress, tls: client.tls },
        'client connected',
      );
      void s.start();
    },
    onCancel(pid, secret) {
      if (!cancels.cancel(pid, secret))
        log.debug({ event: 'cancel_unknown' }, 'cancel request for an unknown key ignored');
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

  return {
    host: listener.host,
    port: listener.port,
    pools,
    clientCount: () => sessions.size,
    reload(next) {
      const nextSecrets = loadSecrets(next);
      const nextTls = next.listen.tls ? loadListenContext(next.listen.tls) : undefined;
      config = next;
      secrets = nextSecrets;
      tlsContext = nextTls;
      log.info({ event: 'reload', source: next.source }, 'configuration reloaded');
    },
    async shutdown(opts = {}) {
      draining = true;
      await listener.close().catch(() => undefined);
      if (opts.graceful !== false) {
        const deadline = Date.now() + config.shutdown_timeout;
        while (sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      }
      for (const s of [...sessions]) s.fail(PgError.shuttingDown());
      pools.shutdown();
      for (const p of pools.all()) p.closeIdle('shutdown');
      log.info({ event: 'stopped' }, 'gprxy stopped');
    },
  };
}
