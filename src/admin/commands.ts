// The admin console's commands as a table: name -> { admin only?, handler }. SHOW subjects are a table of their own.
// Column names and meanings follow pgbouncer's (doc/usage.md), so pgbouncer tooling keeps working; figures gprxy
// does not track are 0 (or empty), never invented.
import { POOL_DEFAULTS } from '../config/schema.ts';
import { PgError } from '../protocol/errors.ts';
import type { AdminControl, AdminView, ClientRow, PoolRow, ServerRow } from './view.ts';

export const GPRXY_VERSION = '0.1.0';

export interface ResultSet {
  columns: readonly string[];
  rows: (string | null)[][];
}

export interface CommandResult {
  result?: ResultSet;
  /** CommandComplete tag. */
  tag: string;
  notice?: string;
}

export interface CommandContext {
  view: AdminView;
  control: AdminControl;
  /** Aborted when the admin client goes away (a PAUSE stops waiting). */
  signal: AbortSignal;
}

interface Command {
  /** Needs admin_users (stats_users may only run SHOW). */
  admin: boolean;
  /** What the argument is: none, optional, required. */
  arg: 'none' | 'optional' | 'required';
  run(ctx: CommandContext, arg: string | undefined): CommandResult | Promise<CommandResult>;
}

export const POOLS_COLUMNS = [
  'database',
  'user',
  'cl_active',
  'cl_waiting',
  'cl_active_cancel_req',
  'cl_waiting_cancel_req',
  'sv_active',
  'sv_active_cancel',
  'sv_being_canceled',
  'sv_idle',
  'sv_used',
  'sv_tested',
  'sv_login',
  'maxwait',
  'maxwait_us',
  'pool_mode',
  'load_balance_hosts',
] as const;

const SOCKET_COLUMNS = [
  'type',
  'user',
  'database',
  'replication',
  'state',
  'addr',
  'port',
  'local_addr',
  'local_port',
  'connect_time',
  'request_time',
  'wait',
  'wait_us',
  'close_needed',
  'ptr',
  'link',
  'remote_pid',
  'tls',
  'application_name',
  'prepared_statements',
  'id',
] as const;

const STATS_COLUMNS = [
  'database',
  'total_server_assignment_count',
  'total_xact_count',
  'total_query_count',
  'total_received',
  'total_sent',
  'total_xact_time',
  'total_query_time',
  'total_wait_time',
  'total_client_parse_count',
  'total_server_parse_count',
  'total_bind_count',
  'avg_server_assignment_count',
  'avg_xact_count',
  'avg_query_count',
  'avg_recv',
  'avg_sent',
  'avg_xact_time',
  'avg_query_time',
  'avg_wait_time',
  'avg_client_parse_count',
  'avg_server_parse_count',
  'avg_bind_count',
] as const;

const DATABASES_COLUMNS = [
  'name',
  'host',
  'port',
  'database',
  'force_user',
  'pool_size',
  'min_pool_size',
  'reserve_pool_size',
  'server_lifetime',
  'pool_mode',
  'load_balance_hosts',
  'max_connections',
  'current_connections',
  'max_client_connections',
  'current_client_connections',
  'paused',
  'disabled',
] as const;

const USERS_COLUMNS = [
  'name',
  'pool_size',
  'reserve_pool_size',
  'pool_mode',
  'max_user_connections',
  'current_connections',
  'max_user_client_connections',
  'current_client_connections',
] as const;

const s = (v: number | string | boolean | undefined | null): string | null =>
  v === undefined || v === null ? null : typeof v === 'boolean' ? (v ? '1' : '0') : String(v);

/** pgbouncer's timestamp format: `2025-01-31 12:34:56 UTC`. */
function ts(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

function show(columns: readonly string[], rows: (string | null)[][]): CommandResult {
  return { result: { columns, rows }, tag: 'SHOW' };
}

function poolRow(p: PoolRow): (string | null)[] {
  const waitUs = Math.round(p.maxwait_ms * 1000);
  return [
    p.database,
    p.user,
    s(p.cl_active),
    s(p.cl_waiting),
    '0',
    '0',
    s(p.sv_active),
    '0',
    '0',
    s(p.sv_idle),
    '0',
    '0',
    s(p.sv_login),
    s(Math.floor(waitUs / 1_000_000)),
    s(waitUs % 1_000_000),
    p.pool_mode,
    null,
  ];
}

function clientRow(c: ClientRow, now: number): (string | null)[] {
  const waitUs = c.state === 'waiting' ? Math.max(0, now - c.connect_time) * 1000 : 0;
  return [
    'C',
    c.user,
    c.database,
    'none',
    c.state,
    c.addr,
    s(c.port),
    null,
    null,
    ts(c.connect_time),
    ts(c.connect_time),
    s(Math.floor(waitUs / 1_000_000)),
    s(waitUs % 1_000_000),
    '0',
    `c${c.id}`,
    c.server_id === undefined ? null : `s${c.server_id}`,
    '0',
    c.tls ? 'TLS' : '',
    c.application_name,
    '0',
    s(c.id),
  ];
}

function serverRow(v: ServerRow): (string | null)[] {
  return [
    'S',
    v.user,
    v.database,
    'none',
    v.state,
    v.addr,
    s(v.port),
    null,
    null,
    ts(v.connect_time),
    ts(v.request_time),
    '0',
    '0',
    s(v.close_needed),
    `s${v.id}`,
    v.client_id === undefined ? null : `c${v.client_id}`,
    s(v.remote_pid),
    '',
    v.application_name,
    '0',
    s(v.id),
  ];
}

function statsRows(pools: PoolRow[]): (string | null)[][] {
  type Totals = {
    assign: number;
    xact: number;
    query: number;
    recv: number;
    sent: number;
    xactMs: number;
    queryMs: number;
    waitMs: number;
    clientParse: number;
    serverParse: number;
    bind: number;
  };
  const byDb = new Map<string, Totals>();
  for (const p of pools) {
    let t = byDb.get(p.database);
    if (!t) {
      t = {
        assign: 0,
        xact: 0,
        query: 0,
        recv: 0,
        sent: 0,
        xactMs: 0,
        queryMs: 0,
        waitMs: 0,
        clientParse: 0,
        serverParse: 0,
        bind: 0,
      };
      byDb.set(p.database, t);
    }
    t.assign += p.leases;
    t.xact += p.xacts;
    t.query += p.queries;
    t.recv += p.received;
    t.sent += p.sent;
    t.xactMs += p.xact_ms;
    t.queryMs += p.query_ms;
    t.waitMs += p.wait_ms;
    t.clientParse += p.client_parses;
    t.serverParse += p.server_parses;
    t.bind += p.binds;
  }
  const us = (ms: number) => String(Math.round(ms * 1000));
  const per = (ms: number, n: number) => us(n ? ms / n : 0);
  return [...byDb].map(([db, t]) => [
    db,
    s(t.assign),
    s(t.xact),
    s(t.query),
    s(t.recv),
    s(t.sent),
    us(t.xactMs),
    us(t.queryMs),
    us(t.waitMs),
    s(t.clientParse),
    s(t.serverParse),
    s(t.bind),
    // pgbouncer's avg_*_count/recv/sent are per-second rates over its stats_period; gprxy does not sample
    // rates (Prometheus does, from the totals): 0. The avg_*_time columns are per transaction/query/assignment.
    '0',
    '0',
    '0',
    '0',
    '0',
    per(t.xactMs, t.xact),
    per(t.queryMs, t.query),
    per(t.waitMs, t.assign),
    '0',
    '0',
    '0',
  ]);
}

function configRows(ctx: CommandContext): (string | null)[][] {
  const c = ctx.view.config();
  const rows: (string | null)[][] = [];
  const add = (key: string, value: unknown, def: unknown, changeable: boolean) =>
    rows.push([key, s(value as string), s(def as string), changeable ? 'yes' : 'no']);
  add('listen_addr', c.listen.host, '127.0.0.1', false);
  add('listen_port', c.listen.port, 6432, false);
  add('max_client_conn', c.max_client_conn, 1000, true);
  add('client_login_timeout', c.client_login_timeout / 1000, 60, true);
  add('shutdown_timeout', c.shutdown_timeout / 1000, 30, true);
  add('max_packet_size', c.max_packet_size, 2 ** 30 - 1, true);
  add('tcp_keepalive', c.tcp_keepalive, true, true);
  add('auth_type', c.auth.type, 'scram-sha-256', true);
  add('auth_file', c.auth.file ?? '', '', true);
  // Effective global pool settings (durations in seconds, as pgbouncer shows them).
  for (const [k, def] of Object.entries(POOL_DEFAULTS)) {
    const v = (c as unknown as Record<string, unknown>)[k] ?? def;
    const isDuration = k.endsWith('_timeout') || k.endsWith('_lifetime') || k === 'server_login_retry';
    add(k, isDuration ? (v as number) / 1000 : v, isDuration ? (def as number) / 1000 : def, true);
  }
  add('admin_users', c.admin.users.join(','), '', true);
  add('stats_users', c.admin.stats_users.join(','), '', true);
  add('admin_http', c.admin.http ? `${c.admin.http.host}:${c.admin.http.port}` : '', '', false);
  return rows;
}

function noSuchDatabase(name: string): PgError {
  return new PgError('ERROR', '3D000', `no such database: ${name}`, { code: 'GPRXY_ADMIN_NO_DB' });
}

function checkDatabase(ctx: CommandContext, name: string | undefined): void {
  if (name === undefined) return;
  const c = ctx.view.config();
  if (!(name in c.databases) && !ctx.view.pools().some((p) => p.database === name))
    throw noSuchDatabase(name);
}

const SHOW: Record<string, (ctx: CommandContext) => CommandResult> = {
  pools: (ctx) => show(POOLS_COLUMNS, ctx.view.pools().map(poolRow)),
  clients: (ctx) => {
    const now = Date.now();
    return show(
      SOCKET_COLUMNS,
      ctx.view.clients().map((c) => clientRow(c, now)),
    );
  },
  servers: (ctx) => show(SOCKET_COLUMNS, ctx.view.servers().map(serverRow)),
  stats: (ctx) => show(STATS_COLUMNS, statsRows(ctx.view.pools())),
  databases: (ctx) => {
    const c = ctx.view.config();
    const pools = ctx.view.pools();
    const clients = ctx.view.clients();
    const paused = new Set(ctx.view.pausedDatabases());
    const rows = Object.entries(c.databases).map(([name, d]) => {
      const mine = pools.filter((p) => p.database === name);
      const servers = mine.reduce((n, p) => n + p.sv_active + p.sv_idle + p.sv_login, 0);
      return [
        name,
        d.host,
        s(d.port),
        d.dbname ?? name,
        d.user ?? null,
        s(d.default_pool_size ?? c.default_pool_size ?? POOL_DEFAULTS.default_pool_size),
        s(d.min_pool_size ?? c.min_pool_size ?? POOL_DEFAULTS.min_pool_size),
        s(d.reserve_pool_size ?? c.reserve_pool_size ?? POOL_DEFAULTS.reserve_pool_size),
        s((d.server_lifetime ?? c.server_lifetime ?? POOL_DEFAULTS.server_lifetime) / 1000),
        d.pool_mode ?? null,
        null,
        s(d.max_db_connections ?? c.max_db_connections ?? 0),
        s(servers),
        '0',
        s(clients.filter((x) => x.database === name).length),
        s(paused.has('*') || paused.has(name)),
        '0',
      ];
    });
    return show(DATABASES_COLUMNS, rows);
  },
  users: (ctx) => {
    const c = ctx.view.config();
    const pools = ctx.view.pools();
    const clients = ctx.view.clients();
    const names = new Set([
      ...Object.keys(c.users),
      ...pools.map((p) => p.user),
      ...clients.map((x) => x.user),
    ]);
    const rows = [...names].sort().map((name) => {
      const u = c.users[name];
      const servers = pools
        .filter((p) => p.user === name)
        .reduce((n, p) => n + p.sv_active + p.sv_idle + p.sv_login, 0);
      return [
        name,
        s(u?.default_pool_size),
        s(u?.reserve_pool_size),
        u?.pool_mode ?? null,
        s(u?.max_user_connections ?? c.max_user_connections ?? 0),
        s(servers),
        '0',
        s(clients.filter((x) => x.user === name).length),
      ];
    });
    return show(USERS_COLUMNS, rows);
  },
  config: (ctx) => show(['key', 'value', 'default', 'changeable'], configRows(ctx)),
  version: () => show(['version'], [[`gprxy ${GPRXY_VERSION}`]]),
  lists: (ctx) => {
    const c = ctx.view.config();
    const pools = ctx.view.pools();
    const clients = ctx.view.clients();
    const servers = ctx.view.servers();
    const users = new Set([...Object.keys(c.users), ...pools.map((p) => p.user)]);
    const rows: [string, number][] = [
      ['databases', Object.keys(c.databases).length],
      ['users', users.size],
      ['pools', pools.length],
      ['free_clients', 0],
      ['used_clients', clients.length],
      ['login_clients', clients.filter((x) => x.state === 'login').length],
      ['free_servers', 0],
      ['used_servers', servers.length],
      ['dns_names', 0],
      ['dns_zones', 0],
      ['dns_queries', 0],
      ['dns_pending', 0],
    ];
    return show(
      ['list', 'items'],
      rows.map(([k, v]) => [k, String(v)]),
    );
  },
  help: () => ({
    tag: 'SHOW',
    notice: `Console usage\n\tSHOW HELP|POOLS|CLIENTS|SERVERS|STATS|DATABASES|USERS|CONFIG|VERSION|LISTS\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tRELOAD\n\tKILL <db>\n\tKILL_CLIENT <id>\n\tRECONNECT [<db>]\n\tSHUTDOWN`,
  }),
};

export const COMMANDS: Record<string, Command> = {
  show: {
    admin: false,
    arg: 'required',
    run(ctx, arg) {
      const fn = SHOW[arg!.toLowerCase()];
      if (!fn) throw syntaxError(`SHOW ${arg}`);
      return fn(ctx);
    },
  },
  pause: {
    admin: true,
    arg: 'optional',
    async run(ctx, db) {
      checkDatabase(ctx, db);
      await ctx.control.pause(db, ctx.signal);
      return { tag: 'PAUSE' };
    },
  },
  resume: {
    admin: true,
    arg: 'optional',
    run(ctx, db) {
      checkDatabase(ctx, db);
      ctx.control.resume(db);
      return { tag: 'RESUME' };
    },
  },
  reload: {
    admin: true,
    arg: 'none',
    run(ctx) {
      try {
        ctx.control.reload();
      } catch (e) {
        throw new PgError('ERROR', 'F0000', (e as Error).message, { code: 'GPRXY_ADMIN_RELOAD' });
      }
      return { tag: 'RELOAD' };
    },
  },
  kill: {
    admin: true,
    arg: 'required',
    run(ctx, db) {
      checkDatabase(ctx, db);
      ctx.control.kill(db!);
      return { tag: 'KILL' };
    },
  },
  kill_client: {
    admin: true,
    arg: 'required',
    run(ctx, arg) {
      const id = /^\d+$/.test(arg!) ? Number(arg) : Number.NaN;
      if (!Number.isSafeInteger(id) || !ctx.control.killClient(id)) {
        throw new PgError('ERROR', '42704', `no such client: ${arg}`, { code: 'GPRXY_ADMIN_NO_CLIENT' });
      }
      return { tag: 'KILL_CLIENT' };
    },
  },
  reconnect: {
    admin: true,
    arg: 'optional',
    run(ctx, db) {
      checkDatabase(ctx, db);
      ctx.control.reconnect(db);
      return { tag: 'RECONNECT' };
    },
  },
  shutdown: {
    admin: true,
    arg: 'none',
    run(ctx) {
      ctx.control.shutdown();
      return { tag: 'SHUTDOWN' };
    },
  },
};

function syntaxError(query: string): PgError {
  return new PgError('ERROR', '42601', `invalid command '${query}', use SHOW HELP;`, {
    code: 'GPRXY_ADMIN_SYNTAX',
  });
}

/** `CMD [arg];` with an identifier, number or "quoted" argument (pgbouncer's grammar). */
const COMMAND_RX = /^\s*([a-z_]+)(?:\s+("(?:[^"]|"")+"|[a-z0-9_.$-]+))?\s*;?\s*$/i;

/** Runs one console query; throws a PgError for the client on failure. */
export async function runCommand(
  ctx: CommandContext,
  query: string,
  isAdmin: boolean,
): Promise<CommandResult> {
  const m = COMMAND_RX.exec(query);
  if (!m) throw syntaxError(query.trim());
  const name = m[1]!.toLowerCase();
  const raw = m[2];
  const arg = raw?.startsWith('"') ? raw.slice(1, -1).replaceAll('""', '"') : raw;
  const cmd = COMMANDS[name];
  if (!cmd) throw syntaxError(query.trim());
  if ((cmd.arg === 'none' && arg !== undefined) || (cmd.arg === 'required' && arg === undefined)) {
    throw syntaxError(query.trim());
  }
  if (cmd.admin && !isAdmin) {
    throw new PgError('ERROR', '42501', 'admin access needed', { code: 'GPRXY_ADMIN_DENIED' });
  }
  return cmd.run(ctx, arg);
}
