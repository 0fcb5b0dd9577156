// The client listener: accept, SSLRequest/GSSENCRequest/direct TLS negotiation, CancelRequest, and the
// StartupMessage; hands a ready socket to the session layer.
import net from 'node:net';
import tls from 'node:tls';
import { encodeError } from '../protocol/backend.ts';
import { PgError, toPgError } from '../protocol/errors.ts';
import { StartupFramer } from '../protocol/framer.ts';
import { decodeStartupPacket, type StartupPacket } from '../protocol/frontend.ts';

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
  /** The current TLS context (re-read on reload), or undefined when TLS is off. */
  tlsContext(): tls.SecureContext | undefined;
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

function negotiate(raw: net.Socket, hooks: ListenerHooks): void {
  const acceptedAt = Date.now();
  const remoteAddress = raw.remoteAddress ?? 'unknown';
  const remotePort = raw.remotePort ?? 0;
  raw.setNoDelay(true);
  if (hooks.keepalive) raw.setKeepAlive(true, 30_000);
  let socket: ClientSocket = raw;
  let isTls = false;
  let framer = new StartupFramer();
  let finished = false;

  const reject = (reason: string, code: string, err?: PgError) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    hooks.onRejected({ remoteAddress, reason, code });
    if (err && !socket.destroyed && socket.writable) socket.end(encodeError(err));
    else socket.destroy();
    // Make sure a client that never reads cannot hold the socket open.
    setTimeout(() => socket.destroy(), 1000).unref();
  };

  const timer = setTimeout(
    () => reject('login timeout during startup', 'GPRXY_LOGIN_TIMEOUT'),
    hooks.loginTimeoutMs(),
  );
  timer.unref();

  const detach = () => {
    socket.removeListener('data', onData);
  };

  const upgrade = (ctx: tls.SecureContext) => {
    detach();
    const secure = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: ctx,
      ALPNProtocols: ['postgresql'],
    });
    socket = secure;
    isTls = true;
    framer = new StartupFramer();
    secure.on('error', (e) => reject(`TLS handshake failed: ${e.message}`, 'GPRXY_TLS_HANDSHAKE'));
    secure.on('data', onData);
  };

  const onData = (chunk: Buffer) => {
    if (finished) return;
    // Direct TLS (PostgreSQL 17 sslnegotiation=direct): a TLS ClientHello instead of a startup packet.
    if (!isTls && framer.pending === 0 && chunk[0] === 0x16) {
      const ctx = hooks.tlsContext();
      if (!ctx) return reject('direct TLS without TLS configured', 'GPRXY_NO_TLS');
      raw.unshift(chunk);
      upgrade(ctx);
      return;
    }
    try {
      framer.push(chunk);
      for (;;) {
        const body = framer.next();
        if (body === null) return;
        const pkt = decodeStartupPacket(body);
        switch (pkt.kind) {
          case 'ssl': {
            if (framer.pending !== 0) {
              // Bytes sent before our answer could be injected by a man in the middle (CVE-2021-23214).
              return reject('data after SSLRequest', 'GPRXY_SSL_STUFFING');
            }
            const ctx = isTls ? undefined : hooks.tlsContext();
            if (isTls)
              return reject(
                'SSLRequest inside TLS',
                'GPRXY_SSL_TWICE',
                PgError.protocolViolation('SSL negotiation inside TLS'),
              );
            if (!ctx) {
              raw.write('N');
              continue;
            }
            raw.write('S');
            upgrade(ctx);
            return;
          }
          case 'gssenc':
            if (framer.pending !== 0) return reject('data after GSSENCRequest', 'GPRXY_SSL_STUFFING');
            socket.write('N');
            continue;
          case 'cancel':
            finished = true;
            clearTimeout(timer);
            hooks.onCancel(pkt.pid, pkt.secret);
            socket.destroy();
            return;
          case 'startup': {
            finished = true;
            clearTimeout(timer);
            detach();
            socket.pause();
            socket.removeAllListeners('error');
            const leftover = framer.drain();
            hooks.onStartup({
              socket,
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
      reject(err.message, err.code ?? 'GPRXY_STARTUP', err);
    }
  };

  raw.on('data', onData);
  raw.on('error', () => socket.destroy());
  raw.on('close', () => {
    if (!finished) {
      finished = true;
      clearTimeout(timer);
    }
  });
}
