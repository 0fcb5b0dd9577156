// Composition root, operations part (used by main.ts only): builds what the admin console, the admin HTTP port and
// /metrics see of the running proxy (rows from pools and sessions) and what they may do to it (pause, kill...).
import { AdminConsole } from './admin/console.ts';
import { httpRoutes } from './admin/http.ts';
import type { AdminControl, AdminView, ClientRow, ClientState, PoolRow, ServerRow } from './admin/view.ts';
import type { ClientSession } from './client/session.ts';
import { type Config, findDatabase } from './config/load.ts';
import type { ProxyEvents } from './events.ts';
import type { Logger } from './log/logger.ts';
import { createMetrics, type ProxyMetrics } from './metrics/metrics.ts';
import { type HttpListener, listenHttp, probeTcp } from './net/http.ts';
import type { Pool, PoolRegistry } from './pool/pool.ts';
import { PgError } from './protocol/errors.ts';
import type { ServerConnection } from './server/connection.ts';

export interface OperationsDeps {
  config(): Config;
  log: Logger;
  sessions: ReadonlySet<ClientSession>;
  pools: PoolRegistry<ServerConnection>;
  events: ProxyEvents;
  pins: ReadonlyMap<string, number>;
  /** The audit trail's queue, when configured. */
  audit?: { depth(): number; dropped(): number } | undefined;
  listening(): boolean;
  /** RELOAD: re-read the config file and apply it (throws and keeps the old on error). */
  reload(): void;
  /** SHUTDOWN from the console. */
  shutdown(): void;
}

export interface Operations {
  view: AdminView;
  control: AdminControl;
  console: AdminConsole;
  metrics: ProxyMetrics;
  /** Starts the admin HTTP listener when admin.http is set. */
  startHttp(): Promise<HttpListener | undefined>;
  close(): Promise<void>;
}

const ADMIN_SHUTDOWN = 'terminating connection due to administrator command';

function clientState(s: ClientSession): ClientState | undefined {
  switch (s.state) {
    case 'startup':
    case 'auth':
      return 'login';
    case 'attaching':
      return 'waiting';
    case 'active':
      return s.serverId === undefined ? 'idle' : 'active';
    default:
      return undefined;
  }
}

export function createOperations(d: OperationsDeps): Operations {
  /** The pool user a session's clients count against: a forced database user, else the client's own. */
  const backendUser = (s: ClientSession) => findDatabase(d.config(), s.database)?.user ?? s.user;
  const poolsOf = (db: string | undefined): Pool<ServerConnection>[] =>
    d.pools.all().filter((p) => db === undefined || p.key.database === db);

  /** One row per pool (SHOW POOLS/STATS, /api/pools, /metrics), with the pool it describes. */
  const poolRows = (): { pool: Pool<ServerConnection>; row: PoolRow }[] => {
    const linked = new Map<string, number>();
    for (const s of d.sessions) {
      const st = clientState(s);
      if (st !== 'active' && st !== 'idle') continue;
      const k = `${s.database}\u0000${backendUser(s)}`;
      linked.set(k, (linked.get(k) ?? 0) + 1);
    }
    return d.pools.all().map((p) => {
      const c = p.counts;
      const t = p.stats;
      const row: PoolRow = {
        database: p.key.database,
        user: p.key.user,
        pool_mode: p.settings.pool_mode,
        cl_active: linked.get(`${p.key.database}\u0000${p.key.user}`) ?? 0,
        cl_waiting: c.waiting,
        sv_active: c.active,
        sv_idle: c.idle,
        sv_login: c.connecting,
        maxwait_ms: p.maxWaitMs,
        paused: p.paused,
        leases: t.leases,
        wait_ms: t.waitMs,
        xacts: t.xacts,
        xact_ms: t.xactMs,
        queries: t.queries,
        query_ms: t.queryMs,
        received: t.received,
        sent: t.sent,
        client_parses: t.clientParses,
        server_parses: t.serverParses,
        binds: t.binds,
        prepared_hits: t.preparedHits,
        prepared_misses: t.preparedMisses,
        servers_opened: t.opened,
        servers_closed: t.closed,
      };
      return { pool: p, row };
    });
  };

  const view: AdminView = {
    config: d.config,
    pools() {
      return poolRows().map((r) => r.row);
    },
    clients() {
      const rows: ClientRow[] = [];
      for (const s of d.sessions) {
        const state = clientState(s);
        if (!state) continue;
        const peer = s.peer;
        rows.push({
          id: s.id,
          user: s.user,
          database: s.database,
          state,
          addr: peer.addr,
          port: peer.port,
          connect_time: s.connectedAt,
          tls: peer.tls,
          application_name: peer.applicationName,
          server_id: s.serverId,
        });
      }
      return rows;
    },
    servers() {
      const byServer = new Map<number, ClientSession>();
      for (const s of d.sessions) {
        const id = s.serverId;
        if (id !== undefined) byServer.set(id, s);
      }
      const rows: ServerRow[] = [];
      for (const p of d.pools.all()) {
        for (const { server, state, closeNeeded } of p.servers()) {
          const client = byServer.get(server.id);
          rows.push({
            id: server.id,
            user: server.target.user,
            database: p.key.database,
            state,
            addr: server.target.host,
            port: server.target.port,
            connect_time: server.createdAt,
            request_time: server.lastUsedAt,
            remote_pid: server.pid,
            close_needed: closeNeeded,
            client_id: client?.id,
            application_name: client?.peer.applicationName ?? '',
          });
        }
      }
      return rows;
    },
    pausedDatabases: () => d.pools.pausedDatabases(),
    async ready() {
      const cfg = d.config();
      const databases: Record<string, boolean> = {};
      await Promise.all(
        Object.entries(cfg.databases).map(async ([name, db]) => {
          // A server in the pool proves reachability; otherwise a TCP connect (no login, no credentials).
          const open = d.pools
            .all()
            .some((p) => p.key.database === name && p.counts.active + p.counts.idle > 0);
          databases[name] = open || (await probeTcp(db.host, db.port, 1000));
        }),
      );
      return { ready: d.listening() && Object.values(databases).every(Boolean), databases };
    },
  };

  const control: AdminControl = {
    async pause(db, signal) {
      d.pools.pause(db ?? '*');
      d.log.info({ event: 'admin_pause', db: db ?? '*' }, 'pause requested');
      // Servers in use finish their transaction (session mode: their client leaves) and come back.
      while (!signal.aborted && poolsOf(db).some((p) => p.counts.active + p.counts.connecting > 0)) {
        await new Promise((r) => setTimeout(r, 20));
      }
      for (const p of poolsOf(db)) p.closeIdle('pause');
    },
    resume(db) {
      d.pools.resume(db ?? '*');
      d.log.info({ event: 'admin_resume', db: db ?? '*' }, 'resumed');
    },
    reload: () => d.reload(),
    kill(db) {
      d.pools.pause(db);
      for (const s of [...d.sessions]) {
        if (s.database === db)
          s.fail(new PgError('FATAL', '57P01', ADMIN_SHUTDOWN, { code: 'GPRXY_ADMIN_KILL' }));
      }
      for (const p of poolsOf(db)) p.reconnect('kill');
      d.log.info({ event: 'admin_kill', db }, 'database killed');
    },
    killClient(id) {
      for (const s of d.sessions) {
        if (s.id !== id) continue;
        s.fail(new PgError('FATAL', '57P01', ADMIN_SHUTDOWN, { code: 'GPRXY_ADMIN_KILL_CLIENT' }));
        d.log.info({ event: 'admin_kill_client', session: id }, 'client killed');
        return true;
      }
      return false;
    },
    reconnect(db) {
      for (const p of poolsOf(db)) p.reconnect();
      d.log.info({ event: 'admin_reconnect', db: db ?? '*' }, 'servers will reconnect');
    },
    shutdown() {
      // After the reply to SHUTDOWN has been written.
      setImmediate(() => d.shutdown());
    },
  };

  const metrics = createMetrics(
    {
      pools: () =>
        poolRows().map(({ pool, row }) => ({
          ...row,
          wait: pool.stats.wait,
          query: pool.stats.query,
          xact: pool.stats.xact,
        })),
      clients: () => view.clients(),
      pins: () => d.pins,
      audit: () => (d.audit ? { depth: d.audit.depth(), dropped: d.audit.dropped() } : undefined),
    },
    d.events,
  );
  let http: HttpListener | undefined;

  return {
    view,
    control,
    console: new AdminConsole(d.config, view, control),
    metrics,
    async startHttp() {
      const addr = d.config().admin.http;
      if (!addr) return undefined;
      const routes = httpRoutes({
        view,
        metrics: () => metrics.scrape(),
        token: () => d.config().admin.api_token,
      });
      http = await listenHttp(addr.host, addr.port, routes, (e) =>
        d.log.warn({ event: 'admin_http_error', reason: e.message }, 'admin HTTP error'),
      );
      d.log.info({ event: 'admin_http_listening', host: http.host, port: http.port }, 'admin HTTP listening');
      return http;
    },
    async close() {
      await http?.close();
      metrics.close();
    },
  };
}
