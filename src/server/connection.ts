// ServerConnection: owns one backend socket. Login, ReadyForQuery status, reported parameters, internal queries
// (reset, SET), and the inbound scanner that feeds an attached client.

import { md5Response } from '../auth/md5.ts';
import { ScramClient } from '../auth/scram-client.ts';
import { type Config, poolSettings } from '../config/load.ts';
import type { DatabaseConfig, ServerTlsConfig } from '../config/schema.ts';
import type { DialTarget, ServerSocket } from '../net/dial.ts';
import {
  AuthCode,
  B,
  decodeAuthentication,
  decodeBackendKeyData,
  decodeDataRow,
  decodeErrorFields,
  decodeParameterStatus,
  decodeReadyForQuery,
  pgErrorFromFields,
  type TxStatus,
} from '../protocol/backend.ts';
import { PgError } from '../protocol/errors.ts';
import { MessageFramer, Scan, type ScanHandler, StreamScanner, scanPolicy } from '../protocol/framer.ts';
import {
  encodeExtendedQuery,
  encodePassword,
  encodeQuery,
  encodeSaslInitialResponse,
  encodeSaslResponse,
  encodeStartupMessage,
  TERMINATE,
} from '../protocol/frontend.ts';
import { StatementCache } from './statement-cache.ts';

/** What gprxy logs in to PostgreSQL with, per user: a plaintext password, an MD5 hash, or a recovered SCRAM key. */
export type BackendCredential =
  | { kind: 'password'; password: string }
  | { kind: 'md5'; hash: string }
  | { kind: 'scram-key'; clientKey: Buffer; serverKey: Buffer };

export interface ServerTarget {
  host: string;
  port: number;
  tls: ServerTlsConfig;
  connectTimeoutMs: number;
  database: string;
  user: string;
  credential: BackendCredential | undefined;
}

/**
 * The server behind database entry `name` for a login as `user`: the entry's host, port and TLS (or the global
 * server_tls), the pool's server_connect_timeout, and the database to ask for (the entry's dbname, else the name).
 */
export function serverTarget(
  cfg: Config,
  name: string,
  entry: DatabaseConfig,
  user: string,
  credential: BackendCredential | undefined,
  database = entry.dbname ?? name,
): ServerTarget {
  return {
    host: entry.host,
    port: entry.port,
    tls: entry.server_tls ?? cfg.server_tls,
    connectTimeoutMs: poolSettings(cfg, name, user).server_connect_timeout,
    database,
    user,
    credential,
  };
}

export type Dialer = (t: DialTarget) => Promise<{ socket: ServerSocket; tls: boolean }>;

/** Receives an attached server's inbound bytes and end. */
export interface ServerSink {
  /** Extra message types the sink inspects (transaction mode); the connection's own Z/S/E are always inspected. */
  readonly policy?: Uint8Array;
  /** An inspected message, after the connection updated its own state; true drops it. */
  onServerMessage?(type: number, body: Buffer, scanner: StreamScanner): boolean;
  toClient(bytes: Buffer): void;
  /** Bracket one server read, so everything it forwards leaves in one client write. */
  corkClient?(): void;
  uncorkClient?(): void;
  /** The server closed or failed while attached; `error` is the server's own FATAL when it sent one. */
  serverClosed(error: PgError | undefined): void;
}

export type ServerState = 'login' | 'idle' | 'attached' | 'query' | 'closed';

const ALLOWED: Record<ServerState, readonly ServerState[]> = {
  login: ['idle', 'closed'],
  idle: ['attached', 'query', 'closed'],
  attached: ['idle', 'query', 'closed'],
  query: ['idle', 'attached', 'closed'],
  closed: [],
};

/** Inbound types the connection inspects while attached: status, parameters, errors; copy responses are noted. */
const RELAY_POLICY = scanPolicy({
  Z: Scan.INSPECT,
  S: Scan.INSPECT,
  E: Scan.INSPECT,
  G: Scan.NOTE,
  H: Scan.NOTE,
  W: Scan.NOTE,
});

/** A sink's policy plus the types the connection itself must see. */
function mergePolicy(policy: Uint8Array): Uint8Array {
  if (policy === RELAY_POLICY) return policy;
  const p = Uint8Array.from(policy);
  for (let i = 0; i < 256; i++) p[i] = Math.max(p[i]!, RELAY_POLICY[i]!);
  return p;
}

let nextId = 1;

/** A Map that counts its changes (set, delete, clear), so a reader can tell whether it changed since it looked. */
export class VersionedMap<K, V> extends Map<K, V> {
  version = 0;

  override set(key: K, value: V): this {
    this.version++;
    return super.set(key, value);
  }

  override delete(key: K): boolean {
    this.version++;
    return super.delete(key);
  }

  override clear(): void {
    this.version++;
    super.clear();
  }
}

export class ServerConnection implements ScanHandler {
  readonly id = nextId++;
  readonly createdAt = Date.now();
  lastUsedAt = Date.now();
  pid = 0;
  secret: Buffer = Buffer.alloc(0);
  txStatus: TxStatus = 'I';
  /** Queries and Syncs sent by the attached client whose ReadyForQuery has not come back yet. */
  outstanding = 0;
  /** In COPY (in, out or both) since the last ReadyForQuery. */
  inCopy = false;
  readonly params = new VersionedMap<string, string>();
  /** The parameters as reported at login, before any client changed them. */
  loginParams: ReadonlyMap<string, string> = new Map();
  /** Settings gprxy applied for the current or last client (name -> SQL value text), for transaction-mode sync. */
  readonly applied = new VersionedMap<string, string>();
  /**
   * Transaction-mode sync: the client state (TransactionRelay's sync key) this server was last found in step with,
   * and params.version + applied.version at that time. Any change to either map since makes it stale.
   */
  syncedKey: string | undefined;
  syncedVersion = -1;
  /** Named statements this server holds (transaction mode). */
  readonly statements = new StatementCache(200);
  /** An extended-protocol sequence was left without its Sync: the server is not at a clean boundary. */
  unsynced = false;
  state: ServerState = 'login';
  /** Why the connection closed, for logs. */
  closeReason = '';

  private sink: ServerSink | null = null;
  private scanner: StreamScanner;
  private readonly scanners = new Map<Uint8Array, StreamScanner>();
  private framer = new MessageFramer(1024 * 1024);
  private waiter: ((f: { type: number; body: Buffer } | null) => void) | null = null;
  private fatal: PgError | undefined;
  private readonly closeListeners: ((c: ServerConnection) => void)[] = [];

  private constructor(
    private readonly socket: ServerSocket,
    readonly target: ServerTarget,
  ) {
    this.scanner = new StreamScanner(RELAY_POLICY, 1024 * 1024, this);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => this.onClose(`socket error: ${e.code ?? e.message}`));
    socket.on('close', () => this.onClose('server closed the connection'));
    socket.on('drain', () => this.onDrain?.());
  }

  /** Called when a paused writer may continue (the relay sets it). */
  onDrain: (() => void) | undefined;

  static async connect(target: ServerTarget, dial: Dialer): Promise<ServerConnection> {
    const { socket } = await dial({
      host: target.host,
      port: target.port,
      tls: target.tls,
      connectTimeoutMs: target.connectTimeoutMs,
    });
    const conn = new ServerConnection(socket, target);
    const timer = setTimeout(() => conn.close('login timeout'), target.connectTimeoutMs);
    try {
      await conn.login();
      return conn;
    } catch (e) {
      conn.close('login failed');
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  /** Clean and idle at a message boundary: safe to hand to another client. */
  get reusable(): boolean {
    return (
      this.state !== 'closed' &&
      this.txStatus === 'I' &&
      this.outstanding === 0 &&
      !this.inCopy &&
      !this.unsynced
    );
  }

  onClosed(fn: (c: ServerConnection) => void): void {
    this.closeListeners.push(fn);
  }

  private transition(to: ServerState): void {
    if (this.state === to) return;
    if (!ALLOWED[this.state].includes(to)) throw new Error(`GPRXY_SERVER_STATE: ${this.state} -> ${to}`);
    this.state = to;
  }

  // ---- login -------------------------------------------------------------------------------------------------

  private async login(): Promise<void> {
    const t = this.target;
    this.socket.write(
      encodeStartupMessage([
        ['user', t.user],
        ['database', t.database],
      ]),
    );
    let scram: ScramClient | null = null;
    for (;;) {
      const f = await this.nextFrame();
      switch (f.type) {
        case B.Authentication: {
          const req = decodeAuthentication(f.body);
          if (req.code === AuthCode.Ok) {
            // A server that skips SASLFinal has not proven it knows the verifier.
            if (scram && !scram.done)
              throw this.loginError('server accepted the login before completing SCRAM');
            break;
          }
          if (req.code === AuthCode.CleartextPassword) {
            this.socket.write(encodePassword(this.plainPassword('cleartext')));
          } else if (req.code === AuthCode.MD5Password && 'salt' in req) {
            const c = t.credential;
            const secret = c?.kind === 'password' ? c.password : c?.kind === 'md5' ? c.hash : undefined;
            if (secret === undefined) throw this.noCredential('md5');
            this.socket.write(encodePassword(md5Response(t.user, secret, req.salt)));
          } else if (req.code === AuthCode.SASL && 'mechanisms' in req) {
            if (!req.mechanisms.includes('SCRAM-SHA-256')) {
              throw this.loginError(
                `server offers no supported SASL mechanism (${req.mechanisms.join(', ')})`,
              );
            }
            const c = t.credential;
            if (c?.kind === 'password') scram = new ScramClient({ password: c.password });
            else if (c?.kind === 'scram-key')
              scram = new ScramClient({ clientKey: c.clientKey, serverKey: c.serverKey });
            else throw this.noCredential('scram-sha-256');
            this.socket.write(encodeSaslInitialResponse('SCRAM-SHA-256', scram.clientFirst()));
          } else if (req.code === AuthCode.SASLContinue && 'data' in req && scram) {
            this.socket.write(encodeSaslResponse(await scram.serverFirst(req.data)));
          } else if (req.code === AuthCode.SASLFinal && 'data' in req && scram) {
            scram.serverFinal(req.data);
          } else {
            throw this.loginError(`unsupported authentication request ${req.code} from server`);
          }
          break;
        }
        case B.ParameterStatus: {
          const [k, v] = decodeParameterStatus(f.body);
          this.params.set(k, v);
          break;
        }
        case B.BackendKeyData: {
          const k = decodeBackendKeyData(f.body);
          this.pid = k.pid;
          this.secret = k.secret;
          break;
        }
        case B.ReadyForQuery:
          this.txStatus = decodeReadyForQuery(f.body);
          this.loginParams = new Map(this.params);
          this.transition('idle');
          return;
        case B.ErrorResponse:
          throw pgErrorFromFields(decodeErrorFields(f.body));
        default:
          // NoticeResponse, NegotiateProtocolVersion: nothing to do.
          break;
      }
    }
  }

  private plainPassword(method: string): string {
    const c = this.target.credential;
    if (c?.kind !== 'password') throw this.noCredential(method);
    return c.password;
  }

  private noCredential(method: string): PgError {
    return new PgError(
      'FATAL',
      '28000',
      `gprxy has no credential to log in to the server as "${this.target.user}" with ${method}`,
      {
        code: 'GPRXY_NO_BACKEND_CREDENTIAL',
        hint: 'give the user a password in users.<name>.password or the auth file, or a SCRAM verifier matching the server',
      },
    );
  }

  private loginError(message: string): PgError {
    return new PgError('FATAL', '08P01', message, { code: 'GPRXY_SERVER_LOGIN' });
  }

  // ---- inbound -----------------------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    this.lastUsedAt = Date.now();
    if (this.state === 'attached') {
      // One client write per server read: the rows and their ReadyForQuery leave together.
      const sink = this.sink;
      sink?.corkClient?.();
      try {
        this.scanner.push(chunk);
      } catch (e) {
        this.fatal = e instanceof PgError ? e : undefined;
        this.close('protocol error from server');
      } finally {
        sink?.uncorkClient?.();
      }
      return;
    }
    try {
      this.framer.push(chunk);
      if (this.waiter) {
        // Hand over one message; the waiter's owner reads the rest through nextFrame() in order.
        const f = this.framer.next();
        if (f === null) return;
        const w = this.waiter;
        this.waiter = null;
        w(f);
      } else if (this.state === 'idle') {
        for (let f = this.framer.next(); f !== null; f = this.framer.next()) this.unsolicited(f.type, f.body);
      }
    } catch {
      this.close('protocol error from server');
    }
  }

  /** A message while nobody waits: a FATAL (e.g. pg_terminate_backend) closes; a parameter change is recorded. */
  private unsolicited(type: number, body: Buffer): void {
    if (type === B.ErrorResponse) {
      this.fatal = pgErrorFromFields(decodeErrorFields(body));
      this.close(`server error while idle: ${this.fatal.sqlState}`);
    } else if (type === B.ParameterStatus) {
      const [k, v] = decodeParameterStatus(body);
      this.params.set(k, v);
    }
  }

  private nextFrame(): Promise<{ type: number; body: Buffer }> {
    const f = this.framer.next();
    if (f) return Promise.resolve(f);
    if (this.state === 'closed') return Promise.reject(this.fatal ?? PgError.serverGone());
    return new Promise((res, rej) => {
      this.waiter = (frame) => (frame ? res(frame) : rej(this.fatal ?? PgError.serverGone()));
    });
  }

  // ScanHandler: the attached relay's view of inbound messages.
  onNote(_type: number): void {
    this.inCopy = true;
  }

  onMessage(type: number, body: Buffer): boolean {
    if (type === B.ReadyForQuery) {
      this.txStatus = decodeReadyForQuery(body);
      if (this.outstanding > 0) this.outstanding--;
      this.inCopy = false;
    } else if (type === B.CopyInResponse || type === B.CopyOutResponse || type === B.CopyBothResponse) {
      // Inspected (not only noted) when a sink tracks COPY for the audit trail.
      this.inCopy = true;
    } else if (type === B.ParameterStatus) {
      const [k, v] = decodeParameterStatus(body);
      this.params.set(k, v);
    } else if (
      type === B.ErrorResponse &&
      body.length > 2 &&
      (body.includes('SFATAL\0') || body.includes('SPANIC\0'))
    ) {
      this.fatal = pgErrorFromFields(decodeErrorFields(body));
    }
    const sink = this.sink;
    return sink?.onServerMessage ? sink.onServerMessage(type, body, this.scanner) : false;
  }

  forward(bytes: Buffer): void {
    this.sink?.toClient(bytes);
  }

  // ---- attach / detach ---------------------------------------------------------------------------------------

  attach(sink: ServerSink): void {
    this.transition('attached');
    this.sink = sink;
    const policy = sink.policy ?? RELAY_POLICY;
    let scanner = this.scanners.get(policy);
    if (!scanner) {
      scanner = new StreamScanner(mergePolicy(policy), 1024 * 1024, this);
      this.scanners.set(policy, scanner);
    }
    this.scanner = scanner;
    this.outstanding = 0;
    this.inCopy = false;
  }

  detach(): void {
    this.sink = null;
    this.onDrain = undefined;
    if (this.state === 'attached') this.transition('idle');
    this.socket.resume();
  }

  /** Writes client bytes; false means the socket buffer is full (pause the source until onDrain). */
  write(bytes: Buffer): boolean {
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

  /**
   * Runs SQL gprxy itself needs (reset, SET) while no client is attached and the server is at a message
   * boundary; swallows the replies. Resolves with the server's first error, if any.
   */
  async query(sql: string): Promise<PgError | undefined> {
    // One internal query at a time: a second one would take the first one's replies for its own.
    if (this.state === 'query') throw PgError.internal('GPRXY_SERVER_BUSY');
    const back = this.state;
    this.transition('query');
    this.socket.write(encodeQuery(sql));
    let error: PgError | undefined;
    for (;;) {
      const f = await this.nextFrame();
      if (f.type === B.ErrorResponse) error ??= pgErrorFromFields(decodeErrorFields(f.body));
      else if (f.type === B.ParameterStatus) {
        const [k, v] = decodeParameterStatus(f.body);
        this.params.set(k, v);
      } else if (f.type === B.ReadyForQuery) {
        this.txStatus = decodeReadyForQuery(f.body);
        this.transition(back === 'attached' ? 'attached' : 'idle');
        return error;
      }
    }
  }

  /** A parameterized query gprxy itself runs (auth_query): its rows as text, or the server's error. */
  async queryRows(
    sql: string,
    params: readonly (string | null)[],
  ): Promise<{ rows: (string | null)[][] } | PgError> {
    if (this.state === 'query') throw PgError.internal('GPRXY_SERVER_BUSY');
    const back = this.state;
    this.transition('query');
    this.socket.write(encodeExtendedQuery(sql, params));
    const rows: (string | null)[][] = [];
    let error: PgError | undefined;
    for (;;) {
      const f = await this.nextFrame();
      if (f.type === B.DataRow) rows.push(decodeDataRow(f.body));
      else if (f.type === B.ErrorResponse) error ??= pgErrorFromFields(decodeErrorFields(f.body));
      else if (f.type === B.ReadyForQuery) {
        this.txStatus = decodeReadyForQuery(f.body);
        this.transition(back === 'attached' ? 'attached' : 'idle');
        return error ?? { rows };
      }
    }
  }

  // ---- close -------------------------------------------------------------------------------------------------

  close(reason: string): void {
    if (this.state === 'closed') return;
    this.closeReason = reason;
    if (!this.socket.destroyed && this.socket.writable) this.socket.end(TERMINATE);
    this.onClose(reason);
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  // ---- cancel requests in flight --------------------------------------------------------------------------------

  private readonly cancels = new Set<Promise<void>>();

  /** A CancelRequest sent for this server; it settles once the cancel connection has closed. */
  trackCancel(sent: Promise<void>): void {
    this.cancels.add(sent);
    void sent.finally(() => this.cancels.delete(sent));
  }

  /**
   * Resolves when no CancelRequest for this server is on its way any more (PostgreSQL has signalled the backend
   * before it closes the cancel connection). Until then the server must not run anything for another client.
   */
  async cancelsSettled(): Promise<void> {
    while (this.cancels.size > 0) await Promise.allSettled([...this.cancels]);
  }

  /** The PostgreSQL FATAL the server sent before closing, if any. */
  get fatalError(): PgError | undefined {
    return this.fatal;
  }

  private onClose(reason: string): void {
    if (this.state === 'closed') return;
    this.closeReason ||= reason;
    this.state = 'closed';
    this.socket.destroy();
    const w = this.waiter;
    this.waiter = null;
    w?.(null);
    const sink = this.sink;
    this.sink = null;
    sink?.serverClosed(this.fatal);
    for (const fn of this.closeListeners) fn(this);
  }
}

export function cancelTarget(conn: ServerConnection): DialTarget {
  return {
    host: conn.target.host,
    port: conn.target.port,
    tls: conn.target.tls,
    connectTimeoutMs: conn.target.connectTimeoutMs,
  };
}
