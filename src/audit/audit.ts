// The audit trail: subscribes to the proxy's events and turns them into one record per statement (and per
// connect, login failure, disconnect, pin, token expiry, cancel), carrying who did it; queued per sink.
import type { ProxyEvents, QueryEvent, SessionStartEvent, TypedChannel } from '../events.ts';
import { AUDIT_LINE, AuditQueue, type AuditSink, type OverflowPolicy } from './queue.ts';

export interface AuditOptions {
  maxStatementLength: number;
  logParameters: boolean;
  maxParameterLength: number;
  queueSize: number;
  onOverflow: OverflowPolicy;
}

export interface Audit {
  /** Records waiting in the fullest sink queue. */
  depth(): number;
  dropped(): number;
  /** Policy block: resolves when every queue has room (sessions hold client reads until then). */
  room(): Promise<void>;
  readonly blocking: boolean;
  full(): boolean;
  close(): Promise<void>;
}

/** The session part of every record. */
interface Who {
  session: number;
  identity: string | null;
  auth_method: string | null;
  database: string | null;
  backend_role: string | null;
  client_addr: string | null;
  application_name: string | null;
}

function unknownSession(session: number): Who {
  return {
    session,
    identity: null,
    auth_method: null,
    database: null,
    backend_role: null,
    client_addr: null,
    application_name: null,
  };
}

/** The session fields as they appear inside a JSON line (`"session":1,...,"application_name":"x"`), made once. */
function whoJson(w: Who): string {
  const j = JSON.stringify(w);
  return j.slice(1, -1);
}

/** ISO-8601 timestamps with the date-and-second part cached: `toISOString()` once per second, not per record. */
export function isoClock(): (ms: number) => string {
  let second = Number.NaN;
  let prefix = '';
  return (ms: number) => {
    const s = Math.floor(ms / 1000);
    if (s !== second) {
      second = s;
      prefix = new Date(s * 1000).toISOString().slice(0, 20); // 2026-11-23T19:03:44.
    }
    const milli = ms - s * 1000;
    return `${prefix}${milli < 10 ? '00' : milli < 100 ? '0' : ''}${Math.floor(milli)}Z`;
  };
}

/** The detail of most statements, shared (never mutated) with its JSON. */
const DETAIL_SIMPLE: Readonly<Record<string, unknown>> = Object.freeze({ kind: 'simple' });
const DETAIL_EXTENDED: Readonly<Record<string, unknown>> = Object.freeze({ kind: 'extended' });
const DETAIL_SIMPLE_JSON = '{"kind":"simple"}';
const DETAIL_EXTENDED_JSON = '{"kind":"extended"}';

/** A statement record's JSON line, byte for byte what JSON.stringify(record) gives, built without walking it. */
export function queryLine(r: QueryRecord, who: string): string {
  const d = r.detail;
  const detail =
    d === DETAIL_SIMPLE
      ? DETAIL_SIMPLE_JSON
      : d === DETAIL_EXTENDED
        ? DETAIL_EXTENDED_JSON
        : JSON.stringify(d);
  return `{"ts":"${r.ts}","event":"query",${who},"statement":${JSON.stringify(r.statement)},"duration_ms":${r.duration_ms},"rows":${r.rows === null ? 'null' : r.rows},"outcome":"${r.outcome}","sqlstate":${r.sqlstate === null ? 'null' : JSON.stringify(r.sqlstate)},"detail":${detail}}`;
}

export interface QueryRecord extends Who {
  ts: string;
  event: 'query';
  statement: string;
  duration_ms: number;
  rows: number | null;
  outcome: 'ok' | 'error';
  sqlstate: string | null;
  detail: Readonly<Record<string, unknown>>;
  [AUDIT_LINE]?: string;
}

function truncate(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

export function startAudit(
  events: ProxyEvents,
  sinks: readonly AuditSink[],
  opts: AuditOptions,
  onSinkError: (sink: string, err: Error) => void,
): Audit {
  const queues = sinks.map((s) => new AuditQueue(s, opts.queueSize, opts.onOverflow, onSinkError));
  /** Who each logged-in session is (and its JSON), built once per session and shared by all of its records. */
  const sessions = new Map<number, { who: Who; json: string }>();
  const push = (r: object) => {
    for (const q of queues) q.push(r);
  };
  const who = (session: number): Who => sessions.get(session)?.who ?? unknownSession(session);
  const iso = isoClock();
  const ts = () => new Date().toISOString();

  const onStart = (e: SessionStartEvent) => {
    const w: Who = {
      session: e.session,
      identity: e.identity,
      auth_method: e.method,
      database: e.database,
      backend_role: e.backendRole,
      client_addr: e.clientAddress,
      application_name: e.applicationName,
    };
    sessions.set(e.session, { who: w, json: whoJson(w) });
    push({
      ts: ts(),
      event: 'login',
      ...who(e.session),
      outcome: 'ok',
      detail: { tls: e.tls, user: e.user },
    });
  };
  const onEnd = (e: { session: number; reason: string; durationMs: number }) => {
    push({
      ts: ts(),
      event: 'disconnect',
      ...who(e.session),
      duration_ms: e.durationMs,
      detail: { reason: e.reason },
    });
    sessions.delete(e.session);
  };
  // The hot one (a record per statement): fields assigned in a fixed order, no spreads.
  const onQuery = (e: QueryEvent) => {
    let detail: Readonly<Record<string, unknown>> = e.kind === 'simple' ? DETAIL_SIMPLE : DETAIL_EXTENDED;
    if (e.copy || e.message || (opts.logParameters && e.params)) {
      const d: Record<string, unknown> = { kind: e.kind };
      if (e.copy) d.copy = e.copy;
      if (opts.logParameters && e.params) {
        d.params = e.params.map((p) => (p === null ? null : truncate(p, opts.maxParameterLength)));
      }
      if (e.message) d.message = truncate(e.message, 1024);
      detail = d;
    }
    const s = sessions.get(e.session);
    const w = s?.who ?? unknownSession(e.session);
    const r: QueryRecord = {
      ts: iso(e.startedAt),
      event: 'query',
      session: w.session,
      identity: w.identity,
      auth_method: w.auth_method,
      database: w.database,
      backend_role: w.backend_role,
      client_addr: w.client_addr,
      application_name: w.application_name,
      statement: truncate(e.sql, opts.maxStatementLength),
      duration_ms: Math.round(e.durationMs * 1000) / 1000,
      rows: e.rows,
      outcome: e.sqlstate ? 'error' : 'ok',
      sqlstate: e.sqlstate ?? null,
      detail,
    };
    r[AUDIT_LINE] = queryLine(r, s?.json ?? whoJson(w));
    push(r);
  };
  const onFailed = (e: {
    session: number;
    database: string;
    user: string;
    sqlstate: string;
    reason: string;
  }) => {
    push({
      ts: ts(),
      event: 'login_failed',
      session: e.session,
      identity: e.user,
      database: e.database,
      outcome: 'error',
      sqlstate: e.sqlstate,
      detail: { reason: e.reason },
    });
  };
  const onPin = (e: { session: number; reason: string }) =>
    push({ ts: ts(), event: 'pin', ...who(e.session), detail: { reason: e.reason } });
  const onExpired = (e: { session: number; action: string }) =>
    push({ ts: ts(), event: 'token_expired', ...who(e.session), detail: { action: e.action } });
  const onCancel = (e: { matched: boolean }) =>
    push({ ts: ts(), event: 'cancel', detail: { matched: e.matched } });

  // Subscribed now, unsubscribed at close.
  const offs: (() => void)[] = [];
  const on = <T>(ch: TypedChannel<T>, fn: (m: T) => void) => {
    ch.subscribe(fn);
    offs.push(() => ch.unsubscribe(fn));
  };
  on(events.sessionStart, onStart);
  on(events.sessionEnd, onEnd);
  on(events.query, onQuery);
  on(events.clientLoginFailed, onFailed);
  on(events.pin, onPin);
  on(events.tokenExpired, onExpired);
  on(events.cancel, onCancel);

  return {
    depth: () => Math.max(0, ...queues.map((q) => q.depth)),
    dropped: () => queues.reduce((n, q) => n + q.dropped, 0),
    blocking: opts.onOverflow === 'block',
    full: () => queues.some((q) => q.full),
    room: () => Promise.all(queues.map((q) => q.room())).then(() => undefined),
    async close() {
      for (const off of offs) off();
      await Promise.all(queues.map((q) => q.close()));
    },
  };
}
