// What the admin console and the HTTP API see of the running proxy (plain rows, built by main.ts from pools,
// sessions and servers) and what they may do to it. No secrets in here: rows carry names, states and numbers.
import type { Config } from '../config/load.ts';

export interface PoolRow {
  database: string;
  user: string;
  pool_mode: string;
  /** Clients of this pool that are logged in (linked to a server or idle between transactions). */
  cl_active: number;
  /** Clients queued for a server. */
  cl_waiting: number;
  sv_active: number;
  sv_idle: number;
  /** Servers being opened (dial + login). */
  sv_login: number;
  /** Oldest waiting client's wait, ms. */
  maxwait_ms: number;
  paused: boolean;
  /** Totals since start: server assignments and the time clients waited for them. */
  leases: number;
  wait_ms: number;
  /** Transactions and requests answered by ReadyForQuery, with their time (ms, fractional). */
  xacts: number;
  xact_ms: number;
  queries: number;
  query_ms: number;
  /** Bytes from clients to servers, and back. */
  received: number;
  sent: number;
  /** Parse messages from clients and to servers, Bind messages; named statements a server had or lacked. */
  client_parses: number;
  server_parses: number;
  binds: number;
  prepared_hits: number;
  prepared_misses: number;
  servers_opened: number;
  servers_closed: number;
}

export type ClientState = 'login' | 'waiting' | 'active' | 'idle';

export interface ClientRow {
  id: number;
  user: string;
  database: string;
  state: ClientState;
  addr: string;
  port: number;
  /** ms since epoch */
  connect_time: number;
  tls: boolean;
  application_name: string;
  /** The server it is linked to right now. */
  server_id: number | undefined;
}

export type ServerRowState = 'active' | 'idle';

export interface ServerRow {
  id: number;
  user: string;
  database: string;
  state: ServerRowState;
  addr: string;
  port: number;
  /** ms since epoch */
  connect_time: number;
  /** Last time it was lent (ms since epoch). */
  request_time: number;
  remote_pid: number;
  close_needed: boolean;
  client_id: number | undefined;
  application_name: string;
}

export interface AdminView {
  config(): Config;
  pools(): PoolRow[];
  clients(): ClientRow[];
  servers(): ServerRow[];
  pausedDatabases(): string[];
  /** Listening and every configured database's server reachable (an open server, or a TCP connect). */
  ready(): Promise<{ ready: boolean; databases: Record<string, boolean> }>;
}

export interface AdminControl {
  /** PAUSE [db]: resolves once no server of the database(s) is lent out any more (idle ones are then closed). */
  pause(database: string | undefined, abort: AbortSignal): Promise<void>;
  resume(database: string | undefined): void;
  /** Re-reads the config file; throws (keeping the old config) when it is invalid. */
  reload(): void;
  /** KILL db: drops the database's clients and servers and pauses it until RESUME. */
  kill(database: string): void;
  /** KILL_CLIENT id: false when no such client. */
  killClient(id: number): boolean;
  /** RECONNECT [db]: idle servers close now, active ones when released. */
  reconnect(database: string | undefined): void;
  shutdown(): void;
}
