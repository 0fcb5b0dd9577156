// Typed node:diagnostics_channel channels the core publishes to; audit/ and metrics/ subscribe. One set of channels
// per proxy instance (names carry the instance number), so several proxies in one process (tests) stay apart.
// Publishers check `hasSubscribers` before building a message: with nobody listening an event costs one branch.
import { type Channel, channel, subscribe, unsubscribe } from 'node:diagnostics_channel';

export interface ClientLoginEvent {
  session: number;
  database: string;
  user: string;
  /** The exchange that authenticated the client: scram-sha-256, md5, password, trust... */
  method: string;
}

export interface ClientLoginFailedEvent {
  session: number;
  database: string;
  user: string;
  sqlstate: string;
  /** A stable GPRXY_* code when gprxy decided, else the SQLSTATE. Never a secret. */
  reason: string;
}

export interface CancelEvent {
  /** Whether the key matched a live session. */
  matched: boolean;
}

/** A client finished logging in: who it is, for every later record of the session. */
export interface SessionStartEvent {
  session: number;
  database: string;
  user: string;
  /** The person (SSO identity) or the database user. */
  identity: string;
  method: string;
  /** The login the session's servers use. */
  backendRole: string;
  clientAddress: string;
  applicationName: string;
  tls: boolean;
}

export interface SessionEndEvent {
  session: number;
  reason: string;
  durationMs: number;
}

/** One statement: a simple Query (all its statements), an extended Execute, or a COPY. */
export interface QueryEvent {
  session: number;
  sql: string;
  kind: 'simple' | 'extended';
  /** Bind parameters (text) when audit.log_parameters is on. */
  params?: (string | null)[];
  startedAt: number;
  durationMs: number;
  rows: number | null;
  copy?: 'in' | 'out';
  /** undefined: ok. */
  sqlstate?: string;
  message?: string;
}

export interface PinEvent {
  session: number;
  reason: string;
}

export interface TokenExpiredEvent {
  session: number;
  action: 'disconnect' | 'keep';
}

/** A typed channel: `publish` only accepts its message type. */
export interface TypedChannel<T> {
  readonly name: string;
  readonly hasSubscribers: boolean;
  publish(message: T): void;
  subscribe(fn: (message: T) => void): void;
  unsubscribe(fn: (message: T) => void): void;
}

export interface ProxyEvents {
  readonly instance: number;
  readonly clientLogin: TypedChannel<ClientLoginEvent>;
  readonly clientLoginFailed: TypedChannel<ClientLoginFailedEvent>;
  readonly cancel: TypedChannel<CancelEvent>;
  readonly sessionStart: TypedChannel<SessionStartEvent>;
  readonly sessionEnd: TypedChannel<SessionEndEvent>;
  readonly query: TypedChannel<QueryEvent>;
  readonly pin: TypedChannel<PinEvent>;
  readonly tokenExpired: TypedChannel<TokenExpiredEvent>;
}

let nextInstance = 1;

function typed<T>(name: string): TypedChannel<T> {
  const ch: Channel = channel(name);
  return {
    name,
    get hasSubscribers() {
      return ch.hasSubscribers;
    },
    publish: (m: T) => ch.publish(m),
    // The module-level functions keep the channel alive while subscribed (a Channel object is held weakly).
    subscribe: (fn) => subscribe(name, fn as (m: unknown, name: string | symbol) => void),
    unsubscribe: (fn) => {
      unsubscribe(name, fn as (m: unknown, name: string | symbol) => void);
    },
  };
}

/** The channels of one proxy instance: `gprxy:<instance>:<event>`. */
export function createEvents(): ProxyEvents {
  const instance = nextInstance++;
  const n = (e: string) => `gprxy:${instance}:${e}`;
  return {
    instance,
    clientLogin: typed(n('client:login')),
    clientLoginFailed: typed(n('client:login_failed')),
    cancel: typed(n('cancel')),
    sessionStart: typed(n('session:start')),
    sessionEnd: typed(n('session:end')),
    query: typed(n('query')),
    pin: typed(n('pin')),
    tokenExpired: typed(n('token:expired')),
  };
}
