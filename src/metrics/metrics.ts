// Prometheus metrics on a per-proxy registry (several proxies in one process stay apart). Gauges and totals are
// read from pool/session state in collect(); histograms and login counters come from events.ts subscriptions, so
// the core publishes them only while this module listens.
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type {
  CancelEvent,
  ClientLoginEvent,
  ClientLoginFailedEvent,
  ProxyEvents,
  ServerLeaseEvent,
  ServerWaitEvent,
} from '../events.ts';

/** What metrics read at scrape time (structural: main.ts adapts pools and sessions). */
export interface MetricsSource {
  pools(): readonly {
    database: string;
    user: string;
    pool_mode: string;
    sv_active: number;
    sv_idle: number;
    sv_login: number;
    cl_waiting: number;
    maxwait_ms: number;
    leases: number;
    servers_opened: number;
    servers_closed: number;
  }[];
  clients(): readonly { database: string; user: string; state: string }[];
  /** Pins by reason since start. */
  pins(): ReadonlyMap<string, number>;
  /** Audit queue depth and records dropped (on_overflow: drop), when audit is on. */
  audit(): { depth: number; dropped: number } | undefined;
}

export interface ProxyMetrics {
  readonly registry: Registry;
  /** The exposition text and its content type. */
  scrape(): Promise<{ contentType: string; body: string }>;
  close(): void;
}

const SECONDS_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

export function createMetrics(source: MetricsSource, events: ProxyEvents): ProxyMetrics {
  const registry = new Registry();
  const registers = [registry];
  collectDefaultMetrics({ register: registry, prefix: 'gprxy_' });

  new Gauge({
    name: 'gprxy_clients',
    help: 'Client connections by database, user and state (login, waiting, active, idle)',
    labelNames: ['database', 'user', 'state'] as const,
    registers,
    collect() {
      this.reset();
      for (const c of source.clients()) this.inc({ database: c.database, user: c.user, state: c.state });
    },
  });
  new Gauge({
    name: 'gprxy_servers',
    help: 'Server connections by pool and state (active: lent to a client, idle, login: being opened)',
    labelNames: ['database', 'user', 'state'] as const,
    registers,
    collect() {
      this.reset();
      for (const p of source.pools()) {
        const l = { database: p.database, user: p.user };
        this.set({ ...l, state: 'active' }, p.sv_active);
        this.set({ ...l, state: 'idle' }, p.sv_idle);
        this.set({ ...l, state: 'login' }, p.sv_login);
      }
    },
  });
  new Gauge({
    name: 'gprxy_pool_waiting_clients',
    help: 'Clients queued for a server, per pool',
    labelNames: ['database', 'user'] as const,
    registers,
    collect() {
      this.reset();
      for (const p of source.pools()) this.set({ database: p.database, user: p.user }, p.cl_waiting);
    },
  });
  new Gauge({
    name: 'gprxy_pool_maxwait_seconds',
    help: 'How long the oldest queued client of the pool has waited',
    labelNames: ['database', 'user'] as const,
    registers,
    collect() {
      this.reset();
      for (const p of source.pools()) this.set({ database: p.database, user: p.user }, p.maxwait_ms / 1000);
    },
  });
  const totals = (
    name: string,
    help: string,
    pick: (p: ReturnType<MetricsSource['pools']>[number]) => number,
  ) =>
    new Counter({
      name,
      help,
      labelNames: ['database', 'user'] as const,
      registers,
      collect() {
        this.reset();
        for (const p of source.pools()) this.inc({ database: p.database, user: p.user }, pick(p));
      },
    });
  totals(
    'gprxy_server_assignments_total',
    'Servers lent to clients (one per transaction in transaction mode)',
    (p) => p.leases,
  );
  totals('gprxy_servers_opened_total', 'Server connections opened', (p) => p.servers_opened);
  totals('gprxy_servers_closed_total', 'Server connections closed', (p) => p.servers_closed);
  new Counter({
    name: 'gprxy_pins_total',
    help: 'Transaction-mode clients pinned to their server, by reason',
    labelNames: ['reason'] as const,
    registers,
    collect() {
      this.reset();
      for (const [reason, n] of source.pins()) this.inc({ reason }, n);
    },
  });

  new Gauge({
    name: 'gprxy_audit_queue_depth',
    help: 'Audit records waiting for their sink (the fullest sink queue)',
    registers,
    collect() {
      this.set(source.audit()?.depth ?? 0);
    },
  });
  new Counter({
    name: 'gprxy_audit_dropped_total',
    help: 'Audit records dropped because a sink queue was full (audit.on_overflow: drop)',
    registers,
    collect() {
      this.reset();
      this.inc(source.audit()?.dropped ?? 0);
    },
  });

  const logins = new Counter({
    name: 'gprxy_logins_total',
    help: 'Client logins by method and result (failed logins carry method "unknown")',
    labelNames: ['method', 'result'] as const,
    registers,
  });
  const loginFailures = new Counter({
    name: 'gprxy_login_failures_total',
    help: 'Failed client logins by SQLSTATE',
    labelNames: ['sqlstate'] as const,
    registers,
  });
  const cancels = new Counter({
    name: 'gprxy_cancel_requests_total',
    help: 'CancelRequests received, by result (forwarded to a session, or unknown key)',
    labelNames: ['result'] as const,
    registers,
  });
  const wait = new Histogram({
    name: 'gprxy_server_wait_seconds',
    help: 'Time a client waited for a server (0 when one was idle)',
    labelNames: ['database', 'user'] as const,
    buckets: SECONDS_BUCKETS,
    registers,
  });
  const lease = new Histogram({
    name: 'gprxy_server_lease_seconds',
    help: 'How long a client held a server: the transaction duration in transaction mode, the session in session mode',
    labelNames: ['database', 'user'] as const,
    buckets: SECONDS_BUCKETS,
    registers,
  });

  // Label children are bound once per pool, not per event.
  const bound = <T>(h: Histogram<'database' | 'user'>) => {
    const cache = new Map<string, T>();
    return (db: string, user: string): T => {
      const k = `${db}\u0000${user}`;
      let c = cache.get(k);
      if (!c) {
        c = h.labels({ database: db, user }) as unknown as T;
        cache.set(k, c);
      }
      return c;
    };
  };
  type Observer = { observe(v: number): void };
  const waitOf = bound<Observer>(wait);
  const leaseOf = bound<Observer>(lease);

  const onLogin = (e: ClientLoginEvent) => logins.inc({ method: e.method, result: 'ok' });
  const onLoginFailed = (e: ClientLoginFailedEvent) => {
    logins.inc({ method: 'unknown', result: 'failed' });
    loginFailures.inc({ sqlstate: e.sqlstate });
  };
  const onCancel = (e: CancelEvent) => cancels.inc({ result: e.matched ? 'forwarded' : 'unknown' });
  const onWait = (e: ServerWaitEvent) => waitOf(e.database, e.user).observe(e.waitMs / 1000);
  const onLease = (e: ServerLeaseEvent) => leaseOf(e.database, e.user).observe(e.leaseMs / 1000);
  events.clientLogin.subscribe(onLogin);
  events.clientLoginFailed.subscribe(onLoginFailed);
  events.cancel.subscribe(onCancel);
  events.serverWait.subscribe(onWait);
  events.serverLease.subscribe(onLease);

  return {
    registry,
    async scrape() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
    close() {
      events.clientLogin.unsubscribe(onLogin);
      events.clientLoginFailed.unsubscribe(onLoginFailed);
      events.cancel.unsubscribe(onCancel);
      events.serverWait.unsubscribe(onWait);
      events.serverLease.unsubscribe(onLease);
      registry.clear();
    },
  };
}
