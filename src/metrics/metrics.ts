// Prometheus metrics on a per-proxy registry (several proxies in one process stay apart). Gauges, totals and the
// latency histograms are read from pool/session state at scrape time (pools keep bucket counts, so the hot path
// never touches prom-client); login and cancel counters come from events.ts subscriptions, so the core publishes
// those only while this module listens.
import { Counter, collectDefaultMetrics, Gauge, type MetricValueWithName, Registry } from 'prom-client';
import type { CancelEvent, ClientLoginEvent, ClientLoginFailedEvent, ProxyEvents } from '../events.ts';

/** A histogram a pool keeps itself: bucket counts (not cumulative; the last slot is +Inf), sum in ms, count. */
export interface HistogramData {
  readonly bounds: readonly number[];
  readonly counts: ArrayLike<number>;
  readonly sumMs: number;
  readonly count: number;
}

type PoolHistogram = 'wait' | 'query' | 'xact';

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
    xacts: number;
    queries: number;
    received: number;
    sent: number;
    prepared_hits: number;
    prepared_misses: number;
    servers_opened: number;
    servers_closed: number;
    wait: HistogramData;
    query: HistogramData;
    xact: HistogramData;
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

export function createMetrics(source: MetricsSource, events: ProxyEvents): ProxyMetrics {
  const registry = new Registry();
  const registers = [registry];
  // One pool snapshot per scrape: every pool metric reads the same rows, and the sessions behind them are walked
  // once instead of once per metric. Outside scrape() (the registry read directly), each read is fresh.
  type PoolRows = ReturnType<MetricsSource['pools']>;
  let scraping = false;
  let snapshot: PoolRows | undefined;
  const pools = (): PoolRows => {
    if (!scraping) return source.pools();
    snapshot ??= source.pools();
    return snapshot;
  };
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
      for (const p of pools()) {
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
      for (const p of pools()) this.set({ database: p.database, user: p.user }, p.cl_waiting);
    },
  });
  new Gauge({
    name: 'gprxy_pool_maxwait_seconds',
    help: 'How long the oldest queued client of the pool has waited',
    labelNames: ['database', 'user'] as const,
    registers,
    collect() {
      this.reset();
      for (const p of pools()) this.set({ database: p.database, user: p.user }, p.maxwait_ms / 1000);
    },
  });
  const totals = (name: string, help: string, pick: (p: PoolRows[number]) => number) =>
    new Counter({
      name,
      help,
      labelNames: ['database', 'user'] as const,
      registers,
      collect() {
        this.reset();
        for (const p of pools()) this.inc({ database: p.database, user: p.user }, pick(p));
      },
    });
  totals(
    'gprxy_server_assignments_total',
    'Servers lent to clients (one per transaction in transaction mode)',
    (p) => p.leases,
  );
  totals('gprxy_servers_opened_total', 'Server connections opened', (p) => p.servers_opened);
  totals('gprxy_servers_closed_total', 'Server connections closed', (p) => p.servers_closed);
  totals(
    'gprxy_transactions_total',
    'Transactions (autocommit statements included) ended by a ReadyForQuery "I"',
    (p) => p.xacts,
  );
  totals(
    'gprxy_queries_total',
    'Requests answered by a ReadyForQuery (a simple Query, or extended messages up to their Sync)',
    (p) => p.queries,
  );
  totals('gprxy_client_bytes_received_total', 'Bytes relayed from clients to servers', (p) => p.received);
  totals('gprxy_client_bytes_sent_total', 'Bytes relayed from servers to clients', (p) => p.sent);
  new Counter({
    name: 'gprxy_prepared_statements_total',
    help: 'Uses of named prepared statements in transaction mode: hit (the server had it) or miss (prepared first)',
    labelNames: ['database', 'user', 'result'] as const,
    registers,
    collect() {
      this.reset();
      for (const p of pools()) {
        this.inc({ database: p.database, user: p.user, result: 'hit' }, p.prepared_hits);
        this.inc({ database: p.database, user: p.user, result: 'miss' }, p.prepared_misses);
      }
    },
  });
  poolHistogram(
    registry,
    pools,
    'gprxy_server_wait_seconds',
    'Time a client waited for a server (0 when one was idle)',
    'wait',
  );
  poolHistogram(
    registry,
    pools,
    'gprxy_query_duration_seconds',
    'Time from a request to its ReadyForQuery, while the client holds a server',
    'query',
  );
  poolHistogram(
    registry,
    pools,
    'gprxy_transaction_duration_seconds',
    'Time from the first request after idle to ReadyForQuery "I" (autocommit statements included)',
    'xact',
  );
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
  const onLogin = (e: ClientLoginEvent) => logins.inc({ method: e.method, result: 'ok' });
  const onLoginFailed = (e: ClientLoginFailedEvent) => {
    logins.inc({ method: 'unknown', result: 'failed' });
    loginFailures.inc({ sqlstate: e.sqlstate });
  };
  const onCancel = (e: CancelEvent) => cancels.inc({ result: e.matched ? 'forwarded' : 'unknown' });
  events.clientLogin.subscribe(onLogin);
  events.clientLoginFailed.subscribe(onLoginFailed);
  events.cancel.subscribe(onCancel);

  return {
    registry,
    async scrape() {
      scraping = true;
      snapshot = undefined;
      try {
        return { contentType: registry.contentType, body: await registry.metrics() };
      } finally {
        scraping = false;
        snapshot = undefined;
      }
    },
    close() {
      events.clientLogin.unsubscribe(onLogin);
      events.clientLoginFailed.unsubscribe(onLoginFailed);
      events.cancel.unsubscribe(onCancel);
      registry.clear();
    },
  };
}

/** A histogram rendered at scrape time from the pools' own bucket counts (per database and user). */
function poolHistogram(
  registry: Registry,
  pools: MetricsSource['pools'],
  name: string,
  help: string,
  pick: PoolHistogram,
): void {
  registry.registerMetric({
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    reset() {},
    get() {
      const values: MetricValueWithName<string>[] = [];
      for (const p of pools()) {
        const h = p[pick];
        const labels = { database: p.database, user: p.user };
        let cumulative = 0;
        for (let i = 0; i < h.bounds.length; i++) {
          cumulative += h.counts[i] ?? 0;
          values.push({
            metricName: `${name}_bucket`,
            labels: { ...labels, le: h.bounds[i]! },
            value: cumulative,
          });
        }
        cumulative += h.counts[h.bounds.length] ?? 0;
        values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: cumulative });
        values.push({ metricName: `${name}_sum`, labels, value: h.sumMs / 1000 });
        values.push({ metricName: `${name}_count`, labels, value: h.count });
      }
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
  } as unknown as Parameters<Registry['registerMetric']>[0]);
}
