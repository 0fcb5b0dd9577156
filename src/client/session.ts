// ClientSession: owns one client socket. Startup -> Auth -> Attaching -> Active -> Closing -> Closed; routes the
// client to its pool, applies its startup parameters, relays, and returns the server clean (or closes it).
import { randomBytes } from 'node:crypto';
import { type HbaRule, matchHba } from '../auth/hba.ts';
import type { IssuedKey } from '../cancel/registry.ts';
import { findDatabase, poolSettings } from '../config/load.ts';
import type { DatabaseConfig } from '../config/schema.ts';
import type { Logger } from '../log/logger.ts';
import type { AcceptedClient, ClientSocket } from '../net/listener.ts';
import type { Lease, Pool } from '../pool/pool.ts';
import {
  encodeAuthOk,
  encodeBackendKeyData,
  encodeError,
  encodeNegotiateProtocolVersion,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../protocol/backend.ts';
import { PgError, toPgError } from '../protocol/errors.ts';
import { type Frame, MAX_AUTH_MESSAGE, MessageFramer } from '../protocol/framer.ts';
import { QueryTracker } from '../relay/query-tracker.ts';
import { type ClientIO, SessionRelay } from '../relay/relay.ts';
import { TransactionRelay } from '../relay/transaction.ts';
import { type BackendCredential, type ServerConnection, serverTarget } from '../server/connection.ts';
import { type AuthChannel, type AuthOutcome, type AuthType, authenticateClient } from './auth.ts';
import type { ProxyContext } from './context.ts';
import { type SsoLogin, ssoLogin } from './sso.ts';
import { startupSettingMap, startupSettings } from './startup-params.ts';

export type SessionState = 'startup' | 'auth' | 'attaching' | 'active' | 'closing' | 'closed';

const ALLOWED: Record<SessionState, readonly SessionState[]> = {
  startup: ['auth', 'closing', 'closed'],
  auth: ['attaching', 'closing', 'closed'],
  attaching: ['active', 'closing', 'closed'],
  active: ['closing', 'closed'],
  closing: ['closed'],
  closed: [],
};

let nextSessionId = 1;

export class ClientSession implements ClientIO, AuthChannel {
  readonly id = nextSessionId++;
  state: SessionState = 'startup';
  readonly user: string;
  readonly database: string;
  log: Logger;
  readonly connectedAt: number;
  onDrain: (() => void) | undefined;

  private framer: MessageFramer | null = new MessageFramer(MAX_AUTH_MESSAGE);
  private frameWaiter: { resolve(f: Frame): void; reject(e: Error): void } | null = null;
  private lease: Lease<ServerConnection> | null = null;
  private relay: SessionRelay | null = null;
  private txRelay: TransactionRelay | null = null;
  private key: IssuedKey | null = null;
  /** Reading paused while a client pipelines past its login before a server is attached. */
  private heldBack = false;
  private loginTimer: NodeJS.Timeout | undefined;
  private readonly socket: ClientSocket;
  private readonly onEnd: (s: ClientSession) => void;
  private closeReason = '';

  constructor(
    private readonly ctx: ProxyContext,
    private readonly accepted: AcceptedClient,
    onEnd: (s: ClientSession) => void,
  ) {
    this.socket = accepted.socket;
    this.onEnd = onEnd;
    this.connectedAt = accepted.acceptedAt;
    const params = accepted.startup.params;
    this.user = params.get('user') ?? '';
    this.database = params.get('database') || this.user;
    this.log = ctx.log.child({
      session: this.id,
      db: this.database,
      user: this.user,
      client: `${accepted.remoteAddress}:${accepted.remotePort}`,
    });
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (e: NodeJS.ErrnoException) =>
      this.onSocketGone(`client socket error: ${e.code ?? e.message}`),
    );
    this.socket.on('close', () => this.onSocketGone('client closed the connection'));
    this.socket.on('drain', () => this.onDrain?.());
  }

  private transition(to: SessionState): void {
    if (this.state === to) return;
    if (!ALLOWED[this.state].includes(to)) throw new Error(`GPRXY_SESSION_STATE: ${this.state} -> ${to}`);
    this.state = to;
  }

  /** Runs the login; the session then relays until either side ends. */
  async start(): Promise<void> {
    const cfg = this.ctx.config();
    const remaining = Math.max(1, cfg.client_login_timeout - (Date.now() - this.accepted.acceptedAt));
    this.loginTimer = setTimeout(() => {
      this.log.info({ event: 'login_failed', reason: 'client_login_timeout' }, 'login failed');
      this.fail(
        new PgError('FATAL', '08006', 'login timed out (client_login_timeout)', {
          code: 'GPRXY_LOGIN_TIMEOUT',
        }),
      );
    }, remaining);
    this.loginTimer.unref();
    if (this.accepted.leftover.length) this.framer?.push(this.accepted.leftover);
    this.socket.resume();
    try {
      await this.login();
    } catch (e) {
      const err = toPgError(e, 'GPRXY_LOGIN');
      if (this.state !== 'closed' && this.state !== 'closing') {
        this.log.info(
          { event: 'login_failed', reason: err.code ?? err.sqlState, sqlstate: err.sqlState },
          'login failed',
        );
        const ev = this.ctx.events.clientLoginFailed;
        if (ev.hasSubscribers) {
          const reason = err.code ?? err.sqlState;
          ev.publish({
            session: this.id,
            database: this.database,
            user: this.user,
            sqlstate: err.sqlState,
            reason,
          });
        }
      }
      if (!(err.sqlState === 'XX000')) this.fail(err);
      else {
        this.log.error({ err: e }, 'internal error during login');
        this.fail(err);
      }
    } finally {
      clearTimeout(this.loginTimer);
      // A cleared Timeout still holds its callback: let both go (10,000 idle clients keep 10,000 sessions).
      this.loginTimer = undefined;
    }
  }

  private async login(): Promise<void> {
    const cfg = this.ctx.config();
    const a = this.accepted;
    const startup = a.startup;
    if (this.ctx.draining()) throw PgError.shuttingDown();
    if (this.ctx.clientCount() > cfg.max_client_conn) {
      throw PgError.tooManyConnections(
        'no more connections allowed (max_client_conn)',
        'GPRXY_MAX_CLIENT_CONN',
      );
    }
    if (this.user === '')
      throw PgError.notAllowed('no PostgreSQL user name specified in startup packet', 'GPRXY_NO_USER');
    if (startup.params.has('replication')) {
      const r = startup.params.get('replication');
      if (r !== 'false' && r !== 'off' && r !== '0' && r !== 'no') {
        throw new PgError('FATAL', '0A000', 'replication connections are not supported by gprxy yet', {
          code: 'GPRXY_REPLICATION',
        });
      }
    }
    if (cfg.listen.require_tls && !a.tls && !(a.loopback && cfg.listen.allow_plain_loopback)) {
      throw PgError.notAllowed('gprxy requires TLS (connect with sslmode=require)', 'GPRXY_TLS_REQUIRED');
    }
    // The admin console's virtual database (gprxy/pgbouncer) has no pool: db is null for it.
    const db = this.ctx.admin.isConsole(this.database) ? null : findDatabase(cfg, this.database);
    if (db === undefined) throw PgError.unknownDatabase(this.database);

    // Protocol 3.0 only; _pq_ options are never applied as settings.
    const unknownOpts = [...startup.params.keys()].filter((k) => k.startsWith('_pq_.'));
    if (startup.minor > 0 || unknownOpts.length) this.send(encodeNegotiateProtocolVersion(0, unknownOpts));

    this.transition('auth');
    const method = this.hbaMethod();
    await this.throttle();
    let outcome: AuthOutcome;
    try {
      outcome =
        method === 'cert'
          ? this.certLogin()
          : method === 'oidc'
            ? await this.ssoLogin()
            : await authenticateClient(this, {
                type: method,
                user: this.user,
                secret: await this.ctx.lookupSecret(this.user, this.database),
                cleartextAllowed: a.tls || (a.loopback && cfg.auth.allow_cleartext_loopback),
                mockKey: this.ctx.mockKey,
              });
    } catch (e) {
      if (e instanceof PgError && (e.sqlState === '28P01' || e.sqlState === '28000')) {
        this.ctx.limiter().failed(a.remoteAddress, this.user);
      }
      throw e;
    }
    this.ctx.limiter().succeeded(a.remoteAddress);
    if (outcome.learned) this.ctx.learned.set(this.user, outcome.learned);
    this.send(encodeAuthOk());
    this.log.info({ event: 'login', method: outcome.method, tls: a.tls }, 'client authenticated');
    this.loginMethod = outcome.method;
    const loginEv = this.ctx.events.clientLogin;
    if (loginEv.hasSubscribers) {
      loginEv.publish({ session: this.id, database: this.database, user: this.user, method: outcome.method });
    }

    this.transition('attaching');
    if (db === null) return this.serveAdmin();
    const pool = this.poolFor(db);
    // SSO set_role sessions always run on the relay that scans SQL (it guards the role gprxy set).
    if (this.setRole()) this.ctx.checkServiceLogin(this.database);
    if (pool.settings.pool_mode !== 'session' || this.setRole()) return this.startTransactionMode(pool);
    const lease = await pool.acquire();
    if (this.state !== 'attaching') {
      lease.release(lease.server.reusable, 'client left while waiting');
      return;
    }
    this.lease = lease;
    const server = lease.server;
    const settings = startupSettings(this.settingParams(), server.params, this.forcedSettings());
    if (settings.error) throw settings.error;
    if (settings.sql) {
      const err = await server.query(settings.sql);
      if (err) {
        // The client's own startup value was rejected, as PostgreSQL would have at startup.
        throw new PgError('FATAL', err.sqlState, err.message, { code: 'GPRXY_STARTUP_PARAM' });
      }
    }
    if (this.state !== 'attaching') return;

    for (const [k, v] of server.params) this.queue(encodeParameterStatus(k, v));
    this.key = this.ctx.cancels.issue(this, server.pid);
    this.queue(encodeBackendKeyData(this.key.pid, this.key.secret));
    this.queue(encodeReadyForQuery(server.txStatus));
    this.transition('active');
    clearTimeout(this.loginTimer);
    // Method shorthand, not arrow properties: tsx (esbuild keepNames) renames every arrow property with
    // defineProperty, which turns each closure into a dictionary-mode object (~250 bytes more per session).
    const session = this;
    this.relay = new SessionRelay(
      this,
      server,
      {
        terminate() {
          session.end('client sent Terminate');
        },
        serverClosed(error) {
          session.onServerClosed(error);
        },
        clientProtocolError(error) {
          session.fail(error);
        },
      },
      pool.stats,
      this.queryTracker(),
      this.ctx.config().max_packet_size,
    );
    this.publishStart();
    // Bytes the client sent behind its login (a first query pipelined after the password) wait in the login
    // framer: they go to the server now, after our ReadyForQuery has gone out.
    const pipelined = this.framer?.drain();
    this.framer = null;
    this.flush();
    if (pipelined?.length) this.relay.fromClient(pipelined);
    if (this.heldBack) {
      this.heldBack = false;
      this.socket.resume();
    }
  }

  /**
   * Transaction and statement mode: no server is held between transactions. The login learns the parameters
   * from a real server (with the client's startup settings applied), then a TransactionRelay takes over.
   */
  private async startTransactionMode(pool: Pool<ServerConnection>): Promise<void> {
    const st = pool.settings;
    const settings = startupSettingMap(this.settingParams(), this.forcedSettings());
    if (settings instanceof PgError) throw settings;
    const session = this;
    const relay = new TransactionRelay(
      this,
      // Method shorthand (see SessionRelay above): no per-session dictionary-mode closures.
      {
        lease(later) {
          return pool.lease(later);
        },
        released() {},
        terminate() {
          session.end('client sent Terminate');
        },
        fail(err) {
          session.fail(err);
        },
        pinned(reason) {
          session.ctx.pins.set(reason, (session.ctx.pins.get(reason) ?? 0) + 1);
          session.log.info({ event: 'pin', reason }, 'client pinned to its server');
          const ev = session.ctx.events.pin;
          if (ev.hasSubscribers) ev.publish({ session: session.id, reason });
        },
      },
      {
        mode: st.pool_mode === 'statement' ? 'statement' : 'transaction',
        pinPolicy: st.pin_policy,
        maxPreparedStatements: st.max_prepared_statements,
        maxPacketSize: this.ctx.config().max_packet_size,
        guardIdentity: this.setRole(),
        stats: pool.stats,
        ...(st.pool_mode === 'session' ? { pinFromStart: 'sso_session' as const } : {}),
      },
      new Map(),
      settings,
      this.queryTracker(),
    );
    if (pool.welcome) {
      relay.primeFromCache(pool.welcome, this.accepted.startup.params);
    } else {
      const lease = await pool.acquire();
      pool.welcome ??= new Map(lease.server.loginParams);
      await relay.prime(lease);
    }
    if (this.state !== 'attaching') return;
    for (const [k, v] of relay.params) this.queue(encodeParameterStatus(k, v));
    this.key = this.ctx.cancels.issue(this);
    this.queue(encodeBackendKeyData(this.key.pid, this.key.secret));
    this.queue(encodeReadyForQuery('I'));
    this.transition('active');
    clearTimeout(this.loginTimer);
    this.txRelay = relay;
    this.publishStart();
    const pipelined = this.framer?.drain();
    this.framer = null;
    this.flush();
    if (pipelined?.length) relay.fromClient(pipelined);
    if (this.heldBack) {
      this.heldBack = false;
      this.socket.resume();
    }
  }

  /** The exchange to run: the first matching HBA rule's method, or auth.type without HBA rules. */
  private hbaMethod(): AuthType | 'cert' | 'oidc' {
    const cfg = this.ctx.config();
    const rules = this.ctx.hba();
    if (!rules) return cfg.auth.type;
    const a = this.accepted;
    const where = `host "${a.remoteAddress}", user "${this.user}", database "${this.database}", ${a.tls ? 'SSL encryption' : 'no encryption'}`;
    const rule = matchHba(rules, {
      type: 'host',
      tls: a.tls,
      address: a.remoteAddress,
      database: this.database,
      user: this.user,
    });
    if (!rule) throw PgError.notAllowed(`no pg_hba.conf entry for ${where}`, 'GPRXY_HBA_NO_MATCH');
    this.hbaRule = rule;
    switch (rule.method) {
      case 'reject':
        throw PgError.notAllowed(`pg_hba.conf rejects connection for ${where}`, 'GPRXY_HBA_REJECT');
      case 'password':
        return 'plain';
      default:
        return rule.method;
    }
  }

  private hbaRule: HbaRule | undefined;
  private started = false;
  private loginMethod = '';

  /** A statement tracker for the audit trail, only while someone subscribes to query events. */
  private queryTracker(): QueryTracker | undefined {
    const ch = this.ctx.events.query;
    return ch.hasSubscribers
      ? new QueryTracker(this.id, ch, this.ctx.config().audit.log_parameters)
      : undefined;
  }

  /** The session is up: who it is, for every record that follows. */
  private publishStart(): void {
    this.started = true;
    const ev = this.ctx.events.sessionStart;
    if (!ev.hasSubscribers) return;
    const forced = this.forcedSettings();
    ev.publish({
      session: this.id,
      database: this.database,
      user: this.user,
      identity: this.sso?.identity.name ?? this.user,
      method: this.loginMethod,
      backendRole: this.sso?.role ?? findDatabase(this.ctx.config(), this.database)?.user ?? this.user,
      clientAddress: this.accepted.remoteAddress,
      applicationName:
        forced.get('application_name') ?? this.accepted.startup.params.get('application_name') ?? '',
      tls: this.accepted.tls,
    });
  }
  /** Set when the client logged in with an SSO token. */
  private sso: SsoLogin | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;

  private async ssoLogin(): Promise<AuthOutcome> {
    const cfg = this.ctx.config();
    const a = this.accepted;
    const sso = await ssoLogin(this, this.ctx, {
      user: this.user,
      database: this.database,
      exchange: this.hbaRule?.options.exchange === 'oauthbearer' ? 'oauthbearer' : 'password',
      secureEnough: a.tls || (a.loopback && cfg.sso.allow_loopback_plain),
    });
    this.sso = sso;
    this.log = this.log.child({ identity: sso.identity.name, role: sso.role });
    this.scheduleExpiry(sso.identity.expiresAt);
    return { method: sso.method };
  }

  /** token_expiry: disconnect ends the session when the token expires (after the grace); login_only only logs. */
  private scheduleExpiry(expiresAt: number): void {
    const cfg = this.ctx.config();
    const ms = Math.max(0, expiresAt + cfg.sso.expiry_grace - Date.now());
    this.expiryTimer = setTimeout(
      () => {
        if (this.state === 'closed' || this.state === 'closing') return;
        const disconnect = this.ctx.config().sso.token_expiry === 'disconnect';
        this.log.info(
          { event: 'token_expired', action: disconnect ? 'disconnect' : 'keep' },
          'SSO token expired',
        );
        const ev = this.ctx.events.tokenExpired;
        if (ev.hasSubscribers) ev.publish({ session: this.id, action: disconnect ? 'disconnect' : 'keep' });
        if (disconnect) {
          this.fail(
            new PgError(
              'FATAL',
              '57P01',
              'terminating connection because the login token expired: log in again',
              {
                code: 'GPRXY_TOKEN_EXPIRED',
                hint: 'run gprxy login, then reconnect',
              },
            ),
          );
        }
      },
      Math.min(ms, 2 ** 31 - 1),
    );
    this.expiryTimer.unref();
  }

  /** An SSO session on a set_role route: one service login, SET ROLE to the mapped role. */
  private setRole(): boolean {
    return this.sso !== undefined && this.ctx.config().sso.backend === 'set_role';
  }

  /** Settings gprxy forces for this session: an SSO identity on application_name and gprxy.identity. */
  private forcedSettings(): Map<string, string> {
    const m = new Map<string, string>();
    if (this.sso && this.setRole()) m.set('role', this.sso.role);
    if (this.sso) {
      m.set('application_name', `gprxy:${this.sso.identity.name}`);
      m.set('gprxy.identity', this.sso.identity.name);
    }
    return m;
  }

  /** Startup parameters as applied: on SSO routes, nothing the client sends may claim another role or identity. */
  private settingParams(): ReadonlyMap<string, string> {
    const params = this.accepted.startup.params;
    if (!this.sso) return params;
    const out = new Map(params);
    for (const k of params.keys()) {
      const l = k.toLowerCase();
      if (l === 'role' || l === 'session_authorization' || l.startsWith('gprxy.')) out.delete(k);
    }
    return out;
  }

  /**
   * HBA `cert`: the TLS client certificate (verified against listen.tls.ca) names the user: its common name must be
   * the startup user, or map to it through auth.user_maps.<map> when the rule says map=<name>.
   */
  private certLogin(): AuthOutcome {
    const socket = this.accepted.socket as ClientSocket & {
      authorized?: boolean;
      getPeerCertificate?: () => { subject?: { CN?: string | string[] } };
    };
    const cn =
      socket.authorized && socket.getPeerCertificate ? socket.getPeerCertificate().subject?.CN : undefined;
    const name = Array.isArray(cn) ? cn[0] : cn;
    if (!this.accepted.tls || !name) {
      throw PgError.notAllowed(`connection requires a valid client certificate`, 'GPRXY_CERT_MISSING');
    }
    const mapName = this.hbaRule?.options.map;
    const mapped = mapName ? this.ctx.config().auth.user_maps[mapName]?.[name] : name;
    if (mapped !== this.user) {
      throw PgError.notAllowed(
        `certificate authentication failed for user "${this.user}"`,
        'GPRXY_CERT_USER',
      );
    }
    return { method: 'cert' };
  }

  /** Failed logins from this address or for this user beyond their budget: hold the login back first. */
  private async throttle(): Promise<void> {
    const d = this.ctx.limiter().delay(this.accepted.remoteAddress, this.user);
    if (d.ms === 0) return;
    this.log.info(
      { event: 'login_throttled', limit: d.limit, delay_ms: d.ms },
      'login delayed after repeated failures',
    );
    await new Promise((r) => setTimeout(r, d.ms));
  }

  // ---- admin console (src/admin/) -----------------------------------------------------------------------------

  /** After authentication, the admin console serves this socket instead of a pool (28000 for other users). */
  private async serveAdmin(): Promise<void> {
    this.ctx.admin.authorize(this.user);
    this.transition('active');
    clearTimeout(this.loginTimer);
    await this.ctx.admin.serve(this);
  }

  /** The server this client is linked to right now (admin console, API). */
  get serverId(): number | undefined {
    return (this.lease?.server ?? this.txRelay?.server)?.id;
  }

  /** Where the client connected from, for the admin console and API. */
  get peer(): { addr: string; port: number; tls: boolean; applicationName: string } {
    const a = this.accepted;
    const applicationName = a.startup.params.get('application_name') ?? '';
    return { addr: a.remoteAddress, port: a.remotePort, tls: a.tls, applicationName };
  }

  // ------------------------------------------------------------------------------------------------------------

  private poolFor(db: DatabaseConfig): Pool<ServerConnection> {
    const cfg = this.ctx.config();
    const cfg0 = this.ctx.config();
    const backendUser = this.sso
      ? this.setRole()
        ? cfg0.sso.service_user!
        : this.sso.role
      : (db.user ?? this.user);
    const key = { database: this.database, user: backendUser };
    const settings = poolSettings(cfg, this.database, backendUser);
    const ctx = this.ctx;
    const forced = db.user !== undefined && db.password !== undefined;
    const forcedPassword = db.password;
    // per_user: the person's own login, with the password gprxy provisioned for it.
    const perUser = this.sso !== undefined && cfg.sso.backend === 'per_user';
    const database = db.dbname ?? this.database;
    return ctx.pools.getOrCreate(key, settings, () => {
      // Read the config and credentials at dial time: a reload or a re-learned credential applies to new servers.
      const c = ctx.config();
      const d = findDatabase(c, key.database) ?? db;
      const credential: BackendCredential | undefined = perUser
        ? ctx.perUser.credential(backendUser)
        : forced
          ? { kind: 'password', password: forcedPassword! }
          : backendCredential(ctx, backendUser);
      return ctx
        .connectServer(serverTarget(c, key.database, d, backendUser, credential, database))
        .catch((e: unknown) => {
          // A recovered SCRAM key the server refuses belongs to an old verifier: forget it (the next login of that
          // user teaches the new one).
          if (e instanceof PgError && e.sqlState === '28P01' && ctx.learned.get(backendUser) === credential) {
            ctx.learned.delete(backendUser);
          }
          if (perUser && e instanceof PgError && e.sqlState === '28P01') ctx.perUser.forget(backendUser);
          throw e;
        });
    });
  }

  // ---- AuthChannel -------------------------------------------------------------------------------------------

  send(bytes: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  next(): Promise<Frame> {
    const f = this.framer?.next();
    if (f) return Promise.resolve(f);
    if (this.state === 'closing' || this.state === 'closed') {
      return Promise.reject(new PgError('FATAL', '08006', 'client went away', { code: 'GPRXY_CLIENT_GONE' }));
    }
    return new Promise((resolve, reject) => {
      this.frameWaiter = { resolve, reject };
    });
  }

  private pendingOut: Buffer[] = [];

  private queue(bytes: Buffer): void {
    this.pendingOut.push(bytes);
  }

  private flush(): void {
    if (this.pendingOut.length === 0) return;
    const out = this.pendingOut.length === 1 ? this.pendingOut[0]! : Buffer.concat(this.pendingOut);
    this.pendingOut = [];
    this.send(out);
  }

  // ---- ClientIO (for the relay) ------------------------------------------------------------------------------

  write(bytes: Buffer): boolean {
    if (this.socket.destroyed) return true;
    return this.socket.write(bytes);
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  /** Cancellable: a CancelRequest for this session's key goes to the server it uses right now. */
  cancel(): void {
    const server = this.lease?.server ?? this.txRelay?.server;
    if (!server || server.closed || this.state !== 'active') {
      this.log.debug({ event: 'cancel_idle' }, 'cancel request while no query runs: nothing to do');
      return;
    }
    this.log.info({ event: 'cancel', server_pid: server.pid }, 'forwarding cancel request');
    this.ctx.cancelServer(server);
  }

  // ---- inbound -----------------------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    // audit.on_overflow: block holds this client's reads (never the event loop) until the audit queue has room.
    const audit = this.ctx.audit;
    if (audit?.blocking && audit.full() && this.state === 'active') {
      this.socket.pause();
      void audit.room().then(() => this.socket.resume());
    }
    if (this.relay) {
      this.relay.fromClient(chunk);
      return;
    }
    if (this.txRelay) {
      this.txRelay.fromClient(chunk);
      return;
    }
    if (!this.framer) return;
    try {
      this.framer.push(chunk);
      if (this.frameWaiter) {
        const f = this.framer.next();
        if (f) {
          const w = this.frameWaiter;
          this.frameWaiter = null;
          w.resolve(f);
        }
      } else if (this.state === 'attaching' && this.framer.pending > MAX_AUTH_MESSAGE && !this.heldBack) {
        // Pipelining past the login while waiting for a server: stop reading until the relay takes the bytes.
        this.heldBack = true;
        this.socket.pause();
      }
    } catch (e) {
      this.fail(toPgError(e));
    }
  }

  private onSocketGone(reason: string): void {
    if (this.state === 'closed' || this.state === 'closing') return;
    this.end(reason);
  }

  private onServerClosed(error: PgError | undefined): void {
    // A server FATAL was already forwarded as PostgreSQL said it; a silent loss gets 08006.
    this.log.warn(
      { event: 'server_lost', reason: this.lease?.server.closeReason, sqlstate: error?.sqlState },
      'server connection lost',
    );
    if (error) this.end('server closed the connection');
    else this.fail(PgError.serverGone('server connection lost'));
  }

  // ---- ending ------------------------------------------------------------------------------------------------

  /** Sends a FATAL (or ERROR) and ends the session. */
  fail(err: PgError): void {
    if (this.state === 'closed' || this.state === 'closing') return;
    this.flush();
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(encodeError(err));
    this.end(err.message);
  }

  /** Ends the session: the server goes back clean or is closed; never handed on dirty. */
  end(reason: string): void {
    if (this.state === 'closed' || this.state === 'closing') return;
    this.closeReason = reason;
    const wasActive = this.state === 'active';
    this.transition('closing');
    clearTimeout(this.loginTimer);
    clearTimeout(this.expiryTimer);
    const w = this.frameWaiter;
    this.frameWaiter = null;
    w?.reject(new PgError('FATAL', '08006', 'client went away', { code: 'GPRXY_CLIENT_GONE' }));
    if (this.key) this.ctx.cancels.revoke(this.key);
    this.relay?.stop();
    this.relay = null;
    const txLease = this.txRelay?.stop() ?? null;
    const pinned = this.txRelay?.pinReason != null;
    this.txRelay = null;
    // After the relays stopped: statements they were still tracking are recorded under this session first.
    const endEv = this.ctx.events.sessionEnd;
    if (this.started && endEv.hasSubscribers) {
      endEv.publish({ session: this.id, reason, durationMs: Date.now() - this.connectedAt });
    }
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    const lease = this.lease;
    this.lease = null;
    if (lease) void this.returnServer(lease, true);
    // Transaction mode resets only a pinned server (pgbouncer semantics); a clean one goes back as it is.
    if (txLease) void this.returnServer(txLease, pinned);
    this.transition('closed');
    this.log.info(
      { event: 'disconnect', reason, duration_ms: Date.now() - this.connectedAt, was_active: wasActive },
      'client disconnected',
    );
    this.onEnd(this);
  }

  /** Resets a session-mode server (server_reset_query at ReadyForQuery 'I') and returns it, or closes it. */
  private async returnServer(lease: Lease<ServerConnection>, reset: boolean): Promise<void> {
    const server = lease.server;
    if (server.closed) return lease.release(false, 'closed');
    // The client left while gprxy itself was talking to the server (applying its startup parameters): that
    // exchange's replies are still coming, so nothing else can be sent; close rather than reset.
    if (server.state === 'query') return lease.release(false, 'client left during login');
    const settings = poolSettings(this.ctx.config(), this.database, server.target.user);
    try {
      if (server.outstanding > 0 || server.inCopy || server.unsynced) {
        // A query is still running, or extended-protocol work waits for a Sync that will never come (no Query can
        // clean that up): cancel whatever runs and drop the server rather than wait on it.
        this.ctx.cancelServer(server);
        return lease.release(false, 'client left during a query');
      }
      // A cancel the client sent may still be on its way: it must land before anything else runs on this server.
      await server.cancelsSettled();
      if (server.closed) return lease.release(false, 'closed');
      if (server.txStatus !== 'I') {
        const err = await server.query('ROLLBACK');
        if (err || !server.reusable) return lease.release(false, 'rollback failed');
      }
      if (reset && settings.server_reset_query) {
        const err = await server.query(settings.server_reset_query);
        if (err) {
          this.log.warn({ event: 'reset_failed', sqlstate: err.sqlState }, 'server_reset_query failed');
          return lease.release(false, 'reset failed');
        }
        // DISCARD ALL (or any reset) leaves no settings and no prepared statements behind.
        server.applied.clear();
        server.statements.clear();
      }
      lease.release(server.reusable, 'not idle after reset');
    } catch {
      lease.release(false, 'reset failed');
    }
  }

  get reason(): string {
    return this.closeReason;
  }
}

/** What gprxy logs in to the server with for this user: configured password, auth file plaintext, or learned. */
export function backendCredential(ctx: ProxyContext, user: string): BackendCredential | undefined {
  const configured = ctx.config().users[user]?.password;
  if (configured !== undefined) return { kind: 'password', password: configured };
  const s = ctx.secretFor(user);
  if (s?.kind === 'plain') return { kind: 'password', password: s.password };
  const learned = ctx.learned.get(user);
  if (learned) return learned;
  if (s?.kind === 'md5') return { kind: 'md5', hash: s.hash };
  return undefined;
}

export function newMockKey(): Buffer {
  return randomBytes(32);
}
