// The client listener: accept, SSLRequest/GSSENCRequest/direct TLS negotiation, CancelRequest, and the
// StartupMessage; hands a ready socket to the session layer.
import net from 'node:net';
import tls from 'node:tls';
import { encodeError } from '../protocol/backend.ts';
import { PgError, toPgError } from '../protocol/errors.ts';
import { StartupFramer } from '../protocol/framer.ts';
import { decodeStartupPacket, type StartupPacket } from '../protocol/frontend.ts';
import type { ListenTls } from './tls.ts';

export type ClientSocket = net.Socket | tls.TLSSocket;
export type Startup = Extract<StartupPacket, { kind: 'startup' }>;

export interface AcceptedClient {
  socket: ClientSocket;
  startup: Startup;
  tls: boolean;
  remoteAddress: string;
  remotePort: number;
  loopback: boolean;
  /** When the TCP connection was accepted (ms since epoch): login timeouts count from here. */
  acceptedAt: number;
  /** Bytes that followed the StartupMessage in the same read. */
  leftover: Buffer;
}

export interface ListenerHooks {
  /** The current TLS setup (re-read on reload), or undefined when TLS is off. */
  tlsContext(): ListenTls | undefined;
  onStartup(client: AcceptedClient): void;
  onCancel(pid: number, secret: Buffer): void;
  /** A connection that failed before its StartupMessage (protocol error, timeout, TLS failure). */
  onRejected(info: { remoteAddress: string; reason: string; code: string }): void;
  loginTimeoutMs(): number;
  keepalive: boolean;
}

export interface Listener {
  readonly port: number;
  readonly host: string;
  /** Stops accepting; existing connections are left alone. */
  close(): Promise<void>;
}

export function isLoopback(addr: string): boolean {
  return addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.');
}

export async function listen(host: string, port: number, hooks: ListenerHooks): Promise<Listener> {
  const server = net.createServer({ noDelay: true }, (socket) => negotiate(socket, hooks));
  server.on('error', () => undefined);
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen({ host, port }, () => {
      server.off('error', rej);
      res();
    });
  });
  const addr = server.address() as net.AddressInfo;
  return {
    port: addr.port,
    host: addr.address,
    close: () => new Promise<void>((res) => server.close(() => res())),
  };
}

/**
 * Sets `authorized` / `authorizationError` on a server-side TLSSocket as tls.Server does (a TLSSocket made by
 * hand gets neither). OpenSSL's verify callback in Node always continues the handshake and records the verdict;
 * Node's own tls.Server reads it with the handle's verifyError(), which is what we do too. Returns false only for
 * a client that presented a certificate that does not verify; no certificate is fine (as with PostgreSQL's
 * ssl_ca_file: HBA decides whether one is required).
 */
function verifyClientCertificate(secure: tls.TLSSocket): boolean {
  const peer = secure.getPeerCertificate();
  if (!peer || Object.keys(peer).length === 0) return true;
  const handle = (secure as unknown as { _handle?: { verifyError?: () => Error | null } | null })._handle;
  // Fail closed if a future Node stops offering the verdict.
  const err = handle?.verifyError ? handle.verifyError() : new Error('UNABLE_TO_VERIFY');
  if (err) {
    secure.authorizationError = ((err as NodeJS.ErrnoException).code ?? err.message) as unknown as Error;
    return false;
  }
  secure.authorized = true;
  return true;
}

/**
 * What the raw socket's listeners for its whole life need, apart from negotiate()'s closures: once the session
 * owns the socket, the negotiation (framer, timer, handlers) can be collected instead of staying reachable from
 * these listeners for as long as the client stays connected (a few KB per idle client).
 */
interface RawGuard {
  /** The socket the client speaks on: the raw one, or the TLSSocket wrapping it. */
  socket: ClientSocket;
  finished: boolean;
  timer: NodeJS.Timeout | undefined;
}

function guardRaw(raw: net.Socket): RawGuard {
  const g: RawGuard = { socket: raw, finished: false, timer: undefined };
  // Errors on the plain socket (ECONNRESET...) at any phase, also after TLS took it over: never unhandled.
  raw.on('error', () => g.socket.destroy());
  raw.on('close', () => {
    if (!g.finished) {
      g.finished = true;
      clearTimeout(g.timer);
    }
  });
  return g;
}

function negotiate(raw: net.Socket, hooks: ListenerHooks): void {
  const acceptedAt = Date.now();
  const remoteAddress = raw.remoteAddress ?? 'unknown';
  const remotePort = raw.remotePort ?? 0;
  raw.setNoDelay(true);
  if (hooks.keepalive) raw.setKeepAlive(true, 30_000);
  const g = guardRaw(raw);
  let isTls = false;
  /** Bytes received in plain text so far: direct TLS is only recognised as the connection's first byte. */
  let plainBytes = 0;
  let framer = new StartupFramer();
  let onTlsError: ((e: Error) => void) | undefined;
  /** TLS is on and its checks (ALPN, client certificate) passed: packets read inside TLS may be acted on. */
  let tlsChecked = false;

  const reject = (reason: string, code: string, err?: PgError) => {
    if (g.finished) return;
    g.finished = true;
    clearTimeout(timer);
    hooks.onRejected({ remoteAddress, reason, code });
    if (err && !g.socket.destroyed && g.socket.writable) g.socket.end(encodeError(err));
    else g.socket.destroy();
    // Make sure a client that never reads cannot hold the socket open.
    setTimeout(() => {
      g.socket.destroy();
      raw.destroy();
    }, 1000).unref();
  };

  // Counts from accept: the TLS handshake and every negotiation step are inside it.
  const timer = setTimeout(
    () => reject('login timeout during startup', 'GPRXY_LOGIN_TIMEOUT'),
    hooks.loginTimeoutMs(),
  );
  timer.unref();
  g.timer = timer;

  /**
   * Wraps the plain socket in TLS, synchronously (nothing else may read it in between). `first`: bytes already
   * read that belong to the TLS stream (a direct-TLS ClientHello); they are put back for the TLS layer to read.
   */
  const upgrade = (ctx: ListenTls, direct: boolean, first?: Buffer) => {
    raw.removeListener('data', onData);
    if (first) {
      // Paused, so the bytes stay buffered for TLSSocket (which drains the buffer into the TLS engine) instead
      // of being emitted again as 'data' right away.
      raw.pause();
      raw.unshift(first);
    }
    const secure = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: ctx.context,
      ALPNProtocols: ['postgresql'],
      requestCert: ctx.requestCert,
      rejectUnauthorized: false,
    });
    g.socket = secure;
    isTls = true;
    framer = new StartupFramer();
    onTlsError = (e: NodeJS.ErrnoException) =>
      reject(`TLS handshake failed: ${e.code ?? e.message}`, 'GPRXY_TLS_HANDSHAKE');
    secure.on('error', onTlsError);
    secure.once('secure', () => {
      // PostgreSQL 17 requires ALPN "postgresql" on direct TLS (no cross-protocol use of the port). On
      // negotiated TLS, OpenSSL already refused a client offering only other protocols.
      if (direct && secure.alpnProtocol !== 'postgresql') {
        return reject(
          'direct TLS without ALPN "postgresql"',
          'GPRXY_TLS_ALPN',
          PgError.protocolViolation(
            'direct TLS connection without ALPN protocol "postgresql"',
            'GPRXY_TLS_ALPN',
          ),
        );
      }
      if (ctx.requestCert && !verifyClientCertificate(secure)) {
        const why = String(secure.authorizationError);
        return reject(
          `client certificate rejected: ${why}`,
          'GPRXY_TLS_CLIENT_CERT',
          PgError.notAllowed(`client certificate verification failed: ${why}`, 'GPRXY_TLS_CLIENT_CERT'),
        );
      }
      tlsChecked = true;
      // Anything that arrived before this point was only buffered.
      onData(Buffer.alloc(0));
    });
    secure.on('data', onData);
  };

  const onData = (chunk: Buffer) => {
    if (g.finished) return;
    try {
      if (!isTls) {
        const first = plainBytes === 0;
        plainBytes += chunk.length;
        // Direct TLS (PostgreSQL 17 sslnegotiation=direct): a TLS handshake record instead of a startup packet.
        if (first && chunk[0] === 0x16) {
          const ctx = hooks.tlsContext();
          if (!ctx) return reject('direct TLS without TLS configured', 'GPRXY_NO_TLS');
          return upgrade(ctx, true, chunk);
        }
      }
      framer.push(chunk);
      if (isTls && !tlsChecked) return;
      for (;;) {
        const body = framer.next();
        if (body === null) return;
        const pkt = decodeStartupPacket(body);
        switch (pkt.kind) {
          case 'ssl':
          case 'gssenc': {
            const what = pkt.kind === 'ssl' ? 'SSLRequest' : 'GSSENCRequest';
            if (isTls) {
              return reject(
                `${what} inside TLS`,
                'GPRXY_SSL_TWICE',
                PgError.protocolViolation(`${what} received on an encrypted connection`, 'GPRXY_SSL_TWICE'),
              );
            }
            if (framer.pending !== 0) {
              // Bytes sent before our answer could be injected by a man in the middle (CVE-2021-23214): they
              // would be taken as if they came over TLS. Close without answering.
              return reject(`data after ${what}`, 'GPRXY_SSL_STUFFING');
            }
            const ctx = pkt.kind === 'ssl' ? hooks.tlsContext() : undefined;
            if (!ctx) {
              raw.write('N');
              continue;
            }
            raw.write('S');
            upgrade(ctx, false);
            return;
          }
          case 'cancel':
            g.finished = true;
            clearTimeout(timer);
            hooks.onCancel(pkt.pid, pkt.secret);
            g.socket.destroy();
            return;
          case 'startup': {
            g.finished = true;
            clearTimeout(timer);
            g.timer = undefined;
            g.socket.removeListener('data', onData);
            g.socket.pause();
            // The session attaches its own 'error' listener right away (synchronously, in onStartup); the plain
            // socket keeps ours, which only destroys.
            if (onTlsError) g.socket.removeListener('error', onTlsError);
            const leftover = framer.drain();
            hooks.onStartup({
              socket: g.socket,
              startup: pkt,
              tls: isTls,
              remoteAddress,
              remotePort,
              loopback: isLoopback(remoteAddress),
              acceptedAt,
              leftover,
            });
            return;
          }
        }
      }
    } catch (e) {
      const err = toPgError(e, 'GPRXY_STARTUP');
      if (!g.finished) reject(err.message, err.code ?? 'GPRXY_STARTUP', err);
      else g.socket.destroy();
    }
  };

  raw.on('data', onData);
}
