// Moves frames between a client session and its leased server, unchanged; decides the release point (session mode:
// the client's Terminate) and keeps memory bounded with backpressure both ways.
import { type PoolStats, RequestClock } from '../pool/stats.ts';
import { PgError } from '../protocol/errors.ts';
import { Scan, type ScanHandler, StreamScanner, scanPolicy } from '../protocol/framer.ts';
import type { ServerConnection, ServerSink } from '../server/connection.ts';
import { type QueryTracker, trackClientMessage, trackServerMessage } from './query-tracker.ts';

/** The client side as the relay sees it; the session owns the socket. */
export interface ClientIO {
  write(bytes: Buffer): boolean;
  pause(): void;
  resume(): void;
  cork(): void;
  uncork(): void;
  /** Set by the relay: called when a full client socket buffer drains. */
  onDrain: (() => void) | undefined;
}

export interface RelayEvents {
  /** The client sent Terminate: the session ends cleanly. */
  terminate(): void;
  /** The server closed while attached; `error` is its own FATAL if it sent one. */
  serverClosed(error: PgError | undefined): void;
  /** Malformed client input: send the error and close. */
  clientProtocolError(error: PgError): void;
}

/**
 * Client message types the session-mode relay looks at: Terminate (dropped), what expects a ReadyForQuery (Q, S, F),
 * and the extended-protocol messages that leave work open until their Sync (P, B, E, D, C).
 */
const CLIENT_POLICY = scanPolicy({
  X: Scan.INSPECT,
  Q: Scan.NOTE,
  S: Scan.NOTE,
  F: Scan.NOTE,
  P: Scan.NOTE,
  B: Scan.NOTE,
  E: Scan.NOTE,
  D: Scan.NOTE,
  C: Scan.NOTE,
});

/** With an audit tracker: the statements' text (Q, P, B, E) is read too, and the server's replies to them. */
const AUDIT_CLIENT_POLICY = scanPolicy({
  X: Scan.INSPECT,
  Q: Scan.INSPECT,
  S: Scan.NOTE,
  F: Scan.NOTE,
  P: Scan.INSPECT,
  B: Scan.INSPECT,
  E: Scan.INSPECT,
  D: Scan.NOTE,
  C: Scan.NOTE,
});

/** Server replies the tracker needs: CommandComplete, COPY direction, PortalSuspended, EmptyQueryResponse. */
export const AUDIT_SERVER_POLICY = scanPolicy({
  C: Scan.INSPECT,
  G: Scan.INSPECT,
  H: Scan.INSPECT,
  s: Scan.INSPECT,
  I: Scan.INSPECT,
});

export class SessionRelay implements ScanHandler, ServerSink {
  private readonly scanner: StreamScanner;
  private ended = false;
  readonly policy: Uint8Array | undefined;
  private readonly clock: RequestClock;

  constructor(
    private readonly client: ClientIO,
    private readonly server: ServerConnection,
    private readonly events: RelayEvents,
    /** The pool's running totals: bytes, queries, transactions, Parse/Bind counts. */
    private readonly stats: PoolStats,
    private readonly tracker?: QueryTracker,
    maxPacketSize = 1024 * 1024,
  ) {
    this.clock = new RequestClock(stats);
    this.scanner = tracker
      ? new StreamScanner(AUDIT_CLIENT_POLICY, maxPacketSize, this)
      : new StreamScanner(CLIENT_POLICY, 1024, this);
    this.policy = tracker ? AUDIT_SERVER_POLICY : undefined;
    server.attach(this);
    server.onDrain = () => client.resume();
    client.onDrain = () => server.resume();
  }

  /** Bytes from the client. */
  fromClient(chunk: Buffer): void {
    if (this.ended) return;
    this.stats.received += chunk.length;
    this.server.cork();
    try {
      this.scanner.push(chunk);
    } catch (e) {
      this.ended = true;
      this.events.clientProtocolError(
        e instanceof PgError ? e : PgError.protocolViolation('malformed message'),
      );
    } finally {
      this.server.uncork();
    }
  }

  // ScanHandler (client -> server)
  onNote(type: number): void {
    this.clock.request();
    if (type === 0x53 /* S */) {
      this.tracker?.sync();
      this.server.outstanding++;
      this.server.unsynced = false;
    } else if (type === 0x51 /* Q */ || type === 0x46 /* F */) {
      this.server.outstanding++;
    } else {
      this.countExtended(type);
      // Parse/Bind/Execute/Describe/Close: until the Sync, the server holds an implicit transaction (or, after an
      // error, skips everything up to a Sync). A client leaving now leaves a server no Query can clean.
      this.server.unsynced = true;
    }
  }

  onMessage(type: number, body: Buffer): boolean {
    const t = this.tracker;
    if (t && type !== 0x58) {
      this.clock.request();
      this.countExtended(type);
      trackClientMessage(t, type, body);
      if (type === 0x51 /* Q */) this.server.outstanding++;
      else this.server.unsynced = true;
      return false;
    }
    if (type === 0x58 /* X */ && !this.ended) {
      // Whatever the client sent before Terminate in the same read still goes to the server.
      this.scanner.flushBefore();
      this.ended = true;
      queueMicrotask(() => this.events.terminate());
    }
    return true;
  }

  /** Parse and Bind counts (SHOW STATS): in session mode every Parse reaches the server as the client sent it. */
  private countExtended(type: number): void {
    if (type === 0x50 /* P */) {
      this.stats.clientParses++;
      this.stats.serverParses++;
    } else if (type === 0x42 /* B */) this.stats.binds++;
  }

  forward(bytes: Buffer): void {
    if (this.ended) return;
    if (!this.server.write(bytes)) this.client.pause();
  }

  // ServerSink (server -> client)
  corkClient(): void {
    this.client.cork();
  }

  uncorkClient(): void {
    this.client.uncork();
  }

  /** ReadyForQuery (always) and, for audit, the server's replies (the connection has already updated its state). */
  onServerMessage(type: number, body: Buffer): boolean {
    if (type === 0x5a /* Z */) this.clock.ready(body[0] ?? 0x49, this.server.outstanding > 0);
    if (this.tracker) trackServerMessage(this.tracker, type, body);
    return false;
  }

  toClient(bytes: Buffer): void {
    this.stats.sent += bytes.length;
    if (!this.client.write(bytes)) this.server.pause();
  }

  serverClosed(error: PgError | undefined): void {
    this.ended = true;
    this.events.serverClosed(error);
  }

  /** Stops relaying; the server is detached and can be reset and released by the session. */
  stop(): void {
    this.ended = true;
    this.client.onDrain = undefined;
    this.tracker?.end();
    if (!this.server.closed) this.server.detach();
  }
}
