// Transaction and statement pooling: leases a server when a client's transaction starts and releases it at
// ReadyForQuery 'I' with nothing outstanding. Keeps a FIFO of expected responses per lease (forward, swallow,
// synthesize) for injected parameter sync and prepared statements; pins clients whose session state cannot move.

import type { Lease, LeaseCallback } from '../pool/pool.ts';
import { type PoolStats, RequestClock } from '../pool/stats.ts';
import { B, encodeError, encodeReadyForQuery, type TxStatus } from '../protocol/backend.ts';
import { PgError } from '../protocol/errors.ts';
import { Scan, type ScanHandler, StreamScanner, scanPolicy } from '../protocol/framer.ts';
import { encodeQuery, F } from '../protocol/frontend.ts';
import type { ServerConnection, ServerSink } from '../server/connection.ts';
import { literal } from '../server/sql.ts';
import { bindParams, type QueryTracker, trackClientMessage, trackServerMessage } from './query-tracker.ts';
import type { ClientIO } from './relay.ts';
import { firstWords, type PinReason, scanSql } from './sql-scan.ts';
import {
  encodeBind,
  encodeParse,
  encodeTarget,
  readBind,
  readParse,
  readTarget,
  readUnnamedParseQuery,
  serverStatementName,
} from './statements.ts';

export type PinPolicy = 'pin' | 'refuse';

export interface TransactionHost {
  /**
   * Leases a server from the client's pool: returns one at hand, or undefined and calls `later` once with a lease
   * or the PgError that ended the wait.
   */
  lease(later: LeaseCallback<ServerConnection>): Lease<ServerConnection> | undefined;
  /** The lease ended cleanly; nothing to do but note it. */
  released(): void;
  /** Client sent Terminate. */
  terminate(): void;
  /** Unrecoverable: send the error and close the client. */
  fail(err: PgError): void;
  /** Pinned for the first time (logged and counted once). */
  pinned(reason: PinReason): void;
}

export interface TransactionOptions {
  mode: 'transaction' | 'statement';
  pinPolicy: PinPolicy;
  maxPreparedStatements: number;
  maxPacketSize: number;
  /**
   * SSO set_role routes: statements that would change the role or identity gprxy set (SET/RESET ROLE, SET SESSION
   * AUTHORIZATION, set_config(), DISCARD) are refused where the scan sees them.
   */
  guardIdentity?: boolean;
  /** Hold the first server until the client leaves (session semantics on this relay). */
  pinFromStart?: PinReason;
  /** The pool's running totals: bytes, queries, transactions, prepared statements. */
  stats: PoolStats;
}

/** What a set_role route refuses: role and identity changes the keyword scan can see. */
function changesIdentity(sql: string, pin: PinReason | undefined): boolean {
  if (pin === 'set_role' || pin === 'session_authorization') return true;
  return /\bset_config\s*\(|^\s*(reset\s+(role|all|session)|discard|set\s+(session\s+)?role|set\s+.*\bgprxy\.)/i.test(
    sql,
  );
}

/** What the client expects back for one thing sent to the server, in order. */
type Expectation =
  | { kind: 'query' } // Query/FunctionCall: forward everything through ReadyForQuery
  | { kind: 'sync' } // Sync: ReadyForQuery
  | { kind: 'reply'; ends: number; ends2: number; parses?: string; binds?: string } // one extended message's reply
  | { kind: 'swallowQuery' } // injected Query: drop everything through ReadyForQuery
  | { kind: 'swallowParse'; name: string } // injected Parse: drop its ParseComplete
  | { kind: 'swallowClose'; name: string; stale?: true } // injected Close (evicted or stale): drop CloseComplete
  | { kind: 'synth'; make: () => Buffer }; // answer the client ourselves at this point

/** The field-less expectations, shared (never mutated): no allocation per statement. */
const EXPECT_QUERY: Expectation = Object.freeze({ kind: 'query' });
const EXPECT_SYNC: Expectation = Object.freeze({ kind: 'sync' });

/** Client messages the relay reads; COPY data and the like stream through. */
const CLIENT_POLICY = scanPolicy({
  Q: Scan.INSPECT,
  P: Scan.INSPECT,
  B: Scan.INSPECT,
  D: Scan.INSPECT,
  C: Scan.INSPECT,
  E: Scan.INSPECT,
  S: Scan.INSPECT,
  H: Scan.INSPECT,
  F: Scan.INSPECT,
  X: Scan.INSPECT,
});

/** Server messages that end a reply or need attention; rows and COPY data stream through. */
export const TX_SERVER_POLICY = scanPolicy({
  Z: Scan.INSPECT,
  S: Scan.INSPECT,
  E: Scan.INSPECT,
  '1': Scan.INSPECT,
  '2': Scan.INSPECT,
  '3': Scan.INSPECT,
  n: Scan.INSPECT,
  T: Scan.INSPECT,
  C: Scan.INSPECT,
  s: Scan.INSPECT,
  I: Scan.INSPECT,
  N: Scan.INSPECT,
  G: Scan.INSPECT,
  H: Scan.INSPECT,
  W: Scan.NOTE,
});

const PARSE_COMPLETE = Buffer.from([0x31, 0, 0, 0, 4]);
const CLOSE_COMPLETE = Buffer.from([0x33, 0, 0, 0, 4]);
const NONE = 0;

/** Reported parameters a client cannot set. */
const NOT_SETTABLE = new Set([
  'server_version',
  'server_encoding',
  'integer_datetimes',
  'is_superuser',
  'session_authorization',
  'in_hot_standby',
  'scram_iterations',
  'default_transaction_read_only',
]);

const IDENT = /^[A-Za-z_][A-Za-z0-9_$.]*$/;
const DO_TAG = '$gprxy_sync$';

/** One set_config() call of the sync block (a value holding the block's dollar-quote tag is skipped). */
function setConfigCall(calls: string[], name: string, text: string): void {
  if (!text.includes(DO_TAG))
    calls.push(`PERFORM pg_catalog.set_config(${literal(name)}, ${literal(text)}, false);`);
}

interface NamedStatement {
  server: string;
  rest: Buffer;
}

/** The empty statement map every client starts with (never written to: see TransactionRelay.ownStatements). */
const NO_STATEMENTS: ReadonlyMap<string, NamedStatement> & Map<string, NamedStatement> = new Map();

/** Setting values are kept as `sql:<value as written after SET ... TO>` or `text:<string for set_config>`. */
export const SQL_VALUE = 'sql:';
export const TEXT_VALUE = 'text:';

/** "cached plan must not change result type" (0A000): the statement must be prepared again. */
function isPlanInvalidated(errorBody: Buffer): boolean {
  return errorBody.includes('C0A000\0') && errorBody.includes('cached plan must not change result type');
}

export class TransactionRelay implements ScanHandler, ServerSink {
  readonly policy = TX_SERVER_POLICY;
  private readonly scanner: StreamScanner;
  private readonly stats: PoolStats;
  private readonly clock: RequestClock;
  private lease: Lease<ServerConnection> | null = null;
  private acquiring = false;
  private held: Buffer[] = [];
  private heldBytes = 0;
  private readonly expect: Expectation[] = [];
  private pin: PinReason | null = null;
  private ended = false;
  /** Extended-protocol messages sent since the last Sync: the server is mid-sequence. */
  private unsynced = false;
  /** After a refused Parse, the client's messages are dropped up to its Sync, as PostgreSQL would skip them. */
  private skipUntilSync = false;
  /** The client's view of the transaction status (last ReadyForQuery it saw). */
  private clientStatus: TxStatus = 'I';
  /**
   * Client statement name -> server statement name and the Parse body tail (query + types). Starts as the shared
   * empty map (reads, deletes and clears are no-ops on it) and gets its own on the first named statement: most
   * clients never prepare one, and 10,000 idle clients would each hold an empty Map.
   */
  private statements: Map<string, NamedStatement> = NO_STATEMENTS;
  /** this.params as syncSql compares them with a server's (settable, not overridden by a setting); null: stale. */
  private reported: [string, string][] | null = null;
  /**
   * Everything syncSql reads from this client (settings and reported parameters) as one string; null: stale. A
   * server found in step with an equal key, and unchanged since, needs no sync (ServerConnection.syncedKey).
   */
  private syncKey: string | null = null;
  /** maybeRelease as a microtask, allocated once instead of a closure per ReadyForQuery. */
  private readonly releaseTask: () => void;
  private readonly leaseArrived: LeaseCallback<ServerConnection>;
  /** A standalone SET/RESET waiting for its ReadyForQuery to be recorded. */
  private pendingSetting: ReturnType<typeof scanSql>['setting'] | undefined;

  constructor(
    private readonly client: ClientIO,
    private readonly host: TransactionHost,
    private readonly opts: TransactionOptions,
    /** Parameters as the client was told (ParameterStatus), kept in sync with what its transactions report. */
    readonly params: Map<string, string>,
    /** Settings the client asked for (startup packet, standalone SET): name -> SQL value text. */
    readonly settings: Map<string, string>,
    /** Statement tracking for the audit trail, while someone listens. */
    private readonly tracker?: QueryTracker,
  ) {
    this.scanner = new StreamScanner(CLIENT_POLICY, opts.maxPacketSize, this);
    this.stats = opts.stats;
    this.clock = new RequestClock(opts.stats);
    client.onDrain = () => this.lease?.server.resume();
    this.releaseTask = () => this.maybeRelease();
    this.leaseArrived = (err, lease) => this.onLease(err, lease);
    if (opts.pinFromStart) this.pin = opts.pinFromStart;
  }

  /** The client's own statement map, for adding to. */
  private ownStatements(): Map<string, NamedStatement> {
    if (this.statements === NO_STATEMENTS) this.statements = new Map();
    return this.statements;
  }

  /** A client parameter changed (ParameterStatus, a recorded SET): what syncSql compares is rebuilt on next use. */
  private paramsChanged(): void {
    this.reported = null;
    this.syncKey = null;
  }

  get server(): ServerConnection | undefined {
    return this.lease?.server;
  }

  get pinReason(): PinReason | null {
    return this.pin;
  }

  // ---- client -> server -------------------------------------------------------------------------------------

  fromClient(chunk: Buffer): void {
    if (this.ended) return;
    this.stats.received += chunk.length;
    this.take(chunk);
  }

  /** A client chunk, counted once: held while no server is leased, else scanned toward the server. */
  private take(chunk: Buffer): void {
    if (!this.lease) {
      if (this.heldBytes === 0 && !this.acquiring && this.scanner.atBoundary && this.answerLocally(chunk))
        return;
      this.held.push(chunk);
      this.heldBytes += chunk.length;
      if (this.heldBytes > 1024 * 1024) this.client.pause();
      if (!this.acquiring) this.acquire();
      return;
    }
    const server = this.lease.server;
    server.cork();
    try {
      this.scanner.push(chunk);
    } catch (e) {
      this.ended = true;
      this.host.fail(e instanceof PgError ? e : PgError.protocolViolation('malformed message'));
    } finally {
      server.uncork();
    }
  }

  /** Client bytes to the leased server; a full socket buffer pauses the client until it drains. */
  forward(bytes: Buffer): void {
    const server = this.lease?.server;
    if (!server || this.ended) return;
    if (!server.write(bytes)) this.client.pause();
  }

  /**
   * What an idle client can be answered without a server: Terminate, and named Parse messages followed by Sync
   * (libpq's PQprepare). The Parse is recorded and sent to a server with the first Bind or Describe that needs it,
   * so a synchronous prepare never waits for a server held by another client's open transaction (pgbench
   * -M prepared runs all its clients on one thread). An invalid statement then fails at that Bind, with
   * PostgreSQL's own error.
   */
  private answerLocally(chunk: Buffer): boolean {
    if (chunk.length === 5 && chunk[0] === F.Terminate) {
      this.ended = true;
      this.host.terminate();
      return true;
    }
    const parses: { name: string; rest: Buffer; query: string }[] = [];
    let pos = 0;
    while (pos + 5 <= chunk.length) {
      const type = chunk[pos]!;
      const len = chunk.readInt32BE(pos + 1);
      if (len < 4 || pos + 1 + len > chunk.length) return false;
      const body = chunk.subarray(pos + 5, pos + 1 + len);
      pos += 1 + len;
      if (type === F.Sync) {
        if (pos !== chunk.length || parses.length === 0) return false;
        break;
      }
      if (type !== F.Parse) return false;
      // An unnamed Parse (every -M extended transaction starts with one) needs no decoding to be turned down.
      if (body.length > 0 && body[0] === 0) return false;
      let p: ReturnType<typeof readParse>;
      try {
        p = readParse(body);
      } catch {
        return false; // malformed: the normal path reports it
      }
      if (p.name === '' || this.statements.has(p.name) || scanSql(p.query, false).pin) return false;
      parses.push({ name: p.name, rest: p.rest, query: p.query });
    }
    if (pos !== chunk.length || chunk[chunk.length - 5] !== F.Sync) return false;
    const out: Buffer[] = [];
    for (const p of parses) {
      this.ownStatements().set(p.name, { server: serverStatementName(p.rest), rest: p.rest });
      this.tracker?.parse(p.name, p.query);
      out.push(PARSE_COMPLETE);
    }
    out.push(encodeReadyForQuery('I'));
    this.client.write(Buffer.concat(out));
    return true;
  }

  private acquire(): void {
    this.acquiring = true;
    const lease = this.host.lease(this.leaseArrived);
    if (lease) this.leaseArrived(null, lease);
  }

  /** The pool's answer to acquire(): now (an idle server) or later (after a wait). */
  private onLease(err: PgError | null, lease: Lease<ServerConnection> | null): void {
    this.acquiring = false;
    if (err || !lease) {
      this.ended = true;
      this.host.fail(err ?? PgError.serverGone('could not get a server'));
      return;
    }
    if (this.ended) {
      lease.release(lease.server.reusable);
      return;
    }
    this.attach(lease);
  }

  private attach(lease: Lease<ServerConnection>): void {
    this.lease = lease;
    const server = lease.server;
    server.attach(this);
    server.onDrain = () => this.client.resume();
    server.statements.max = this.opts.maxPreparedStatements;
    const sync = this.syncSql(server);
    server.cork();
    if (sync) {
      // Same round trip as the client's first message: written ahead of it, its replies swallowed.
      this.expect.push({ kind: 'swallowQuery' });
      server.outstanding++;
      server.write(encodeQuery(sync));
    }
    const held = this.held;
    this.held = [];
    this.heldBytes = 0;
    server.uncork();
    this.client.resume();
    for (const chunk of held) {
      if (!this.lease || this.ended) break;
      this.take(chunk);
    }
    // Nothing needed a reply (e.g. only a Flush): give the server back.
    this.maybeRelease();
  }

  /**
   * At login: applies the client's startup settings on a server to learn the ParameterStatus values it will be
   * told (a real server's values, with its own overrides), then gives the server back. Throws the server's error
   * for a setting PostgreSQL rejects.
   */
  async prime(lease: Lease<ServerConnection>): Promise<void> {
    const server = lease.server;
    try {
      const sql = this.syncSql(server);
      const err = sql ? await server.query(sql) : undefined;
      if (err) throw new PgError('FATAL', err.sqlState, err.message, { code: 'GPRXY_STARTUP_PARAM' });
      for (const [k, v] of server.params) this.params.set(k, v);
      this.paramsChanged();
    } finally {
      lease.release(server.reusable, 'not idle after login');
    }
  }

  /**
   * At login without a server (pgbouncer's cached welcome): the pool's first server's login parameters, with the
   * client's own startup values for the reported ones. A login never waits for a server, so clients holding every
   * server in open transactions cannot block a new client's login (pgbench connects all clients on one thread).
   */
  primeFromCache(welcome: ReadonlyMap<string, string>, startup: ReadonlyMap<string, string>): void {
    const canonical = new Map<string, string>();
    for (const [k, v] of welcome) {
      this.params.set(k, v);
      canonical.set(k.toLowerCase(), k);
    }
    for (const [k, v] of startup) {
      const name = canonical.get(k.toLowerCase());
      if (name !== undefined && !NOT_SETTABLE.has(name)) this.params.set(name, v);
    }
    this.paramsChanged();
  }

  /**
   * SET/RESET for settings that differ between this client and the server, plus reported parameters. Values from
   * SET statements replay as written; text values (startup packet, ParameterStatus) go through set_config(), which
   * parses them as PostgreSQL parses startup values (a list like search_path stays a list), inside a DO block so
   * the injected query answers with nothing but CommandComplete (rows would stream past the swallowing).
   */
  private syncSql(server: ServerConnection): string | undefined {
    // Runs on every lease: no closures, and the parameter filter (a regex, a lower-casing and three lookups per
    // parameter) is computed once per change of the client's parameters, not per transaction. A server last found
    // in step with the same client state, and unchanged since, is not compared again.
    let reported = this.reported;
    if (reported === null) {
      reported = [];
      for (const [name, value] of this.params) {
        if (NOT_SETTABLE.has(name) || this.settings.has(name.toLowerCase()) || !IDENT.test(name)) continue;
        reported.push([name, value]);
      }
      this.reported = reported;
    }
    let key = this.syncKey;
    if (key === null) {
      key = JSON.stringify([[...this.settings], reported]);
      this.syncKey = key;
    }
    const version = server.params.version + server.applied.version;
    if (server.syncedKey === key && server.syncedVersion === version) return undefined;
    const parts: string[] = [];
    const calls: string[] = [];
    for (const [name, value] of this.settings) {
      if (server.applied.get(name) === value) continue;
      if (value.startsWith(SQL_VALUE)) parts.push(`SET "${name}" TO ${value.slice(SQL_VALUE.length)}`);
      else setConfigCall(calls, name, value.slice(TEXT_VALUE.length));
    }
    if (server.applied.size > 0) {
      for (const name of server.applied.keys()) {
        if (!this.settings.has(name)) parts.push(`RESET "${name}"`);
      }
    }
    for (let i = 0; i < reported.length; i++) {
      const [name, value] = reported[i]!;
      if (server.params.get(name) !== value) setConfigCall(calls, name, value);
    }
    if (calls.length) parts.push(`DO ${DO_TAG}BEGIN ${calls.join(' ')} END${DO_TAG}`);
    if (parts.length === 0) {
      server.syncedKey = key;
      server.syncedVersion = version;
      return undefined;
    }
    server.applied.clear();
    for (const [k, v] of this.settings) server.applied.set(k, v);
    for (const [name, value] of this.params) if (!NOT_SETTABLE.has(name)) server.params.set(name, value);
    return parts.join('; ');
  }

  onNote(): void {}

  /** Execute, Sync, Flush, FunctionCall: what they expect back. */
  private onControl(server: ServerConnection, type: number, body: Buffer): void {
    if (this.tracker) trackClientMessage(this.tracker, type, body);
    switch (type) {
      case F.Sync:
        this.unsynced = false;
        this.expect.push(EXPECT_SYNC);
        server.outstanding++;
        break;
      case F.Execute:
        this.unsynced = true;
        this.expect.push({ kind: 'reply', ends: B.CommandComplete, ends2: 0x73 /* s */, parses: undefined });
        break;
      case F.Flush:
        this.unsynced = true;
        break;
      case F.FunctionCall:
        this.expect.push(EXPECT_QUERY);
        server.outstanding++;
        break;
    }
  }

  onMessage(type: number, body: Buffer): boolean {
    const server = this.lease?.server;
    if (!server) return false;
    this.clock.request();
    if (type === F.Terminate) {
      this.scanner.flushBefore();
      this.ended = true;
      queueMicrotask(() => this.host.terminate());
      return true;
    }
    if (this.skipUntilSync) {
      if (type !== F.Sync) return true;
      this.skipUntilSync = false;
    }
    switch (type) {
      case F.Execute:
      case F.Sync:
      case F.Flush:
      case F.FunctionCall:
        this.onControl(server, type, body);
        return false;
      case F.Query:
        return this.onQuery(server, body);
      case F.Parse:
        return this.onParse(server, body);
      case F.Bind:
        return this.onBind(server, body);
      case F.Describe:
        return this.onDescribe(server, body);
      case F.Close:
        return this.onClose(server, body);
    }
    return false;
  }

  private onQuery(server: ServerConnection, body: Buffer): boolean {
    const sql = body.toString('utf8', 0, Math.max(0, body.length - 1));
    const fx = scanSql(sql, this.clientStatus !== 'I');
    if (this.opts.guardIdentity && changesIdentity(sql, fx.pin)) return this.refuseIdentityChange(true);
    if (fx.pin && !this.pin) {
      if (this.opts.pinPolicy === 'refuse') return this.refuse(fx.pin, true);
      this.setPin(fx.pin);
    }
    if (this.opts.mode === 'statement' && this.clientStatus === 'I' && !this.pin) {
      const w = firstWords(sql, 1)[0];
      if (w === 'BEGIN' || w === 'START') {
        return this.refuseWith(
          new PgError('ERROR', '0A000', 'transaction blocks are not allowed in statement pooling mode', {
            code: 'GPRXY_STATEMENT_MODE_TX',
          }),
          true,
        );
      }
    }
    this.tracker?.query(sql);
    this.pendingSetting = fx.setting;
    if (fx.dropsStatements === 'all') {
      this.statements.clear();
      server.statements.clear();
    } else if (fx.deallocate !== undefined) {
      this.statements.delete(fx.deallocate);
    }
    this.expect.push(EXPECT_QUERY);
    server.outstanding++;
    if (this.opts.mode === 'statement' && this.clientStatus !== 'I') return false;
    return false;
  }

  private onParse(server: ServerConnection, body: Buffer): boolean {
    // Unnamed: only the query text matters (no copy of the rest, which only a named statement keeps).
    const unnamed = body.length > 0 && body[0] === 0;
    const p = unnamed ? undefined : readParse(body);
    const text = p ? p.query : readUnnamedParseQuery(body);
    const stats = this.stats;
    stats.clientParses++;
    const fx = scanSql(text, this.clientStatus !== 'I');
    if (this.opts.guardIdentity && changesIdentity(text, fx.pin)) return this.refuseIdentityChange(false);
    if (fx.pin && !this.pin) {
      if (this.opts.pinPolicy === 'refuse') return this.refuse(fx.pin, false);
      this.setPin(fx.pin);
    }
    if (this.tracker) this.tracker.parse(p ? p.name : '', p ? p.query : readUnnamedParseQuery(body));
    this.unsynced = true;
    if (!p) {
      stats.serverParses++;
      this.expect.push({ kind: 'reply', ends: 0x31, ends2: NONE });
      return false;
    }
    const serverName = serverStatementName(p.rest);
    this.ownStatements().set(p.name, { server: serverName, rest: p.rest });
    if (server.statements.has(serverName)) {
      stats.preparedHits++;
      server.statements.touch(serverName);
      this.synth(() => PARSE_COMPLETE);
      this.scanner.flushBefore();
      return true;
    }
    this.scanner.flushBefore();
    stats.preparedMisses++;
    stats.serverParses++;
    this.evictFor(server);
    server.statements.add(serverName);
    server.write(encodeParse(serverName, p.rest));
    this.expect.push({ kind: 'reply', ends: 0x31, ends2: NONE, parses: serverName });
    return true;
  }

  /** Makes sure the server has the client's statement; returns its server name (or undefined: unknown name). */
  private ensurePrepared(server: ServerConnection, clientName: string): string | undefined {
    const st = this.statements.get(clientName);
    if (!st) return undefined;
    if (server.statements.has(st.server)) {
      this.stats.preparedHits++;
      server.statements.touch(st.server);
      return st.server;
    }
    this.stats.preparedMisses++;
    this.stats.serverParses++;
    if (server.statements.stale.delete(st.server)) {
      server.write(encodeTarget(F.Close, 0x53, st.server));
      this.expect.push({ kind: 'swallowClose', name: st.server, stale: true });
    }
    this.evictFor(server);
    server.statements.add(st.server);
    server.write(encodeParse(st.server, st.rest));
    this.expect.push({ kind: 'swallowParse', name: st.server });
    return st.server;
  }

  private evictFor(server: ServerConnection): void {
    for (const name of server.statements.evictFor(1)) {
      server.write(encodeTarget(F.Close, 0x53, name));
      this.expect.push({ kind: 'swallowClose', name });
    }
  }

  private onBind(server: ServerConnection, body: Buffer): boolean {
    this.unsynced = true;
    this.stats.binds++;
    const b = readBind(body);
    this.tracker?.bind(
      b.portal,
      b.statement,
      this.tracker.logParameters ? bindParams(body, b.restOffset) : undefined,
    );
    if (b.statement === '' || !this.statements.has(b.statement)) {
      this.expect.push({ kind: 'reply', ends: 0x32, ends2: NONE });
      return false;
    }
    this.scanner.flushBefore();
    const name = this.ensurePrepared(server, b.statement)!;
    server.write(encodeBind(b.portal, name, body, b.restOffset));
    this.expect.push({ kind: 'reply', ends: 0x32, ends2: NONE, binds: name });
    return true;
  }

  private onDescribe(server: ServerConnection, body: Buffer): boolean {
    this.unsynced = true;
    const t = readTarget(body);
    this.expect.push({ kind: 'reply', ends: B.RowDescription, ends2: 0x6e /* n */ });
    if (t.kind !== 0x53 || t.name === '' || !this.statements.has(t.name)) return false;
    const last = this.expect.pop()!;
    this.scanner.flushBefore();
    const name = this.ensurePrepared(server, t.name)!;
    server.write(encodeTarget(F.Describe, 0x53, name));
    this.expect.push(last);
    return true;
  }

  private onClose(server: ServerConnection, body: Buffer): boolean {
    this.unsynced = true;
    const t = readTarget(body);
    if (t.kind === 0x53 && t.name !== '') {
      // Named statements stay prepared on the server (other clients may share them); answer locally, in order.
      this.statements.delete(t.name);
      this.synth(() => CLOSE_COMPLETE);
      this.scanner.flushBefore();
      return true;
    }
    void server;
    this.expect.push({ kind: 'reply', ends: 0x33, ends2: NONE });
    return false;
  }

  private refuse(reason: PinReason, isQuery: boolean): boolean {
    const err = new PgError(
      'ERROR',
      '0A000',
      `${reason.replaceAll('_', ' ')} is not supported in ${this.opts.mode} pooling mode (pin policy: refuse)`,
      { code: 'GPRXY_PIN_REFUSED', hint: 'use a session-mode pool for this client, or pin_policy: pin' },
    );
    return this.refuseWith(err, isQuery);
  }

  /** Answers a client message with an error instead of sending it (a Query also gets its ReadyForQuery). */
  private refuseWith(err: PgError, isQuery: boolean): boolean {
    this.scanner.flushBefore();
    this.synth(() => encodeError(err));
    if (isQuery) {
      this.synth(() => {
        const status = this.lease?.server.txStatus ?? this.clientStatus;
        // The Query is answered here: its clock stops as a server's ReadyForQuery would stop it.
        this.clock.ready(status.charCodeAt(0), (this.lease?.server.outstanding ?? 0) > 0);
        return encodeReadyForQuery(status);
      });
    } else this.skipUntilSync = true;
    return true;
  }

  private refuseIdentityChange(isQuery: boolean): boolean {
    return this.refuseWith(
      new PgError('ERROR', '42501', 'changing the role or identity is not allowed in an SSO session', {
        code: 'GPRXY_SSO_IDENTITY_GUARD',
      }),
      isQuery,
    );
  }

  private setPin(reason: PinReason): void {
    this.pin = reason;
    this.host.pinned(reason);
  }

  /** Queues a message of our own for the client at this point of the response stream. */
  private synth(make: () => Buffer): void {
    this.expect.push({ kind: 'synth', make });
    this.drainSynth();
  }

  private drainSynth(): void {
    while (this.expect[0]?.kind === 'synth') {
      const e = this.expect.shift() as { kind: 'synth'; make: () => Buffer };
      this.client.write(e.make());
    }
  }

  // ---- server -> client (ServerSink) ------------------------------------------------------------------------

  corkClient(): void {
    this.client.cork();
  }

  uncorkClient(): void {
    this.client.uncork();
  }

  toClient(bytes: Buffer): void {
    this.stats.sent += bytes.length;
    if (!this.client.write(bytes)) this.lease?.server.pause();
  }

  onServerMessage(type: number, body: Buffer, scanner: StreamScanner): boolean {
    if (type === B.ParameterStatus) {
      const head = this.expect[0];
      if (head?.kind === 'swallowQuery') return true;
      const nul = body.indexOf(0);
      if (nul > 0) {
        this.params.set(body.toString('utf8', 0, nul), body.toString('utf8', nul + 1, body.length - 1));
        this.paramsChanged();
      }
      return false;
    }
    const head = this.expect[0];
    if (!head) return false; // async messages (NoticeResponse is PASS; nothing else is expected here)
    // The audit trail follows the client's own statements, not what gprxy injected.
    if (
      this.tracker &&
      head.kind !== 'swallowQuery' &&
      head.kind !== 'swallowParse' &&
      head.kind !== 'swallowClose'
    ) {
      trackServerMessage(this.tracker, type, body);
    }
    let drop = false;
    let done = false;
    switch (head.kind) {
      case 'query':
      case 'sync':
        done = type === B.ReadyForQuery;
        break;
      case 'swallowQuery':
        if (type === B.ErrorResponse) {
          // The client's own settings were refused (as PostgreSQL would have at login): end the session.
          this.ended = true;
          const fields = new Map<string, string>();
          let i = 0;
          while (i < body.length && body[i] !== 0) {
            const end = body.indexOf(0, i + 1);
            fields.set(String.fromCharCode(body[i]!), body.toString('utf8', i + 1, end));
            i = end + 1;
          }
          const err = new PgError('FATAL', fields.get('C') ?? '22023', fields.get('M') ?? 'invalid setting', {
            code: 'GPRXY_SETTING_REFUSED',
          });
          queueMicrotask(() => this.host.fail(err));
          return true;
        }
        drop = true;
        done = type === B.ReadyForQuery;
        break;
      case 'reply':
        if (type === B.ErrorResponse) {
          if (head.binds && isPlanInvalidated(body)) {
            // PostgreSQL's error goes to the client; the statement is closed and prepared afresh on next use.
            this.lease?.server.statements.delete(head.binds);
            this.lease?.server.statements.stale.add(head.binds);
          }
          this.skipToSync(1);
          return false;
        }
        done = type === head.ends || (head.ends2 !== NONE && type === head.ends2) || type === 0x49 /* I */;
        break;
      case 'swallowParse':
      case 'swallowClose':
        if (type === B.ErrorResponse) {
          // PostgreSQL's own error reaches the client; the statements after it are skipped up to Sync.
          this.skipToSync(1);
          return false;
        }
        if (type !== (head.kind === 'swallowParse' ? 0x31 : 0x33)) return false; // a notice on the way
        drop = true;
        done = true;
        break;
    }
    if (type === B.ReadyForQuery) this.onReadyForQuery(body, head.kind === 'swallowQuery');
    if (done) {
      this.expect.shift();
      if (this.expect[0]?.kind === 'synth') {
        if (!drop) scanner.flushThrough();
        else scanner.flushBefore();
        this.drainSynth();
      }
    }
    if (type === B.ReadyForQuery && this.expect.length === 0) queueMicrotask(this.releaseTask);
    return drop;
  }

  /** After an ErrorResponse in an extended sequence the server skips to Sync: so do the expectations. */
  private skipToSync(from: number): void {
    const server = this.lease?.server;
    const skipped = this.expect.splice(0, from);
    while (this.expect.length && this.expect[0]!.kind !== 'sync') skipped.push(this.expect.shift()!);
    for (const e of skipped) {
      if (!server) break;
      if (e.kind === 'swallowParse') server.statements.delete(e.name);
      else if (e.kind === 'reply' && e.parses) server.statements.delete(e.parses);
      else if (e.kind === 'swallowClose' && e.stale) server.statements.stale.add(e.name);
      else if (e.kind === 'swallowClose') server.statements.add(e.name);
    }
  }

  private onReadyForQuery(body: Buffer, injected: boolean): void {
    const status = String.fromCharCode(body[0] ?? 0x49) as TxStatus;
    if (injected) return;
    this.clock.ready(body[0] ?? 0x49, (this.lease?.server.outstanding ?? 0) > 0);
    this.clientStatus = status;
    const set = this.pendingSetting;
    this.pendingSetting = undefined;
    if (set && status === 'I') {
      const server = this.lease?.server;
      if ('name' in set) {
        this.settings.set(set.name, SQL_VALUE + set.value);
        server?.applied.set(set.name, SQL_VALUE + set.value);
      } else if ('reset' in set) {
        this.settings.delete(set.reset);
        server?.applied.delete(set.reset);
      } else {
        this.settings.clear();
        server?.applied.clear();
      }
      this.paramsChanged();
    }
    if (this.opts.mode === 'statement' && status !== 'I' && !this.pin) {
      this.ended = true;
      queueMicrotask(() =>
        this.host.fail(
          new PgError('FATAL', '08P01', 'transaction blocks are not allowed in statement pooling mode', {
            code: 'GPRXY_STATEMENT_MODE_TX',
          }),
        ),
      );
    }
  }

  /** Releases the server at ReadyForQuery 'I' with nothing outstanding, unless pinned. */
  private maybeRelease(): void {
    const lease = this.lease;
    if (!lease || this.ended || this.pin) return;
    const server = lease.server;
    if (
      this.expect.length > 0 ||
      this.unsynced ||
      server.inCopy ||
      server.txStatus !== 'I' ||
      server.outstanding > 0
    ) {
      return;
    }
    this.lease = null;
    server.detach();
    lease.release(server.reusable, 'not idle at release');
    this.host.released();
  }

  serverClosed(error: PgError | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.lease = null;
    this.host.fail(error ?? PgError.serverGone('server connection lost'));
  }

  /** The session ends: hand back the lease (the session resets or closes it). */
  stop(): Lease<ServerConnection> | null {
    this.ended = true;
    this.client.onDrain = undefined;
    this.tracker?.end();
    const lease = this.lease;
    this.lease = null;
    if (lease && !lease.server.closed) {
      if (this.unsynced) lease.server.unsynced = true;
      lease.server.detach();
    }
    return lease;
  }
}
